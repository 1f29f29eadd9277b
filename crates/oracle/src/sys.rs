//! Every `unsafe` operation of the crate, behind a small safe surface.
//!
//! The safety argument for all memory operations is the same: they only ever
//! name addresses inside the script window `[WINDOW_BASE, WINDOW_BASE +
//! WINDOW_SIZE)`, and while a [`Window`] exists no Rust object lives there.
//! [`Window::claim`] establishes that: it serialises runs within the process
//! and checks `/proc/self/maps` that nothing is mapped in the window, and the
//! window is far from the heap, the stacks and the top-down mmap area, so
//! nothing else in the process lands there by accident. Mapping, unmapping,
//! discarding or writing window memory therefore cannot invalidate memory
//! that Rust code uses, and no Rust reference to window memory is ever made:
//! pointers into the window are only handed to the kernel.

#![allow(unsafe_code)]

use std::ffi::c_void;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr;
use std::sync::{Mutex, MutexGuard};

use mmun_script::{WINDOW_BASE, WINDOW_SIZE};
use rustix::io::Errno;
use rustix::mm::{MapFlags, MprotectFlags, MremapFlags, ProtFlags};

/// `KVM_CREATE_VM`: `_IO(KVMIO, 0x01)`.
const KVM_CREATE_VM: libc::Ioctl = 0xAE01;

/// Serialises runs within this process: one owner of the window at a time.
static WINDOW_OWNER: Mutex<()> = Mutex::new(());

/// A range of the window, checked on construction to lie inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WinRange {
    addr: usize,
    len: usize,
}

impl WinRange {
    /// `[WINDOW_BASE + off, WINDOW_BASE + off + len)`, or `None` if that
    /// leaves the window. Since the window's end is page-aligned, the kernel
    /// rounding `len` up to whole pages never leaves it either.
    pub(crate) fn new(off: u64, len: u64) -> Option<WinRange> {
        let end = off.checked_add(len)?;
        if end > WINDOW_SIZE {
            return None;
        }
        Some(WinRange {
            addr: usize::try_from(WINDOW_BASE + off).ok()?,
            len: usize::try_from(len).ok()?,
        })
    }

    fn ptr(self) -> *mut c_void {
        ptr::without_provenance_mut(self.addr)
    }
}

/// Whether the kernel may move a mapping on `mremap`, and where to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Remap {
    /// Resize in place only.
    InPlace,
    /// `MREMAP_MAYMOVE`, possibly with `MREMAP_DONTUNMAP`.
    MayMove { dont_unmap: bool },
    /// `MREMAP_FIXED | MREMAP_MAYMOVE` to this range (of the new length).
    Fixed { to: WinRange, dont_unmap: bool },
}

/// Exclusive use of the script window for one run. On drop it unmaps the
/// window and whatever the run's `mremap`s left outside it.
#[derive(Debug)]
pub(crate) struct Window {
    _owner: MutexGuard<'static, ()>,
    /// Mappings the kernel placed (partly) outside the window for us.
    strays: Vec<(usize, usize)>,
}

/// Why the window could not be claimed.
#[derive(Debug)]
pub(crate) enum ClaimError {
    /// Reading `/proc/self/maps` failed.
    Maps(io::Error),
    /// Something is mapped in the window: this `/proc/self/maps` line.
    Busy(String),
}

impl Window {
    /// Takes the window: waits for any other run in this process, then
    /// checks that nothing is mapped in it.
    pub(crate) fn claim() -> Result<Window, ClaimError> {
        let owner = WINDOW_OWNER
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let maps = std::fs::read_to_string("/proc/self/maps").map_err(ClaimError::Maps)?;
        if let Some(line) = maps.lines().find(|line| overlaps_window(line)) {
            return Err(ClaimError::Busy(line.to_string()));
        }
        Ok(Window {
            _owner: owner,
            strays: Vec::new(),
        })
    }

    /// `mmap` at exactly `at`; `fd` backs it, anonymous if `None`. `flags`
    /// must contain `MAP_FIXED` or `MAP_FIXED_NOREPLACE`.
    pub(crate) fn mmap(
        &mut self,
        at: WinRange,
        prot: ProtFlags,
        flags: MapFlags,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<(), MmapError> {
        assert!(flags.intersects(MapFlags::FIXED | MapFlags::FIXED_NOREPLACE));
        // SAFETY: `at` lies inside the window, where no Rust object lives
        // (module docs), so even a MAP_FIXED mapping replaces nothing Rust
        // code uses; the new memory is only ever accessed by the kernel.
        let got = unsafe {
            match fd {
                Some(fd) => rustix::mm::mmap(at.ptr(), at.len, prot, flags, fd, 0),
                None => rustix::mm::mmap_anonymous(at.ptr(), at.len, prot, flags),
            }
        }
        .map_err(MmapError::Errno)?;
        if got.addr() != at.addr {
            // Only kernels before 4.17 ignore MAP_FIXED_NOREPLACE; undo the
            // misplaced mapping, which the kernel chose from free space.
            // SAFETY: `got` is the mapping just created for us; nothing
            // else refers to it.
            let _ = unsafe { rustix::mm::munmap(got, at.len) };
            return Err(MmapError::Misplaced(got.addr()));
        }
        Ok(())
    }

    /// `munmap`.
    pub(crate) fn munmap(&mut self, range: WinRange) -> Result<(), Errno> {
        // SAFETY: window memory only (module docs).
        unsafe { rustix::mm::munmap(range.ptr(), range.len) }
    }

    /// `mprotect`.
    pub(crate) fn mprotect(&mut self, range: WinRange, prot: MprotectFlags) -> Result<(), Errno> {
        // SAFETY: window memory only (module docs); no Rust code reads or
        // writes it, so a protection change cannot make Rust code fault.
        unsafe { rustix::mm::mprotect(range.ptr(), range.len, prot) }
    }

    /// `madvise` with a raw `MADV_*` value (rustix's `Advice` cannot name
    /// every value scripts use, e.g. `MADV_COLLAPSE`).
    pub(crate) fn madvise(&mut self, range: WinRange, advice: i32) -> Result<(), Errno> {
        // SAFETY: window memory only (module docs), so advice that discards
        // contents (DONTNEED, FREE, REMOVE, ...) loses nothing Rust owns.
        let rc = unsafe { libc::madvise(range.ptr(), range.len, advice) };
        if rc == 0 { Ok(()) } else { Err(last_errno()) }
    }

    /// `mlock`.
    pub(crate) fn mlock(&mut self, range: WinRange) -> Result<(), Errno> {
        // SAFETY: window memory only (module docs); locking faults pages in
        // but changes no contents.
        unsafe { rustix::mm::mlock(range.ptr(), range.len) }
    }

    /// `munlock`.
    pub(crate) fn munlock(&mut self, range: WinRange) -> Result<(), Errno> {
        // SAFETY: window memory only (module docs).
        unsafe { rustix::mm::munlock(range.ptr(), range.len) }
    }

    /// `mremap` of `old` to `new_len` bytes; the new absolute address.
    pub(crate) fn mremap(
        &mut self,
        old: WinRange,
        new_len: usize,
        how: Remap,
    ) -> Result<usize, Errno> {
        // SAFETY: the old range is window memory (module docs). Without
        // MREMAP_FIXED the kernel grows in place only into free space, or
        // moves to free space it chooses, so it replaces nothing; with it,
        // the destination is a window range.
        let got = unsafe {
            match how {
                Remap::InPlace => {
                    rustix::mm::mremap(old.ptr(), old.len, new_len, MremapFlags::empty())
                }
                Remap::MayMove { dont_unmap } => {
                    rustix::mm::mremap(old.ptr(), old.len, new_len, may_move(dont_unmap))
                }
                Remap::Fixed { to, dont_unmap } => rustix::mm::mremap_fixed(
                    old.ptr(),
                    old.len,
                    new_len,
                    may_move(dont_unmap),
                    to.ptr(),
                ),
            }
        }?
        .addr();
        // Remember any part of the result outside the window, to unmap it
        // when the run ends (the kernel took it from free space for us).
        let (start, end) = (got, got.saturating_add(new_len));
        let (win_start, win_end) = (WINDOW_BASE as usize, (WINDOW_BASE + WINDOW_SIZE) as usize);
        if start < win_start {
            self.strays.push((start, end.min(win_start) - start));
        }
        if end > win_end {
            let from = start.max(win_end);
            self.strays.push((from, end - from));
        }
        Ok(got)
    }

    /// Reads (`write == false`) or writes one byte at `at` through a
    /// syscall instead of a CPU access, returning `EFAULT` where a CPU
    /// access would raise SIGSEGV/SIGBUS.
    ///
    /// The kernel's user-copy routines fault the page in through the same
    /// `handle_mm_fault` path a user-mode access takes (a read fault for
    /// `copy_from_user`, a write fault for `copy_to_user`), so the notifier
    /// calls are the same as for a CPU touch; where that path fails the
    /// copy's exception fixup turns the fault into `EFAULT`. (Checked: every
    /// recorded script, and every new recording, reports the same here as
    /// `oracle.c`, which touches with CPU loads and stores.)
    pub(crate) fn touch(
        &mut self,
        at: WinRange,
        write: bool,
        pipe: &TouchPipe,
    ) -> Result<(), Errno> {
        debug_assert!(at.len >= 1);
        if write {
            // Queue the byte to store (1, like a CPU store of 1), then let
            // pipe_read copy it into the page with copy_to_user.
            // The pipe is empty (every touch drains it), so this cannot
            // block or fail.
            rustix::io::write(&pipe.write, &[1]).expect("an empty pipe takes one byte");
            // SAFETY: the kernel stores one byte at `at`, window memory no
            // Rust object lives in (module docs); a bad address yields
            // EFAULT, not a signal.
            let n = unsafe { libc::read(pipe.read.as_raw_fd(), at.ptr(), 1) };
            if n == 1 {
                Ok(())
            } else {
                let err = last_errno();
                pipe.drain();
                Err(err)
            }
        } else {
            // pipe_write copies the byte out of the page with
            // copy_from_user.
            // SAFETY: the kernel only reads one byte at `at` (window
            // memory); a bad address yields EFAULT, not a signal.
            let n = unsafe { libc::write(pipe.write.as_raw_fd(), at.ptr().cast_const(), 1) };
            if n == 1 {
                pipe.drain();
                Ok(())
            } else {
                Err(last_errno())
            }
        }
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        // SAFETY: the window holds no Rust object (module docs), and each
        // stray range is a mapping the kernel placed in free space for this
        // run, which nothing else refers to.
        unsafe {
            let _ = rustix::mm::munmap(
                ptr::without_provenance_mut(WINDOW_BASE as usize),
                WINDOW_SIZE as usize,
            );
            for &(addr, len) in &self.strays {
                let _ = rustix::mm::munmap(ptr::without_provenance_mut(addr), len);
            }
        }
    }
}

/// Why [`Window::mmap`] failed.
#[derive(Debug)]
pub(crate) enum MmapError {
    /// The syscall failed: the step's RC.
    Errno(Errno),
    /// The kernel put the mapping elsewhere (and it was undone).
    Misplaced(usize),
}

fn may_move(dont_unmap: bool) -> MremapFlags {
    if dont_unmap {
        MremapFlags::MAYMOVE | MremapFlags::DONTUNMAP
    } else {
        MremapFlags::MAYMOVE
    }
}

/// Whether a `/proc/self/maps` line overlaps the window.
fn overlaps_window(line: &str) -> bool {
    let range = line.split_whitespace().next().unwrap_or("");
    let Some((start, end)) = range.split_once('-') else {
        return false;
    };
    match (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16)) {
        (Ok(start), Ok(end)) => start < WINDOW_BASE + WINDOW_SIZE && end > WINDOW_BASE,
        _ => false,
    }
}

/// The pipe [`Window::touch`] copies bytes through.
#[derive(Debug)]
pub(crate) struct TouchPipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl TouchPipe {
    pub(crate) fn new() -> io::Result<TouchPipe> {
        let flags = rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK;
        let (read, write) = rustix::pipe::pipe_with(flags)?;
        Ok(TouchPipe { read, write })
    }

    /// Empties the pipe (into a local buffer).
    fn drain(&self) {
        let mut buf = [0u8; 16];
        while matches!(rustix::io::read(&self.read, &mut buf), Ok(n) if n > 0) {}
    }
}

/// `KVM_CREATE_VM` on an open `/dev/kvm`: the new VM's fd. Creating the VM
/// registers KVM's MMU notifier on the calling process's mm; closing the fd
/// (the last reference) unregisters it.
pub(crate) fn kvm_create_vm(kvm: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: KVM_CREATE_VM takes an integer argument (the machine type, 0
    // for the default), reads and writes no user memory, and returns a new
    // file descriptor or -1.
    let fd = unsafe { libc::ioctl(kvm.as_raw_fd(), KVM_CREATE_VM, 0 as libc::c_ulong) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody
    // else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Forks a child that exits at once, and waits for it.
pub(crate) fn fork_and_reap() -> io::Result<()> {
    // SAFETY: the child of a possibly multi-threaded process may only call
    // async-signal-safe functions before exiting; it calls nothing but
    // `_exit` (below), so no lock held by another thread is ever needed.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: `_exit` is async-signal-safe and runs no destructors or
        // atexit handlers, so the child touches none of the parent's state.
        unsafe { libc::_exit(0) }
    }
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    let pid = rustix::process::Pid::from_raw(pid)
        .ok_or_else(|| io::Error::other("fork returned 0 in the parent"))?;
    loop {
        match rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty()) {
            Err(Errno::INTR) => continue,
            Err(err) => return Err(err.into()),
            Ok(_) => return Ok(()),
        }
    }
}

fn last_errno() -> Errno {
    Errno::from_io_error(&io::Error::last_os_error()).unwrap_or(Errno::IO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_ranges_are_checked() {
        assert_eq!(
            WinRange::new(0, WINDOW_SIZE).map(|r| r.len),
            Some(WINDOW_SIZE as usize)
        );
        assert!(WinRange::new(0x1000, WINDOW_SIZE).is_none());
        assert!(WinRange::new(u64::MAX, 2).is_none());
        assert!(overlaps_window(
            "300000000000-300000001000 rw-p 00000000 00:00 0"
        ));
        assert!(overlaps_window(
            "2fffffff0000-300000001000 rw-p 00000000 00:00 0"
        ));
        assert!(!overlaps_window(
            "7f0000000000-7f0000001000 rw-p 00000000 00:00 0"
        ));
        assert!(!overlaps_window(
            "2ff000000000-300000000000 rw-p 00000000 00:00 0"
        ));
    }
}
