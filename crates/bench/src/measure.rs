//! Interleaved medians: the variants of one comparison run alternately,
//! iteration by iteration, so that the load on this shared machine drifts
//! over all of them alike and the ratio stays meaningful even when the
//! absolute times do not.

use std::time::Instant;

/// Nanoseconds of one timed call, after an untimed setup.
pub struct Variant<'a> {
    /// How the row names it.
    pub name: &'static str,
    /// Untimed preparation before each timed call.
    pub setup: &'a mut dyn FnMut(),
    /// The timed call.
    pub run: &'a mut dyn FnMut(),
    /// Calls per timing (for operations shorter than the clock's
    /// resolution); the result is per call.
    pub batch: u32,
}

impl std::fmt::Debug for Variant<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Variant")
            .field("name", &self.name)
            .field("batch", &self.batch)
            .finish_non_exhaustive()
    }
}

/// Runs `iterations` rounds; each round times every variant once, in
/// turn. Returns the median nanoseconds per call of each variant.
pub fn interleaved(variants: &mut [Variant<'_>], iterations: usize) -> Vec<f64> {
    let mut samples: Vec<Vec<f64>> = variants
        .iter()
        .map(|_| Vec::with_capacity(iterations))
        .collect();
    for _ in 0..iterations {
        for (variant, out) in variants.iter_mut().zip(&mut samples) {
            (variant.setup)();
            let batch = variant.batch.max(1);
            let t = Instant::now();
            for _ in 0..batch {
                (variant.run)();
            }
            out.push(t.elapsed().as_nanos() as f64 / f64::from(batch));
        }
    }
    samples.into_iter().map(median).collect()
}

/// The median of `v` (the upper one of an even count); NaN when empty.
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_takes_the_middle_of_sorted_samples() {
        assert_eq!(median(vec![5.0, 1.0, 3.0]), 3.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 3.0);
        assert!(median(Vec::new()).is_nan());
    }

    #[test]
    fn interleaving_times_every_variant_each_round_in_turn() {
        let order = std::cell::RefCell::new(Vec::new());
        let (mut sa, mut ra) = (|| {}, || order.borrow_mut().push('a'));
        let (mut sb, mut rb) = (|| {}, || order.borrow_mut().push('b'));
        let medians = interleaved(
            &mut [
                Variant {
                    name: "a",
                    setup: &mut sa,
                    run: &mut ra,
                    batch: 1,
                },
                Variant {
                    name: "b",
                    setup: &mut sb,
                    run: &mut rb,
                    batch: 2,
                },
            ],
            3,
        );
        assert_eq!(medians.len(), 2);
        assert_eq!(order.into_inner(), "abbabbabb".chars().collect::<Vec<_>>());
    }
}
