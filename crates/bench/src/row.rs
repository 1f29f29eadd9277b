//! One line of the `mmun bench` table: a measurement of ours beside its
//! reference, both medians of the same interleaved run.

/// What a row must reach.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// ours / reference at most this.
    RatioAtMost(f64),
    /// ours at most this many nanoseconds.
    NsAtMost(f64),
    /// ours below the reference.
    Faster,
    /// No target: shown for comparison (a peer's figure).
    None,
}

/// One comparison.
#[derive(Debug, Clone)]
pub struct Row {
    /// The section, e.g. `munmap of 16 populated pages`.
    pub group: &'static str,
    /// What ours is, e.g. `hooked, one interval notifier`.
    pub ours: String,
    /// Median nanoseconds of ours.
    pub ours_ns: f64,
    /// What it is compared with, e.g. `raw munmap`.
    pub reference: String,
    /// Median nanoseconds of the reference (NaN when there is none).
    pub reference_ns: f64,
    /// What it must reach.
    pub target: Target,
}

impl Row {
    /// ours / reference.
    pub fn ratio(&self) -> f64 {
        self.ours_ns / self.reference_ns
    }

    /// Whether the target is reached (`None` when the row has none).
    pub fn met(&self) -> Option<bool> {
        match self.target {
            Target::RatioAtMost(r) => Some(self.ratio() <= r),
            Target::NsAtMost(ns) => Some(self.ours_ns <= ns),
            Target::Faster => Some(self.ours_ns < self.reference_ns),
            Target::None => None,
        }
    }

    /// The target as the table prints it.
    pub fn target_text(&self) -> String {
        match self.target {
            Target::RatioAtMost(r) => format!("≤ {r}×"),
            Target::NsAtMost(ns) => format!("≤ {ns} ns"),
            Target::Faster => "< reference".to_owned(),
            Target::None => "—".to_owned(),
        }
    }
}

/// A section that could not run here, and why (no userfaultfd, no
/// io_uring, no `libucx-dev`, …).
#[derive(Debug, Clone)]
pub struct Skipped {
    /// The section.
    pub group: &'static str,
    /// Why.
    pub reason: String,
}

/// What one section produced.
#[derive(Debug, Clone)]
pub enum Section {
    /// Its rows.
    Rows(Vec<Row>),
    /// Why it did not run.
    Skipped(Skipped),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(ours: f64, reference: f64, target: Target) -> Row {
        Row {
            group: "g",
            ours: "o".into(),
            ours_ns: ours,
            reference: "r".into(),
            reference_ns: reference,
            target,
        }
    }

    #[test]
    fn verdicts_follow_the_target_kind() {
        assert_eq!(
            row(105.0, 100.0, Target::RatioAtMost(1.05)).met(),
            Some(true)
        );
        assert_eq!(
            row(106.0, 100.0, Target::RatioAtMost(1.05)).met(),
            Some(false)
        );
        assert_eq!(
            row(20.0, f64::NAN, Target::NsAtMost(20.0)).met(),
            Some(true)
        );
        assert_eq!(
            row(21.0, f64::NAN, Target::NsAtMost(20.0)).met(),
            Some(false)
        );
        assert_eq!(row(9.0, 10.0, Target::Faster).met(), Some(true));
        assert_eq!(row(10.0, 10.0, Target::Faster).met(), Some(false));
        assert_eq!(row(1.0, 2.0, Target::None).met(), None);
    }
}
