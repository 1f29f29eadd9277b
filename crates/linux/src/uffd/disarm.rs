//! Taking a watched range off the net just before a hooked call unmaps it.
//!
//! A registered VMA makes `munmap` queue an UNMAP event and hold the
//! unmapping thread until the handler thread has `read()` it: a wake-up and
//! a context switch on every unmap of watched memory (about 5 µs here,
//! twice the cost of the unmap itself), for a change the hook already
//! delivers synchronously. So a hook that is about to unmap (munmap, a
//! shrinking brk, `mmap(MAP_FIXED)`/`shmat(SHM_REMAP)` over the range)
//! first unregisters the armed part of the range with `UFFDIO_UNREGISTER`
//! (about 1 µs) and takes it out of the armed book itself, as the handler
//! would have on reading the event. The kernel then queues nothing: no
//! round trip, and no second, late report of the same change.
//!
//! Coverage is unchanged. The hook's start has already run when the range
//! is unregistered, so any other change to those pages between the
//! unregistration and the unmap falls inside the hook's own start..end.
//! If the system call fails (EINVAL, or ENOMEM at `max_map_count`) the
//! range is still mapped: [`UffdNet::rearm_after_failure`] registers the
//! pieces again.
//!
//! Locks: only `armed`, which nothing holds while allocating; never
//! `state`, which a thread may hold while it waits for malloc's lock that
//! this thread (inside `free`) may hold.

use std::os::fd::AsRawFd;

use super::{UffdNet, lock, sys};

/// The most pieces one call takes off the net; more are left armed (their
/// UNMAP event then arrives as before: slower, never a miss).
const MAX_PIECES: usize = 8;

/// What [`UffdNet::disarm_for_unmap`] unregistered, on the caller's stack.
#[derive(Debug, Clone, Copy, Default)]
pub struct Disarmed {
    pieces: [(u64, u64); MAX_PIECES],
    len: usize,
}

impl Disarmed {
    /// The unregistered ranges.
    pub fn pieces(&self) -> &[(u64, u64)] {
        &self.pieces[..self.len]
    }
}

impl UffdNet {
    /// Unregisters the armed parts of `[start, end)` before the caller
    /// unmaps them. Allocation-free; takes only the armed book's lock.
    pub fn disarm_for_unmap(&self, start: u64, end: u64) -> Disarmed {
        let mut out = Disarmed::default();
        let Some(inner) = self.inner() else {
            return out;
        };
        let (s, e) = (start & !(super::PAGE - 1), end);
        let fd = inner.uffd.as_raw_fd();
        let mut armed = lock(&inner.armed);
        let mut cursor = s;
        while out.len < MAX_PIECES {
            let Some((rs, re)) = armed.first_overlapping(cursor, e) else {
                break;
            };
            let piece = (rs.max(s), re.min(e));
            // The book must describe the kernel: a piece the kernel kept
            // (the unregistration failed) stays armed.
            if sys::unregister(fd, piece.0, piece.1).is_err() || !armed.remove(piece.0, piece.1) {
                break;
            }
            out.pieces[out.len] = piece;
            out.len += 1;
            cursor = piece.1;
        }
        out
    }

    /// The unmap `disarmed` prepared failed and the range is still mapped:
    /// registers its pieces again. Best effort, like [`UffdNet::rearm`].
    pub fn rearm_after_failure(&self, disarmed: &Disarmed) {
        let Some(inner) = self.inner() else {
            return;
        };
        let fd = inner.uffd.as_raw_fd();
        let mut armed = lock(&inner.armed);
        for &(s, e) in disarmed.pieces() {
            if sys::register(fd, s, e).is_ok() {
                armed.insert(s, e);
            }
        }
    }
}
