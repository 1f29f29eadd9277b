//! Per-thread reader state: the thread's own counter slot in each domain it
//! reads, its read-section depth there, and (std backend) whether it is some
//! domain's callback worker.
//!
//! The global domain ([`super::global`]) has a dedicated thread-local, so
//! that its read sections, the ones every notifier dispatch takes, cost a
//! thread-local access and two plain counter updates. Other domains are found
//! by identity in a short per-thread list.
//!
//! When the thread exits, its thread-local destructors hand its slots back
//! to their domains (`Slot::release`) for a later thread to take over. A
//! slot whose depth is not zero at that point (a guard still alive in a
//! thread-local destroyed later, or leaked with `mem::forget`) is kept
//! claimed forever instead: its lock counts may be ahead of its unlocks, and
//! only the guard that owes the unlock may settle it (through the shared
//! fallback slot, see `Srcu::read_lock`). A leaked guard thus stalls every
//! later grace period of its domain, exactly like a leaked
//! `srcu_read_lock()` in the kernel.
//!
//! A read section that cannot reach the thread-locals at all (one taken
//! from another thread-local's destructor after these were destroyed)
//! reports so (`enter` returns `false`), and the caller counts it in the
//! domain's shared fallback slot.
//!
//! Under loom, the same code runs on loom's mock thread-locals, which loom
//! destroys when each modelled thread finishes, so the models cover slot
//! registration and reuse too.

use std::cell::{Cell, OnceCell, RefCell};

use super::srcu::{Inner, SlotRef};
use crate::sync::Arc;

/// This thread's state for the global domain.
struct GlobalLocal {
    /// This thread's slot in the global domain, claimed on its first read
    /// section there.
    slot: OnceCell<SlotRef>,
    /// Read sections of the global domain this thread has open.
    depth: Cell<u32>,
}

impl GlobalLocal {
    const fn new() -> Self {
        Self {
            slot: OnceCell::new(),
            depth: Cell::new(0),
        }
    }
}

impl Drop for GlobalLocal {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.get()
            && self.depth.get() == 0
            && !dropped_by_failed_model()
        {
            slot.release();
        }
    }
}

/// This thread's slot and depth in one domain other than the global one.
struct Entry {
    /// The domain's identity (`Inner::id`).
    domain: u64,
    slot: SlotRef,
    depth: u32,
}

/// This thread's state for every other domain.
struct Local {
    /// One entry per domain this thread has read; entries stay after their
    /// section ends (they cache the slot) and are pruned once their domain
    /// is gone.
    entries: RefCell<Vec<Entry>>,
    /// The domain whose callback worker this thread is, or 0.
    #[cfg(not(mmun_loom))]
    worker_of: Cell<u64>,
}

impl Local {
    const fn new() -> Self {
        Self {
            entries: RefCell::new(Vec::new()),
            #[cfg(not(mmun_loom))]
            worker_of: Cell::new(0),
        }
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        if dropped_by_failed_model() {
            return;
        }
        for entry in self.entries.get_mut().iter() {
            if entry.depth == 0 {
                entry.slot.release();
            }
        }
    }
}

/// Whether this destructor runs because a loom model failed: loom then
/// drops the modelled threads' thread-locals while unwinding, outside the
/// model, where touching a loom atomic would panic again and abort the whole
/// test binary. Nothing needs releasing then. Never the case with std.
fn dropped_by_failed_model() -> bool {
    cfg!(mmun_loom) && std::thread::panicking()
}

#[cfg(not(mmun_loom))]
std::thread_local! {
    static GLOBAL: GlobalLocal = const { GlobalLocal::new() };
    static LOCAL: Local = const { Local::new() };
}

#[cfg(mmun_loom)]
loom::thread_local! {
    static GLOBAL: GlobalLocal = GlobalLocal::new();
    static LOCAL: Local = Local::new();
}

/// Counts the start of a read section of `domain` on index `idx` in this
/// thread's own slot (claiming one on first use) and records one more level
/// of depth. Returns `false`, having done nothing, if this thread's
/// thread-locals are gone; the caller must then count the section in the
/// domain's shared fallback slot.
#[inline]
pub(super) fn enter(domain: &Inner, idx: usize) -> bool {
    if domain.is_global {
        GLOBAL
            .try_with(|local| {
                local
                    .slot
                    .get_or_init(|| domain.register_slot())
                    .owner_lock(idx);
                local.depth.set(local.depth.get() + 1);
            })
            .is_ok()
    } else {
        enter_other(domain, idx)
    }
}

/// [`enter`] for a domain other than the global one.
fn enter_other(domain: &Inner, idx: usize) -> bool {
    LOCAL
        .try_with(|local| {
            let mut entries = local.entries.borrow_mut();
            let pos = match entries.iter().position(|e| e.domain == domain.id) {
                Some(pos) => pos,
                None => {
                    // Forget the slots of dead domains: only this entry
                    // still refers to such a slot once the domain's registry
                    // is gone. A dead domain's slot with open sections
                    // (leaked guards) is kept so that the depth stays right.
                    entries.retain(|e| e.depth > 0 || Arc::strong_count(&e.slot) > 1);
                    entries.push(Entry {
                        domain: domain.id,
                        slot: domain.register_slot(),
                        depth: 0,
                    });
                    entries.len() - 1
                }
            };
            let entry = &mut entries[pos];
            entry.slot.owner_lock(idx);
            entry.depth += 1;
        })
        .is_ok()
}

/// Counts the end of a read section that [`enter`] counted in this thread's
/// own slot, in that same slot. Returns `false`, having done nothing, if the
/// thread-locals are gone by now (the guard outlived them); the caller must
/// then count the unlock in the shared fallback slot. The slot itself was
/// not released for reuse in that case, since its depth was not zero.
#[inline]
pub(super) fn exit(domain: &Inner, idx: usize) -> bool {
    if domain.is_global {
        GLOBAL
            .try_with(|local| match local.slot.get() {
                Some(slot) => {
                    slot.owner_unlock(idx);
                    local.depth.set(local.depth.get() - 1);
                    true
                }
                None => false,
            })
            .unwrap_or(false)
    } else {
        exit_other(domain, idx)
    }
}

/// [`exit`] for a domain other than the global one.
fn exit_other(domain: &Inner, idx: usize) -> bool {
    LOCAL
        .try_with(|local| {
            let mut entries = local.entries.borrow_mut();
            match entries.iter_mut().find(|e| e.domain == domain.id) {
                Some(entry) => {
                    entry.slot.owner_unlock(idx);
                    entry.depth -= 1;
                    true
                }
                None => false,
            }
        })
        .unwrap_or(false)
}

/// This thread's read-section depth in `domain` (0 once the thread-locals
/// are gone).
pub(super) fn depth(domain: &Inner) -> u32 {
    if domain.is_global {
        GLOBAL.try_with(|local| local.depth.get()).unwrap_or(0)
    } else {
        LOCAL
            .try_with(|local| {
                local
                    .entries
                    .borrow()
                    .iter()
                    .find(|e| e.domain == domain.id)
                    .map_or(0, |e| e.depth)
            })
            .unwrap_or(0)
    }
}

/// Marks the current thread as the callback worker of the domain with
/// identity `domain`.
#[cfg(not(mmun_loom))]
pub(super) fn set_worker_of(domain: u64) {
    LOCAL.with(|local| local.worker_of.set(domain));
}

/// Whether the current thread is the callback worker of the domain with
/// identity `domain`.
#[cfg(not(mmun_loom))]
pub(super) fn is_worker_of(domain: u64) -> bool {
    LOCAL
        .try_with(|local| local.worker_of.get() == domain)
        .unwrap_or(false)
}
