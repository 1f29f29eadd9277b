//! The report a run prints: per step, the notifier activity in the window,
//! then the return code. The text form is the kernel oracle's, byte for byte.

use std::fmt;

use crate::step::{WINDOW_BASE, WINDOW_SIZE};

/// One reported notifier call, offsets relative to the window base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// `invalidate_range_start` of `[start, end)`.
    Invalidate {
        /// Start offset.
        start: u64,
        /// End offset.
        end: u64,
    },
    /// An invalidation covering the whole window (e.g. `[0, ULONG_MAX)`).
    InvalidateAll,
    /// `clear_flush_young` or `clear_young` of `[start, end)`.
    Age {
        /// Start offset.
        start: u64,
        /// End offset.
        end: u64,
    },
    /// `test_young` of one address.
    TestAge {
        /// The offset.
        addr: u64,
    },
}

impl Line {
    /// The line for an invalidation of the absolute range `[start, end)`, or
    /// `None` if the oracle would not show it (it starts outside the window).
    pub fn invalidate(start: u64, end: u64) -> Option<Line> {
        if start <= WINDOW_BASE && end >= WINDOW_BASE + WINDOW_SIZE {
            Some(Line::InvalidateAll)
        } else {
            in_window(start).map(|s| Line::Invalidate {
                start: s,
                end: end.wrapping_sub(WINDOW_BASE),
            })
        }
    }

    /// The line for an aging call of the absolute range, if shown.
    pub fn age(start: u64, end: u64) -> Option<Line> {
        in_window(start).map(|s| Line::Age {
            start: s,
            end: end.wrapping_sub(WINDOW_BASE),
        })
    }

    /// The line for `test_young` of an absolute address, if shown.
    pub fn test_age(addr: u64) -> Option<Line> {
        in_window(addr).map(|a| Line::TestAge { addr: a })
    }
}

fn in_window(addr: u64) -> Option<u64> {
    (WINDOW_BASE..=WINDOW_BASE + WINDOW_SIZE)
        .contains(&addr)
        .then(|| addr - WINDOW_BASE)
}

/// C's `%#lx`: `0` for zero, `0x…` otherwise.
struct Hex(u64);

impl fmt::Display for Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            f.write_str("0")
        } else {
            write!(f, "{:#x}", self.0)
        }
    }
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Line::Invalidate { start, end } => write!(f, "invalidate {} {}", Hex(start), Hex(end)),
            Line::InvalidateAll => f.write_str("invalidate all"),
            Line::Age { start, end } => write!(f, "age {} {}", Hex(start), Hex(end)),
            Line::TestAge { addr } => write!(f, "test_age {}", Hex(addr)),
        }
    }
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 0, `-errno`, or for `mremap` the new offset.
    Rc(i64),
    /// `mremap` moved the mapping outside the window.
    Moved,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Rc(rc) => write!(f, "RC {rc}"),
            Outcome::Moved => f.write_str("RC moved"),
        }
    }
}

/// What one step printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepReport {
    /// 1-based step number.
    pub number: usize,
    /// The step's words.
    pub text: String,
    /// Notifier calls, in call order.
    pub lines: Vec<Line>,
    /// The return code.
    pub outcome: Outcome,
}

impl fmt::Display for StepReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "STEP {} {}", self.number, self.text)?;
        for line in &self.lines {
            writeln!(f, "  {line}")?;
        }
        writeln!(f, "  {}", self.outcome)
    }
}

/// A whole run's report.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Report {
    /// One entry per step, in order.
    pub steps: Vec<StepReport>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.steps.iter().try_for_each(|s| write!(f, "{s}"))
    }
}

impl Report {
    /// Parses the text form (what the oracle printed).
    ///
    /// # Errors
    ///
    /// A message naming the line that is not part of the format.
    pub fn parse(text: &str) -> Result<Report, String> {
        let mut report = Report::default();
        for (index, raw) in text.lines().enumerate() {
            parse_line(&mut report, raw).map_err(|e| format!("line {}: {e}", index + 1))?;
        }
        Ok(report)
    }
}

fn parse_line(report: &mut Report, raw: &str) -> Result<(), String> {
    if raw.trim().is_empty() {
        return Ok(());
    }
    if let Some(rest) = raw.strip_prefix("STEP ") {
        let (number, text) = rest.split_once(' ').unwrap_or((rest, ""));
        let number = number
            .parse()
            .map_err(|_| format!("bad step number `{number}`"))?;
        report.steps.push(StepReport {
            number,
            text: text.to_string(),
            lines: Vec::new(),
            outcome: Outcome::Rc(0),
        });
        return Ok(());
    }
    let step = report
        .steps
        .last_mut()
        .ok_or("a report line before the first STEP")?;
    let words: Vec<&str> = raw.split_whitespace().collect();
    let hex = |w: &str| -> Result<u64, String> {
        let digits = w.strip_prefix("0x").unwrap_or(w);
        u64::from_str_radix(digits, 16).map_err(|_| format!("bad address `{w}`"))
    };
    match words.as_slice() {
        ["invalidate", "all"] => step.lines.push(Line::InvalidateAll),
        ["invalidate", s, e] => step.lines.push(Line::Invalidate {
            start: hex(s)?,
            end: hex(e)?,
        }),
        ["age", s, e] => step.lines.push(Line::Age {
            start: hex(s)?,
            end: hex(e)?,
        }),
        ["test_age", a] => step.lines.push(Line::TestAge { addr: hex(a)? }),
        ["RC", "moved"] => step.outcome = Outcome::Moved,
        ["RC", rc] => step.outcome = Outcome::Rc(rc.parse().map_err(|_| format!("bad RC `{rc}`"))?),
        _ => return Err(format!("not a report line: `{}`", raw.trim())),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips_and_zero_prints_like_c() {
        let text = "STEP 1 mmap 0 0x1000 rw\n  invalidate 0 0x1000\n  invalidate all\n  age 0x2000 0x3000\n  test_age 0\n  RC -12\nSTEP 2 mremap 0 1 2 maymove\n  RC moved\n";
        let report = Report::parse(text).unwrap();
        assert_eq!(report.to_string(), text);
        assert_eq!(report.steps[1].outcome, Outcome::Moved);
    }

    #[test]
    fn lines_outside_the_window_are_not_shown() {
        assert_eq!(Line::invalidate(0, u64::MAX), Some(Line::InvalidateAll));
        assert_eq!(Line::invalidate(WINDOW_BASE - 1, WINDOW_BASE + 5), None);
        assert_eq!(
            Line::invalidate(WINDOW_BASE, WINDOW_BASE + 0x1000),
            Some(Line::Invalidate {
                start: 0,
                end: 0x1000
            })
        );
        assert_eq!(Line::test_age(WINDOW_BASE + WINDOW_SIZE + 1), None);
    }

    #[test]
    fn malformed_reports_name_the_line() {
        let err = Report::parse("STEP 1 fork\n  bogus 1\n").unwrap_err();
        assert!(err.starts_with("line 2: not a report line"), "{err}");
        assert!(
            Report::parse("  RC 0\n")
                .unwrap_err()
                .contains("before the first STEP")
        );
    }
}
