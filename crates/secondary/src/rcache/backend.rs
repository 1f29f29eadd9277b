//! What the generic cache is generic over: the [`Primary`] whose pages are
//! registered, and the [`Registrar`] that holds a registration of them.
//!
//! The cache itself (the index, the notifier protocol, the use count, the
//! deferred reap) is written once, in [`Rcache`](super::Rcache); these two
//! traits are the only places a backend plugs in.

use std::fmt;
use std::sync::Arc;

use mmun_core::Mm;

/// One step of the miss path that may have to start over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step<E> {
    /// The pages changed under the step (an invalidation ran): the cache
    /// undoes what it did and walks again after the next `read_begin`.
    Retry,
    /// The registration cannot be made; `get` returns this error.
    Fail(E),
}

/// The address space a cache registers pages of: the software MMU, or the
/// calling process.
///
/// # What an implementer guarantees
///
/// * [`Primary::mm`] is the `Mm` whose invalidations cover **every**
///   change of the pages [`Primary::walk`] reports: the cache inserts one
///   interval notifier there per registration, and relies on its callback
///   running *before* any of those pages is unmapped, remapped, freed or
///   replaced. A change that skips the notifier is a change the cache
///   cannot see.
/// * [`Primary::walk`] makes the pages of `[start, end)` present (faulting
///   them in as the device would) and may record what it found; it returns
///   [`Step::Retry`] when a page changed while it walked. It takes no lock
///   the cache's notifier callback takes, and may sleep.
/// * [`Primary::quiet`] returns a guard held while the cache holds its own
///   lock and allocates: a primary whose invalidations can start *inside*
///   the calling thread (a hooked `free()` that trims the heap) must defer
///   them until the guard drops, or that thread would wait for itself.
pub trait Primary: Send + Sync + Sized + 'static {
    /// What a walk records of a range, handed to the registrar.
    type Pages: Send;
    /// The error `get` returns. The cache's own failures (an interval
    /// past the end of the address space, an address space that exited)
    /// arrive as [`mmun_core::Error`].
    type Error: From<mmun_core::Error> + fmt::Debug;
    /// See [`Primary::quiet`].
    type Quiet;
    /// The page size registrations are aligned to.
    const PAGE_SIZE: u64;

    /// The address space whose notifiers guard the registrations.
    fn mm(&self) -> &Arc<Mm>;

    /// Faults in `[start, end)` (page-aligned, not empty).
    ///
    /// # Errors
    ///
    /// [`Step::Retry`] if a page changed while walking; [`Step::Fail`] if
    /// the range cannot be made present.
    fn walk(&self, start: u64, end: u64) -> Result<Self::Pages, Step<Self::Error>>;

    /// A guard that defers this thread's own invalidations while held.
    fn quiet(&self) -> Self::Quiet;

    /// Called when an invalidation or an eviction is about to sleep until
    /// the uses of a registration end. A primary that can hurry its uses
    /// along (a test harness holding one on purpose, as a slow transfer)
    /// does so; the rest need nothing.
    fn awaiting_uses(&self) {}
}

/// What a registration holds: pins of the software MMU, a slot of a
/// kernel device's buffer table, or whatever a user's `mem_reg` returns.
///
/// # What an implementer guarantees
///
/// * [`Registrar::register`] makes the device hold `[start, end)` as the
///   primary maps it *now* (after the walk); it may fail, or ask for a
///   retry when it finds the pages changed. The cache calls it after
///   `read_begin` and publishes the result only if `read_retry` then says
///   no invalidation touched the range; otherwise it calls `deregister`.
/// * [`Registrar::deregister`] is called exactly once per successful
///   `register`, with no use of the registration in flight and none able
///   to start, and **before the primary changes the pages** when it comes
///   from an invalidation (it runs inside the notifier callback). When it
///   returns, the device must no longer reach the old pages through the
///   handle (a device that keeps its own reference on the pages, as
///   io_uring does, may free them later; it may not use them). It must not
///   take a lock held by a thread that waits for the cache, must not
///   allocate through a hooked allocator (it can run inside `free()`), and
///   may not fail: a device that cannot let go must block until it can.
/// * Both may be called from any thread, concurrently with each other for
///   different registrations.
pub trait Registrar<P: Primary>: Send + Sync + 'static {
    /// What a registration holds (a pin list, a buffer index, a key).
    /// Read by uses without locks while the registration is live.
    type Handle: Send + Sync;

    /// Registers `[start, end)` (page-aligned), walked as `pages`.
    ///
    /// # Errors
    ///
    /// [`Step::Retry`] if the pages changed since the walk; [`Step::Fail`]
    /// if the device refuses.
    fn register(
        &self,
        primary: &P,
        start: u64,
        end: u64,
        pages: P::Pages,
    ) -> Result<Self::Handle, Step<P::Error>>;

    /// Releases what [`Registrar::register`] returned (see the trait docs
    /// for when and how).
    fn deregister(&self, primary: &P, handle: &Self::Handle);
}
