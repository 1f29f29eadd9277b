//! The software-MMU instance: [`SoftPrimary`] (an address space of
//! `mmun-softmmu` whose uses the coherence oracle checks), [`Pins`] (GUP's
//! frame references), and what the stress harness drives through
//! [`Secondary`].

use std::cell::{Cell, RefCell};
use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};

use mmun_core::Mm;
use mmun_softmmu::frame::ZERO_PFN;
use mmun_softmmu::layout::{PAGE_SIZE, align_down};
use mmun_softmmu::{AddressSpace, Memory, Translation};

use super::Rcache;
use super::backend::{Primary, Registrar, Step};
use super::config::{RcacheConfig, bump};
use super::handle::RegHandle;
use super::in_use::InUse;
use super::registration::{Registration, State};
use crate::coherence::{CheckError, Coherence, Use};
use crate::secondary::{Access, Counters, FaultError, Secondary};

/// The name the oracle reports violations under.
const NAME: &str = "rcache";

/// The registration cache over a software-MMU address space, pinning
/// frames, every use checked by the coherence oracle.
pub type RegistrationCache = Rcache<SoftPrimary, Pins>;

/// A handle of a [`RegistrationCache`].
pub type SoftHandle<'c> = RegHandle<'c, SoftPrimary, Pins>;

/// A hook a test harness runs in the middle of a use, while the use
/// reference is held: where a real device's transfer takes its time.
pub type UseHook = Box<dyn Fn() + Send + Sync>;

/// A software-MMU address space as the cache's primary, with the oracle
/// that checks each use and the stress harness's knobs.
pub struct SoftPrimary {
    space: Arc<AddressSpace>,
    coherence: Arc<Coherence>,
    /// Counts [`Secondary::fault`]s, to choose their buffers.
    buffers: AtomicU64,
    /// Called in the middle of each [`Secondary::access`] use (see
    /// [`RegistrationCache::set_use_hook`]).
    use_hook: OnceLock<UseHook>,
    /// Called when a drain is about to sleep (see
    /// [`RegistrationCache::set_drain_hook`]).
    drain_hook: OnceLock<UseHook>,
}

impl SoftPrimary {
    /// `space`, whose uses `coherence` checks.
    pub fn new(space: Arc<AddressSpace>, coherence: Arc<Coherence>) -> SoftPrimary {
        SoftPrimary {
            space,
            coherence,
            buffers: AtomicU64::new(0),
            use_hook: OnceLock::new(),
            drain_hook: OnceLock::new(),
        }
    }
}

impl fmt::Debug for SoftPrimary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SoftPrimary").finish_non_exhaustive()
    }
}

impl Primary for SoftPrimary {
    /// The translations the walk found, not yet pinned.
    type Pages = Vec<Translation>;
    type Error = FaultError;
    /// The software MMU calls no hook in the caller's thread.
    type Quiet = ();
    const PAGE_SIZE: u64 = PAGE_SIZE;

    fn mm(&self) -> &Arc<Mm> {
        self.space.mm()
    }

    /// Faults every page in (for writing where the mapping allows it: it
    /// breaks COW now, as `ibv_reg_mr` with write access does) and
    /// translates it.
    fn walk(&self, start: u64, end: u64) -> Result<Vec<Translation>, Step<FaultError>> {
        (start..end)
            .step_by(PAGE_SIZE as usize)
            .map(|va| self.walk_page(va))
            .collect()
    }

    fn quiet(&self) {}

    fn awaiting_uses(&self) {
        if let Some(hook) = self.drain_hook.get() {
            hook();
        }
    }
}

impl SoftPrimary {
    /// One page of the walk: the translation as it is if the page table
    /// already maps the page writable (GUP-fast with `FOLL_WRITE`), else a
    /// write fault where the mapping allows it, else a read fault; then the
    /// translation.
    fn walk_page(&self, va: u64) -> Result<Translation, Step<FaultError>> {
        let space = &self.space;
        if let Some(t) = space.translate_frame(va).filter(|t| t.writable) {
            return Ok(t);
        }
        if space.access(va, true).is_err() {
            space
                .access(va, false)
                .map_err(|_| Step::Fail(FaultError::Unmapped))?;
        }
        space.translate_frame(va).ok_or(Step::Retry)
    }
}

/// The software MMU's registrar: a reference on each walked frame, as GUP
/// takes (see the module docs' "Pins"); the handle is the pinned
/// translations.
#[derive(Debug, Default)]
pub struct Pins;

impl Registrar<SoftPrimary> for Pins {
    type Handle = Box<[Translation]>;

    /// Pins every page; a frame freed or reallocated since the walk
    /// translated it means the walk collided with a change: retry.
    fn register(
        &self,
        primary: &SoftPrimary,
        _: u64,
        _: u64,
        pages: Vec<Translation>,
    ) -> Result<Box<[Translation]>, Step<FaultError>> {
        let memory = primary.space.memory();
        for (done, &t) in pages.iter().enumerate() {
            if !pin(memory, t) {
                unpin_all(memory, &pages[..done]);
                return Err(Step::Retry);
            }
        }
        Ok(pages.into_boxed_slice())
    }

    fn deregister(&self, primary: &SoftPrimary, pages: &Box<[Translation]>) {
        unpin_all(primary.space.memory(), pages);
    }
}

/// Takes a reference on the frame life `t` names, as GUP-fast does
/// (`folio_try_get` and a recheck): fails if the frame was freed or
/// reallocated since `translate_frame` saw it, so a pin never lands on a
/// free frame or on the wrong life.
fn pin(memory: &Memory, t: Translation) -> bool {
    if t.pfn == ZERO_PFN {
        // The zero page is never freed and `put` ignores it: no reference.
        return true;
    }
    memory.try_get(t.pfn, t.serial)
}

/// Drops the references [`pin`] took.
fn unpin_all(memory: &Memory, pages: &[Translation]) {
    for t in pages.iter().filter(|t| t.pfn != ZERO_PFN) {
        memory.put(t.pfn);
    }
}

impl RegistrationCache {
    /// An empty cache over `space`, whose uses `coherence` checks.
    pub fn new(
        space: Arc<AddressSpace>,
        coherence: Arc<Coherence>,
        config: RcacheConfig,
    ) -> RegistrationCache {
        Rcache::with_backend(SoftPrimary::new(space, coherence), Pins, config)
    }

    /// Sets the hook every [`Secondary::access`] runs twice: between its
    /// lookup and taking the use reference (a preempted thread), and after
    /// its first page and before the rest, with the use reference held (a
    /// slow transfer: invalidations of the registration must wait for it).
    /// Once per cache.
    ///
    /// # Errors
    ///
    /// Gives `hook` back if one is set already.
    pub fn set_use_hook(&self, hook: UseHook) -> Result<(), UseHook> {
        self.shared.primary.use_hook.set(hook)
    }

    /// Sets the hook an invalidation or eviction runs when it is about to
    /// sleep until the uses of a registration end: a harness holding a use
    /// on purpose (see [`RegistrationCache::set_use_hook`]) learns that it
    /// is being waited for and can let go. Once per cache.
    ///
    /// # Errors
    ///
    /// Gives `hook` back if one is set already.
    pub fn set_drain_hook(&self, hook: UseHook) -> Result<(), UseHook> {
        self.shared.primary.drain_hook.set(hook)
    }

    /// The address space the cache registers memory of.
    pub fn space(&self) -> &Arc<AddressSpace> {
        &self.shared.primary.space
    }
}

impl<'c> SoftHandle<'c> {
    /// Whether the registration still holds its references on the frames.
    pub fn is_pinned(&self) -> bool {
        self.is_registered()
    }

    /// The frame the registration pinned for the page holding `va`, as
    /// the primary mapped it at registration.
    pub fn translation(&self, va: u64) -> Option<Translation> {
        if !(self.start()..self.end()).contains(&va) {
            return None;
        }
        let index = ((va - self.start()) / PAGE_SIZE) as usize;
        self.registration().get(index).copied()
    }

    /// Starts a use (the device starts a transfer): `None` if the
    /// registration was invalidated since this handle was looked up.
    /// Invalidation of the range waits until the guard is dropped (or
    /// refuses, if it may not sleep). Each page used through the guard is
    /// checked by the coherence oracle.
    pub fn begin_use(&self) -> Option<UseGuard<'_>> {
        let inner = self.enter()?;
        Some(UseGuard {
            primary: &self.cache().primary,
            inner: Some(inner),
            reg: self.reg(),
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

/// A use in flight on the software MMU, each page it uses checked by the
/// coherence oracle: while it exists, no invalidation of the registration
/// completes, so the primary still maps every pinned page as it was
/// registered.
pub struct UseGuard<'h> {
    primary: &'h SoftPrimary,
    /// The use reference; taken out (released) first when the guard drops.
    inner: Option<InUse<'h, SoftPrimary, Pins>>,
    /// The registration, as the handle keeps it (after the use ends too).
    reg: &'h Registration<SoftPrimary, Pins>,
    /// The first page used, named if the use outlived an invalidation.
    first: Cell<Option<Use>>,
    /// Uses whose check found the primary's page-table lock taken; checked
    /// once the use has ended (see `access`).
    deferred: RefCell<Vec<Use>>,
}

impl UseGuard<'_> {
    fn in_use(&self) -> &InUse<'_, SoftPrimary, Pins> {
        self.inner.as_ref().expect("released only on drop")
    }

    /// Uses the page holding `va` (a DMA read or write of it), checked
    /// against the primary by the coherence oracle. [`Access::Miss`] if
    /// the registration does not cover `va`, or it is a write to a page
    /// registered read-only.
    pub fn access(&self, va: u64, write: bool) -> Access {
        let in_use = self.in_use();
        if !(in_use.start()..in_use.end()).contains(&va) {
            return Access::Miss;
        }
        let index = ((va - in_use.start()) / PAGE_SIZE) as usize;
        let Some(&held) = in_use.registration().get(index) else {
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
        let primary = self.primary;
        if let Err(CheckError::Busy) = primary.coherence.try_check(&primary.space, &used) {
            self.deferred.borrow_mut().push(used);
        }
        Access::Hit
    }
}

impl Drop for UseGuard<'_> {
    fn drop(&mut self) {
        let Some(in_use) = self.inner.take() else {
            return;
        };
        let primary = self.primary;
        // The invariant itself, checked without the primary's lock: a
        // callback must not return while a use is in flight. (Before the
        // use ends: after it, a correct callback may return.)
        if in_use.outlived_invalidation()
            && let Some(used) = self.first.get()
        {
            primary.coherence.record_outlived(&used);
        }
        let reg = self.reg;
        drop(in_use);
        // A change of the primary under a registration first invalidates
        // it (`State::Live` never comes back), so a primary that differs
        // while the registration is still live was changed behind its back.
        for used in self.deferred.take() {
            let _ = primary
                .coherence
                .check_after(&primary.space, &used, || reg.state() == State::Live);
        }
    }
}

impl fmt::Debug for UseGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UseGuard").finish_non_exhaustive()
    }
}

impl Secondary for RegistrationCache {
    fn name(&self) -> &'static str {
        NAME
    }

    /// Gets a registration of the page holding `va`, or of a buffer
    /// around it (see [`RcacheConfig::fault_pages`]).
    fn fault(&self, va: u64, write: bool) -> Result<(), FaultError> {
        let page = align_down(va, PAGE_SIZE);
        let (addr, len) = self.buffer_around(page);
        let handle = match self.get(addr, len) {
            Err(FaultError::Unmapped) if len > PAGE_SIZE => self.get(page, PAGE_SIZE)?,
            result => result?,
        };
        if write && !handle.translation(va).is_some_and(|t| t.writable) {
            // Registered read-only because the mapping refused a write.
            return Err(FaultError::Unmapped);
        }
        bump(&self.shared.stats.faults);
        Ok(())
    }

    /// The hit path, then (after the use hook) one use: of the page
    /// holding `va`, then (after the use hook again) of up to [`RcacheConfig::fault_pages`] - 1 more pages
    /// of the registration.
    fn access(&self, va: u64, write: bool) -> Access {
        let outcome = match self.lookup(va, 1) {
            Some(handle) => self.use_pages(&handle, va, write),
            None => Access::Miss,
        };
        match outcome {
            Access::Hit => bump(&self.shared.stats.hits),
            Access::Miss => bump(&self.shared.stats.misses),
        }
        outcome
    }

    fn counters(&self) -> Counters {
        let s = self.stats();
        Counters {
            faults: s.faults,
            retries: s.retries,
            invalidations: s.invalidations,
            hits: s.hits,
            misses: s.misses,
        }
    }
}

impl RegistrationCache {
    /// The buffer a fault of `page` registers: `(addr, len)` covering it.
    fn buffer_around(&self, page: u64) -> (u64, u64) {
        let most = self.shared.config.fault_pages.max(1);
        if most == 1 {
            return (page, PAGE_SIZE);
        }
        let r = mix(self.shared.primary.buffers.fetch_add(1, Relaxed));
        let pages = 1 + r % most;
        let before = ((r >> 8) % pages).min(page / PAGE_SIZE);
        let after = pages - 1 - before;
        // Unaligned ends half the time, as malloc'd buffers have.
        let (head, tail) = if r & (1 << 40) != 0 {
            ((r >> 16) % PAGE_SIZE, (r >> 28) % PAGE_SIZE)
        } else {
            (0, 0)
        };
        let head = if before == 0 { 0 } else { head };
        let addr = page - before * PAGE_SIZE + head;
        let end = page + (after + 1) * PAGE_SIZE - tail;
        (addr, end - addr)
    }

    /// One use of `handle`: `va`'s page, the hook, then more pages.
    fn use_pages(&self, handle: &SoftHandle<'_>, va: u64, write: bool) -> Access {
        let hook = self.shared.primary.use_hook.get();
        if let Some(hook) = hook {
            // Between the lookup and the use reference: where a thread
            // preempted after its lookup resumes with a handle that may
            // have been invalidated meanwhile.
            hook();
        }
        let Some(guard) = handle.begin_use() else {
            return Access::Miss;
        };
        let outcome = guard.access(va, write);
        if outcome == Access::Miss {
            return outcome;
        }
        if let Some(hook) = hook {
            hook();
        }
        let more = self.shared.config.fault_pages.max(1) - 1;
        let page = align_down(va, PAGE_SIZE);
        for i in 1..=more {
            let next = page + i * PAGE_SIZE;
            if next >= handle.end() {
                break;
            }
            // A read: the registration may be writable only in part.
            guard.access(next, false);
        }
        outcome
    }
}

/// A 64-bit finaliser (splitmix64's), to spread a counter's bits.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
