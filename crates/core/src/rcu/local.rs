//! Per-thread reader state: the thread's own counter slot in each domain it
//! reads, its read-section depth there (for the global domain with std: the
//! slot's own counts, plus its sections in the shared slot), and (std
//! backend) whether it is some domain's callback worker.
//!
//! The global domain ([`super::global`]) has a dedicated thread-local, so
//! that its read sections, the ones every notifier dispatch takes, cost a
//! thread-local access and two plain counter updates. Other domains are found
//! by identity in a short per-thread list.
//!
//! # The global domain is hook-safe (std backend)
//!
//! Its read sections run inside the dispatch path, which the real-process
//! backend enters from interposed `munmap`/`brk`, possibly while glibc holds
//! its malloc arena lock: they must never call malloc, not even on a
//! thread's first section. So its per-thread state is a thread-local with
//! no destructor (a Rust thread-local with one makes glibc allocate the
//! first time it is touched, to register it), the thread claims one of the
//! slots that registration and grace periods keep free (never a new one),
//! falling back to the shared slot when none is left, and the slot goes
//! back at thread exit through a POSIX thread-specific key created at
//! registration, whose `pthread_setspecific` stores into the thread
//! descriptor without allocating for the first 32 keys of a glibc process.
//! If the key is not among those (or could not be created), threads keep
//! their slot when they exit; registrations and grace periods top the free
//! slots up again.
//!
//! When the thread exits, its thread-local destructors hand its slots back
//! to their domains (`Slot::release`) for a later thread to take over. A
//! slot whose depth is not zero at that point (a guard still alive in a
//! thread-local destroyed later, or leaked with `mem::forget`) is kept
//! claimed forever instead: its lock counts may be ahead of its unlocks, and
//! only the guard that owes the unlock may settle it (through the shared
//! fallback slot, see `Srcu::read_lock`; a dispatch guard of the global
//! domain keeps its slot's counter and settles it there). A leaked guard
//! thus stalls every later grace period of its domain, exactly like a
//! leaked `srcu_read_lock()` in the kernel.
//!
//! A read section that cannot reach the thread-locals at all (one taken
//! from another thread-local's destructor after these were destroyed)
//! reports so (`enter` returns `false`), and the caller counts it in the
//! domain's shared fallback slot.
//!
//! Under loom, the same code runs on loom's mock thread-locals, which loom
//! destroys when each modelled thread finishes, so the models cover slot
//! registration and reuse too.

#![allow(unsafe_code)]

#[cfg(mmun_loom)]
use std::cell::OnceCell;
use std::cell::{Cell, RefCell};

use super::srcu::{Inner, SlotRef};
use crate::sync::Arc;

/// This thread's state for the global domain (loom backend).
#[cfg(mmun_loom)]
struct GlobalLocal {
    /// This thread's slot in the global domain, claimed on its first read
    /// section there.
    slot: OnceCell<SlotRef>,
    /// Read sections of the global domain this thread has open.
    depth: Cell<u32>,
}

#[cfg(mmun_loom)]
impl GlobalLocal {
    fn new() -> Self {
        Self {
            slot: OnceCell::new(),
            depth: Cell::new(0),
        }
    }
}

#[cfg(mmun_loom)]
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
        global_enter(domain, idx)
    } else {
        enter_other(domain, idx)
    }
}

#[cfg(mmun_loom)]
pub(super) fn global_enter(domain: &Inner, idx: usize) -> bool {
    GLOBAL
        .try_with(|local| {
            local
                .slot
                .get_or_init(|| domain.register_slot())
                .owner_lock(idx);
            local.depth.set(local.depth.get() + 1);
        })
        .is_ok()
}

#[cfg(not(mmun_loom))]
#[inline]
pub(super) fn global_enter(_domain: &Inner, idx: usize) -> bool {
    global::enter(idx)
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
/// own slot (`own`), in that same slot. Returns `false`, having counted
/// nothing, if the section was not counted there or the thread-locals are
/// gone by now (the guard outlived them); the caller must then count the
/// unlock in the shared fallback slot. The slot itself was not released for
/// reuse in that case, since its depth was not zero.
#[inline]
pub(super) fn exit(domain: &Inner, idx: usize, own: bool) -> bool {
    if domain.is_global {
        global_exit(idx, own)
    } else {
        own && exit_other(domain, idx)
    }
}

#[cfg(mmun_loom)]
pub(super) fn global_exit(idx: usize, own: bool) -> bool {
    own && GLOBAL
        .try_with(|local| match local.slot.get() {
            Some(slot) => {
                slot.owner_unlock(idx);
                local.depth.set(local.depth.get() - 1);
                true
            }
            None => false,
        })
        .unwrap_or(false)
}

#[cfg(not(mmun_loom))]
#[inline]
pub(super) fn global_exit(idx: usize, own: bool) -> bool {
    global::exit(idx, own)
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
        #[cfg(mmun_loom)]
        return GLOBAL.try_with(|local| local.depth.get()).unwrap_or(0);
        #[cfg(not(mmun_loom))]
        return global::depth();
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

/// This thread's own slot in the global domain, if it has claimed one.
#[cfg(not(mmun_loom))]
#[inline(always)]
pub(super) fn global_slot() -> Option<&'static super::srcu::Slot> {
    global::slot()
}

/// A section of the global domain counted in its shared slot ended.
#[cfg(not(mmun_loom))]
pub(super) fn global_shared_exit() {
    global::shared_exit();
}

/// The global domain's slot this thread counts its sections in, if it has
/// claimed one, and how many sections it has open in the shared slot
/// (fork protocol).
#[cfg(all(unix, not(mmun_loom)))]
pub(super) fn global_own_slot() -> (Option<*const super::srcu::Slot>, u32) {
    global::own_slot()
}

/// Creates the thread-exit key of the global domain's slots, once.
#[cfg(not(mmun_loom))]
pub(super) fn prepare_exit_key() {
    global::prepare_exit_key();
}

/// The global domain's per-thread state with the std backend: a
/// destructor-less thread-local, slots claimed from the free ones and
/// handed back through a POSIX thread-specific key (module docs).
#[cfg(not(mmun_loom))]
mod global {
    use std::cell::Cell;
    use std::ffi::c_void;
    use std::sync::OnceLock;

    use super::super::srcu::Slot;

    struct State {
        /// The slot this thread counts its sections in, once claimed. It
        /// tells the sections open in it itself (`Slot::open_sections`), so
        /// the fast path counts no depth.
        slot: Cell<Option<&'static Slot>>,
        /// Read sections of the global domain this thread has open in the
        /// shared slot (before it could claim one, or after its exit).
        shared: Cell<u32>,
        /// The thread-exit destructor ran: count any later section in the
        /// shared slot.
        exited: Cell<bool>,
    }

    std::thread_local! {
        static STATE: State = const {
            State {
                slot: Cell::new(None),
                shared: Cell::new(0),
                exited: Cell::new(false),
            }
        };
    }

    #[cfg(unix)]
    type Key = libc::pthread_key_t;
    #[cfg(not(unix))]
    type Key = ();

    /// The key whose destructor hands a slot back at thread exit; `None`
    /// if it could not be created or its `pthread_setspecific` may allocate.
    static EXIT_KEY: OnceLock<Option<Key>> = OnceLock::new();

    pub(super) fn prepare_exit_key() {
        EXIT_KEY.get_or_init(create_exit_key);
    }

    #[cfg(not(unix))]
    fn create_exit_key() -> Option<Key> {
        None
    }

    #[cfg(unix)]
    fn create_exit_key() -> Option<Key> {
        let mut key: libc::pthread_key_t = 0;
        // SAFETY: `key` is a valid place to store the new key, and the
        // destructor is an `extern "C" fn(*mut c_void)` as required.
        let rc = unsafe { libc::pthread_key_create(&mut key, Some(release_at_exit)) };
        if rc != 0 {
            return None;
        }
        // glibc keeps the values of its first 32 keys in the thread
        // descriptor; later ones live in blocks it callocs on first use.
        if cfg!(target_env = "gnu") && key >= 32 {
            // SAFETY: `key` was just created and is used nowhere else.
            unsafe { libc::pthread_key_delete(key) };
            return None;
        }
        Some(key)
    }

    /// Runs at thread exit (after the Rust thread-local destructors) for a
    /// thread that claimed a slot: hands it back unless a section is still
    /// open in it (a leaked guard, or one a later destructor drops), which
    /// then keeps it for good: that guard's unlock still goes to it.
    #[cfg_attr(not(unix), allow(dead_code))]
    extern "C" fn release_at_exit(_slot: *mut c_void) {
        STATE.with(|state| {
            state.exited.set(true);
            if let Some(slot) = state.slot.get()
                && slot.open_sections() == 0
            {
                state.slot.set(None);
                slot.release();
                crate::rcu::global().inner.note_released();
            }
        });
    }

    /// This thread's own slot, if it has claimed one.
    #[inline(always)]
    pub(super) fn slot() -> Option<&'static Slot> {
        STATE.with(|state| state.slot.get())
    }

    /// Counts a section's lock in this thread's slot (claiming one if
    /// needed): `true`; else records a section of the shared slot, which
    /// the caller counts there: `false`.
    #[inline]
    pub(super) fn enter(idx: usize) -> bool {
        STATE.with(|state| {
            let slot = match state.slot.get() {
                Some(slot) => slot,
                None => match claim(state) {
                    Some(slot) => slot,
                    None => {
                        state.shared.set(state.shared.get() + 1);
                        return false;
                    }
                },
            };
            slot.owner_lock(idx);
            true
        })
    }

    /// The first section of this thread (or one after the pool ran dry).
    #[cold]
    fn claim(state: &State) -> Option<&'static Slot> {
        if state.exited.get() {
            return None;
        }
        let slot = crate::rcu::global().inner.claim_spare()?;
        #[cfg(unix)]
        if let Some(Some(key)) = EXIT_KEY.get() {
            // SAFETY: `key` is a live key of this process; the value is
            // only handed back to `release_at_exit`, which ignores it.
            unsafe { libc::pthread_setspecific(*key, std::ptr::from_ref(slot).cast()) };
        }
        state.slot.set(Some(slot));
        Some(slot)
    }

    /// Counts the unlock of a section [`enter`] counted in this thread's
    /// slot (`own`), there: `true`; else forgets a shared section, whose
    /// unlock the caller counts in the shared slot: `false`.
    #[inline]
    pub(super) fn exit(idx: usize, own: bool) -> bool {
        STATE.with(|state| match state.slot.get() {
            Some(slot) if own => {
                slot.owner_unlock(idx);
                true
            }
            _ => {
                state.shared.set(state.shared.get() - 1);
                false
            }
        })
    }

    /// A section of the shared slot ended (its unlock is counted there).
    pub(super) fn shared_exit() {
        STATE.with(|state| state.shared.set(state.shared.get() - 1));
    }

    /// Read sections of the global domain this thread has open.
    pub(super) fn depth() -> u32 {
        STATE.with(|state| {
            let own = state.slot.get().map_or(0, Slot::open_sections);
            u32::try_from(own).unwrap_or(u32::MAX) + state.shared.get()
        })
    }

    /// This thread's slot, and how many sections it has open in the
    /// shared slot.
    #[cfg(unix)]
    pub(super) fn own_slot() -> (Option<*const Slot>, u32) {
        STATE.with(|state| (state.slot.get().map(std::ptr::from_ref), state.shared.get()))
    }
}
