//! Whether a private mapping holds anonymous pages — what decides if fork
//! write-protects a *read-only* private VMA (`copy_page_range` copies, and
//! notifies, only VMAs with an `anon_vma`): a RELRO region or memory
//! written before `mprotect(PROT_READ)` is; a never-written read-only
//! mapping is not.
//!
//! From the `PAGEMAP_SCAN` ioctl on `/proc/self/pagemap` (Linux 6.7+,
//! unprivileged): one ioctl, stops at the first match, no allocation.
//! Without it (older kernels) the answer is "yes": over-invalidate, never
//! miss.

use crate::proc_fd::ProcFd;

use linux_raw_sys::general::{
    PAGE_IS_FILE, PAGE_IS_PFNZERO, PAGE_IS_PRESENT, PAGE_IS_SWAPPED, page_region, pm_scan_arg,
};

/// `PAGEMAP_SCAN` = `_IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: libc::c_ulong = (3 << 30)
    | ((size_of::<pm_scan_arg>() as libc::c_ulong) << 16)
    | ((b'f' as libc::c_ulong) << 8)
    | 16;
const _: () = assert!(size_of::<pm_scan_arg>() == 96);

/// `/proc/self/pagemap`, opened on first use.
static PAGEMAP: ProcFd = ProcFd::new(c"/proc/self/pagemap");

/// In a fork child: the inherited fd reads the parent's file.
pub fn reset_in_child() {
    PAGEMAP.reset_in_child();
}

/// Whether `[start, end)` holds an anonymous page (present or swapped, not
/// the zero page, not page cache). `true` when the kernel cannot say.
pub fn has_anon_pages(start: u64, end: u64) -> bool {
    let Some(fd) = PAGEMAP.get() else {
        return true;
    };
    let mut region = page_region {
        start: 0,
        end: 0,
        categories: 0,
    };
    let not = u64::from(PAGE_IS_FILE | PAGE_IS_PFNZERO);
    let mut arg = pm_scan_arg {
        size: size_of::<pm_scan_arg>() as u64,
        flags: 0,
        start,
        end,
        walk_end: 0,
        vec: (&raw mut region) as u64,
        vec_len: 1,
        max_pages: 1,
        category_inverted: not,
        category_mask: not,
        category_anyof_mask: u64::from(PAGE_IS_PRESENT | PAGE_IS_SWAPPED),
        return_mask: u64::from(PAGE_IS_PRESENT | PAGE_IS_SWAPPED),
    };
    // SAFETY: PAGEMAP_SCAN reads `arg` and writes at most one region into
    // `region`; both on our stack for the call.
    let found = unsafe { libc::ioctl(fd, PAGEMAP_SCAN, &mut arg) };
    found != 0 // > 0: a match; < 0: cannot tell
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_pages_count_and_untouched_or_read_ones_do_not() {
        const PAGE: usize = 4096;
        // SAFETY: fresh anonymous mappings, ours.
        let map = || unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4 * PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            ) as u64
        };
        let (untouched, read, written) = (map(), map(), map());
        // SAFETY: reads and writes of our own mappings.
        unsafe {
            std::ptr::read_volatile(read as *const u8);
            std::ptr::write_volatile((written + PAGE as u64) as *mut u8, 1);
        }
        let len = 4 * PAGE as u64;
        assert!(!has_anon_pages(untouched, untouched + len));
        assert!(
            !has_anon_pages(read, read + len),
            "the zero page is not anonymous memory"
        );
        assert!(has_anon_pages(written, written + len));
        for a in [untouched, read, written] {
            // SAFETY: ours.
            unsafe { libc::munmap(a as *mut _, 4 * PAGE) };
        }
    }
}
