//! The fsync family: writing back a file's dirty pages write-protects them
//! in every shared mapping of the file.
//!
//! Linux cleans each folio it writes back with `folio_mkclean`, which walks
//! the file's `VM_SHARED` mappings (`rmap_walk_file`, private ones are
//! skipped by `invalid_mkclean_vma`) and, in `page_vma_mkclean_one`,
//! starts a `PROTECTION_PAGE` invalidation over the folio's extent in each
//! mapping *before* looking at its page table — whether or not the mapping
//! is writable or the page is mapped. It runs in the task that asked for
//! the writeback: `fsync`, `fdatasync`, `msync(MS_SYNC)` (through
//! `vfs_fsync_range`) and `sync_file_range(SYNC_FILE_RANGE_WRITE)`;
//! `sync`/`syncfs` hand the work to the flusher threads and wait for it.
//! The flusher's own periodic writeback is a kernel thread's: invisible to
//! userspace by design.
//!
//! The hooks cannot know which pages are dirty, so each delivers one
//! `ProtectionPage` start before the call and its end after it over every
//! shared mapping of the file the call writes back (over-invalidation,
//! never a miss): the whole mapping for `fsync`, `fdatasync` and `msync`
//! (a filesystem's `->fsync` may write back more than the range asked),
//! the file range widened to 2 MiB (the largest page-cache folio on
//! x86_64) for `sync_file_range`, which writes back exactly its range, and
//! every shared file mapping for `sync` and `syncfs` (the filesystem a
//! mapping lives on is not reliably named by `/proc/self/maps`: btrfs
//! subvolumes show a device of their own in `stat`).
//!
//! `fsync`, `fdatasync`, `msync` and `sync_file_range` are replaced whole
//! from their entry (see `patch/sites.rs`): their multi-threaded path
//! issues the `syscall` with asynchronous cancellation enabled, and a hook
//! must not be cancelled between a start and its end. They lose their
//! being cancellation points, as `fallocate` does.

use std::ops::ControlFlow;

use mmun_core::Event;

use crate::dispatch::{Changes, around};
use crate::hooks::Args;
use crate::maps::{self, Vma};
use crate::record::Call;
use crate::sys::{self, Ret, page_down, page_up};

/// The largest page-cache folio Linux builds on x86_64 (a PMD).
const MAX_FOLIO: u64 = 2 << 20;

fn raw(nr: libc::c_long, a: Args) -> Ret {
    // SAFETY: the same call with the same arguments the application asked
    // libc to make; the hook only adds the notifications around it.
    unsafe { sys::syscall6(nr as usize, a) }
}

/// A mapping `folio_mkclean` visits: shared (`s` in `/proc/self/maps`,
/// `VM_MAYSHARE`, a superset of `VM_SHARED`) and backed by a file.
fn is_shared_file(v: &Vma) -> bool {
    v.perms[3] == b's' && v.inode != 0
}

/// The device and inode of an open file.
fn identity(fd: usize) -> Option<(u64, u64)> {
    // SAFETY: an all-zero stat is a valid value to be overwritten.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let ret = raw(libc::SYS_fstat, [fd, &raw mut st as usize, 0, 0, 0, 0]);
    (!sys::is_err(ret)).then_some((st.st_dev, st.st_ino))
}

/// `ProtectionPage` over the part of each shared mapping of `(dev, inode)`
/// that maps file bytes `[from, to)`.
fn push_file_range(changes: &mut Changes, dev: u64, inode: u64, from: u64, to: u64) {
    let _ = maps::for_each_vma(|v| {
        if is_shared_file(v) && v.dev == dev && v.inode == inode {
            let file_end = v.offset.saturating_add(v.end - v.start);
            let (lo, hi) = (from.max(v.offset), to.min(file_end));
            if lo < hi {
                let (start, end) = (v.start + (lo - v.offset), v.start + (hi - v.offset));
                changes.push(Event::ProtectionPage, start, end);
            }
        }
        ControlFlow::Continue(())
    });
}

/// Whether anyone listens: without a subscriber the hooks skip the
/// `fstat` and the `/proc/self/maps` walk (`around` would ignore them).
fn listened() -> bool {
    crate::process::subscribed().is_some()
}

/// Every shared mapping of the file `fd` is open on.
fn whole_file(fd: usize) -> Changes {
    let mut changes = Changes::none();
    if let Some((dev, inode)) = identity(fd).filter(|_| listened()) {
        push_file_range(&mut changes, dev, inode, 0, u64::MAX);
    }
    changes
}

/// Every shared file mapping of the process.
fn every_shared_file() -> Changes {
    let mut changes = Changes::none();
    if !listened() {
        return changes;
    }
    let _ = maps::for_each_vma(|v| {
        if is_shared_file(v) {
            changes.push(Event::ProtectionPage, v.start, v.end);
        }
        ControlFlow::Continue(())
    });
    changes
}

/// `fsync(fd)`: the file's shared mappings.
pub fn fsync(a: Args) -> Ret {
    let changes = whole_file(a[0]);
    around(Call::Fsync, &changes, || raw(libc::SYS_fsync, a))
}

/// `fdatasync(fd)`: as `fsync`.
pub fn fdatasync(a: Args) -> Ret {
    let changes = whole_file(a[0]);
    around(Call::Fdatasync, &changes, || raw(libc::SYS_fdatasync, a))
}

/// The files (dev, inode) shared-mapped in `[start, end)`; past the
/// capacity, `None` (the caller then takes every shared file mapping).
fn files_in(start: u64, end: u64) -> Option<([(u64, u64); 16], usize)> {
    let mut files = [(0, 0); 16];
    let mut n = 0;
    let mut overflow = false;
    let _ = maps::for_each_vma(|v| {
        if v.end > start && v.start < end && is_shared_file(v) {
            let id = (v.dev, v.inode);
            if !files[..n].contains(&id) {
                if n == files.len() {
                    overflow = true;
                    return ControlFlow::Break(());
                }
                files[n] = id;
                n += 1;
            }
        }
        ControlFlow::Continue(())
    });
    (!overflow).then_some((files, n))
}

/// `msync(addr, len, flags)`: only `MS_SYNC` writes back (`MS_ASYNC` is a
/// no-op since Linux 2.6.19, `MS_INVALIDATE` only checks for locked
/// pages); it writes back each shared file mapped in the range, which
/// cleans the pages in *every* shared mapping of that file.
pub fn msync(a: Args) -> Ret {
    let mut changes = Changes::none();
    if a[2] as i32 & libc::MS_SYNC != 0 && listened() {
        let (start, end) = (
            page_down(a[0] as u64),
            page_up((a[0] as u64).saturating_add(a[1] as u64)),
        );
        match files_in(start, end) {
            Some((files, n)) => {
                for &(dev, inode) in &files[..n] {
                    push_file_range(&mut changes, dev, inode, 0, u64::MAX);
                }
            }
            None => changes = every_shared_file(),
        }
    }
    around(Call::Msync, &changes, || raw(libc::SYS_msync, a))
}

/// `sync_file_range(fd, offset, nbytes, flags)`: `SYNC_FILE_RANGE_WRITE`
/// writes back `[offset, offset + nbytes)` (`nbytes` 0: to the end of the
/// file), folio by folio; the waits alone clean nothing.
pub fn sync_file_range(a: Args) -> Ret {
    let mut changes = Changes::none();
    let (offset, nbytes, flags) = (a[1] as u64, a[2] as u64, a[3] as u32);
    let writes = flags & libc::SYNC_FILE_RANGE_WRITE != 0 && listened();
    if let Some((dev, inode)) = identity(a[0]).filter(|_| writes) {
        let to = match nbytes {
            0 => u64::MAX,
            n => offset
                .saturating_add(n)
                .div_ceil(MAX_FOLIO)
                .saturating_mul(MAX_FOLIO),
        };
        let from = offset / MAX_FOLIO * MAX_FOLIO;
        push_file_range(&mut changes, dev, inode, from, to);
    }
    around(Call::SyncFileRange, &changes, || {
        raw(libc::SYS_sync_file_range, a)
    })
}

/// `syncfs(fd)`: every shared file mapping (see the module docs).
pub fn syncfs(a: Args) -> Ret {
    around(Call::Syncfs, &every_shared_file(), || {
        raw(libc::SYS_syncfs, a)
    })
}

/// `sync()`: every shared file mapping.
pub fn sync(a: Args) -> Ret {
    around(Call::Sync, &every_shared_file(), || raw(libc::SYS_sync, a))
}

/// Sets `errno` from a raw result and returns the libc-style value.
fn libc_result(ret: Ret) -> libc::c_int {
    if sys::is_err(ret) {
        // SAFETY: errno is this thread's.
        unsafe { *libc::__errno_location() = -ret as i32 };
        -1
    } else {
        ret as libc::c_int
    }
}

/// `fsync` with the libc signature (replaces libc's whole function).
pub extern "C" fn fsync_replacement(fd: libc::c_int) -> libc::c_int {
    libc_result(fsync([fd as usize, 0, 0, 0, 0, 0]))
}

/// `fdatasync` with the libc signature.
pub extern "C" fn fdatasync_replacement(fd: libc::c_int) -> libc::c_int {
    libc_result(fdatasync([fd as usize, 0, 0, 0, 0, 0]))
}

/// `msync` with the libc signature.
pub extern "C" fn msync_replacement(
    addr: *mut libc::c_void,
    len: libc::size_t,
    flags: libc::c_int,
) -> libc::c_int {
    libc_result(msync([addr as usize, len, flags as usize, 0, 0, 0]))
}

/// `sync_file_range` with the libc signature.
pub extern "C" fn sync_file_range_replacement(
    fd: libc::c_int,
    offset: libc::off64_t,
    nbytes: libc::off64_t,
    flags: libc::c_uint,
) -> libc::c_int {
    libc_result(sync_file_range([
        fd as usize,
        offset as usize,
        nbytes as usize,
        flags as usize,
        0,
        0,
    ]))
}
