//! Per-VMA locks for faults (Linux 6.4+: `lock_vma_under_rcu`,
//! `vma_start_read`, `vma_start_write`).
//!
//! A fault takes the VMA it lands in for read instead of the mmap lock, so
//! an mmap writer busy with other VMAs (an `munmap`, an `mprotect`, a
//! `madvise` that changes flags) does not hold it up. Each writer marks the
//! VMAs it will change before it changes them (`vma_start_write`: by
//! range, widened to the VMAs that touch the range, which a merge may
//! change too, or all of them) and waits for the faults already inside
//! them; the marks go when the writer's mmap write lock does (Linux bumps
//! `mm_lock_seq` in `mmap_write_unlock`). A fault that finds its VMA marked
//! falls back to the mmap lock for read (`lock_vma_under_rcu` failing),
//! which waits for the writer.
//!
//! Locking: the marks live in the address space's `state` (the VMA tree
//! beside them), so a fault checks its VMA and the marks in one hold; the
//! faults inside VMAs are listed under [`VmaReaders`]'s own mutex, a leaf
//! taken inside `state` or alone, so that a writer can wait for them with
//! `state` dropped (they need `state` to finish).

use parking_lot::{Condvar, Mutex};

/// The VMAs an mmap writer changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Touches {
    /// Every VMA (`fork`, exit, `clear_refs`, an `mmap` whose address is
    /// not chosen yet).
    All,
    /// The VMAs that overlap or touch any of these `[start, end)` ranges.
    Ranges(Vec<(u64, u64)>),
}

impl Touches {
    /// The VMAs that overlap or touch `[start, end)`.
    pub(crate) fn range(start: u64, end: u64) -> Touches {
        Touches::Ranges(vec![(start, end)])
    }

    /// Whether the VMA `[start, end)` is among them. A VMA that ends where
    /// a range starts, or starts where one ends, counts: a merge changes it.
    fn covers(&self, start: u64, end: u64) -> bool {
        match self {
            Touches::All => true,
            Touches::Ranges(ranges) => ranges.iter().any(|&(lo, hi)| start <= hi && end >= lo),
        }
    }
}

/// The current mmap writer's marks, kept in `state`.
#[derive(Debug, Default)]
pub(crate) struct WriteMarks(Option<Touches>);

impl WriteMarks {
    /// `vma_start_write` on what `touches` names.
    pub(crate) fn mark(&mut self, touches: Touches) {
        self.0 = Some(touches);
    }

    /// `mmap_write_unlock`: every VMA is free again.
    pub(crate) fn clear(&mut self) {
        self.0 = None;
    }

    /// Whether the VMA `[start, end)` is write-locked.
    pub(crate) fn locked(&self, start: u64, end: u64) -> bool {
        self.0.as_ref().is_some_and(|t| t.covers(start, end))
    }
}

/// The faults inside VMAs, each by its VMA's range.
#[derive(Debug, Default)]
pub(crate) struct VmaReaders {
    inside: Mutex<Vec<(u64, u64)>>,
    left: Condvar,
}

impl VmaReaders {
    /// `vma_start_read` of `[start, end)`, already checked unmarked under
    /// `state`: the fault counts until the result drops.
    pub(crate) fn enter(&self, start: u64, end: u64) -> VmaRead<'_> {
        self.inside.lock().push((start, end));
        VmaRead {
            readers: self,
            vma: (start, end),
        }
    }

    /// Waits until no fault is inside a VMA `touches` names. Called with
    /// `state` dropped, after the marks were set under it: no new fault
    /// enters a marked VMA, and those inside finish.
    pub(crate) fn wait_out(&self, touches: &Touches) {
        let mut inside = self.inside.lock();
        while inside.iter().any(|&(s, e)| touches.covers(s, e)) {
            self.left.wait(&mut inside);
        }
    }

    /// Whether any fault is inside a VMA `touches` names.
    pub(crate) fn any_inside(&self, touches: &Touches) -> bool {
        self.inside
            .lock()
            .iter()
            .any(|&(s, e)| touches.covers(s, e))
    }
}

/// A fault inside one VMA (`vma_end_read` on drop, also when it unwinds).
#[derive(Debug)]
pub(crate) struct VmaRead<'a> {
    readers: &'a VmaReaders,
    vma: (u64, u64),
}

impl Drop for VmaRead<'_> {
    fn drop(&mut self) {
        let mut inside = self.readers.inside.lock();
        if let Some(at) = inside.iter().position(|&v| v == self.vma) {
            inside.swap_remove(at);
        }
        drop(inside);
        self.readers.left.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::Touches;

    #[test]
    fn a_range_covers_the_vmas_it_overlaps_and_those_that_touch_it() {
        let t = Touches::range(0x4000, 0x8000);
        assert!(t.covers(0x5000, 0x6000), "inside");
        assert!(t.covers(0x3000, 0x5000), "overlapping the start");
        assert!(
            t.covers(0x1000, 0x4000),
            "ending at the start: a merge changes it"
        );
        assert!(
            t.covers(0x8000, 0x9000),
            "starting at the end: a merge changes it"
        );
        assert!(!t.covers(0x1000, 0x3000), "apart below");
        assert!(!t.covers(0x9000, 0xa000), "apart above");
        assert!(Touches::All.covers(0x1000, 0x2000));
    }
}
