//! Start → the real system call → end, in the calling thread.
//!
//! # Threading and reentrancy rules
//!
//! * A hook runs in whichever thread made the libc call, including threads
//!   started before installation and glibc's own internal calls (`free`,
//!   heap trimming, thread exit).
//! * It takes the process `Mm`'s mmap lock for read from the start to the
//!   end, as Linux's `munmap` holds its mmap lock; registration (which takes
//!   it for write) therefore never lands between a start and its end.
//! * It never allocates and takes no lock malloc may hold: the per-thread
//!   state is a const thread-local without destructor, ranges live on the
//!   stack, `/proc/self/maps` is read into a stack buffer.
//! * A hooked call made while this thread is already dispatching (a
//!   callback that unmaps or frees) or inside a core registration path (an
//!   allocation that trims the heap) cannot start an invalidation: it would
//!   wait for locks this thread holds. The system call runs at once and the
//!   change is queued in a fixed-size per-thread queue, delivered as a
//!   start+end marked [`RangeFlags::LATE`] with [`Source::Deferred`] as
//!   soon as the thread is out (after the outer end, or when registration
//!   returns). Never a deadlock; late by the length of the outer callback.

use mmun_core::{Event, Invalidation, Mm, Range, RangeFlags};

use crate::record::{Call, Phase, Source, TraceRecord};
use crate::sys::{self, Ret};
use crate::thread::{self, Pending};
use crate::{process, trace};

/// The most ranges one call invalidates at once; more are merged into the
/// last one (over-invalidation, never a miss).
pub const MAX_RANGES: usize = 16;

/// One range a call is about to change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// The event Linux uses for it.
    pub event: Event,
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

/// A fixed-capacity list of changes, on the stack.
#[derive(Debug, Clone, Copy)]
pub struct Changes {
    items: [Change; MAX_RANGES],
    len: usize,
}

impl Changes {
    /// No change.
    pub const fn none() -> Changes {
        Changes {
            items: [Change {
                event: Event::Unmap,
                start: 0,
                end: 0,
            }; MAX_RANGES],
            len: 0,
        }
    }

    /// One change.
    pub fn one(event: Event, start: u64, end: u64) -> Changes {
        let mut c = Changes::none();
        c.push(event, start, end);
        c
    }

    /// Adds a change; empty ranges are dropped, and past [`MAX_RANGES`] the
    /// last entry grows to cover it.
    pub fn push(&mut self, event: Event, start: u64, end: u64) {
        if end <= start {
            return;
        }
        if self.len < MAX_RANGES {
            self.items[self.len] = Change { event, start, end };
            self.len += 1;
        } else {
            let last = &mut self.items[MAX_RANGES - 1];
            last.start = last.start.min(start);
            last.end = last.end.max(end);
        }
    }

    /// The changes.
    pub fn as_slice(&self) -> &[Change] {
        &self.items[..self.len]
    }
}

/// Runs `syscall` between `invalidate_range_start` and
/// `invalidate_range_end` of every change, on the process `Mm`.
#[inline]
pub fn around(call: Call, changes: &Changes, syscall: impl FnOnce() -> Ret) -> Ret {
    let Some(mm) = process::subscribed() else {
        return syscall();
    };
    if changes.len == 0 {
        return syscall();
    }
    if thread::busy() {
        let ret = syscall();
        if !sys::is_err(ret) {
            for c in changes.as_slice() {
                thread::defer(Pending {
                    call,
                    event: c.event,
                    start: c.start,
                    end: c.end,
                });
            }
        }
        return ret;
    }
    let changes = widen_for_thp(call, changes);
    let ret = synchronous(mm, call, changes.as_slice(), syscall);
    deliver_deferred();
    ret
}

/// The changes, plus a `Clear` over each 2 MiB block the call splits a
/// VMA in (the kernel's huge-PMD split invalidates the whole block; see
/// `thp`). Fork, exec and exit change no VMA boundaries.
fn widen_for_thp(call: Call, changes: &Changes) -> Changes {
    let mut out = *changes;
    if matches!(call, Call::Fork | Call::Clone | Call::Execve | Call::Exit) {
        return out;
    }
    for c in changes.as_slice() {
        if matches!(c.event, Event::Unmap | Event::Clear | Event::ProtectionVma) {
            for (start, end) in crate::thp::split_blocks(c.start, c.end)
                .into_iter()
                .flatten()
            {
                out.push(Event::Clear, start, end);
            }
        }
    }
    out
}

#[inline(never)]
fn synchronous(mm: &Mm, call: Call, changes: &[Change], syscall: impl FnOnce() -> Ret) -> Ret {
    // Declared first, dropped last: after the lock and the dispatching
    // mark are released (see `signals`).
    let _signals = crate::signals::hold();
    let _dispatching = thread::dispatching();
    let lock = mm.mmap_read();
    let mut open: [Option<Invalidation<'_>>; MAX_RANGES] = [const { None }; MAX_RANGES];
    for (slot, c) in open.iter_mut().zip(changes) {
        *slot = Some(Invalidation::start(Range::new(
            &lock, c.event, c.start, c.end,
        )));
        emit(c, call, Source::Hook, Phase::Start);
    }
    let ret = syscall();
    for (slot, c) in open.iter_mut().zip(changes) {
        if let Some(inv) = slot.take() {
            inv.end();
        }
        emit(c, call, Source::Hook, Phase::End);
    }
    ret
}

/// Delivers this thread's queued changes, oldest first, if it is not busy.
/// Callbacks of a delivered change may queue more; they are delivered too.
pub fn deliver_deferred() {
    while !thread::busy() {
        let Some(p) = thread::pop() else { return };
        let change = Change {
            event: p.event,
            start: p.start,
            end: p.end,
        };
        deliver_late(&change, p.call, Source::Deferred);
    }
}

/// A start and an end, both after the change already happened (a deferred
/// change, or one userfaultfd reported). Marked [`RangeFlags::LATE`].
pub fn deliver_late(change: &Change, call: Call, source: Source) {
    let Some(mm) = process::subscribed() else {
        return;
    };
    if thread::busy() {
        thread::defer(Pending {
            call,
            event: change.event,
            start: change.start,
            end: change.end,
        });
        return;
    }
    let _signals = crate::signals::hold();
    let _dispatching = thread::dispatching();
    let lock = mm.mmap_read();
    let range =
        Range::new(&lock, change.event, change.start, change.end).with_flags(RangeFlags::LATE);
    let inv = Invalidation::start(range);
    emit(change, call, source, Phase::Start);
    inv.end();
    emit(change, call, source, Phase::End);
}

/// Emits one trace record (no-op unless a trace sink is enabled).
pub fn emit(c: &Change, call: Call, source: Source, phase: Phase) {
    if !trace::enabled() {
        return;
    }
    let (pid, tid) = sys::ids();
    trace::emit(&TraceRecord {
        time_ns: sys::monotonic_ns(),
        pid,
        tid,
        event: c.event,
        start: c.start,
        end: c.end,
        source,
        call,
        phase,
    });
}
