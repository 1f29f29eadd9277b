//! A KVM-like shadow MMU: a secondary page table filled by faults that walk
//! the primary, kept coherent by one whole-address-space notifier.
//!
//! Kernel counterpart: the MMU-notifier half of `virt/kvm/kvm_main.c` and
//! the fault path of `arch/x86/kvm/mmu/mmu.c` (v6.5; spec §3.1), with one
//! memslot mapping guest frame = host virtual page, so gfn and hva coincide.
//!
//! # Protocol
//!
//! * **Invalidation.** `invalidate_range_start` counts the invalidation
//!   (`mmu_invalidate_in_progress`), widens the range faults must stay out
//!   of, and zaps the shadow entries of the range. `invalidate_range_end`
//!   bumps `mmu_invalidate_seq`, then uncounts. Every event is an unmap.
//! * **Fault** ([`ShadowMmu::prepare_fault`], [`ShadowMmu::commit_fault`]):
//!   snapshot the sequence, walk the primary without `mmu_lock` (the
//!   `__kvm_faultin_pfn`/GUP analogue: a CPU fault, then the translation),
//!   take `mmu_lock`, and retry if an invalidation of the page is in
//!   progress or the sequence moved; otherwise install.
//! * **Aging.** Every use sets the entry's accessed bit; `clear_young` and
//!   `clear_flush_young` test and clear it, `test_young` reads it.
//! * **`change_pte`** follows the TDP MMU's `set_spte_gfn` (see the
//!   callback); **`release`** zaps everything and refuses later faults.
//!
//! # How uses are checked
//!
//! [`Secondary::access`] uses the shadow entry under `mmu_lock` and has the
//! [`Coherence`] oracle compare it with the primary. The comparison cannot
//! be made while `mmu_lock` is held: the software MMU calls the callbacks
//! with its page-table lock held (as Linux calls the young callbacks and
//! `change_pte` under the PTL), the callbacks take `mmu_lock`, and reading
//! the primary takes the page-table lock, so checking under `mmu_lock`
//! would deadlock against any invalidation. Instead the use records which
//! installation of the entry it saw, the primary is read after `mmu_lock`
//! is dropped, and a mismatch is reported only if, with `mmu_lock` taken
//! again, the same installation is still there. Every change of the
//! primary's page is preceded by a start that zaps the entry under
//! `mmu_lock`, so an entry that survived from the use to the re-check while
//! the primary maps something else is one the shadow kept across a change:
//! stale, not a race with the checker. Mismatches whose entry did not
//! survive prove nothing and are only counted
//! ([`ShadowStats::inconclusive`]).

mod bugs;
mod callbacks;
mod protocol;
mod table;

use std::fmt;
use std::sync::Arc;

use mmun_core::Notifier;
use mmun_softmmu::layout::{PAGE_SIZE, align_down};
use mmun_softmmu::{AddressSpace, Translation};

pub use self::callbacks::PreemptHook;
use self::callbacks::{Inner, bump, read};
use self::table::Held;
use crate::{Access, Bug, Coherence, Counters, FaultError, Secondary};

/// The name violations and tables report.
const NAME: &str = "shadow-mmu";

/// A shadow MMU mirroring one address space.
pub struct ShadowMmu {
    space: Arc<AddressSpace>,
    coherence: Arc<Coherence>,
    inner: Arc<Inner>,
    /// Unregisters (calling `release` unless exit did) when the shadow MMU
    /// is dropped, like `kvm_destroy_vm`.
    _notifier: Notifier<Arc<Inner>>,
}

/// A fault between its walk of the primary and its commit: KVM's
/// `struct kvm_page_fault` once `__kvm_faultin_pfn` has returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreparedFault {
    /// The page-aligned address.
    page: u64,
    write: bool,
    mmu_seq: u64,
    translation: Translation,
}

impl PreparedFault {
    /// The page-aligned faulting address.
    pub fn page(&self) -> u64 {
        self.page
    }

    /// Whether it is a write fault.
    pub fn write(&self) -> bool {
        self.write
    }

    /// The sequence snapshot taken before the walk (`fault->mmu_seq`).
    pub fn mmu_seq(&self) -> u64 {
        self.mmu_seq
    }

    /// What the walk of the primary found.
    pub fn translation(&self) -> Translation {
        self.translation
    }
}

/// The outcome of [`ShadowMmu::commit_fault`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// The translation is installed.
    Installed,
    /// An invalidation collided with the walk; nothing was installed and
    /// the fault must start over (`RET_PF_RETRY`).
    Stale,
}

/// Everything the shadow MMU counts, and its current state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShadowStats {
    /// The counts every secondary keeps; `invalidations` counts starts.
    pub counters: Counters,
    /// Walks of the primary repeated because the page changed between the
    /// CPU fault and the translation.
    pub walk_retries: u64,
    /// Starts of non-blockable ranges (the OOM reaper).
    pub nonblocking: u64,
    /// `invalidate_range_end` calls.
    pub ends: u64,
    /// Ends that found no invalidation in progress (a core bug).
    pub unpaired_ends: u64,
    /// Shadow entries zapped by starts and `release`.
    pub zapped: u64,
    /// Uses compared with the primary.
    pub checks: u64,
    /// Mismatches dismissed because the entry changed before the re-check.
    pub inconclusive: u64,
    /// `clear_young` and `clear_flush_young` calls.
    pub aging: u64,
    /// Of those, the ones that found an accessed entry.
    pub young: u64,
    /// `clear_flush_young` calls that found an accessed entry and flushed.
    pub flushes: u64,
    /// `test_young` calls.
    pub test_young: u64,
    /// `change_pte` calls.
    pub change_pte: u64,
    /// Of those, the ones that repointed an entry at the new frame.
    pub change_pte_updates: u64,
    /// `release` calls.
    pub releases: u64,
    /// Installed shadow entries.
    pub entries: usize,
    /// `mmu_invalidate_seq`.
    pub seq: u64,
    /// `mmu_invalidate_in_progress`.
    pub in_progress: u64,
    /// Whether `release` has run.
    pub released: bool,
}

impl ShadowMmu {
    /// Creates a shadow MMU of `space` whose uses `coherence` checks, built
    /// with `bug` if it is one of the shadow MMU's ([`Bug::NoSeqBump`],
    /// [`Bug::IgnoreInProgress`], [`Bug::MissingRangeEnd`]; the other
    /// secondaries' bugs are ignored), and registers its notifier
    /// (`kvm_init_mmu_notifier`).
    ///
    /// # Errors
    ///
    /// Registration errors: [`mmun_core::Error::NoUsers`] once the address
    /// space has exited.
    pub fn new(
        space: Arc<AddressSpace>,
        coherence: Arc<Coherence>,
        bug: Option<Bug>,
    ) -> Result<Arc<ShadowMmu>, mmun_core::Error> {
        let bug = bug.filter(|b| b.secondary() == NAME);
        let inner = Arc::new(Inner::new(Arc::clone(space.memory()), bug));
        let ops = inner.protocol.ops();
        let notifier = Notifier::register(space.mm(), ops, Arc::clone(&inner))?;
        Ok(Arc::new(ShadowMmu {
            space,
            coherence,
            inner,
            _notifier: notifier,
        }))
    }

    /// The bug this shadow MMU was built with.
    pub fn bug(&self) -> Option<Bug> {
        self.inner.bug
    }

    /// The address space it mirrors.
    pub fn space(&self) -> &Arc<AddressSpace> {
        &self.space
    }

    /// Sets the hook run after each release of `mmu_lock` (see
    /// [`PreemptHook`]). Once per shadow MMU.
    ///
    /// # Errors
    ///
    /// Gives `hook` back if one is set already.
    pub fn set_preempt_hook(&self, hook: PreemptHook) -> Result<(), PreemptHook> {
        self.inner
            .preempt
            .set(self::callbacks::Preempt(hook))
            .map_err(|p| p.0)
    }

    /// Sets the hook run at the end of each fault's walk of the primary,
    /// once it has the translation and before `mmu_lock`: where GUP may
    /// sleep, so where an invalidation may start and end under a fault.
    /// Once per shadow MMU.
    ///
    /// # Errors
    ///
    /// Gives `hook` back if one is set already.
    pub fn set_walk_hook(&self, hook: PreemptHook) -> Result<(), PreemptHook> {
        self.inner
            .walked
            .set(self::callbacks::Preempt(hook))
            .map_err(|p| p.0)
    }

    /// The first half of a fault: snapshot the sequence, then walk the
    /// primary (fault it in and translate it) without `mmu_lock`.
    ///
    /// # Errors
    ///
    /// [`FaultError::Unmapped`] if the primary refuses the access;
    /// [`FaultError::Released`] once released or exited.
    pub fn prepare_fault(&self, va: u64, write: bool) -> Result<PreparedFault, FaultError> {
        self.check_live()?;
        let mmu_seq = self.inner.seq_snapshot();
        let translation = self.walk(va, write)?;
        Ok(PreparedFault {
            page: align_down(va, PAGE_SIZE),
            write,
            mmu_seq,
            translation,
        })
    }

    /// A prepared fault whose walk the caller already did: the sequence is
    /// snapshot now and paired with `walked`. This models a walk that runs
    /// after the snapshot yet still sees the primary's old PTE, which Linux
    /// allows between an invalidation's start and its page-table update.
    /// The software MMU holds its page-table lock over that whole span, so
    /// a real walk cannot land there; tests use this to open the window.
    ///
    /// # Errors
    ///
    /// [`FaultError::Released`] once released or exited.
    pub fn prepare_fault_from_walk(
        &self,
        va: u64,
        write: bool,
        walked: Translation,
    ) -> Result<PreparedFault, FaultError> {
        self.check_live()?;
        Ok(PreparedFault {
            page: align_down(va, PAGE_SIZE),
            write,
            mmu_seq: self.inner.seq_snapshot(),
            translation: walked,
        })
    }

    /// The second half of a fault: under `mmu_lock`, install the walked
    /// translation unless an invalidation collided with it
    /// (`is_page_fault_stale`).
    ///
    /// # Errors
    ///
    /// [`FaultError::Released`] once released.
    pub fn commit_fault(&self, fault: PreparedFault) -> Result<Commit, FaultError> {
        let mut table = self.inner.lock();
        if table.is_released() {
            return Err(FaultError::Released);
        }
        let protocol = self.inner.protocol;
        if protocol.fault_is_stale(&self.inner, &table, fault.page, fault.mmu_seq) {
            bump(&self.inner.stats.retries);
            return Ok(Commit::Stale);
        }
        // The entry starts accessed, as KVM's `make_spte` marks the SPTE
        // of a fault (not a prefetch): the faulting use is an access.
        table.install(fault.page, fault.translation, true);
        bump(&self.inner.stats.faults);
        Ok(Commit::Installed)
    }

    /// What the shadow maps at `va` now (not a use: no accessed bit, no
    /// check).
    pub fn translation(&self, va: u64) -> Option<Translation> {
        self.inner.lock().translation(align_down(va, PAGE_SIZE))
    }

    /// Whether `release` has run.
    pub fn is_released(&self) -> bool {
        self.inner.lock().is_released()
    }

    /// The counts and the current state.
    pub fn stats(&self) -> ShadowStats {
        let s = &self.inner.stats;
        let table = self.inner.lock();
        ShadowStats {
            counters: self.counters(),
            walk_retries: read(&s.walk_retries),
            nonblocking: read(&s.nonblocking),
            ends: read(&s.ends),
            unpaired_ends: read(&s.unpaired_ends),
            zapped: read(&s.zapped),
            checks: read(&s.checks),
            inconclusive: read(&s.inconclusive),
            aging: read(&s.aging),
            young: read(&s.young),
            flushes: read(&s.flushes),
            test_young: read(&s.test_young),
            change_pte: read(&s.change_pte),
            change_pte_updates: read(&s.change_pte_updates),
            releases: read(&s.releases),
            entries: table.len(),
            seq: self.inner.seq_locked(&table),
            in_progress: table.in_progress(),
            released: table.is_released(),
        }
    }

    fn check_live(&self) -> Result<(), FaultError> {
        if self.inner.lock().is_released() || !self.space.mm().is_live() {
            return Err(FaultError::Released);
        }
        Ok(())
    }

    /// `__kvm_faultin_pfn`: the primary's translation if its page table
    /// already allows the access (`hva_to_pfn_fast`, GUP-fast), else a CPU
    /// fault of the primary and the translation again (`hva_to_pfn_slow`).
    /// Repeats if the page changed in between (the walk holds no lock
    /// across the two, like GUP between its fault and its pin).
    fn walk(&self, va: u64, write: bool) -> Result<Translation, FaultError> {
        let serves = |t: &Translation| t.writable || !write;
        let mut found = self.space.translate_frame(va).filter(serves);
        loop {
            if let Some(t) = found {
                if let Some(hook) = self.inner.walked.get() {
                    (hook.0)();
                }
                return Ok(t);
            }
            if self.space.access(va, write).is_err() {
                self.check_live()?;
                return Err(FaultError::Unmapped);
            }
            found = self.space.translate_frame(va).filter(serves);
            if found.is_none() {
                bump(&self.inner.stats.walk_retries);
            }
        }
    }

    /// Compares one use with the primary (see the module docs for why the
    /// primary is read after `mmu_lock` is dropped).
    fn check_use(&self, va: u64, write: bool, held: Held) {
        bump(&self.inner.stats.checks);
        let scratch = Coherence::new();
        let Err(violation) = scratch.check(NAME, &self.space, va, held.translation, write) else {
            return;
        };
        let page = align_down(va, PAGE_SIZE);
        if self.inner.lock().still_holds(page, held) {
            self.coherence.record(violation);
        } else {
            bump(&self.inner.stats.inconclusive);
            self.coherence.note_inconclusive();
        }
    }
}

impl Secondary for ShadowMmu {
    fn name(&self) -> &'static str {
        NAME
    }

    /// Faults until the translation is installed, retrying after every
    /// collision with an invalidation.
    fn fault(&self, va: u64, write: bool) -> Result<(), FaultError> {
        loop {
            let prepared = self.prepare_fault(va, write)?;
            if self.commit_fault(prepared)? == Commit::Installed {
                return Ok(());
            }
            // KVM goes back into the guest and takes the fault again; on
            // few cores, retrying at once would mostly find the same
            // invalidation still in progress.
            std::thread::yield_now();
        }
    }

    /// A use through the shadow table only: a miss if there is no entry or
    /// a write finds it read-only; otherwise the accessed bit is set and the
    /// use is checked.
    fn access(&self, va: u64, write: bool) -> Access {
        let page = align_down(va, PAGE_SIZE);
        let held = self.inner.lock().use_page(page, write);
        let Some(held) = held else {
            bump(&self.inner.stats.misses);
            return Access::Miss;
        };
        bump(&self.inner.stats.hits);
        self.check_use(va, write, held);
        Access::Hit
    }

    fn counters(&self) -> Counters {
        let s = &self.inner.stats;
        Counters {
            faults: read(&s.faults),
            retries: read(&s.retries),
            invalidations: read(&s.invalidations),
            hits: read(&s.hits),
            misses: read(&s.misses),
        }
    }
}

impl fmt::Debug for ShadowMmu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShadowMmu")
            .field("bug", &self.inner.bug)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl fmt::Display for ShadowStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}; {} ends, {} zapped, {} aging calls ({} young), {} test_young, \
             {} change_pte ({} repointed), {} checks ({} inconclusive), \
             {} entries, seq {}",
            self.counters,
            self.ends,
            self.zapped,
            self.aging,
            self.young,
            self.test_young,
            self.change_pte,
            self.change_pte_updates,
            self.checks,
            self.inconclusive,
            self.entries,
            self.seq,
        )
    }
}
