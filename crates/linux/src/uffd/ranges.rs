//! The net's two range books.
//!
//! * [`Armed`]: what the kernel has registered on our context, as disjoint,
//!   non-adjacent ranges in a sorted vector whose capacity is reserved at
//!   start-up. The handler thread updates it for every UNMAP and REMAP, so no
//!   operation here allocates: an update that would need more room than
//!   reserved is refused, and the caller keeps the conservative view.
//! * [`Watched`]: how many callers watch each page (the kernel does not
//!   refcount registrations). Only the callers of `watch`/`unwatch` touch it,
//!   never the handler, so it may allocate.

use std::collections::BTreeMap;

/// Disjoint, non-adjacent `[start, end)` ranges, sorted, fixed capacity.
#[derive(Debug)]
pub(crate) struct Armed {
    ranges: Vec<(u64, u64)>,
}

impl Armed {
    /// Room for `capacity` ranges, reserved now.
    pub(crate) fn with_capacity(capacity: usize) -> Armed {
        Armed {
            ranges: Vec::with_capacity(capacity),
        }
    }

    /// Number of disjoint ranges.
    pub(crate) fn len(&self) -> usize {
        self.ranges.len()
    }

    /// Index of the first range ending at or after `at` (touching counts).
    fn first_touching(&self, at: u64) -> usize {
        self.ranges.partition_point(|r| r.1 < at)
    }

    /// Adds `[start, end)`, merging with what it overlaps or touches.
    /// `false` (nothing changed) if that needs more than the reserved room.
    pub(crate) fn insert(&mut self, start: u64, end: u64) -> bool {
        let i = self.first_touching(start);
        let j = self.ranges.partition_point(|r| r.0 <= end);
        if i == j {
            if self.ranges.len() == self.ranges.capacity() {
                return false;
            }
            self.ranges.insert(i, (start, end));
            return true;
        }
        let merged = (start.min(self.ranges[i].0), end.max(self.ranges[j - 1].1));
        self.ranges[i] = merged;
        self.ranges.drain(i + 1..j);
        true
    }

    /// Removes `[start, end)`. `false` (nothing changed) if it would split a
    /// range and there is no room for the second half.
    pub(crate) fn remove(&mut self, start: u64, end: u64) -> bool {
        let i = self.ranges.partition_point(|r| r.1 <= start);
        let j = self.ranges.partition_point(|r| r.0 < end);
        if i >= j {
            return true;
        }
        let (first, last) = (self.ranges[i], self.ranges[j - 1]);
        let left = (first.0 < start).then_some((first.0, start));
        let right = (last.1 > end).then_some((end, last.1));
        match (left, right) {
            (Some(l), Some(r)) if i + 1 == j => {
                if self.ranges.len() == self.ranges.capacity() {
                    return false;
                }
                self.ranges[i] = l;
                self.ranges.insert(i + 1, r);
            }
            (l, r) => {
                let mut k = i;
                for piece in [l, r].into_iter().flatten() {
                    self.ranges[k] = piece;
                    k += 1;
                }
                self.ranges.drain(k..j);
            }
        }
        true
    }

    /// Moves whatever is armed in `[from, from + len)` to `to` (mremap: the
    /// registration follows the VMA). Best effort within the capacity.
    pub(crate) fn shift(&mut self, from: u64, to: u64, len: u64) {
        let end = from + len;
        // At most the whole source moves; record it as one range if any of
        // it was armed (the kernel only reports REMAP for registered VMAs).
        if self.overlaps(from, end) {
            self.remove(from, end);
            self.insert(to, to + len);
        }
    }

    /// Whether any armed byte lies in `[start, end)`.
    pub(crate) fn overlaps(&self, start: u64, end: u64) -> bool {
        let i = self.ranges.partition_point(|r| r.1 <= start);
        i < self.ranges.len() && self.ranges[i].0 < end
    }

    /// Whether all of `[start, end)` is armed.
    pub(crate) fn covers(&self, start: u64, end: u64) -> bool {
        let i = self.ranges.partition_point(|r| r.1 <= start);
        i < self.ranges.len() && self.ranges[i].0 <= start && self.ranges[i].1 >= end
    }

    /// The first armed range that overlaps `[start, end)`, if any.
    pub(crate) fn first_overlapping(&self, start: u64, end: u64) -> Option<(u64, u64)> {
        let i = self.ranges.partition_point(|r| r.1 <= start);
        self.ranges.get(i).copied().filter(|r| r.0 < end)
    }

    /// The armed range ending exactly at or within `gap` bytes before
    /// `start`, and the one starting within `gap` bytes after `end`.
    pub(crate) fn neighbours(&self, start: u64, end: u64, gap: u64) -> (Option<u64>, Option<u64>) {
        let i = self.ranges.partition_point(|r| r.1 <= start);
        let before = i
            .checked_sub(1)
            .map(|k| self.ranges[k].1)
            .filter(|&e| e + gap >= start);
        let j = self.ranges.partition_point(|r| r.0 < end);
        let after = self.ranges.get(j).map(|r| r.0).filter(|&s| s <= end + gap);
        (before, after)
    }

    /// A copy of the ranges (tests and diagnostics; allocates).
    pub(crate) fn to_vec(&self) -> Vec<(u64, u64)> {
        self.ranges.clone()
    }
}

/// Watch counts by page range: disjoint segments `start → (end, count)`,
/// count ≥ 1.
#[derive(Debug, Default)]
pub(crate) struct Watched {
    segments: BTreeMap<u64, (u64, u32)>,
}

impl Watched {
    /// Splits the segment containing `at` (if any) so that a segment starts
    /// at `at`.
    fn split_at(&mut self, at: u64) {
        let hit = self
            .segments
            .range(..at)
            .next_back()
            .map(|(&s, &(e, c))| (s, e, c));
        if let Some((s, e, c)) = hit
            && e > at
        {
            self.segments.insert(s, (at, c));
            self.segments.insert(at, (e, c));
        }
    }

    /// One more watcher on every page of `[start, end)`.
    pub(crate) fn add(&mut self, start: u64, end: u64) {
        self.split_at(start);
        self.split_at(end);
        let mut cursor = start;
        let inside: Vec<(u64, u64)> = self
            .segments
            .range(start..end)
            .map(|(&s, &(e, _))| (s, e))
            .collect();
        for (s, e) in inside {
            if cursor < s {
                self.segments.insert(cursor, (s, 1));
            }
            if let Some(seg) = self.segments.get_mut(&s) {
                seg.1 += 1;
            }
            cursor = e;
        }
        if cursor < end {
            self.segments.insert(cursor, (end, 1));
        }
        self.merge_around(start, end);
    }

    /// One watcher fewer on every page of `[start, end)`.
    ///
    /// # Panics
    ///
    /// If a page of the range is not watched: `unwatch` must pair with a
    /// `watch` that returned [`Watch::Armed`](super::Watch::Armed).
    pub(crate) fn sub(&mut self, start: u64, end: u64) {
        assert!(
            self.covers(start, end),
            "UffdNet::unwatch({start:#x}, {end:#x}): every unwatch must pair with a watch that returned Armed (pages of this range are not watched)"
        );
        self.split_at(start);
        self.split_at(end);
        let inside: Vec<u64> = self.segments.range(start..end).map(|(&s, _)| s).collect();
        for s in inside {
            let seg = self.segments.get_mut(&s).expect("segment just listed");
            seg.1 -= 1;
            if seg.1 == 0 {
                self.segments.remove(&s);
            }
        }
        self.merge_around(start, end);
    }

    /// Merges equal-count neighbours around `[start, end)` to keep the map
    /// small.
    fn merge_around(&mut self, start: u64, end: u64) {
        let from = self
            .segments
            .range(..start)
            .next_back()
            .map_or(start, |(&s, _)| s);
        let keys: Vec<u64> = self.segments.range(from..=end).map(|(&s, _)| s).collect();
        for pair in keys.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            let (Some(&(ae, ac)), Some(&(be, bc))) = (self.segments.get(&a), self.segments.get(&b))
            else {
                continue;
            };
            if ae == b && ac == bc {
                self.segments.remove(&b);
                self.segments.insert(a, (be, ac));
            }
        }
    }

    /// Whether every page of `[start, end)` is watched at least once.
    pub(crate) fn covers(&self, start: u64, end: u64) -> bool {
        let mut cursor = start;
        let first = self
            .segments
            .range(..=start)
            .next_back()
            .map(|(&s, &(e, _))| (s, e));
        let later = self
            .segments
            .range(start + 1..end)
            .map(|(&s, &(e, _))| (s, e));
        for (s, e) in first.into_iter().chain(later) {
            if e <= cursor {
                continue;
            }
            if s > cursor {
                return false;
            }
            cursor = e;
            if cursor >= end {
                return true;
            }
        }
        cursor >= end
    }

    /// Whether any page of `[start, end)` is watched.
    pub(crate) fn any_in(&self, start: u64, end: u64) -> bool {
        let before = self.segments.range(..start).next_back();
        before.is_some_and(|(_, &(e, _))| e > start)
            || self.segments.range(start..end).next().is_some()
    }

    /// The watched pieces of `[start, end)`, clipped, merged.
    pub(crate) fn pieces(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        let before = self
            .segments
            .range(..start)
            .next_back()
            .map(|(&s, &(e, _))| (s, e));
        let inside = self.segments.range(start..end).map(|(&s, &(e, _))| (s, e));
        for (s, e) in before.into_iter().chain(inside) {
            let (s, e) = (s.max(start), e.min(end));
            if s >= e {
                continue;
            }
            match out.last_mut() {
                Some(last) if last.1 == s => last.1 = e,
                _ => out.push((s, e)),
            }
        }
        out
    }

    /// Watch count of the page at `addr` (tests).
    #[cfg(test)]
    fn count_at(&self, addr: u64) -> u32 {
        self.segments
            .range(..=addr)
            .next_back()
            .filter(|&(_, &(e, _))| e > addr)
            .map_or(0, |(_, &(_, c))| c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Pages 0..64 as a bitmap / count array: the naive models.
    const PAGES: u64 = 64;

    fn armed_bits(a: &Armed) -> Vec<bool> {
        let mut bits = vec![false; PAGES as usize];
        for w in a.ranges.windows(2) {
            assert!(
                w[0].1 < w[1].0,
                "ranges must be disjoint and non-adjacent: {:?}",
                a.ranges
            );
        }
        for &(s, e) in &a.ranges {
            assert!(s < e);
            for p in s..e {
                bits[p as usize] = true;
            }
        }
        bits
    }

    #[derive(Debug, Clone)]
    enum ArmedOp {
        Insert(u64, u64),
        Remove(u64, u64),
        Shift(u64, u64, u64),
    }

    fn range() -> impl Strategy<Value = (u64, u64)> {
        (0..PAGES, 1..16u64).prop_map(|(s, l)| (s, (s + l).min(PAGES)))
    }

    fn armed_op() -> impl Strategy<Value = ArmedOp> {
        prop_oneof![
            range().prop_map(|(s, e)| ArmedOp::Insert(s, e)),
            range().prop_map(|(s, e)| ArmedOp::Remove(s, e)),
            (0..PAGES - 8, 0..PAGES - 8, 1..8u64).prop_map(|(f, t, l)| ArmedOp::Shift(f, t, l)),
        ]
    }

    proptest! {
        #[test]
        fn armed_matches_a_bitmap(ops in proptest::collection::vec(armed_op(), 1..60)) {
            let mut armed = Armed::with_capacity(64);
            let mut model = vec![false; PAGES as usize];
            for op in ops {
                match op {
                    ArmedOp::Insert(s, e) => {
                        prop_assert!(armed.insert(s, e));
                        for p in s..e { model[p as usize] = true; }
                    }
                    ArmedOp::Remove(s, e) => {
                        prop_assert!(armed.remove(s, e));
                        for p in s..e { model[p as usize] = false; }
                    }
                    ArmedOp::Shift(f, t, l) => {
                        let any = (f..f + l).any(|p| model[p as usize]);
                        armed.shift(f, t, l);
                        if any {
                            for p in f..f + l { model[p as usize] = false; }
                            for p in t..t + l { model[p as usize] = true; }
                        }
                    }
                }
                prop_assert_eq!(armed_bits(&armed), model.clone());
                let (s, e) = (3, 9);
                prop_assert_eq!(armed.covers(s, e), (s..e).all(|p| model[p as usize]));
                prop_assert_eq!(armed.overlaps(s, e), (s..e).any(|p| model[p as usize]));
            }
        }

        #[test]
        fn watched_counts_match_an_array(ops in proptest::collection::vec((range(), any::<bool>()), 1..60)) {
            let mut w = Watched::default();
            let mut model = [0u32; PAGES as usize];
            for ((s, e), add) in ops {
                let all = (s..e).all(|p| model[p as usize] > 0);
                if add || !all {
                    w.add(s, e);
                    for p in s..e { model[p as usize] += 1; }
                } else {
                    w.sub(s, e);
                    for p in s..e { model[p as usize] -= 1; }
                }
                for p in 0..PAGES {
                    prop_assert_eq!(w.count_at(p), model[p as usize], "page {}", p);
                }
                prop_assert_eq!(w.covers(2, 7), (2..7).all(|p| model[p as usize] > 0));
                prop_assert_eq!(w.any_in(2, 7), (2..7).any(|p| model[p as usize] > 0));
                let pieces = w.pieces(0, PAGES);
                let mut from_pieces = [false; PAGES as usize];
                for (s, e) in pieces { for p in s..e { from_pieces[p as usize] = true; } }
                prop_assert_eq!(from_pieces.to_vec(), model.iter().map(|&c| c > 0).collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn armed_refuses_to_grow_past_its_reservation() {
        let mut a = Armed::with_capacity(2);
        let cap = a.ranges.capacity();
        for k in 0..cap as u64 {
            assert!(a.insert(10 * k, 10 * k + 5));
        }
        assert!(
            !a.insert(1000, 1001),
            "full: a new disjoint range is refused"
        );
        assert!(!a.remove(1, 2), "full: a split is refused");
        assert_eq!(a.ranges.capacity(), cap, "never reallocates");
        assert!(a.insert(5, 10), "merging needs no room");
    }

    #[test]
    #[should_panic(expected = "must pair with a watch")]
    fn unwatch_without_watch_names_the_rule() {
        let mut w = Watched::default();
        w.add(0, 4);
        w.sub(2, 6);
    }

    #[test]
    fn neighbours_within_the_gap() {
        let mut a = Armed::with_capacity(8);
        a.insert(0, 10);
        a.insert(40, 50);
        assert_eq!(a.neighbours(12, 20, 4), (Some(10), None));
        assert_eq!(a.neighbours(20, 38, 4), (None, Some(40)));
        assert_eq!(a.neighbours(20, 30, 4), (None, None));
    }
}
