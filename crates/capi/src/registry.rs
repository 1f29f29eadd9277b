//! The handles C callers hold: a slot number and a generation, never a
//! pointer, so that a removed, doubly removed or made-up handle is rejected
//! with `-EINVAL` instead of being dereferenced.
//!
//! A handle is `generation << 32 | (slot + 1)` (0 is never a handle). A
//! slot's generation grows each time its occupant leaves, so an old handle
//! of a reused slot no longer matches (for 2^32 reuses of that slot).
//!
//! # Locking
//!
//! Lookups ([`Registry::get`]) take no lock: three Acquire loads (the
//! chunk, the slot's generation, its entry). Everything that changes a
//! slot (`reserve`, `publish`, `take`, `release`) holds `free`, so two
//! removes of one handle cannot both pass the generation check. A lookup
//! racing with the removal of the same handle is the caller's bug (the C
//! header forbids it), as using a freed pointer would be.
//!
//! # fork
//!
//! `prepare` takes every registry's lock and `parent` releases it, so a
//! child never inherits a half-updated free list; `child` releases it after
//! emptying the registry: the child has a fresh address space without
//! subscriptions, so the parent's entries are leaked (they belong to the
//! parent's address space, whose locks the child must not touch) and their
//! handles stop matching.

use std::sync::atomic::{AtomicPtr, AtomicU32, Ordering};

use parking_lot::Mutex;
use parking_lot::lock_api::RawMutex as _;

/// Slots per chunk.
const CHUNK: usize = 256;
/// Chunks per registry: `CHUNK * DIR` handles may be live at once.
const DIR: usize = 4096;
/// No slot (end of the free list).
const NONE: u32 = u32::MAX;

/// One slot: the generation of its current (or next) occupant and the
/// occupant, null while free or reserved.
struct Slot<T> {
    generation: AtomicU32,
    entry: AtomicPtr<T>,
    /// What the hottest lookups of the occupant need, beside the entry so
    /// that they load it with the generation and skip a dereference (the
    /// sequence word of an interval, for `read_retry`).
    hot: AtomicPtr<()>,
    /// The next free slot while this one is free (under the lock).
    next_free: AtomicU32,
}

type Chunk<T> = [Slot<T>; CHUNK];

/// The free list (under the lock).
struct Free {
    head: u32,
    /// Slots `[0, used)` have been handed out at least once.
    used: u32,
}

/// A table of live `T`s addressed by handles.
pub(crate) struct Registry<T> {
    chunks: [AtomicPtr<Chunk<T>>; DIR],
    free: Mutex<Free>,
}

/// A handle's parts.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Parts {
    slot: usize,
    generation: u32,
}

fn split(handle: u64) -> Option<Parts> {
    let slot = (handle & 0xffff_ffff).checked_sub(1)? as usize;
    (slot < CHUNK * DIR).then_some(Parts {
        slot,
        generation: (handle >> 32) as u32,
    })
}

fn join(slot: usize, generation: u32) -> u64 {
    u64::from(generation) << 32 | (slot as u64 + 1)
}

/// The generation after `g`, skipping 0 (no handle is 0).
fn bump(g: u32) -> u32 {
    g.wrapping_add(1).max(1)
}

impl<T> Registry<T> {
    /// An empty registry (a `static`).
    pub(crate) const fn new() -> Registry<T> {
        Registry {
            chunks: [const { AtomicPtr::new(std::ptr::null_mut()) }; DIR],
            free: Mutex::new(Free {
                head: NONE,
                used: 0,
            }),
        }
    }

    fn slot(&self, slot: usize) -> Option<&Slot<T>> {
        let chunk = self.chunks[slot / CHUNK].load(Ordering::Acquire);
        // SAFETY: chunks are leaked boxes, never freed once published.
        (!chunk.is_null()).then(|| unsafe { &(*chunk)[slot % CHUNK] })
    }

    /// The live entry of `handle`, if it is one.
    ///
    /// The reference is valid until the handle is taken; the C caller
    /// promises not to take it meanwhile (see the module docs).
    #[inline]
    pub(crate) fn get(&self, handle: u64) -> Option<&T> {
        let slot = self.live_slot(handle)?;
        let entry = slot.entry.load(Ordering::Acquire);
        // SAFETY: a non-null entry is a leaked box that only `take` (not
        // concurrent with this lookup, by the caller's contract) frees.
        (!entry.is_null()).then(|| unsafe { &*entry })
    }

    /// The `hot` pointer [`Registry::publish`] stored for `handle`, if it
    /// is live; valid as long as the entry.
    #[inline]
    pub(crate) fn hot(&self, handle: u64) -> Option<*const ()> {
        let hot = self.live_slot(handle)?.hot.load(Ordering::Acquire);
        (!hot.is_null()).then_some(hot.cast_const())
    }

    /// The slot of `handle` if its generation matches.
    #[inline]
    fn live_slot(&self, handle: u64) -> Option<&Slot<T>> {
        let parts = split(handle)?;
        let slot = self.slot(parts.slot)?;
        (slot.generation.load(Ordering::Acquire) == parts.generation).then_some(slot)
    }

    /// A handle for an entry to come ([`Registry::publish`]); `None` when
    /// every slot is taken or the chunk cannot be allocated.
    pub(crate) fn reserve(&self) -> Option<u64> {
        let mut free = self.free.lock();
        let slot = if free.head != NONE {
            let slot = free.head as usize;
            free.head = self.slot(slot)?.next_free.load(Ordering::Relaxed);
            slot
        } else {
            let slot = free.used as usize;
            if slot == CHUNK * DIR {
                return None;
            }
            if slot.is_multiple_of(CHUNK) {
                self.add_chunk(slot / CHUNK);
            }
            free.used += 1;
            slot
        };
        let s = self.slot(slot)?;
        let generation = s.generation.load(Ordering::Relaxed).max(1);
        s.generation.store(generation, Ordering::Release);
        Some(join(slot, generation))
    }

    fn add_chunk(&self, index: usize) {
        let chunk: Box<Chunk<T>> = Box::new(std::array::from_fn(|_| Slot {
            generation: AtomicU32::new(1),
            entry: AtomicPtr::new(std::ptr::null_mut()),
            hot: AtomicPtr::new(std::ptr::null_mut()),
            next_free: AtomicU32::new(NONE),
        }));
        self.chunks[index].store(Box::into_raw(chunk), Ordering::Release);
    }

    /// Makes `entry` (and `hot`, a pointer into it or null) what the
    /// reserved `handle` finds.
    pub(crate) fn publish(&self, handle: u64, entry: Box<T>, hot: *const ()) {
        let parts = split(handle).expect("a reserved handle");
        let _free = self.free.lock();
        let slot = self.slot(parts.slot).expect("a reserved slot");
        debug_assert_eq!(slot.generation.load(Ordering::Relaxed), parts.generation);
        slot.hot.store(hot.cast_mut(), Ordering::Release);
        slot.entry.store(Box::into_raw(entry), Ordering::Release);
    }

    /// Ends `handle`: returns its entry and frees the slot, or `None` if
    /// the handle is not live (never issued, already taken).
    pub(crate) fn take(&self, handle: u64) -> Option<Box<T>> {
        let parts = split(handle)?;
        let mut free = self.free.lock();
        let slot = self.slot(parts.slot)?;
        if slot.generation.load(Ordering::Relaxed) != parts.generation {
            return None;
        }
        let entry = slot.entry.swap(std::ptr::null_mut(), Ordering::AcqRel);
        if entry.is_null() {
            return None;
        }
        slot.hot.store(std::ptr::null_mut(), Ordering::Release);
        Self::free_slot(&mut free, slot, parts.slot);
        // SAFETY: published entries are leaked boxes; the generation check
        // under the lock makes this the only `take` that got it.
        Some(unsafe { Box::from_raw(entry) })
    }

    /// Gives back a reserved handle whose entry was never published.
    pub(crate) fn release(&self, handle: u64) {
        let Some(parts) = split(handle) else { return };
        let mut free = self.free.lock();
        if let Some(slot) = self.slot(parts.slot) {
            Self::free_slot(&mut free, slot, parts.slot);
        }
    }

    fn free_slot(free: &mut Free, slot: &Slot<T>, index: usize) {
        let g = slot.generation.load(Ordering::Relaxed);
        slot.generation.store(bump(g), Ordering::Release);
        slot.next_free.store(free.head, Ordering::Relaxed);
        free.head = index as u32;
    }

    /// fork `prepare`: holds the lock until `parent` or `child`.
    pub(crate) fn lock_for_fork(&self) {
        // SAFETY: paired with the `unlock` in `parent_after_fork` or
        // `child_after_fork`, which run in this thread after the fork.
        unsafe { self.free.raw() }.lock();
    }

    /// fork `parent`: releases the lock `lock_for_fork` took.
    pub(crate) fn parent_after_fork(&self) {
        // SAFETY: `lock_for_fork` locked it in this thread.
        unsafe { self.free.raw().unlock() };
    }

    /// fork `child`: every slot free, every entry forgotten, then the lock
    /// released. The entries stay allocated: they belong to the parent's
    /// address space (see the module docs).
    pub(crate) fn child_after_fork(&self) {
        // SAFETY: `lock_for_fork` locked it in this thread before the
        // fork, and this thread is the only one in the child.
        let free = unsafe { &mut *self.free.data_ptr() };
        free.head = NONE;
        for index in (0..free.used as usize).rev() {
            let slot = self.slot(index).expect("handed out, so allocated");
            slot.entry.store(std::ptr::null_mut(), Ordering::Relaxed);
            slot.hot.store(std::ptr::null_mut(), Ordering::Relaxed);
            Self::free_slot(free, slot, index);
        }
        // SAFETY: as above.
        unsafe { self.free.raw().unlock() };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static R: Registry<u32> = Registry::new();

    #[test]
    fn a_taken_handle_is_rejected_and_its_slot_reused_under_a_new_generation() {
        let h = R.reserve().unwrap();
        assert!(R.get(h).is_none(), "reserved, not yet published");
        R.publish(h, Box::new(7), std::ptr::null());
        assert_eq!(R.get(h), Some(&7));
        assert_eq!(R.take(h).as_deref(), Some(&7));
        assert!(R.get(h).is_none());
        assert!(R.take(h).is_none(), "double take");
        let again = R.reserve().unwrap();
        assert_eq!(split(again).unwrap().slot, split(h).unwrap().slot);
        assert_ne!(again, h);
        R.publish(again, Box::new(8), std::ptr::dangling());
        assert_eq!(R.hot(again), Some(std::ptr::dangling()));
        assert_eq!(R.hot(h), None);
        assert!(
            R.get(h).is_none(),
            "the old handle does not see the new entry"
        );
        assert_eq!(R.take(again).as_deref(), Some(&8));
    }

    #[test]
    fn made_up_handles_are_rejected() {
        for h in [0, 1, u64::MAX, (CHUNK * DIR) as u64 + 1, 5 << 32 | 3] {
            assert!(R.get(h).is_none(), "{h:#x}");
            assert!(R.take(h).is_none(), "{h:#x}");
        }
    }

    #[test]
    fn generations_skip_zero() {
        assert_eq!(bump(u32::MAX), 1);
        assert_eq!(bump(1), 2);
    }
}
