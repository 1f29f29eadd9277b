//! Reading and writing bytes through an address space, as CPU loads and
//! stores do: each page is faulted exactly as [`AddressSpace::access`]
//! faults it, then the bytes move between the caller and the frame mapped
//! there, with the entry's lock held (the PTE table's, or for a huge entry
//! the PMD lock), so no zap or invalidation can come between the walk that
//! found the frame and the copy.
//!
//! Kernel counterpart: a user-space access (the MMU walk, and
//! `handle_mm_fault` when it fails), or `access_remote_vm` without its
//! GUP pin.

use mmun_core::HeldMmLock;

use crate::AddressSpace;
use crate::address_space::Ctx;
use crate::error::{Errno, SysResult};
use crate::fault::{handle_fault, translate};
use crate::layout::{PAGE_SIZE, align_down};

impl AddressSpace {
    /// CPU stores of `bytes` from `addr`, page by page: a write fault
    /// wherever the page is not mapped writable (copy-on-write, a device
    /// page migrated back, ...), then the store.
    ///
    /// # Errors
    ///
    /// `EFAULT` at the first page the CPU may not write (the pages before
    /// it are written: a partial store, as a `SIGSEGV` half-way would
    /// leave them); `ENOMEM` if a fault finds no page.
    pub fn write_bytes(&self, addr: u64, bytes: &[u8]) -> SysResult {
        for (at, range) in page_chunks(addr, bytes.len())? {
            let chunk = &bytes[range];
            self.read_op(|ctx| {
                let mem = ctx.mem;
                fault_in_then(ctx, at, true, |pfn| {
                    let written = mem.write(pfn, page_offset(at), chunk);
                    debug_assert!(written, "a CPU store reached a free or zero frame");
                })
            })?;
        }
        Ok(())
    }

    /// CPU loads of `buf.len()` bytes from `addr`, page by page: a read
    /// fault wherever the page is not mapped, then the load.
    ///
    /// # Errors
    ///
    /// As [`AddressSpace::write_bytes`], for reading (`buf` is filled up
    /// to the page that failed).
    pub fn read_bytes(&self, addr: u64, buf: &mut [u8]) -> SysResult {
        for (at, range) in page_chunks(addr, buf.len())? {
            let chunk = &mut buf[range];
            self.read_op(|ctx| {
                let mem = ctx.mem;
                fault_in_then(ctx, at, false, |pfn| mem.read(pfn, page_offset(at), chunk))
            })?;
        }
        Ok(())
    }
}

/// Faults `addr` in, then runs `copy` on the frame the access reaches with
/// the entry's lock held: a zap beside this (which works under the PTE
/// table's lock alone) cannot free the frame between the walk and the copy.
/// If a zap came between the fault and the walk, the access faults again,
/// as the CPU retries it.
fn fault_in_then<L: HeldMmLock>(
    ctx: &mut Ctx<'_, L>,
    addr: u64,
    write: bool,
    copy: impl FnOnce(u64),
) -> SysResult {
    let mut copy = Some(copy);
    for _ in 0..RETRIES {
        handle_fault(ctx, addr, write)?;
        let serves = |reached: Option<(u64, bool)>| match reached {
            Some((pfn, writable)) if writable || !write => Some(pfn),
            _ => None,
        };
        // A PTE table: under its lock; a huge entry: under the PMD lock.
        let copied = match ctx.st.pt.pte_mut(addr) {
            Some(slot) => {
                let pte = *slot;
                let reached =
                    (pte.is_present() && !pte.is_protnone()).then(|| (pte.pfn(), pte.is_write()));
                serves(reached).map(|pfn| copy.take().map(|f| f(pfn)))
            }
            None => serves(translate(&ctx.st.pt, addr)).map(|pfn| copy.take().map(|f| f(pfn))),
        };
        if copied.is_some() {
            return Ok(());
        }
    }
    // A fault that succeeds without the entry ever serving the access is
    // a fault-path bug, reported as the access failing.
    Err(Errno::Fault)
}

/// Faults of one access before it is reported as failing: each retry
/// needs a zap of the page to land between a fault and its walk.
const RETRIES: usize = 64;

fn page_offset(addr: u64) -> usize {
    (addr - align_down(addr, PAGE_SIZE)) as usize
}

/// `[addr, addr + len)` cut at page boundaries: each piece's address and
/// its range within the caller's buffer.
fn page_chunks(
    addr: u64,
    len: usize,
) -> SysResult<impl Iterator<Item = (u64, std::ops::Range<usize>)>> {
    let end = addr.checked_add(len as u64).ok_or(Errno::Fault)?;
    let mut at = addr;
    Ok(std::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        let next = (align_down(at, PAGE_SIZE) + PAGE_SIZE).min(end);
        let range = (at - addr) as usize..(next - addr) as usize;
        let piece = (at, range);
        at = next;
        Some(piece)
    }))
}
