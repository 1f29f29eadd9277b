//! A thread's own copy of the index snapshot, revalidated with one load:
//! the hit path of [`Rcache::acquire`](super::Rcache::acquire) without
//! `arc-swap`'s two read-modify-writes.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering::Acquire;

use super::backend::{Primary, Registrar};
use super::index::Index;
use super::registration::Registration;
use super::{Rcache, Shared};

/// An index snapshot kept per thread (`Shared::snapshots`) and
/// revalidated by [`Rcache::acquire`](super::Rcache::acquire).
///
/// Any snapshot is a correct place to look a registration up: a
/// registration's state lives in the registration itself, shared by every
/// snapshot, and a use starts only on one still live. A stale snapshot
/// only misses registrations published after it (and keeps dead ones'
/// memory until it is refreshed).
pub struct Snapshot<P: Primary, R: Registrar<P>> {
    /// The cache it belongs to ([`Rcache`]'s unique id).
    cache: u64,
    /// The cache's publication count when it was taken.
    generation: u64,
    pub(super) index: Arc<Index<P, R>>,
    /// The last registration found in it: `[start, end)` and its position
    /// (empty while `start == end`). A repeated hit skips the search: the
    /// dependent loads of the jump table and the bounds, which next to an
    /// I/O are cache misses (measured: the 4 KiB READ_FIXED through the
    /// cache went from 1.07-1.08x to 1.05x a pre-registered buffer).
    last: (u64, u64, usize),
}

impl<P: Primary, R: Registrar<P>> Snapshot<P, R> {
    /// The registration holding `[addr, end)`, whatever its state.
    #[inline(always)]
    pub(super) fn find(&mut self, addr: u64, end: u64) -> Option<&Registration<P, R>> {
        let (start, stop, at) = self.last;
        if !(start <= addr && end <= stop) {
            let at = self.index.position(addr, end)?;
            let reg = &self.index.regs()[at];
            self.last = (reg.start, reg.end, at);
            return Some(reg);
        }
        Some(&self.index.regs()[at])
    }

    /// Whether the snapshot is of `shared`'s current index.
    #[inline(always)]
    pub(super) fn is_current(&self, shared: &Shared<P, R>) -> bool {
        self.cache == shared.id && self.generation == shared.generation.load(Acquire)
    }
}

impl<P: Primary, R: Registrar<P>> Rcache<P, R> {
    /// `slot` made a current snapshot of this cache's index: kept if it is
    /// one, replaced otherwise (the only read-modify-write of this path).
    #[inline(always)]
    pub(super) fn refresh<'s>(
        &self,
        slot: &'s mut Option<Snapshot<P, R>>,
    ) -> &'s mut Snapshot<P, R> {
        let shared = &*self.shared;
        if !slot.as_ref().is_some_and(|s| s.is_current(shared)) {
            *slot = Some(self.take_snapshot());
        }
        slot.as_mut().expect("just refreshed")
    }

    #[cold]
    fn take_snapshot(&self) -> Snapshot<P, R> {
        let shared = &*self.shared;
        // The generation first: the index loaded next is at least that new.
        let generation = shared.generation.load(Acquire);
        Snapshot {
            cache: shared.id,
            generation,
            index: shared.index.load_full(),
            last: (0, 0, 0),
        }
    }
}

impl<P: Primary, R: Registrar<P>> fmt::Debug for Snapshot<P, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("cache", &self.cache)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}
