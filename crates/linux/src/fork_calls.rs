//! `_Fork` and `clone` called directly: the address-space copies that run
//! no `pthread_atfork` handler.
//!
//! `fork()` is covered by the atfork handlers (`lifecycle`). glibc's
//! `fork()` is those handlers around `_Fork()`, so the hook at `_Fork`'s
//! `clone` system call does nothing when this thread is inside them; a
//! program that calls `_Fork()` itself (it is async-signal-safe, and some
//! runtimes use it), or `clone()` without `CLONE_VM`, gets here the same
//! treatment: `ProtectionPage` over the private (COW) VMAs, started before
//! the copy and ended after it in the parent, with the core's fork
//! protocol around the system call, and a child with a fresh `Mm`, no
//! inherited userfaultfd state and its signal mask as it was before the
//! hook.
//!
//! Unlike the atfork path these hooks may run in a signal handler that
//! interrupted `malloc`, so nothing here allocates: the ranges live in a
//! stack [`Changes`] (past 16 VMAs the last range grows to cover the rest:
//! over-invalidation, never a miss).
//!
//! `clone()` hands the child a new stack: its child cannot return through
//! the hook's frames, which live on the parent's stack. So the system call
//! is made by `clone_then_resume`, whose child side runs
//! `clone_child` on the new stack and then jumps straight back into
//! glibc's `clone` after the patched `syscall`, where glibc pops the
//! child's function and argument from that stack, as it would unhooked.
//!
//! With `CLONE_VM` (threads made by `clone()`, `vfork`, `posix_spawn`)
//! there is no copy: the kernel write-protects nothing and calls no
//! notifier, so neither does the hook. `vfork()` and `posix_spawn` (glibc's
//! `clone3` with `CLONE_VM | CLONE_VFORK`) are not patched at all.

use std::cell::Cell;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};

use mmun_core::{Event, Invalidation, Range};

use crate::dispatch::{Changes, emit};
use crate::hooks::Args;
use crate::record::{Call, Phase, Source};
use crate::sys::{self, Ret};
use crate::{lifecycle, maps, process, signals, thread};

/// Where glibc's `clone` continues after its `syscall` instruction; set
/// when the site is patched.
static CLONE_RESUME: AtomicU64 = AtomicU64::new(0);

/// Records the address after `clone`'s patched `syscall`.
pub fn set_clone_resume(after_syscall: u64) {
    CLONE_RESUME.store(after_syscall, Ordering::Release);
}

/// What the child of a `clone` with a new stack must repair, left by the
/// forking thread just before the system call. A thread-local: the child
/// has a copy of the forking thread's memory and the same thread pointer.
#[derive(Clone, Copy)]
struct ChildPlan {
    /// The core's fork locks were taken (`mmun_core::fork::prepare`).
    core_prepared: bool,
    /// The signal mask before the hook held signals back.
    mask: Option<u64>,
}

thread_local! {
    static CHILD_PLAN: Cell<ChildPlan> = const {
        Cell::new(ChildPlan { core_prepared: false, mask: None })
    };
}

/// `_Fork`'s `clone` system call.
pub fn fork_site(a: Args) -> Ret {
    if lifecycle::in_atfork() {
        // Inside glibc's fork(): its atfork handlers did (and will do) it.
        return raw_clone(a);
    }
    copy_address_space(Call::Fork, a, raw_clone)
}

/// `clone()`'s system call (registers: flags, new stack, parent tid,
/// child tid, tls).
pub fn clone_site(a: Args) -> Ret {
    if a[0] as u64 & libc::CLONE_VM as u64 != 0 {
        // Shared memory, no copy: nothing changes. The child must still
        // land in glibc, on its own stack, untouched by us.
        // SAFETY: the arguments glibc's clone prepared; no child repair.
        return unsafe { clone_then_resume(a, None) };
    }
    // SAFETY: as above; the child runs `clone_child` first.
    copy_address_space(Call::Clone, a, |a| unsafe {
        clone_then_resume(a, Some(clone_child))
    })
}

/// The system call as the application made it (`_Fork`: the child returns
/// through the hook on its copy of this stack).
fn raw_clone(a: Args) -> Ret {
    // SAFETY: the same clone glibc was about to make, without a new stack.
    unsafe { sys::syscall6(libc::SYS_clone as usize, a) }
}

/// `ProtectionPage` over the COW VMAs around the copy; the child side of
/// `syscall` (returning 0 here only for `_Fork`) repairs its state.
fn copy_address_space(call: Call, a: Args, syscall: impl FnOnce(Args) -> Ret) -> Ret {
    let Some(mm) = process::subscribed() else {
        set_plan(false, None);
        return child_repairs_on_return(syscall(a));
    };
    if thread::busy() {
        // Inside a callback or a registration: nothing may start here
        // (as for fork() from a callback; see DESIGN.md).
        set_plan(false, None);
        return child_repairs_on_return(syscall(a));
    }
    let changes = cow_ranges();
    let held = signals::hold();
    let dispatching = thread::dispatching();
    let lock = mm.mmap_read();
    let mut open: [Option<Invalidation<'_>>; crate::dispatch::MAX_RANGES] =
        [const { None }; crate::dispatch::MAX_RANGES];
    for (slot, c) in open.iter_mut().zip(changes.as_slice()) {
        *slot = Some(Invalidation::start(Range::new(
            &lock, c.event, c.start, c.end,
        )));
        emit(c, call, Source::Hook, Phase::Start);
    }
    // After our own dispatching, as the atfork path orders it.
    mmun_core::fork::prepare();
    set_plan(true, Some(held.old_mask()));
    let ret = syscall(a);
    if ret == 0 {
        // `_Fork`'s child, on its copy of this stack: the parent's
        // invalidations and lock stay with the parent.
        std::mem::forget(open);
        std::mem::forget(lock);
        std::mem::forget(dispatching);
        repair_child();
        return ret; // `held` restores the mask as it drops
    }
    mmun_core::fork::parent();
    for (slot, c) in open.iter_mut().zip(changes.as_slice()) {
        if let Some(inv) = slot.take() {
            inv.end();
        }
        emit(c, call, Source::Hook, Phase::End);
    }
    ret
}

fn set_plan(core_prepared: bool, mask: Option<u64>) {
    CHILD_PLAN.with(|p| {
        p.set(ChildPlan {
            core_prepared,
            mask,
        })
    });
}

/// A child that returned through the hook (`_Fork` with no subscriber).
fn child_repairs_on_return(ret: Ret) -> Ret {
    if ret == 0 {
        repair_child();
    }
    ret
}

/// What a copy's child needs, allocation-free: the core's global state
/// repaired if the parent held its fork locks, then no parent `Mm`, no
/// inherited uffd context, no queued changes.
fn repair_child() {
    let plan = CHILD_PLAN.with(Cell::get);
    if plan.core_prepared {
        mmun_core::fork::child();
    }
    lifecycle::reset_child_state();
}

/// Runs first in the child of a `clone` with a new stack, on that stack.
extern "C" fn clone_child() {
    repair_child();
    if let Some(mask) = CHILD_PLAN.with(Cell::get).mask {
        signals::set_mask(mask);
    }
}

/// The private (COW) VMAs, as `ProtectionPage` changes on the stack.
fn cow_ranges() -> Changes {
    let mut changes = Changes::none();
    let _ = maps::for_each_vma(|v| {
        if v.is_cow_mapping() {
            changes.push(Event::ProtectionPage, v.start, v.end);
        }
        ControlFlow::Continue(())
    });
    changes
}

/// `clone` with a new stack: the parent gets the result here; the child
/// (rax 0, on the new stack) calls `child` if given and jumps to glibc's
/// code after the patched `syscall`.
///
/// # Safety
///
/// `a` are the registers glibc's `clone` set up for its `syscall`, with
/// the child's function and argument on top of the new stack, and the
/// clone site was patched (so `CLONE_RESUME` is set).
unsafe fn clone_then_resume(a: Args, child: Option<extern "C" fn()>) -> Ret {
    let resume = CLONE_RESUME.load(Ordering::Acquire);
    assert_ne!(resume, 0, "clone hook without a patched clone site");
    let child = child.map_or(0, |f| f as usize);
    let ret: usize;
    // SAFETY: the parent side is a plain system call (rcx and r11
    // clobbered by `syscall`). The child side never returns to Rust: it
    // runs on the stack the caller gave clone (16-byte aligned by glibc, so
    // `call` meets the ABI), calls `child` (r12 and r13 are callee-saved,
    // so they survive it) and jumps to glibc's continuation with rax 0,
    // which pops the function and argument glibc stored on that stack.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "test r13, r13",
            "jz 3f",
            "call r13",
            "3:",
            "xor eax, eax",
            "jmp r12",
            "2:",
            inlateout("rax") libc::SYS_clone as usize => ret,
            in("rdi") a[0],
            in("rsi") a[1],
            in("rdx") a[2],
            in("r10") a[3],
            in("r8") a[4],
            in("r9") a[5],
            in("r12") resume,
            in("r13") child,
            lateout("rcx") _,
            lateout("r11") _,
        );
    }
    ret as Ret
}
