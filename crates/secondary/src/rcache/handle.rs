//! What [`RegistrationCache::get`](super::RegistrationCache::get) hands out,
//! and the use reference that invalidation waits for.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::sync::Arc;

use arc_swap::Guard;
use mmun_softmmu::Translation;

use super::index::Index;
use super::registration::{Registration, State};
use super::{NAME, Shared};
use crate::coherence::{CheckError, Use};
use crate::secondary::Access;

/// A registration, as one lookup found it.
///
/// A handle keeps the registration's memory alive but holds off neither
/// invalidation nor eviction: either makes the handle stale, and its uses
/// fail with [`Access::Miss`] from then on; `get` again for a fresh one.
/// (Holding off invalidation for the life of a handle would deadlock a
/// thread that unmaps memory it still holds a handle to.) Each use takes
/// the use reference, which invalidation and eviction do wait for.
///
/// Keep handles short-lived: one from the hit path pins the whole index
/// snapshot it was found in.
pub struct RegHandle<'c> {
    pub(super) cache: &'c Shared,
    pub(super) held: Held,
    /// The state the lookup saw: a use checks that it has not changed since,
    /// as `read_retry` checks the seq `read_begin` returned. A correct lookup
    /// hands out only live registrations.
    pub(super) issued: State,
    /// The registration's acknowledged callbacks when the lookup found it
    /// (read before `issued`): a use must not outlive any later one.
    pub(super) acks: u64,
}

/// How a handle keeps its registration alive.
pub(super) enum Held {
    /// The hit path: the index snapshot it was found in (an `arc-swap`
    /// guard, which costs no reference count in the common case), and its
    /// position there.
    Snapshot(Guard<Arc<Index>>, usize),
    /// The miss path: the registration itself.
    Owned(Arc<Registration>),
}

impl RegHandle<'_> {
    #[inline]
    pub(super) fn reg(&self) -> &Registration {
        match &self.held {
            Held::Snapshot(index, at) => &index.regs()[*at],
            Held::Owned(reg) => reg,
        }
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

    /// Whether the registration still holds its references on the frames.
    pub fn is_pinned(&self) -> bool {
        self.reg().is_pinned()
    }

    /// The frame the registration pinned for the page holding `va`, as
    /// the primary mapped it at registration.
    pub fn translation(&self, va: u64) -> Option<Translation> {
        self.reg().page(va)
    }

    /// Starts a use (the device starts a transfer): `None` if the
    /// registration was invalidated since this handle was looked up.
    /// Invalidation of the range waits until the guard is dropped (or
    /// refuses, if it may not sleep).
    pub fn begin_use(&self) -> Option<UseGuard<'_>> {
        let reg = self.reg();
        if !reg.enter(self.issued) {
            return None;
        }
        // A registration in use is recent, whenever it was looked up.
        reg.touch(self.cache.now());
        Some(UseGuard {
            cache: self.cache,
            reg,
            acks: self.acks,
            first: Cell::new(None),
            deferred: RefCell::new(Vec::new()),
        })
    }

    /// One use of `va`, checked by the coherence oracle: [`Access::Hit`]
    /// if the registration was used, [`Access::Miss`] if it is stale, does
    /// not cover `va`, or is read-only and this is a write.
    pub fn access(&self, va: u64, write: bool) -> Access {
        match self.begin_use() {
            Some(guard) => guard.access(va, write),
            None => Access::Miss,
        }
    }
}

impl fmt::Debug for RegHandle<'_> {
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

/// A use in flight: while it exists, no invalidation of the registration
/// completes, so the primary still maps every pinned page as it was
/// registered.
pub struct UseGuard<'h> {
    cache: &'h Shared,
    reg: &'h Registration,
    /// The registration's acknowledged callbacks when the handle was
    /// looked up: one more by the end of the use means a callback let the
    /// primary go on after the lookup while this use went ahead (during
    /// the use, or before it, which a correct cache's `enter` refuses).
    acks: u64,
    /// The first page used, named if the use outlived an invalidation.
    first: Cell<Option<Use>>,
    /// Uses whose check found the primary's page-table lock taken; checked
    /// once the use has ended (see `access`).
    deferred: RefCell<Vec<Use>>,
}

impl UseGuard<'_> {
    /// Uses the page holding `va` (a DMA read or write of it), checked
    /// against the primary by the coherence oracle. [`Access::Miss`] if
    /// the registration does not cover `va`, or it is a write to a page
    /// registered read-only.
    pub fn access(&self, va: u64, write: bool) -> Access {
        let Some(held) = self.reg.page(va) else {
            return Access::Miss;
        };
        if write && !held.writable {
            return Access::Miss;
        }
        let used = Use {
            secondary: NAME,
            va,
            write,
            held,
            device: None,
        };
        if self.first.get().is_none() {
            self.first.set(Some(used));
        }
        // The check must not wait for the primary's page-table lock: the
        // softmmu holds it around the callbacks, and an invalidation of
        // this registration waits in its callback for this use to end. A
        // busy lock defers the check to the end of the use. A violation is
        // recorded by the oracle; the use happened either way.
        if let Err(CheckError::Busy) = self.cache.coherence.try_check(&self.cache.space, &used) {
            self.deferred.borrow_mut().push(used);
        }
        Access::Hit
    }
}

impl Drop for UseGuard<'_> {
    fn drop(&mut self) {
        // The invariant itself, checked without the primary's lock: a
        // callback must not return while a use is in flight. (Before
        // `leave`: after it, a correct callback may return.)
        if self.reg.acks() != self.acks
            && let Some(used) = self.first.get()
        {
            self.cache.coherence.record_outlived(&used);
        }
        self.reg.leave();
        // A change of the primary under a registration first invalidates
        // it (`State::Live` never comes back), so a primary that differs
        // while the registration is still live was changed behind its back.
        for used in self.deferred.take() {
            let _ = self
                .cache
                .coherence
                .check_after(&self.cache.space, &used, || self.reg.state() == State::Live);
        }
    }
}

impl fmt::Debug for UseGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UseGuard")
            .field("id", &self.reg.id)
            .finish_non_exhaustive()
    }
}
