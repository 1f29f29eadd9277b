//! The x86-64 4-level paging geometry the software MMU uses.

/// The base page (4 KiB), the 2 MiB a PMD entry maps and the 1 GiB a PUD
/// entry maps: defined once, in `mmun-core`, whose notifiers report them.
pub use mmun_core::notify::{PAGE_SIZE, PMD_SIZE, PUD_SIZE};

/// log2 of the base page size.
pub const PAGE_SHIFT: u32 = PAGE_SIZE.trailing_zeros();
/// A PGD entry maps 512 GiB.
pub const PGDIR_SIZE: u64 = 1 << 39;
/// Entries per table at every level.
pub const ENTRIES: usize = 512;
/// The end of the user address space (47 bits), exclusive.
pub const TASK_SIZE: u64 = 1 << 47;
/// Pages in a PMD-sized huge page.
pub const HPAGE_PMD_NR: u64 = PMD_SIZE / PAGE_SIZE;

/// Rounds down to a multiple of `size` (a power of two).
#[inline]
pub fn align_down(addr: u64, size: u64) -> u64 {
    addr & !(size - 1)
}

/// Rounds up to a multiple of `size` (a power of two); `None` on overflow.
#[inline]
pub fn align_up(addr: u64, size: u64) -> Option<u64> {
    addr.checked_add(size - 1).map(|a| a & !(size - 1))
}

/// Whether `addr` is a multiple of `size` (a power of two).
#[inline]
pub fn is_aligned(addr: u64, size: u64) -> bool {
    addr & (size - 1) == 0
}

/// The end of the `size`-aligned block containing `addr`, clipped to `end`
/// (the kernel's `p?d_addr_end`).
#[inline]
pub fn block_end(addr: u64, end: u64, size: u64) -> u64 {
    let boundary = align_down(addr, size).wrapping_add(size);
    if boundary.wrapping_sub(1) < end.wrapping_sub(1) {
        boundary
    } else {
        end
    }
}

/// Index into a PGD, PUD, PMD or PTE table.
#[inline]
pub fn pgd_index(addr: u64) -> usize {
    ((addr >> 39) & 511) as usize
}

/// Index into a PUD table.
#[inline]
pub fn pud_index(addr: u64) -> usize {
    ((addr >> 30) & 511) as usize
}

/// Index into a PMD table.
#[inline]
pub fn pmd_index(addr: u64) -> usize {
    ((addr >> 21) & 511) as usize
}

/// Index into a PTE table.
#[inline]
pub fn pte_index(addr: u64) -> usize {
    ((addr >> 12) & 511) as usize
}
