//! Asynchronous signals are held back from an invalidation's start to its
//! end.
//!
//! Signals are delivered on return from any system call, and a hook makes
//! several (the real call, `/proc/self/maps`, the trace sink). A handler
//! that ran there and left with `siglongjmp` (shells, interpreters,
//! fault-probing code do) would abandon the hook between a start and its
//! end: the end never delivered, the `Mm`'s mmap read lock never released
//! (registration would then block for ever), the thread left marked
//! dispatching. The kernel's own `munmap` is not interruptible either, so
//! holding the signals back for the hook's duration changes only *when* a
//! handler runs: right after the end, still inside the libc call.
//!
//! Not held back: the synchronous signals a fault raises (`SIGSEGV`,
//! `SIGBUS`, `SIGILL`, `SIGFPE`, `SIGTRAP`, `SIGSYS`: blocking them turns
//! a fault into a kill) and glibc's internal `SIGCANCEL`/`SIGSETXID`
//! (32, 33: never blocked by glibc itself; their handlers do not jump).
//! `SIGKILL`/`SIGSTOP` cannot be blocked.

use crate::sys;

/// The kernel's signal set on x86_64 and aarch64: 64 bits.
type SigSet = u64;

const fn bit(sig: i32) -> SigSet {
    1 << (sig - 1)
}

/// The signals held back.
const HELD: SigSet = !(bit(libc::SIGSEGV)
    | bit(libc::SIGBUS)
    | bit(libc::SIGILL)
    | bit(libc::SIGFPE)
    | bit(libc::SIGTRAP)
    | bit(libc::SIGSYS)
    | bit(32)
    | bit(33));

/// Restores the thread's previous mask when dropped.
#[derive(Debug)]
#[must_use = "the signals are released when the guard drops"]
pub struct Held {
    old: SigSet,
}

/// Holds back the asynchronous signals of this thread until the guard
/// drops.
pub fn hold() -> Held {
    let mut old: SigSet = 0;
    let held = HELD;
    // SAFETY: rt_sigprocmask reads one set and writes one, both ours, of
    // the kernel's size.
    unsafe {
        sys::syscall6(
            libc::SYS_rt_sigprocmask as usize,
            [
                libc::SIG_BLOCK as usize,
                &raw const held as usize,
                &raw mut old as usize,
                size_of::<SigSet>(),
                0,
                0,
            ],
        )
    };
    Held { old }
}

impl Held {
    /// The mask this guard restores.
    pub fn old_mask(&self) -> u64 {
        self.old
    }
}

/// Sets this thread's signal mask (a `clone` child that cannot return
/// through its parent's guard).
pub fn set_mask(mask: u64) {
    let mask: SigSet = mask;
    // SAFETY: rt_sigprocmask reads one set we own, of the kernel's size.
    unsafe {
        sys::syscall6(
            libc::SYS_rt_sigprocmask as usize,
            [
                libc::SIG_SETMASK as usize,
                &raw const mask as usize,
                0,
                size_of::<SigSet>(),
                0,
                0,
            ],
        )
    };
}

impl Drop for Held {
    fn drop(&mut self) {
        // SAFETY: as in `hold`, restoring the mask it saved.
        unsafe {
            sys::syscall6(
                libc::SYS_rt_sigprocmask as usize,
                [
                    libc::SIG_SETMASK as usize,
                    &raw const self.old as usize,
                    0,
                    size_of::<SigSet>(),
                    0,
                    0,
                ],
            )
        };
    }
}

/// This thread's current signal mask (for tests).
pub fn current_mask() -> u64 {
    let mut cur: SigSet = 0;
    // SAFETY: a query (no new set) writing one set we own.
    unsafe {
        sys::syscall6(
            libc::SYS_rt_sigprocmask as usize,
            [
                libc::SIG_BLOCK as usize,
                0,
                &raw mut cur as usize,
                size_of::<SigSet>(),
                0,
                0,
            ],
        )
    };
    cur
}
