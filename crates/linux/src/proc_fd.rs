//! A `/proc/self` file opened on first use and kept for the process's life,
//! for the hook-side ioctls (`PAGEMAP_SCAN`, `PROCMAP_QUERY`) that must not
//! allocate: one `open(2)` the first time, then one atomic load.
//!
//! A fork child's inherited copy still names the *parent's* file (the fd
//! was opened on the parent's `/proc/self`), so the child drops it with
//! [`ProcFd::reset_in_child`] and opens its own on next use.

use std::ffi::CStr;
use std::sync::atomic::{AtomicI32, Ordering};

/// Not opened yet.
const UNOPENED: i32 = -2;
/// Tried, and the kernel refused: callers fall back to their safe answer.
const UNAVAILABLE: i32 = -1;

/// A lazily opened, read-only `/proc/self` file.
#[derive(Debug)]
pub struct ProcFd {
    path: &'static CStr,
    fd: AtomicI32,
}

impl ProcFd {
    /// The file at `path`, opened on the first [`ProcFd::get`].
    pub const fn new(path: &'static CStr) -> ProcFd {
        ProcFd {
            path,
            fd: AtomicI32::new(UNOPENED),
        }
    }

    /// The fd, or `None` if the file cannot be opened here. Threads racing
    /// the first open agree on one fd; the loser closes its own.
    pub fn get(&self) -> Option<i32> {
        let fd = self.fd.load(Ordering::Relaxed);
        if fd != UNOPENED {
            return (fd >= 0).then_some(fd);
        }
        // SAFETY: a NUL-terminated constant path; the fd is kept for the
        // process's life (or closed below if another thread won).
        let opened = unsafe { libc::open(self.path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        let opened = if opened < 0 { UNAVAILABLE } else { opened };
        let fd =
            match self
                .fd
                .compare_exchange(UNOPENED, opened, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => opened,
                Err(winner) => {
                    if opened >= 0 {
                        // SAFETY: our own fd, never published.
                        unsafe { libc::close(opened) };
                    }
                    winner
                }
            };
        (fd >= 0).then_some(fd)
    }

    /// In a fork child: closes the inherited copy (it reads the parent's
    /// file); the next [`ProcFd::get`] opens the child's own.
    pub fn reset_in_child(&self) {
        let fd = self.fd.swap(UNOPENED, Ordering::AcqRel);
        if fd >= 0 {
            // SAFETY: the child's copy of the parent's fd; nobody else in
            // the child uses it (only the forking thread exists).
            unsafe { libc::close(fd) };
        }
    }
}
