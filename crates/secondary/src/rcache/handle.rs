//! What [`Rcache::get`](super::Rcache::get) hands out, and the use
//! reference that invalidation waits for.

use std::fmt;
use std::sync::Arc;

use arc_swap::Guard;

use super::Shared;
use super::backend::{Primary, Registrar};
use super::in_use::InUse;
use super::index::Index;
use super::registration::{Registration, State};

/// A registration, as one lookup found it.
///
/// A handle keeps the registration's memory alive but holds off neither
/// invalidation nor eviction: either makes the handle stale, and
/// [`RegHandle::enter`] fails from then on; `get` again for a fresh one.
/// (Holding off invalidation for the life of a handle would deadlock a
/// thread that unmaps memory it still holds a handle to.) Each use takes
/// the use reference ([`InUse`]), which invalidation and eviction do wait
/// for.
///
/// Keep handles short-lived: one from the hit path pins the whole index
/// snapshot it was found in.
pub struct RegHandle<'c, P: Primary, R: Registrar<P>> {
    pub(super) cache: &'c Shared<P, R>,
    pub(super) held: Held<P, R>,
    /// The state the lookup saw: a use checks that it has not changed since,
    /// as `read_retry` checks the seq `read_begin` returned. A correct lookup
    /// hands out only live registrations. Kept as the raw value in a full
    /// word: a field without a niche lets `Result<RegHandle, E>` put its tag
    /// elsewhere, and a word (not a byte) keeps a handle moved into a C
    /// region from being copied through overlapping partial loads of a
    /// byte just stored (store-forwarding stalls, measured: a third of a
    /// hit with the niche, a quarter of the C API's hit with the byte).
    pub(super) issued: usize,
    /// The registration's acknowledged callbacks when the lookup found it
    /// (read before `issued`): a use must not outlive any later one.
    pub(super) acks: u64,
}

/// How a handle keeps its registration alive.
pub(super) enum Held<P: Primary, R: Registrar<P>> {
    /// The hit path: the index snapshot it was found in (an `arc-swap`
    /// guard, which costs no reference count in the common case), and its
    /// position there.
    Snapshot(Guard<Arc<Index<P, R>>>, usize),
    /// The miss path: the registration itself.
    Owned(Arc<Registration<P, R>>),
}

impl<'c, P: Primary, R: Registrar<P>> RegHandle<'c, P, R> {
    #[inline]
    pub(super) fn reg(&self) -> &Registration<P, R> {
        match &self.held {
            Held::Snapshot(index, at) => &index.regs()[*at],
            Held::Owned(reg) => reg,
        }
    }

    /// The state shared with the cache.
    pub(super) fn cache(&self) -> &'c Shared<P, R> {
        self.cache
    }

    /// First byte of the registered (page-aligned) range.
    pub fn start(&self) -> u64 {
        self.reg().start
    }

    /// One past the last byte of the registered range.
    pub fn end(&self) -> u64 {
        self.reg().end
    }

    /// A number naming the registration, unique within its cache: two
    /// handles with the same id are the same registration.
    pub fn id(&self) -> u64 {
        self.reg().id
    }

    /// Whether the registration is still live (not invalidated, evicted
    /// or replaced). Only a hint: it may be invalidated right after.
    pub fn is_valid(&self) -> bool {
        self.reg().state() == State::Live
    }

    /// Whether the registrar still holds the registration (not yet
    /// deregistered).
    pub fn is_registered(&self) -> bool {
        self.reg().is_registered()
    }

    /// What the registrar returned for this registration (a buffer index,
    /// a key). Meaningful to the device only inside a use ([`RegHandle::enter`]):
    /// outside one it may be deregistered at any moment.
    #[inline]
    pub fn registration(&self) -> &R::Handle {
        self.reg()
            .held()
            .expect("a handed-out registration was registered")
    }

    /// Starts a use (the device starts a transfer): `None` if the
    /// registration was invalidated since this handle was looked up.
    /// Invalidation of the range waits until the [`InUse`] is dropped (or
    /// refuses, if it may not sleep): keep it for the whole transfer,
    /// submission to completion.
    #[inline]
    pub fn enter(&self) -> Option<InUse<'_, P, R>> {
        let reg = self.reg();
        if !reg.enter(self.issued as u8) {
            return None;
        }
        // A registration in use is recent, whenever it was looked up.
        reg.touch(self.cache.now());
        Some(InUse::new(reg, self.acks))
    }
}

impl<P: Primary, R: Registrar<P>> fmt::Debug for RegHandle<'_, P, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reg = self.reg();
        f.debug_struct("RegHandle")
            .field("id", &reg.id)
            .field("start", &format_args!("{:#x}", reg.start))
            .field("end", &format_args!("{:#x}", reg.end))
            .field("valid", &self.is_valid())
            .finish()
    }
}
