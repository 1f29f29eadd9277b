//! The other dispatch entry points, and the `*_notify` helpers that pair a
//! primary page-table operation with its notification.
//!
//! Kernel counterpart: `mmu_notifier_release`, `mmu_notifier_clear_flush_young`,
//! `mmu_notifier_clear_young`, `mmu_notifier_test_young`,
//! `mmu_notifier_change_pte`, `mmu_notifier_invalidate_range` and the macros
//! `ptep_clear_flush_young_notify`, `pmdp_clear_flush_young_notify`,
//! `ptep_clear_young_notify`, `pmdp_clear_young_notify`,
//! `ptep_clear_flush_notify`, `pmdp_huge_clear_flush_notify`,
//! `pudp_huge_clear_flush_notify` and `set_pte_at_notify` (v6.5).
//!
//! The helpers take the primary operation as a closure, because the primary
//! page table belongs to the caller (the software MMU); they fix what Linux
//! fixes: the order (primary first, except `set_pte_at_notify`), the range
//! (the entry's size, aligned down), and that the secondary is always called.
//!
//! `change_pte` (and `set_pte_at_notify`) exist only as methods of the
//! [`Invalidation`] they must be nested in, so a call outside a start/end
//! pair does not compile; the address must lie in its range (a panic
//! naming the rule otherwise). `invalidate_range` and the `*_clear_flush_notify`
//! helpers are methods too, checked the same way, and also stay on the
//! address space ([`Mm::invalidate_range`] and the free functions below),
//! because the header allows a secondary TLB flush outside a pair.
//!
//! ```compile_fail
//! // change_pte needs the invalidation it is nested in:
//! let mm = mmun_core::Mm::new();
//! mm.change_pte(0x1000, 0xabc);
//! ```

use crate::ops::PteValue;
use crate::{Invalidation, Mm};

/// Size of a base page.
pub const PAGE_SIZE: u64 = 1 << 12;
/// Size of a PMD-mapped huge page.
pub const PMD_SIZE: u64 = 1 << 21;
/// Size of a PUD-mapped huge page.
pub const PUD_SIZE: u64 = 1 << 30;

impl Mm {
    /// `mmu_notifier_clear_flush_young`: whether any notifier saw an access
    /// in `[start, end)`, clearing and flushing it; every notifier is asked.
    #[inline]
    pub fn clear_flush_young(&self, start: u64, end: u64) -> bool {
        self.subscriptions()
            .is_some_and(|s| s.list_clear_young(self, start, end, true))
    }

    /// `mmu_notifier_clear_young`: as `clear_flush_young`, flush optional.
    #[inline]
    pub fn clear_young(&self, start: u64, end: u64) -> bool {
        self.subscriptions()
            .is_some_and(|s| s.list_clear_young(self, start, end, false))
    }

    /// `mmu_notifier_test_young`: whether a notifier saw an access to the
    /// page at `address`; stops at the first that did. Clears nothing.
    #[inline]
    pub fn test_young(&self, address: u64) -> bool {
        self.subscriptions()
            .is_some_and(|s| s.list_test_young(self, address))
    }

    /// `mmu_notifier_change_pte`, reached only through
    /// [`Invalidation::change_pte`]. Linux calls it inside a `Clear` or
    /// `Migrate` invalidation; another event records a warning.
    #[inline]
    pub(crate) fn change_pte(&self, address: u64, pte: PteValue) {
        if let Some(s) = self.subscriptions() {
            s.list_change_pte(self, address, pte);
        }
    }

    /// `mmu_notifier_invalidate_range`: flush secondary TLBs for
    /// `[start, end)` (v6.5; called under the page-table lock).
    #[inline]
    pub fn invalidate_range(&self, start: u64, end: u64) {
        if let Some(s) = self.subscriptions() {
            s.list_invalidate_range(self, start, end);
        }
    }
}

fn young_notify(mm: &Mm, address: u64, size: u64, primary: bool, flush: bool) -> bool {
    let start = address & !(size - 1);
    let secondary = if flush {
        mm.clear_flush_young(start, start + size)
    } else {
        mm.clear_young(start, start + size)
    };
    primary | secondary
}

/// `ptep_clear_flush_young_notify`: the primary test-and-clear-and-flush
/// (`primary`), then the notifiers over the page; the OR of both.
pub fn ptep_clear_flush_young_notify(
    mm: &Mm,
    address: u64,
    primary: impl FnOnce() -> bool,
) -> bool {
    let young = primary();
    young_notify(mm, address, PAGE_SIZE, young, true)
}

/// `pmdp_clear_flush_young_notify`: as the PTE form over the 2 MiB page.
pub fn pmdp_clear_flush_young_notify(
    mm: &Mm,
    address: u64,
    primary: impl FnOnce() -> bool,
) -> bool {
    let young = primary();
    young_notify(mm, address, PMD_SIZE, young, true)
}

/// `ptep_clear_young_notify`: primary test-and-clear, then `clear_young`.
pub fn ptep_clear_young_notify(mm: &Mm, address: u64, primary: impl FnOnce() -> bool) -> bool {
    let young = primary();
    young_notify(mm, address, PAGE_SIZE, young, false)
}

/// `pmdp_clear_young_notify`: as the PTE form over the 2 MiB page.
pub fn pmdp_clear_young_notify(mm: &Mm, address: u64, primary: impl FnOnce() -> bool) -> bool {
    let young = primary();
    young_notify(mm, address, PMD_SIZE, young, false)
}

fn clear_flush_notify<T>(mm: &Mm, address: u64, size: u64, primary: impl FnOnce() -> T) -> T {
    let old = primary();
    let start = address & !(size - 1);
    mm.invalidate_range(start, start + size);
    old
}

/// `ptep_clear_flush_notify`: clear and flush the primary PTE (`primary`,
/// returning the old entry), then flush secondary TLBs for the page.
pub fn ptep_clear_flush_notify<T>(mm: &Mm, address: u64, primary: impl FnOnce() -> T) -> T {
    clear_flush_notify(mm, address, PAGE_SIZE, primary)
}

/// `pmdp_huge_clear_flush_notify`: as the PTE form for a 2 MiB entry.
pub fn pmdp_huge_clear_flush_notify<T>(mm: &Mm, address: u64, primary: impl FnOnce() -> T) -> T {
    clear_flush_notify(mm, address, PMD_SIZE, primary)
}

/// `pudp_huge_clear_flush_notify`: as the PTE form for a 1 GiB entry.
pub fn pudp_huge_clear_flush_notify<T>(mm: &Mm, address: u64, primary: impl FnOnce() -> T) -> T {
    clear_flush_notify(mm, address, PUD_SIZE, primary)
}

impl Invalidation<'_> {
    /// Panics unless `[start, end)` lies inside this invalidation's range.
    #[track_caller]
    fn assert_inside(&self, what: &str, start: u64, end: u64) {
        let r = self.range();
        assert!(
            r.start() <= start && end <= r.end() && start < end,
            "{what} [{start:#x}, {end:#x}) outside the invalidation [{:#x}, {:#x}) it must be nested in",
            r.start(),
            r.end()
        );
    }

    /// `mmu_notifier_change_pte` inside this invalidation: the PTE at
    /// `address` now holds `pte`.
    ///
    /// # Panics
    ///
    /// If `address` is outside this invalidation's range.
    #[track_caller]
    pub fn change_pte(&self, address: u64, pte: PteValue) {
        self.assert_inside("change_pte at", address, address + 1);
        self.range().mm().change_pte(address, pte);
    }

    /// `set_pte_at_notify`: tell the notifiers first (`change_pte`), then
    /// set the primary PTE (`primary`).
    ///
    /// # Panics
    ///
    /// As [`Invalidation::change_pte`].
    #[track_caller]
    pub fn set_pte_at_notify(&self, address: u64, pte: PteValue, primary: impl FnOnce(PteValue)) {
        self.change_pte(address, pte);
        primary(pte);
    }

    /// `mmu_notifier_invalidate_range` inside this invalidation (a
    /// secondary TLB flush under the page-table lock).
    ///
    /// # Panics
    ///
    /// If `[start, end)` is not inside this invalidation's range.
    #[track_caller]
    pub fn invalidate_range(&self, start: u64, end: u64) {
        self.assert_inside("invalidate_range", start, end);
        self.range().mm().invalidate_range(start, end);
    }

    #[track_caller]
    fn clear_flush<T>(&self, address: u64, size: u64, primary: impl FnOnce() -> T) -> T {
        let start = address & !(size - 1);
        self.assert_inside("the flushed entry", start, start + size);
        clear_flush_notify(self.range().mm(), address, size, primary)
    }

    /// [`ptep_clear_flush_notify`] inside this invalidation.
    ///
    /// # Panics
    ///
    /// If the page is not inside this invalidation's range.
    #[track_caller]
    pub fn ptep_clear_flush_notify<T>(&self, address: u64, primary: impl FnOnce() -> T) -> T {
        self.clear_flush(address, PAGE_SIZE, primary)
    }

    /// [`pmdp_huge_clear_flush_notify`] inside this invalidation.
    ///
    /// # Panics
    ///
    /// If the 2 MiB entry is not inside this invalidation's range.
    #[track_caller]
    pub fn pmdp_huge_clear_flush_notify<T>(&self, address: u64, primary: impl FnOnce() -> T) -> T {
        self.clear_flush(address, PMD_SIZE, primary)
    }

    /// [`pudp_huge_clear_flush_notify`] inside this invalidation.
    ///
    /// # Panics
    ///
    /// If the 1 GiB entry is not inside this invalidation's range.
    #[track_caller]
    pub fn pudp_huge_clear_flush_notify<T>(&self, address: u64, primary: impl FnOnce() -> T) -> T {
        self.clear_flush(address, PUD_SIZE, primary)
    }
}
