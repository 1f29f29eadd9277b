//! What `mmu_lock` protects: the shadow page table and the bookkeeping of
//! the invalidations in progress.
//!
//! Kernel counterpart: the SPTEs of the x86 MMU, and
//! `kvm->mmu_invalidate_in_progress` / `mmu_invalidate_range_start/end`
//! with `kvm_mmu_invalidate_begin` and `mmu_invalidate_retry_hva` (v6.5,
//! which keeps the range in host virtual addresses, as this table does).
//! The sequence count lives outside, in an atomic, because the fault path
//! reads it without the lock.
//!
//! Every method here is a short, non-sleeping critical section: that is
//! what lets the invalidation callbacks take the lock even for ranges that
//! must not block.

use std::collections::BTreeMap;

use mmun_softmmu::Translation;
use mmun_softmmu::layout::{PAGE_SIZE, align_down};

/// One shadow PTE.
#[derive(Debug, Clone, Copy)]
struct Spte {
    translation: Translation,
    /// The accessed bit the hardware sets on every use; aging clears it.
    accessed: bool,
    /// Which installation this is. Two lookups that see the same id saw
    /// one entry that nothing zapped or changed in between: the oracle
    /// check relies on it.
    id: u64,
}

/// A shadow PTE as one use saw it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Held {
    pub(super) translation: Translation,
    pub(super) id: u64,
}

/// The state behind `mmu_lock`.
#[derive(Debug, Default)]
pub(super) struct Table {
    /// Page-aligned address → entry (the identity memslot: gfn = hva).
    sptes: BTreeMap<u64, Spte>,
    /// `mmu_invalidate_in_progress`: starts without their end yet.
    in_progress: u64,
    /// `mmu_invalidate_range_start/end`: the union of the ranges of the
    /// invalidations in progress, reset by the first of them.
    range: (u64, u64),
    /// `release` has run: nothing may be installed any more.
    released: bool,
    next_id: u64,
}

impl Table {
    /// `kvm_mmu_invalidate_begin`: count the invalidation and widen the
    /// range faults must stay out of.
    pub(super) fn begin(&mut self, start: u64, end: u64) {
        self.in_progress += 1;
        self.range = if self.in_progress == 1 {
            (start, end)
        } else {
            (self.range.0.min(start), self.range.1.max(end))
        };
    }

    /// The `in_progress--` half of `kvm_mmu_invalidate_end`. Returns false
    /// for an end without a start (a core bug: registration excludes it).
    pub(super) fn finish(&mut self) -> bool {
        match self.in_progress.checked_sub(1) {
            Some(left) => {
                self.in_progress = left;
                true
            }
            None => false,
        }
    }

    /// The in-progress half of `mmu_invalidate_retry_hva`: an invalidation
    /// of `page` may have started after the walk and its primary update may
    /// not have happened yet, so what the walk saw may be about to change.
    pub(super) fn collides(&self, page: u64) -> bool {
        self.in_progress > 0 && self.range.0 <= page && page < self.range.1
    }

    /// Invalidations in progress.
    pub(super) fn in_progress(&self) -> u64 {
        self.in_progress
    }

    /// Whether `release` has run.
    pub(super) fn is_released(&self) -> bool {
        self.released
    }

    /// `release`: drops everything and refuses installs from now on.
    pub(super) fn release(&mut self) -> usize {
        self.released = true;
        let zapped = self.sptes.len();
        self.sptes.clear();
        zapped
    }

    /// Drops the entries of the pages overlapping `[start, end)`; returns
    /// how many there were.
    pub(super) fn zap(&mut self, start: u64, end: u64) -> usize {
        let from = align_down(start, PAGE_SIZE);
        if from >= end {
            return 0;
        }
        // Visits only the entries inside (a split and re-append would
        // rebuild the whole map for every one-page invalidation).
        self.sptes.extract_if(from..end, |_, _| true).count()
    }

    /// Installs a translation for `page` (a fresh id: any use that saw the
    /// old entry must not take it for this one).
    pub(super) fn install(&mut self, page: u64, translation: Translation, accessed: bool) {
        let id = self.fresh_id();
        let spte = Spte {
            translation,
            accessed,
            id,
        };
        self.sptes.insert(page, spte);
    }

    /// A use of `page`, as the hardware makes it: found only if present and
    /// writable when `write`; sets the accessed bit.
    pub(super) fn use_page(&mut self, page: u64, write: bool) -> Option<Held> {
        let spte = self.sptes.get_mut(&page)?;
        if write && !spte.translation.writable {
            return None;
        }
        spte.accessed = true;
        Some(Held {
            translation: spte.translation,
            id: spte.id,
        })
    }

    /// Whether the entry a use saw is still installed, untouched.
    pub(super) fn still_holds(&self, page: u64, held: Held) -> bool {
        self.sptes.get(&page).is_some_and(|s| s.id == held.id)
    }

    /// The translation installed for `page`, if any.
    pub(super) fn translation(&self, page: u64) -> Option<Translation> {
        self.sptes.get(&page).map(|s| s.translation)
    }

    /// Test-and-clear of the accessed bits of `[start, end)`.
    pub(super) fn age(&mut self, start: u64, end: u64) -> bool {
        let from = align_down(start, PAGE_SIZE);
        let mut young = false;
        for (_, spte) in self.sptes.range_mut(from..end) {
            young |= std::mem::replace(&mut spte.accessed, false);
        }
        young
    }

    /// The accessed bit of `page`.
    pub(super) fn is_young(&self, page: u64) -> bool {
        self.sptes.get(&page).is_some_and(|s| s.accessed)
    }

    /// Whether `page` has an entry.
    pub(super) fn is_present(&self, page: u64) -> bool {
        self.sptes.contains_key(&page)
    }

    /// Installed entries.
    pub(super) fn len(&self) -> usize {
        self.sptes.len()
    }

    fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(pfn: u64, writable: bool) -> Translation {
        Translation {
            pfn,
            serial: pfn * 10,
            writable,
        }
    }

    #[test]
    fn the_range_is_reset_by_the_first_start_and_widened_by_nested_ones() {
        let mut t = Table::default();
        t.begin(0x5000, 0x6000);
        assert!(t.collides(0x5000) && !t.collides(0x6000) && !t.collides(0x4000));
        t.begin(0x1000, 0x2000);
        assert!(t.collides(0x1000) && t.collides(0x5000));
        assert!(t.finish() && t.finish());
        assert!(!t.collides(0x1000), "nothing in progress, nothing collides");
        t.begin(0x9000, 0xa000);
        assert!(!t.collides(0x1000), "the first start resets the range");
        assert!(t.finish());
        assert!(!t.finish(), "an end without a start is refused");
    }

    #[test]
    fn zap_takes_exactly_the_overlapping_pages() {
        let mut t = Table::default();
        for page in [0x1000, 0x2000, 0x3000, 0x4000] {
            t.install(page, frame(page >> 12, true), false);
        }
        assert_eq!(t.zap(0x2800, 0x4000), 2);
        assert!(t.is_present(0x1000) && t.is_present(0x4000));
        assert!(!t.is_present(0x2000) && !t.is_present(0x3000));
        assert_eq!(t.zap(0, u64::MAX), 2);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn uses_set_the_accessed_bit_and_aging_clears_it() {
        let mut t = Table::default();
        t.install(0x1000, frame(1, false), false);
        assert!(!t.age(0x1000, 0x2000));
        assert!(t.use_page(0x1000, true).is_none(), "read-only entry");
        assert!(!t.is_young(0x1000), "a refused write sets nothing");
        let held = t.use_page(0x1000, false).unwrap();
        assert!(t.is_young(0x1000));
        assert!(t.age(0x1000, 0x1001), "young, then cleared");
        assert!(!t.age(0, u64::MAX));
        assert!(t.still_holds(0x1000, held));
        t.install(0x1000, frame(2, false), false);
        assert!(!t.still_holds(0x1000, held), "a new install is a new entry");
    }
}
