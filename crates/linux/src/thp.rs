//! Huge-page blocks at the edges of a change.
//!
//! When a call splits a VMA at an address that is not 2 MiB aligned and
//! the 2 MiB block around it lies inside that VMA (`munmap`, `mprotect`,
//! `mremap` and flag-changing `madvise` of part of a mapping), Linux first
//! splits any huge PMD there (`vma_adjust_trans_huge` →
//! `split_huge_pmd_address` → `__split_huge_pmd`), and that invalidates the
//! *whole block* with `MMU_NOTIFY_CLEAR` — even when the PMD is a plain
//! page table and nothing is huge (the range starts before the PMD is
//! looked at). `mmun trace --verify-with-kernel` showed it on every
//! partial `munmap` of glibc's mmap'd malloc chunks (python3, a C program
//! freeing 10 MB blocks). So a hook adds a `Clear` change over each such
//! block, before the call, as the kernel does.
//!
//! The VMA around an edge comes from the `PROCMAP_QUERY` ioctl on
//! `/proc/self/maps` (Linux 6.11+): one ioctl per unaligned edge, no text,
//! no allocation. Without it (older kernels) nothing is added.

use crate::proc_fd::ProcFd;

use linux_raw_sys::general::procmap_query;

/// 2 MiB: the PMD size on x86_64.
pub const HUGE: u64 = 2 << 20;

/// `PROCMAP_QUERY` = `_IOWR('f', 17, struct procmap_query)`.
const PROCMAP_QUERY: libc::c_ulong = (3 << 30)
    | ((size_of::<procmap_query>() as libc::c_ulong) << 16)
    | ((b'f' as libc::c_ulong) << 8)
    | 17;
const _: () = assert!(size_of::<procmap_query>() == 104);

/// `/proc/self/maps`, opened on first use.
static MAPS: ProcFd = ProcFd::new(c"/proc/self/maps");

/// In a fork child: the inherited fd reads the parent's file.
pub fn reset_in_child() {
    MAPS.reset_in_child();
}

/// The VMA containing `addr`, as `[start, end)`.
fn vma_at(addr: u64) -> Option<(u64, u64)> {
    let fd = MAPS.get()?;
    let mut q = procmap_query {
        size: size_of::<procmap_query>() as u64,
        query_flags: 0, // the VMA covering `query_addr` exactly
        query_addr: addr,
        vma_start: 0,
        vma_end: 0,
        vma_flags: 0,
        vma_page_size: 0,
        vma_offset: 0,
        inode: 0,
        dev_major: 0,
        dev_minor: 0,
        vma_name_size: 0,
        build_id_size: 0,
        vma_name_addr: 0,
        build_id_addr: 0,
    };
    // SAFETY: PROCMAP_QUERY reads and writes one `procmap_query` on our
    // stack; no name or build-id buffer is passed (sizes 0).
    let rc = unsafe { libc::ioctl(fd, PROCMAP_QUERY, &mut q) };
    (rc == 0).then_some((q.vma_start, q.vma_end))
}

/// The 2 MiB block the kernel invalidates when it splits a VMA at `edge`:
/// `edge` unaligned, strictly inside a VMA, and the block inside that VMA.
pub fn split_block(edge: u64) -> Option<(u64, u64)> {
    if edge.is_multiple_of(HUGE) {
        return None;
    }
    let block = edge & !(HUGE - 1);
    let (start, end) = vma_at(edge)?;
    (start < edge && start <= block && block + HUGE <= end).then_some((block, block + HUGE))
}

/// The blocks split at the two edges of `[start, end)` (at most two; one
/// if both edges fall in the same block).
pub fn split_blocks(start: u64, end: u64) -> [Option<(u64, u64)>; 2] {
    let first = split_block(start);
    let second = if end > 0 { split_block(end) } else { None };
    if second.is_some() && second == first {
        return [first, None];
    }
    [first, second]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ioctl_number_is_iowr_f_17() {
        assert_eq!(PROCMAP_QUERY, 0xC068_6611);
    }

    #[test]
    fn blocks_inside_the_vma_are_reported_and_others_not() {
        let len = 4 * HUGE as usize;
        // SAFETY: a fresh anonymous mapping, ours.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        } as u64;
        if vma_at(raw).is_none() {
            eprintln!(
                "blocks_inside_the_vma_are_reported_and_others_not: skipped: no PROCMAP_QUERY (Linux < 6.11)"
            );
            // SAFETY: ours.
            unsafe { libc::munmap(raw as *mut _, len) };
            return;
        }
        let block = (raw + HUGE - 1) & !(HUGE - 1); // the first whole block
        assert_eq!(split_block(block + 0x3000), Some((block, block + HUGE)));
        assert_eq!(split_block(block), None, "aligned: no split of a PMD");
        assert_eq!(
            split_blocks(block + 0x1000, block + HUGE + 0x1000),
            [
                Some((block, block + HUGE)),
                Some((block + HUGE, block + 2 * HUGE))
            ]
        );
        assert_eq!(
            split_blocks(block + 0x1000, block + 0x2000),
            [Some((block, block + HUGE)), None]
        );
        if !raw.is_multiple_of(HUGE) {
            // The block around the mapping's first page starts before it.
            assert_eq!(split_block(raw + 0x1000), None);
        }
        // SAFETY: ours.
        unsafe { libc::munmap(raw as *mut _, len) };
        assert_eq!(split_block(block + 0x3000), None, "unmapped: no VMA");
    }
}
