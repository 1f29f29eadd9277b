//! fork, exit and exec.
//!
//! * **fork** (`pthread_atfork`): before the fork the parent starts a
//!   `ProtectionPage` invalidation for every private VMA that is writable or
//!   holds anonymous pages, as `copy_page_range` does for copy-on-write VMAs
//!   with an anon_vma, and ends them after the
//!   fork, in the parent. The mmap read lock is held across the fork, so no
//!   registration lands between. The child gets a fresh `Mm` (no notifiers)
//!   and tells the userfaultfd net to forget its inherited state (the kernel
//!   already dropped the registrations, `dup_userfaultfd`); it inherits no
//!   helper thread and no held lock of the new `Mm`. The core's own fork
//!   protocol (`mmun_core::fork`: the global SRCU domain's locks, worker
//!   and reader slots) runs last in prepare and first in parent and child. `_Fork`, `vfork`,
//!   `clone` and `posix_spawn` do not run atfork handlers: `_Fork` and `clone`
//!   without `CLONE_VM` are hooked at their system call instead
//!   (`fork_calls`); `vfork` and `posix_spawn` share the address space and
//!   change nothing.
//! * **exit** (`atexit`): `Mm::exit` — `release` once, then `Unmap
//!   [0, max)` for the interval notifiers, as `exit_mmap` does. `_exit` and
//!   `exit_group` are not interposed: like a crash, they end the process
//!   with every in-process secondary.
//! * **exec**: not interposed. A successful `execve` replaces the image, so
//!   no in-process secondary outlives it and none needs a release;
//!   secondaries with state outside the process (a device, another
//!   process) hold file descriptors, and the kernel tears those down
//!   (close-on-exec). Releasing before the call would leave a dead `Mm`
//!   behind a failed exec.

use std::cell::{Cell, RefCell};
use std::ops::ControlFlow;

use mmun_core::{Event, Invalidation, Mm, MmapReadGuard, Range};

use crate::dispatch::{self, Change};
use crate::record::{Call, Phase, Source};
use crate::{maps, net, process, thread};

/// The invalidations open across a fork, in the forking thread.
struct ForkOpen {
    /// A leaked read guard of the process `Mm`, given back in the parent.
    lock: *mut MmapReadGuard<'static>,
    open: Vec<(Invalidation<'static>, Change)>,
}

thread_local! {
    static FORK: RefCell<Option<ForkOpen>> = const { RefCell::new(None) };
    /// Between this thread's atfork prepare and its parent/child handler:
    /// the `_Fork` inside glibc's `fork()` is covered already.
    static IN_ATFORK: Cell<bool> = const { Cell::new(false) };
}

/// Whether this thread is inside glibc's `fork()`, between the atfork
/// prepare and parent/child handlers (see `fork_calls`).
pub fn in_atfork() -> bool {
    IN_ATFORK.with(Cell::get)
}

/// `pthread_atfork` prepare: start `ProtectionPage` per private (COW) VMA,
/// then the core's fork protocol, which takes the global SRCU locks and so
/// must come after every dispatch of this thread until `parent`/`child`.
/// Runs before glibc takes malloc's locks, so it may allocate.
extern "C" fn prepare() {
    IN_ATFORK.with(|f| f.set(true));
    start_fork_invalidations();
    mmun_core::fork::prepare();
}

/// The invalidations `prepare` opens across the fork.
fn start_fork_invalidations() {
    let Some(mm) = process::subscribed() else {
        return;
    };
    if thread::busy() {
        // fork from inside a callback or a registration: nothing can start
        // here; the child and parent are told nothing (documented gap).
        return;
    }
    // Everything this handler allocates is allocated before the maps are
    // read: an allocation after the snapshot can grow the heap (brk), and
    // the kernel then write-protects a larger heap than we announced
    // (seen by `mmun trace --verify-with-kernel` on bash).
    let mut ranges = Vec::with_capacity(1024);
    let mut open = Vec::with_capacity(1024);
    let lock: &'static mut MmapReadGuard<'static> = Box::leak(Box::new(mm_read(mm)));
    let _ = maps::for_each_vma(|v| {
        if v.is_cow_mapping() {
            if ranges.len() < ranges.capacity() {
                ranges.push(Change {
                    event: Event::ProtectionPage,
                    start: v.start,
                    end: v.end,
                });
            } else if let Some(last) = ranges.last_mut() {
                last.end = v.end; // full: over-invalidate, never miss
            }
        }
        ControlFlow::Continue(())
    });
    let lock_ptr: *mut MmapReadGuard<'static> = lock;
    // SAFETY: the box stays alive until `parent` frees it after every
    // invalidation borrowing it has ended.
    let held: &'static MmapReadGuard<'static> = unsafe { &*lock_ptr };
    // Dispatching until `parent`: a hooked call glibc makes inside fork is
    // deferred, not a second read lock behind a waiting writer.
    thread::enter();
    for c in ranges {
        let inv = Invalidation::start(Range::new(held, c.event, c.start, c.end));
        dispatch::emit(&c, Call::Fork, Source::Hook, Phase::Start);
        open.push((inv, c));
    }
    FORK.with(|f| {
        *f.borrow_mut() = Some(ForkOpen {
            lock: lock_ptr,
            open,
        })
    });
}

fn mm_read(mm: &'static Mm) -> MmapReadGuard<'static> {
    mm.mmap_read()
}

/// `pthread_atfork` parent: end what `prepare` started.
extern "C" fn parent() {
    // First: ending the invalidations below takes SRCU read sections.
    mmun_core::fork::parent();
    IN_ATFORK.with(|f| f.set(false));
    let Some(state) = FORK.with(|f| f.borrow_mut().take()) else {
        return;
    };
    for (inv, c) in state.open {
        inv.end();
        dispatch::emit(&c, Call::Fork, Source::Hook, Phase::End);
    }
    thread::leave();
    // SAFETY: every invalidation borrowing the guard has ended above; the
    // pointer came from `Box::leak` in `prepare`.
    drop(unsafe { Box::from_raw(state.lock) });
    dispatch::deliver_deferred();
}

/// `pthread_atfork` child: a fresh address space, no inherited uffd state.
extern "C" fn child() {
    // First: the global SRCU domain as the parent's other threads left it
    // (a worker that is not here, their open read sections) is repaired
    // before anything here can wait on it.
    mmun_core::fork::child();
    // The parent's invalidations and lock belong to the parent's Mm, which
    // the child never uses again: forget them without ending anything.
    if let Some(state) = FORK.with(|f| f.borrow_mut().take()) {
        std::mem::forget(state);
    }
    IN_ATFORK.with(|f| f.set(false));
    reset_child_state();
    // The child's own trace hook-up: its fresh Mm gets the tracing
    // notifier, and a KVM VM of its own under --verify-with-kernel.
    crate::trace_sink::init_from_env();
}

/// A fork child's state, allocation-free: no queued or open work of the
/// forking thread, a fresh `Mm` on next use, no inherited uffd context, no
/// inherited `/proc` descriptors.
pub fn reset_child_state() {
    thread::reset_in_child();
    process::reset_in_child();
    net::forget_in_child();
    crate::thp::reset_in_child();
    crate::anon::reset_in_child();
}

/// `atexit`: release the process `Mm` once, then the final unmap.
extern "C" fn at_exit() {
    release_now();
}

/// `Mm::exit` on the process `Mm` (release, exactly once), then `Unmap
/// [0, max)` for the interval notifiers, as `exit_mmap` does.
pub fn release_now() {
    let mm = process::process_mm();
    if !mm.exit() {
        return;
    }
    let all = Change {
        event: Event::Unmap,
        start: 0,
        end: u64::MAX,
    };
    dispatch::emit(&all, Call::Exit, Source::Hook, Phase::Release);
    if thread::busy() {
        return;
    }
    let _scope = thread::dispatching();
    let lock = mm.mmap_read();
    Invalidation::start(Range::new(&lock, Event::Unmap, 0, u64::MAX)).end();
}

/// Registers the fork and exit handlers (once per process).
pub fn register() -> Result<(), i32> {
    // The core's fork protocol runs from the handlers above, ordered
    // around this backend's own dispatching; its automatic ones stand down.
    mmun_core::fork::run_from_own_handlers();
    // SAFETY: the handlers are `extern "C" fn()` with static lifetime.
    let ret = unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
    if ret != 0 {
        return Err(ret);
    }
    // SAFETY: as above.
    if unsafe { libc::atexit(at_exit) } != 0 {
        return Err(libc::ENOMEM);
    }
    Ok(())
}
