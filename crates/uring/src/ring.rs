//! The ring the cache registers its fixed buffers on, shared by the threads
//! that submit I/O through it.

use std::fmt;
use std::io;

use io_uring::{IoUring, cqueue, squeue};
use parking_lot::Mutex;

use crate::error::UringError;

/// Where `kernel.io_uring_disabled` is.
const DISABLED_SYSCTL: &str = "/proc/sys/kernel/io_uring_disabled";

/// An io_uring instance whose submission and completion queues are used by
/// one thread at a time ([`Ring::run`]), and whose buffer table is updated
/// from any thread (`io_uring_register` needs no queue access).
pub struct Ring {
    uring: IoUring,
    /// Held from pushing an entry until its completion is reaped, so each
    /// completion found belongs to the holder. Never taken by notifier
    /// callbacks (they only call `io_uring_register`).
    queues: Mutex<()>,
}

impl Ring {
    /// A ring of `entries` submission entries.
    ///
    /// # Errors
    ///
    /// [`UringError::Disabled`], [`UringError::Unsupported`] or
    /// [`UringError::NotPermitted`] where io_uring cannot be used.
    pub fn new(entries: u32) -> Result<Ring, UringError> {
        if sysctl_disabled() == Some(2) {
            return Err(UringError::Disabled);
        }
        let uring = IoUring::new(entries).map_err(UringError::from_setup)?;
        Ok(Ring {
            uring,
            queues: Mutex::new(()),
        })
    }

    /// The underlying ring (for `io_uring_register` calls).
    pub fn uring(&self) -> &IoUring {
        &self.uring
    }

    /// Submits `entry` and waits for its completion; returns the
    /// completion's result (negative: `-errno`).
    ///
    /// # Safety
    ///
    /// Whatever `entry` points to (buffers, file descriptors) must stay
    /// valid until this returns, and a fixed buffer index it names must
    /// stay registered as the caller expects until then (hold the cache's
    /// use reference across the call).
    ///
    /// # Errors
    ///
    /// A failure of `io_uring_enter` itself.
    pub unsafe fn run(&self, entry: &squeue::Entry) -> io::Result<i32> {
        let _queues = self.queues.lock();
        // SAFETY: `queues` is held, so no other thread touches the
        // submission queue; the caller keeps what `entry` names alive.
        unsafe {
            let mut sq = self.uring.submission_shared();
            while sq.push(entry).is_err() {
                // Full only if completions were left unreaped, which the
                // lock rules out; submit and try again rather than spin.
                drop(sq);
                self.uring.submit()?;
                sq = self.uring.submission_shared();
            }
        }
        loop {
            match self.uring.submit_and_wait(1) {
                Ok(_) => {}
                Err(err) if err.raw_os_error() == Some(libc::EINTR) => continue,
                Err(err) => return Err(err),
            }
            // SAFETY: `queues` is held: no other thread reads completions.
            let mut cq = unsafe { self.uring.completion_shared() };
            if let Some(done) = cq.next() {
                return Ok(cqueue::Entry::result(&done));
            }
        }
    }
}

impl fmt::Debug for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring").finish_non_exhaustive()
    }
}

/// `kernel.io_uring_disabled`, if the kernel has it.
pub fn sysctl_disabled() -> Option<u8> {
    std::fs::read_to_string(DISABLED_SYSCTL)
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether io_uring can be used by this process: `Ok` or the reason it
/// cannot (what tests skip on).
///
/// # Errors
///
/// The [`UringError`] a [`Ring::new`] would return.
pub fn probe() -> Result<(), UringError> {
    Ring::new(2).map(drop)
}
