//! The `*_notify` helpers that pair a primary page-table operation with its
//! notification, and the page sizes they work in.
//!
//! Kernel counterpart: the macros `ptep_clear_flush_young_notify`,
//! `pmdp_clear_flush_young_notify`, `ptep_clear_young_notify`,
//! `pmdp_clear_young_notify`, `ptep_clear_flush_notify`,
//! `pmdp_huge_clear_flush_notify`, `pudp_huge_clear_flush_notify` and
//! `set_pte_at_notify` (v6.5). The other dispatch entry points
//! (`mmu_notifier_clear_flush_young`, `mmu_notifier_clear_young`,
//! `mmu_notifier_test_young`, `mmu_notifier_invalidate_range`) are methods
//! of [`Mm`]; `mmu_notifier_change_pte` and the nested forms are methods of
//! [`Invalidation`](crate::Invalidation); `mmu_notifier_release` is
//! [`Mm::exit`].
//!
//! The helpers take the primary operation as a closure, because the primary
//! page table belongs to the caller (the software MMU); they fix what Linux
//! fixes: the order (primary first, except `set_pte_at_notify`), the range
//! (the entry's size, aligned down), and that the secondary is always called.
//!
//! `change_pte` (and `set_pte_at_notify`) exist only as methods of the
//! [`Invalidation`](crate::Invalidation) they must be nested in, so a call outside a start/end
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

use crate::Mm;

/// Size of a base page.
pub const PAGE_SIZE: u64 = 1 << 12;
/// Size of a PMD-mapped huge page.
pub const PMD_SIZE: u64 = 1 << 21;
/// Size of a PUD-mapped huge page.
pub const PUD_SIZE: u64 = 1 << 30;

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

/// Runs `primary`, then flushes secondary TLBs for the `size` entry at
/// `address` (shared with the nested forms on `Invalidation`).
pub(crate) fn clear_flush_notify<T>(
    mm: &Mm,
    address: u64,
    size: u64,
    primary: impl FnOnce() -> T,
) -> T {
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
