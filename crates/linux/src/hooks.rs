//! What each interposed call changes, and the event Linux uses for it.
//!
//! Every hook has the system call's own signature (six raw argument
//! registers, the raw return value): the patched libc function jumps here
//! in place of its `syscall` instruction and handles `errno` itself on the
//! way out. Ranges are computed before the call from its arguments (and,
//! where the arguments do not say, from `/proc/self/maps` or `fstat`);
//! where the outcome is not known before the call (does `mremap` move?),
//! the range is the larger one: a secondary may be invalidated needlessly,
//! never missed.

use std::ops::ControlFlow;

use mmun_core::Event;

use crate::dispatch::{Changes, around};
use crate::maps;
use crate::net;
use crate::record::Call;
use crate::sys::{self, Ret, page_down, page_up};

/// The raw arguments of one system call.
pub type Args = [usize; 6];

fn raw(nr: libc::c_long, a: Args) -> Ret {
    // SAFETY: the same call with the same arguments the application asked
    // libc to make; the hook only adds the notifications around it.
    unsafe { sys::syscall6(nr as usize, a) }
}

/// A system call that unmaps `[start, end)` (or replaces the mapping
/// there), with the userfaultfd net's registration taken off the range
/// first (`uffd::disarm`) and put back if the call fails.
fn unmapping(nr: libc::c_long, a: Args, start: u64, end: u64) -> Ret {
    let disarmed = net::disarm_for_unmap(start, end);
    let ret = raw(nr, a);
    if sys::is_err(ret) {
        net::rearm_after_failure(&disarmed);
    }
    ret
}

/// `[addr, addr + len)` widened to pages.
fn pages(addr: usize, len: usize) -> (u64, u64) {
    let start = addr as u64;
    (page_down(start), page_up(start.saturating_add(len as u64)))
}

/// `munmap(addr, len)`: `Unmap` of the range.
pub fn munmap(a: Args) -> Ret {
    let (start, end) = pages(a[0], a[1]);
    around(
        Call::Munmap,
        &Changes::one(Event::Unmap, start, end),
        || unmapping(libc::SYS_munmap, a, start, end),
    )
}

/// `mmap(addr, len, prot, flags, fd, off)`: only `MAP_FIXED` (without
/// `MAP_FIXED_NOREPLACE`) replaces what was there: `Unmap` of the range,
/// then the userfaultfd net re-arms it (the new VMA is not registered).
pub fn mmap(a: Args) -> Ret {
    let flags = a[3] as libc::c_int;
    if flags & libc::MAP_FIXED == 0 || flags & libc::MAP_FIXED_NOREPLACE != 0 {
        return raw(libc::SYS_mmap, a);
    }
    let (start, end) = pages(a[0], a[1]);
    let ret = around(Call::Mmap, &Changes::one(Event::Unmap, start, end), || {
        unmapping(libc::SYS_mmap, a, start, end)
    });
    if !sys::is_err(ret) {
        net::rearm(start, end);
    }
    ret
}

/// `mremap(old, old_size, new_size, flags, new_addr)`: `Unmap` of what
/// leaves the old range (its tail on shrink; all of it on a move, a
/// possible move, or `MREMAP_DONTUNMAP`) and of the target of
/// `MREMAP_FIXED`.
pub fn mremap(a: Args) -> Ret {
    let (old, old_size, new_size, flags) = (a[0] as u64, a[1] as u64, a[2] as u64, a[3] as i32);
    let old_end = page_up(old.saturating_add(old_size));
    let mut changes = Changes::none();
    if flags & (libc::MREMAP_FIXED | libc::MREMAP_DONTUNMAP) != 0
        || (new_size > old_size && flags & libc::MREMAP_MAYMOVE != 0)
    {
        changes.push(Event::Unmap, page_down(old), old_end);
    } else if new_size < old_size {
        changes.push(Event::Unmap, page_up(old + new_size), old_end);
    }
    if flags & libc::MREMAP_FIXED != 0 {
        let (start, end) = pages(a[4], a[2]);
        changes.push(Event::Unmap, start, end);
    }
    around(Call::Mremap, &changes, || raw(libc::SYS_mremap, a))
}

/// The advice values that drop, free or replace pages (`Clear`, as
/// `zap_page_range_single`, `madvise_free`, reclaim and collapse use).
pub fn advice_clears(advice: i32) -> bool {
    const MADV_GUARD_INSTALL: i32 = 102;
    matches!(
        advice,
        libc::MADV_DONTNEED
            | libc::MADV_DONTNEED_LOCKED
            | libc::MADV_FREE
            | libc::MADV_REMOVE
            | libc::MADV_PAGEOUT
            | libc::MADV_COLLAPSE
            | libc::MADV_HWPOISON
            | libc::MADV_SOFT_OFFLINE
            | MADV_GUARD_INSTALL
    )
}

/// `madvise(addr, len, advice)`: `Clear` for advice that drops pages.
pub fn madvise(a: Args) -> Ret {
    if !advice_clears(a[2] as i32) {
        return raw(libc::SYS_madvise, a);
    }
    let (start, end) = pages(a[0], a[1]);
    around(
        Call::Madvise,
        &Changes::one(Event::Clear, start, end),
        || raw(libc::SYS_madvise, a),
    )
}

/// `mprotect(addr, len, prot)`: `ProtectionVma` of the range.
pub fn mprotect(a: Args) -> Ret {
    let (start, end) = pages(a[0], a[1]);
    let ret = around(
        Call::Mprotect,
        &Changes::one(Event::ProtectionVma, start, end),
        || raw(libc::SYS_mprotect, a),
    );
    if !sys::is_err(ret) {
        crate::patch::after_mprotect(start, end, a[2] as i32);
    }
    ret
}

/// `pkey_mprotect(addr, len, prot, pkey)`: as `mprotect`.
pub fn pkey_mprotect(a: Args) -> Ret {
    let (start, end) = pages(a[0], a[1]);
    let ret = around(
        Call::PkeyMprotect,
        &Changes::one(Event::ProtectionVma, start, end),
        || raw(libc::SYS_pkey_mprotect, a),
    );
    if !sys::is_err(ret) {
        crate::patch::after_mprotect(start, end, a[2] as i32);
    }
    ret
}

/// `brk(addr)` (also reached by `sbrk` and glibc's heap trimming):
/// `Unmap` of `[addr, old break)` when it shrinks. glibc's own code after
/// the system call stores the result in `__curbrk`, which stays coherent.
pub fn brk(a: Args) -> Ret {
    let new = a[0] as u64;
    // The kernel's current break (raw brk(0) never changes it).
    let old = raw(libc::SYS_brk, [0; 6]) as u64;
    let mut changes = Changes::none();
    if new != 0 && new < old {
        changes.push(Event::Unmap, page_up(new), page_up(old));
    }
    match changes.as_slice() {
        [shrink] => around(Call::Brk, &changes, || {
            // brk reports failure by returning the old break, not an errno.
            let disarmed = net::disarm_for_unmap(shrink.start, shrink.end);
            let ret = raw(libc::SYS_brk, a);
            if ret as u64 != new {
                net::rearm_after_failure(&disarmed);
            }
            ret
        }),
        _ => around(Call::Brk, &changes, || raw(libc::SYS_brk, a)),
    }
}

/// `shmat(id, addr, flags)`: with `SHM_REMAP` the segment replaces what was
/// at `addr`: `Unmap` of the segment's size there.
pub fn shmat(a: Args) -> Ret {
    let flags = a[2] as i32;
    if flags & libc::SHM_REMAP == 0 || a[1] == 0 {
        return raw(libc::SYS_shmat, a);
    }
    let size = segment_size(a[0] as i32).unwrap_or(0);
    let mut addr = a[1] as u64;
    if flags & libc::SHM_RND != 0 {
        addr = page_down(addr);
    }
    let changes = Changes::one(Event::Unmap, addr, page_up(addr + size));
    let end = page_up(addr + size);
    let ret = around(Call::Shmat, &changes, || {
        unmapping(libc::SYS_shmat, a, addr, end)
    });
    if !sys::is_err(ret) {
        net::rearm(addr, page_up(addr + size));
    }
    ret
}

fn segment_size(id: i32) -> Option<u64> {
    // SAFETY: an all-zero shmid_ds is a valid value to be overwritten.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    let ret = raw(
        libc::SYS_shmctl,
        [
            id as usize,
            libc::IPC_STAT as usize,
            &raw mut ds as usize,
            0,
            0,
            0,
        ],
    );
    (!sys::is_err(ret)).then_some(ds.shm_segsz as u64)
}

/// `shmdt(addr)`: `Unmap` of the segment's VMAs from `addr` on (found in
/// `/proc/self/maps`: the VMA starting there and the ones after it with the
/// same inode, as `ksys_shmdt` walks them).
pub fn shmdt(a: Args) -> Ret {
    let addr = a[0] as u64;
    let mut range: Option<(u64, u64, u64)> = None; // start, end, inode
    let _ = maps::for_each_vma(|v| {
        match range {
            None if v.start == addr && v.sysv => range = Some((v.start, v.end, v.inode)),
            Some((s, e, ino)) if v.start == e && v.inode == ino && v.sysv => {
                range = Some((s, v.end, ino));
            }
            Some(_) => return ControlFlow::Break(()),
            None => {}
        }
        ControlFlow::Continue(())
    });
    let changes = match range {
        Some((start, end, _)) => Changes::one(Event::Unmap, start, end),
        None => Changes::none(),
    };
    around(Call::Shmdt, &changes, || raw(libc::SYS_shmdt, a))
}

/// The device and inode of an open file, and its size.
fn file_identity(fd: i32) -> Option<(u64, u64, u64)> {
    // SAFETY: an all-zero stat is a valid value to be overwritten.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let ret = raw(
        libc::SYS_fstat,
        [fd as usize, &raw mut st as usize, 0, 0, 0, 0],
    );
    (!sys::is_err(ret)).then_some((st.st_dev, st.st_ino, st.st_size as u64))
}

/// The virtual ranges where this process maps bytes `[from, to)` of the
/// file `(dev, inode)`, each as `Clear` (`unmap_mapping_range` zaps them).
fn mapped_file_ranges(dev: u64, inode: u64, from: u64, to: u64) -> Changes {
    let mut changes = Changes::none();
    let _ = maps::for_each_vma(|v| {
        if v.inode == inode && v.dev == dev && inode != 0 {
            let file_end = v.offset + (v.end - v.start);
            let lo = from.max(v.offset);
            let hi = to.min(file_end);
            if lo < hi {
                changes.push(
                    Event::Clear,
                    v.start + (lo - v.offset),
                    v.start + (hi - v.offset),
                );
            }
        }
        ControlFlow::Continue(())
    });
    changes
}

/// `ftruncate(fd, length)`: a shrink zaps this process's mappings of the
/// file beyond the new end (`truncate_pagecache`), `Clear`.
pub fn ftruncate(a: Args) -> Ret {
    let changes = match file_identity(a[0] as i32) {
        Some((dev, ino, size)) if (a[1] as u64) < size => {
            mapped_file_ranges(dev, ino, page_up(a[1] as u64), u64::MAX)
        }
        _ => Changes::none(),
    };
    around(Call::Ftruncate, &changes, || raw(libc::SYS_ftruncate, a))
}

/// `fallocate(fd, mode, offset, len)`: punching a hole or zeroing a range
/// zaps the whole pages inside it; collapsing or inserting a range shifts
/// everything after `offset`. `Clear` of this process's mappings of them.
pub fn fallocate(a: Args) -> Ret {
    let (mode, offset, len) = (a[1] as i32, a[2] as u64, a[3] as u64);
    let hole = if mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) != 0 {
        Some((page_up(offset), page_down(offset.saturating_add(len))))
    } else if mode & (libc::FALLOC_FL_COLLAPSE_RANGE | libc::FALLOC_FL_INSERT_RANGE) != 0 {
        Some((page_down(offset), u64::MAX))
    } else {
        None
    };
    let changes = match (hole, file_identity(a[0] as i32)) {
        (Some((from, to)), Some((dev, ino, _))) => mapped_file_ranges(dev, ino, from, to),
        _ => Changes::none(),
    };
    around(Call::Fallocate, &changes, || raw(libc::SYS_fallocate, a))
}
