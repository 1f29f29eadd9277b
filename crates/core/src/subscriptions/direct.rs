//! A list entry's `invalidate_range_start` and `invalidate_range_end`,
//! reachable with one indirect call each.
//!
//! Through `dyn ErasedSubscription` a callback costs a virtual call, which
//! finds the driver state and then calls the ops table's function pointer:
//! two calls, and a frame, per notifier per start and per end, on the path
//! every page-table change takes. Here the driver state's address and the
//! two function pointers are erased once, at registration, and dispatch
//! calls the driver's function directly.
//!
//! The erasure relies on Rust's documented ABI compatibility of function
//! pointers: `&T` and `&()` are ABI-compatible (both thin pointers), so a
//! `fn(&T, &Range)` may be called through a `fn(&(), &Range)` as long as
//! the pointer passed really is a valid `&T`. It always is: a
//! [`DirectSubscription`] holds the `Arc` of the subscription next to the
//! erased calls, which keep the address of that subscription's `T`.

#![allow(unsafe_code)]

use std::ptr::NonNull;

use super::subscription::{ErasedSubscription, Subscription};
use crate::Range;
use crate::error::WouldBlock;
use crate::ops::{NotifierOps, StartFn};
use crate::sync::Arc;

/// A subscription with its start and end callbacks erased for direct calls.
#[derive(Clone)]
pub(crate) struct DirectSubscription {
    sub: Arc<dyn ErasedSubscription>,
    /// Point into `sub`, which keeps what they point to alive and in place.
    calls: DirectCalls,
}

impl DirectSubscription {
    pub(crate) fn new<T: Send + Sync + 'static>(sub: Arc<Subscription<T>>) -> DirectSubscription {
        // SAFETY: the state lives in the `Arc`'s allocation, which `sub`
        // (kept next to `calls`, and cloned with it) keeps alive.
        let calls = unsafe { DirectCalls::new(sub.data(), sub.ops()) };
        DirectSubscription { sub, calls }
    }

    /// The subscription, for everything but start and end.
    #[inline]
    pub(crate) fn subscription(&self) -> &Arc<dyn ErasedSubscription> {
        &self.sub
    }

    /// `invalidate_range_start`, `None` if the ops have none.
    #[inline]
    pub(crate) fn start(&self, range: &Range<'_>) -> Option<Result<(), WouldBlock>> {
        self.calls.start(range)
    }

    /// `invalidate_range_end`, if the ops have one.
    #[inline]
    pub(crate) fn end(&self, range: &Range<'_>) {
        self.calls.end(range);
    }
}

/// `fn(&T, &Range)` with `T` erased.
type ErasedEnd = fn(&(), &Range<'_>);

/// The start and end callbacks of one subscription and the driver state
/// they take, erased.
#[derive(Clone, Copy)]
struct DirectCalls {
    /// The `T` the callbacks were erased from.
    data: NonNull<()>,
    start: Option<StartFn<()>>,
    end: Option<ErasedEnd>,
}

// SAFETY: `data` stands for a `&T` with `T: Sync` (a notifier's state is
// `Send + Sync`), and the function pointers are plain code addresses.
unsafe impl Send for DirectCalls {}
// SAFETY: as above; nothing is reached through `&DirectCalls` but `&T`.
unsafe impl Sync for DirectCalls {}

impl DirectCalls {
    /// The callbacks of `ops` on `data`.
    ///
    /// # Safety
    ///
    /// `data` must stay alive, unmoved, for as long as the result (or a
    /// copy of it) is called: keep it next to the owner of `data`.
    unsafe fn new<T: Sync>(data: &T, ops: &'static NotifierOps<T>) -> DirectCalls {
        DirectCalls {
            data: NonNull::from(data).cast(),
            start: ops.invalidate_range_start.map(|start| match start {
                StartFn::Infallible(f) => StartFn::Infallible(erase_infallible(f)),
                StartFn::Fallible(f) => StartFn::Fallible(erase_fallible(f)),
            }),
            end: ops.invalidate_range_end.map(erase_end),
        }
    }

    #[inline]
    fn start(&self, range: &Range<'_>) -> Option<Result<(), WouldBlock>> {
        match self.start? {
            StartFn::Infallible(f) => {
                f(self.state(), range);
                Some(Ok(()))
            }
            StartFn::Fallible(f) => Some(f(self.state(), range)),
        }
    }

    #[inline]
    fn end(&self, range: &Range<'_>) {
        if let Some(f) = self.end {
            f(self.state(), range);
        }
    }

    /// The erased state, to pass to the erased functions.
    #[inline(always)]
    fn state(&self) -> &() {
        // SAFETY: a reference to a zero-sized value only needs a non-null,
        // aligned pointer (`()` has alignment 1); `data` came from a
        // reference. What the callee reads through it as `&T` is the live
        // `T` of `new`'s contract.
        unsafe { self.data.as_ref() }
    }
}

fn erase_infallible<T>(f: fn(&T, &Range<'_>)) -> fn(&(), &Range<'_>) {
    // SAFETY: same size (function pointers); calling the result is sound
    // because `&()` and `&T` are ABI-compatible and `DirectCalls` only ever
    // passes the `&T` (see the module docs).
    unsafe { std::mem::transmute::<fn(&T, &Range<'_>), fn(&(), &Range<'_>)>(f) }
}

fn erase_fallible<T>(
    f: fn(&T, &Range<'_>) -> Result<(), WouldBlock>,
) -> fn(&(), &Range<'_>) -> Result<(), WouldBlock> {
    // SAFETY: as in `erase_infallible`; the return types are the same.
    unsafe {
        std::mem::transmute::<
            fn(&T, &Range<'_>) -> Result<(), WouldBlock>,
            fn(&(), &Range<'_>) -> Result<(), WouldBlock>,
        >(f)
    }
}

fn erase_end<T>(f: fn(&T, &Range<'_>)) -> ErasedEnd {
    // SAFETY: as in `erase_infallible`.
    unsafe { std::mem::transmute::<fn(&T, &Range<'_>), ErasedEnd>(f) }
}
