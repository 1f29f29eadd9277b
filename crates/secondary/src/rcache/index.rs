//! The lookup index: an immutable, sorted array of non-overlapping
//! registrations, replaced as a whole under the cache lock and read with
//! no lock at all (an `arc-swap` snapshot).
//!
//! Sorted arrays instead of a tree because the hit path is what the cache
//! is for, and copying the arrays on a miss is cheap next to faulting and
//! pinning the pages the miss registers. A jump table over the address
//! span (a one-level radix table, about two buckets per registration)
//! narrows the search to the few registrations starting in the looked-up
//! address's bucket: a plain binary search over 10 000 entries is a chain
//! of 14 dependent loads, which alone costs more than the rest of a hit.

use std::ops::Range;
use std::sync::Arc;

use super::backend::{Primary, Registrar};
use super::registration::Registration;

/// One snapshot. `starts[i]`, `ends[i]` are `regs[i]`'s bounds, kept apart
/// so the search reads only them. Ranges never overlap, so both arrays
/// are sorted.
pub(super) struct Index<P: Primary, R: Registrar<P>> {
    starts: Box<[u64]>,
    ends: Box<[u64]>,
    regs: Box<[Arc<Registration<P, R>>]>,
    /// The first registration's start: bucket 0 begins there.
    base: u64,
    /// log2 of the bytes a bucket spans.
    shift: u32,
    /// `table[k]`: how many registrations start before bucket `k`; the
    /// last entry is the total. At least two entries.
    table: Box<[u32]>,
}

impl<P: Primary, R: Registrar<P>> Default for Index<P, R> {
    fn default() -> Self {
        Index::new(Vec::new())
    }
}

impl<P: Primary, R: Registrar<P>> std::fmt::Debug for Index<P, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("regs", &self.regs)
            .finish_non_exhaustive()
    }
}

impl<P: Primary, R: Registrar<P>> Index<P, R> {
    /// An index of `regs`, which must be sorted by start and disjoint.
    pub(super) fn new(regs: Vec<Arc<Registration<P, R>>>) -> Self {
        debug_assert!(regs.windows(2).all(|w| w[0].end <= w[1].start));
        let starts: Box<[u64]> = regs.iter().map(|r| r.start).collect();
        let base = starts.first().copied().unwrap_or(0);
        let span = regs.last().map_or(1, |r| r.end - base);
        let shift = bucket_shift(span, regs.len());
        let table = jump_table(&starts, base, shift, span);
        Index {
            ends: regs.iter().map(|r| r.end).collect(),
            starts,
            regs: regs.into_boxed_slice(),
            base,
            shift,
            table,
        }
    }

    /// Position of the registration holding all of `[start, end)`,
    /// whatever its state.
    #[inline(always)]
    pub(super) fn position(&self, start: u64, end: u64) -> Option<usize> {
        let offset = start.checked_sub(self.base)?;
        // Past the span, the last bucket: it runs to the last registration.
        let last_bucket = self.table.len() - 2;
        let bucket =
            usize::try_from(offset >> self.shift).map_or(last_bucket, |b| b.min(last_bucket));
        // Registrations starting at or below `start`: all before the
        // bucket, and some of those starting in it.
        let (lo, hi) = (self.table[bucket] as usize, self.table[bucket + 1] as usize);
        let below = lo + self.starts[lo..hi].partition_point(|&s| s <= start);
        let i = below.checked_sub(1)?;
        (end <= self.ends[i]).then_some(i)
    }

    /// The registration holding all of `[start, end)`, whatever its state.
    #[inline]
    pub(super) fn find(&self, start: u64, end: u64) -> Option<&Arc<Registration<P, R>>> {
        self.position(start, end).map(|i| &self.regs[i])
    }

    /// Positions of the registrations overlapping `[start, end)`: a
    /// contiguous run, because they are disjoint and sorted.
    pub(super) fn overlapping(&self, start: u64, end: u64) -> Range<usize> {
        let first = self.ends.partition_point(|&e| e <= start);
        let last = self.starts.partition_point(|&s| s < end);
        first..last.max(first)
    }

    pub(super) fn regs(&self) -> &[Arc<Registration<P, R>>] {
        &self.regs
    }
}

/// The smallest bucket size (as a shift) that keeps the table within
/// about two buckets per registration.
fn bucket_shift(span: u64, regs: usize) -> u32 {
    let buckets = (2 * regs as u64).max(1);
    (0..63).find(|&s| span >> s <= buckets).unwrap_or(63)
}

fn jump_table(starts: &[u64], base: u64, shift: u32, span: u64) -> Box<[u32]> {
    let buckets = (span >> shift) as usize + 1;
    let mut table = Vec::with_capacity(buckets + 1);
    let mut below = 0;
    for k in 0..buckets as u64 {
        let bucket_start = base + (k << shift);
        while below < starts.len() && starts[below] < bucket_start {
            below += 1;
        }
        table.push(below as u32);
    }
    table.push(starts.len() as u32);
    table.into_boxed_slice()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rcache::{Pins, SoftPrimary};

    type Index = super::Index<SoftPrimary, Pins>;

    fn index(ranges: &[(u64, u64)]) -> Index {
        let regs = ranges
            .iter()
            .enumerate()
            .map(|(id, &(s, e))| Arc::new(Registration::new(id as u64, s, e)))
            .collect();
        Index::new(regs)
    }

    #[test]
    fn find_needs_one_registration_holding_the_whole_range() {
        let idx = index(&[(0x1000, 0x3000), (0x3000, 0x4000), (0x8000, 0x9000)]);
        assert_eq!(idx.find(0x1000, 0x3000).map(|r| r.id), Some(0));
        assert_eq!(idx.find(0x2fff, 0x3000).map(|r| r.id), Some(0));
        assert_eq!(idx.find(0x3000, 0x3001).map(|r| r.id), Some(1));
        assert!(idx.find(0x2000, 0x3001).is_none(), "spans two");
        assert!(idx.find(0x0, 0x10).is_none(), "below all");
        assert!(idx.find(0x4000, 0x4001).is_none(), "in a hole");
        assert!(idx.find(0x9000, 0x9001).is_none(), "above all");
    }

    #[test]
    fn find_agrees_with_a_linear_scan() {
        // Clustered and far-apart ranges, so buckets hold 0, 1 and many.
        let mut ranges = vec![(0x10_0000, 0x10_1000), (0x7fff_0000_0000, 0x7fff_0000_3000)];
        ranges.extend((0..50).map(|i| (0x20_0000 + i * 0x2000, 0x20_1000 + i * 0x2000)));
        ranges.sort_unstable();
        let idx = index(&ranges);
        let probes = ranges
            .iter()
            .flat_map(|&(s, e)| [s - 1, s, s + 1, e - 1, e, e + 0x800])
            .chain([0, u64::MAX - 1]);
        for addr in probes {
            for len in [1, 0x1000, 0x3000] {
                let want = ranges
                    .iter()
                    .position(|&(s, e)| s <= addr && addr.saturating_add(len) <= e);
                let end = addr.saturating_add(len);
                assert_eq!(idx.position(addr, end), want, "{addr:#x}+{len:#x}");
            }
        }
        assert_eq!(Index::default().position(0x1000, 0x1001), None);
    }

    #[test]
    fn overlapping_is_the_run_that_intersects() {
        let idx = index(&[(0x1000, 0x3000), (0x3000, 0x4000), (0x8000, 0x9000)]);
        assert_eq!(idx.overlapping(0x2000, 0x3001), 0..2);
        assert_eq!(idx.overlapping(0x4000, 0x8000), 2..2);
        assert_eq!(idx.overlapping(0x0, 0x1000), 0..0);
        assert_eq!(idx.overlapping(0x0, u64::MAX), 0..3);
        assert_eq!(idx.overlapping(0x8fff, 0xa000), 2..3);
    }
}
