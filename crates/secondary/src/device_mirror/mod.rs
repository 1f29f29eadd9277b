//! A device that mirrors an address space into its own page table on
//! demand: the analogue of `lib/test_hmm.c`'s dmirror, the HMM test driver.
//!
//! * **Subscriptions.** One interval notifier per mirrored range:
//!   [`DeviceMirror::mirror_range`] subscribes a range explicitly (test_hmm
//!   subscribes per command), and a fault, exclusive conversion or
//!   migration outside every subscribed range subscribes the [`CHUNK`]
//!   around the page first, so every page the device maps is covered.
//! * **Fault** ([`DeviceMirror::fault`], `dmirror_range_fault`):
//!   `read_begin` → fault and walk the primary with no device lock held →
//!   [`DriverLock::lock_if_current`](mmun_core::DriverLock::lock_if_current)
//!   (the device lock, then `read_retry`; retry on a collision) → program
//!   the device PTE.
//! * **Invalidate** (`dmirror_interval_invalidate`):
//!   [`DriverLock::lock_for_invalidate`](mmun_core::DriverLock::lock_for_invalidate)
//!   (the device lock, `try_lock` for a non-blockable range and refuse if
//!   busy, then `set_seq`) → zap the overlap. `Migrate`/`Exclusive` ranges
//!   carrying the device's own [`Owner`] are skipped; `Release` drops
//!   everything for good.
//! * **Device accesses** ([`DeviceMirror::access`]) use only the device
//!   table, and every use is checked by the [`Coherence`] oracle under the
//!   device lock.
//! * **Exclusive** ([`DeviceMirror::make_exclusive`]) and **migration**
//!   ([`DeviceMirror::migrate_to_device`], [`DeviceMirror::migrate_to_system`])
//!   and the **snapshot** ([`DeviceMirror::snapshot`]) follow test_hmm's
//!   commands.
//!
//! A [`Bug`] can be injected to break the protocol on purpose; see
//! [`Bug`] for what each does. The textbook steps are `Device::invalidate`
//! and `Device::commit` (`device.rs`); a bug replaces one of them with its
//! own broken version (`bugs.rs`), so the textbook code has no `if bug`.
//!
//! # Locks
//!
//! The device lock is taken inside invalidation callbacks, which the
//! software MMU calls with its page-table lock held: so the device never
//! waits for the primary while holding its lock. Faults walk the primary
//! first; an access whose coherence check finds the page table busy drops
//! the device lock and tries again.

mod bugs;
mod device;
mod migrate;
mod protocol;
mod snapshot;
mod table;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use mmun_core::{Error, IntervalNotifier, Owner};
use mmun_softmmu::layout::{PAGE_SIZE, align_down};
use mmun_softmmu::{AddressSpace, DevicePagemap, DeviceView, Translation, VmFlags};
use parking_lot::{Mutex, RwLock};

use self::device::{Device, MirrorOps};
pub use self::snapshot::SnapshotProt;
use self::table::bump;
pub use self::table::{DevicePte, MirrorStats};
use crate::bug::Bug;
use crate::coherence::{CheckError, Coherence, Use};
use crate::secondary::{Access, Counters, FaultError, Secondary};

/// What [`DeviceMirror`] subscribes around a page that no mirrored range
/// covers: the aligned 2 MiB (one PMD) containing it.
pub const CHUNK: u64 = 2 << 20;

/// Attempts of one fault before it gives up with [`FaultError::Busy`]
/// (test_hmm gives up after `HMM_RANGE_DEFAULT_TIMEOUT`; counting attempts
/// keeps runs deterministic).
pub const MAX_FAULT_ATTEMPTS: usize = 10_000;

/// Times an access backs off from a busy primary before it reports a miss.
const MAX_BUSY_BACKOFFS: usize = 1_000_000;

/// What the device's memory is, as test_hmm's two kinds of device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceMemory {
    /// `MEMORY_DEVICE_COHERENT`: the CPU maps the device's pages as any.
    Coherent,
    /// `MEMORY_DEVICE_PRIVATE`: the CPU cannot address them; it maps them
    /// by device-private entries and a touch migrates them back.
    Private,
}

/// The name in reports and violations.
const NAME: &str = "device-mirror";

/// Called on every fault attempt between the walk of the primary and the
/// device lock, with the page and the attempt number (0 first): the window
/// in which a colliding invalidation must make the fault retry. Tests use
/// it to run an invalidation exactly there.
pub type WalkHook = Arc<dyn Fn(u64, usize) + Send + Sync>;

type Subscription = IntervalNotifier<MirrorOps>;

/// A device mirroring one address space (see the module docs).
///
/// Built with [`DeviceMirror::new`] (a fresh owner) or
/// [`DeviceMirror::with_owner`]; shared as an `Arc` by the threads that
/// drive it. Dropping it (or [`DeviceMirror::close`]) removes its interval
/// notifiers.
pub struct DeviceMirror {
    space: Arc<AddressSpace>,
    coherence: Arc<Coherence>,
    device: Arc<Device>,
    /// The device-private memory's ops, which the memory holds weakly.
    _pagemap: Option<Arc<dyn DevicePagemap>>,
    /// Taken only outside the primary's and the device's locks, so it may
    /// be held across an insert.
    subs: Mutex<Vec<Arc<Subscription>>>,
    walk_hook: RwLock<Option<WalkHook>>,
}

impl DeviceMirror {
    /// A mirror of `space` with an owner of its own, reporting to
    /// `coherence`, built with `bug` injected (`None`: correct).
    pub fn new(
        space: Arc<AddressSpace>,
        coherence: Arc<Coherence>,
        bug: Option<Bug>,
    ) -> Arc<DeviceMirror> {
        DeviceMirror::with_owner(space, coherence, bug, Owner::unique())
    }

    /// The same with a given owner (the `pgmap_owner` its migrations and
    /// exclusive conversions carry), device-coherent memory.
    pub fn with_owner(
        space: Arc<AddressSpace>,
        coherence: Arc<Coherence>,
        bug: Option<Bug>,
        owner: Owner,
    ) -> Arc<DeviceMirror> {
        DeviceMirror::with_memory(space, coherence, bug, owner, DeviceMemory::Coherent)
    }

    /// A mirror whose device memory is of the given kind (test_hmm's
    /// `hmm_device_private` and `hmm_device_coherent` devices). A
    /// device-private one registers its `migrate_to_ram` step with the
    /// address space's memory, for as long as the mirror lives.
    pub fn with_memory(
        space: Arc<AddressSpace>,
        coherence: Arc<Coherence>,
        bug: Option<Bug>,
        owner: Owner,
        memory: DeviceMemory,
    ) -> Arc<DeviceMirror> {
        let device = Arc::new(Device::new(owner, bug));
        let pagemap = (memory == DeviceMemory::Private).then(|| {
            let ops: Arc<dyn DevicePagemap> = Arc::clone(&device) as Arc<dyn DevicePagemap>;
            space.memory().register_device_private(owner, &ops);
            ops
        });
        Arc::new(DeviceMirror {
            space,
            coherence,
            device,
            _pagemap: pagemap,
            subs: Mutex::new(Vec::new()),
            walk_hook: RwLock::new(None),
        })
    }

    /// The kind of its device memory.
    pub fn memory_kind(&self) -> DeviceMemory {
        if self.space.memory().is_device_private(self.device.owner) {
            DeviceMemory::Private
        } else {
            DeviceMemory::Coherent
        }
    }

    /// The owner its own `Migrate`/`Exclusive` ranges carry.
    pub fn owner(&self) -> Owner {
        self.device.owner
    }

    /// The injected bug.
    pub fn bug(&self) -> Option<Bug> {
        self.device.bug
    }

    /// The mirrored address space.
    pub fn space(&self) -> &Arc<AddressSpace> {
        &self.space
    }

    /// Installs (or with `None` removes) the [`WalkHook`].
    pub fn set_walk_hook(&self, hook: Option<WalkHook>) {
        *self.walk_hook.write() = hook;
    }

    /// Subscribes `[start, start + len)` (rounded out to pages) with an
    /// interval notifier of its own, as test_hmm does for a command range.
    ///
    /// # Errors
    ///
    /// [`FaultError::Released`] after exit; [`FaultError::Unmapped`] for a
    /// zero-length or overflowing range.
    pub fn mirror_range(&self, start: u64, len: u64) -> Result<(), FaultError> {
        let first = align_down(start, PAGE_SIZE);
        let end = start.checked_add(len).ok_or(FaultError::Unmapped)?;
        let end = end
            .checked_next_multiple_of(PAGE_SIZE)
            .ok_or(FaultError::Unmapped)?;
        let sub = self.insert(first, end - first)?;
        self.subs.lock().push(sub);
        Ok(())
    }

    /// The subscribed intervals, `[start, end)`, in insertion order.
    pub fn subscriptions(&self) -> Vec<(u64, u64)> {
        let subs = self.subs.lock();
        subs.iter()
            .map(|s| (s.start(), s.last().saturating_add(1)))
            .collect()
    }

    /// Removes every interval notifier and forgets every translation (the
    /// device file's release). Later faults subscribe again; a fault in
    /// flight retries. A migration to the device must not run meanwhile:
    /// the pages it maps would not be covered.
    pub fn close(&self) {
        let subs = std::mem::take(&mut *self.subs.lock());
        // Removing waits for running invalidations of the interval: never
        // with a lock of ours held.
        drop(subs);
        let mut table = self.device.table.lock();
        table.ptes.clear();
        // A fault that found a removed subscription read the generation
        // before this: its commit fails and it subscribes again.
        table.generation += 1;
    }

    /// Whether `Release` has been delivered (the address space exited).
    pub fn is_released(&self) -> bool {
        self.device.table.lock().released
    }

    /// The device PTE for `va`'s page.
    pub fn entry(&self, va: u64) -> Option<DevicePte> {
        let page = align_down(va, PAGE_SIZE);
        self.device.table.lock().ptes.get(&page).copied()
    }

    /// The device PTEs of the pages in `[start, end)`.
    pub fn entries(&self, start: u64, end: u64) -> Vec<(u64, DevicePte)> {
        let table = self.device.table.lock();
        if start >= end {
            return Vec::new();
        }
        table
            .ptes
            .range(start..end)
            .map(|(&va, &p)| (va, p))
            .collect()
    }

    /// Runs `f` on the device page table with the device lock held (an
    /// invalidation of the mirrored range waits meanwhile, a non-blockable
    /// one is refused). `f` must not call into the address space.
    pub fn with_table<R>(&self, f: impl FnOnce(&BTreeMap<u64, DevicePte>) -> R) -> R {
        f(&self.device.table.lock().ptes)
    }

    /// Counts beyond [`Counters`].
    pub fn stats(&self) -> MirrorStats {
        self.device.counts.stats()
    }

    /// `dmirror_range_fault` for `va`'s page: maps it in the device table,
    /// writable whenever the primary's entry is (as test_hmm does); a write
    /// fault first makes the primary's entry writable.
    ///
    /// # Errors
    ///
    /// [`FaultError::Unmapped`] if the primary's fault fails (no VMA, or
    /// not with this access); [`FaultError::Released`] after exit;
    /// [`FaultError::Busy`] after [`MAX_FAULT_ATTEMPTS`] collisions.
    pub fn fault(&self, va: u64, write: bool) -> Result<(), FaultError> {
        self.fault_with(va, |page| {
            let walked = self.walk(page, write)?;
            Ok(walked.map(|translation| DevicePte {
                translation,
                exclusive: false,
            }))
        })
    }

    /// test_hmm's exclusive command for `va`'s page: the primary's entry
    /// becomes a device-exclusive entry of this device
    /// (`make_device_exclusive` with our owner) and the device maps the
    /// frame tagged exclusive. A CPU access takes it back under a `Clear`,
    /// which zaps it here.
    ///
    /// # Errors
    ///
    /// [`FaultError::Unmapped`] if the primary refuses (not private
    /// anonymous writable memory, or a huge mapping); otherwise as
    /// [`DeviceMirror::fault`].
    pub fn make_exclusive(&self, va: u64) -> Result<(), FaultError> {
        self.fault_with(va, |page| {
            let view = self.exclusive_view(page)?;
            Ok(view.map(|v| DevicePte {
                translation: v.translation,
                exclusive: true,
            }))
        })
    }

    /// The retry loop around `walk`, which faults the primary and returns
    /// what to program (`None`: the page changed under it, retry).
    fn fault_with(
        &self,
        va: u64,
        walk: impl Fn(u64) -> Result<Option<DevicePte>, FaultError>,
    ) -> Result<(), FaultError> {
        let page = align_down(va, PAGE_SIZE);
        let protocol = self.device.protocol();
        for attempt in 0..MAX_FAULT_ATTEMPTS {
            // The generation first: a `close` after it fails the commit,
            // one before it cannot have removed the subscription found next.
            let generation = self.generation()?;
            let sub = self.subscription(page)?;
            let seq = sub.read_begin();
            let walked = walk(page)?;
            self.run_walk_hook(page, attempt);
            let commit = |pte| protocol.commit(&self.device, &sub, seq, generation, page, pte);
            if let Some(pte) = walked
                && commit(pte)?
            {
                bump(&self.device.counts.faults);
                return Ok(());
            }
            bump(&self.device.counts.retries);
        }
        Err(FaultError::Busy)
    }

    /// The device uses `va` through its own table, for writing if `write`;
    /// the use is checked by the oracle under the device lock.
    pub fn access(&self, va: u64, write: bool) -> Access {
        self.access_with(va, write, &mut |_| {})
    }

    /// The device reads `buf.len()` bytes from `va` through its own table
    /// (test_hmm's `dmirror_do_read` copying from the pages it maps), page
    /// by page, each use checked as [`DeviceMirror::access`] checks it.
    /// `Miss` at the first page it does not map (the bytes before it are
    /// read).
    pub fn read_bytes(&self, va: u64, buf: &mut [u8]) -> Access {
        let memory = Arc::clone(self.space.memory());
        for (at, range) in page_pieces(va, buf.len()) {
            let piece = &mut buf[range];
            let offset = (at % PAGE_SIZE) as usize;
            let used = self.access_with(at, false, &mut |pfn| memory.read(pfn, offset, piece));
            if used == Access::Miss {
                return Access::Miss;
            }
        }
        Access::Hit
    }

    /// The device writes `bytes` at `va` through its own table
    /// (`dmirror_do_write`), page by page; `Miss` at the first page it
    /// does not map writable.
    pub fn write_bytes(&self, va: u64, bytes: &[u8]) -> Access {
        let memory = Arc::clone(self.space.memory());
        for (at, range) in page_pieces(va, bytes.len()) {
            let piece = &bytes[range];
            let offset = (at % PAGE_SIZE) as usize;
            // A stale translation may name a freed frame: the store is
            // lost there (the oracle has reported the use).
            let used = self.access_with(at, true, &mut |pfn| {
                memory.write(pfn, offset, piece);
            });
            if used == Access::Miss {
                return Access::Miss;
            }
        }
        Access::Hit
    }

    /// [`DeviceMirror::access`] that hands the frame to `use_page` while
    /// the use is still covered by the device lock.
    fn access_with(&self, va: u64, write: bool, use_page: &mut dyn FnMut(u64)) -> Access {
        let page = align_down(va, PAGE_SIZE);
        for _ in 0..MAX_BUSY_BACKOFFS {
            if let Some(access) = self.try_access(page, write, use_page) {
                return access;
            }
            bump(&self.device.counts.busy);
            std::thread::yield_now();
        }
        bump(&self.device.counts.misses);
        Access::Miss
    }

    /// One access attempt; `None` if the primary was busy (the device lock
    /// is dropped on return so the invalidation holding it can proceed).
    fn try_access(&self, page: u64, write: bool, use_page: &mut dyn FnMut(u64)) -> Option<Access> {
        let table = self.device.table.lock();
        let usable = table
            .ptes
            .get(&page)
            .filter(|p| !write || p.translation.writable);
        let Some(pte) = usable.copied() else {
            bump(&self.device.counts.misses);
            return Some(Access::Miss);
        };
        let used = Use {
            secondary: NAME,
            va: page,
            write,
            held: pte.translation,
            device: Some(self.device.owner),
        };
        match self.coherence.try_check(&self.space, &used) {
            Err(CheckError::Busy) => return None,
            // The device wrote the page: its contents change.
            Ok(()) if write => self.space.memory().touch_write(pte.translation.pfn),
            // A stale use is recorded by the oracle; the device used it all
            // the same.
            Ok(()) | Err(CheckError::Stale(_)) => {}
        }
        use_page(pte.translation.pfn);
        drop(table);
        bump(&self.device.counts.hits);
        Some(Access::Hit)
    }

    /// `hmm_range_fault` for one page: the entry as it is if it already
    /// serves the access (`hmm_pte_need_fault` says no fault), else a CPU
    /// fault and the translation read again. `Ok(None)` if the page changed
    /// in between so that it no longer serves this access: the caller
    /// retries.
    fn walk(&self, page: u64, write: bool) -> Result<Option<Translation>, FaultError> {
        let view = self.space.device_view(page, Some(self.device.owner));
        if let Some(own) = view.filter(|v| v.device_private) {
            // hmm_range_fault reports a device-private page of our own
            // memory without faulting it, writable only with its write
            // bit; dmirror_do_fault refuses a write to it otherwise.
            if write && !own.translation.writable {
                return Err(FaultError::Unmapped);
            }
            return Ok(Some(own.translation));
        }
        // An exclusive entry (ours included) is not a CPU translation:
        // hmm_range_fault faults it back, as below.
        let present = view.filter(|v| !v.exclusive).map(|v| v.translation);
        if let Some(t) = present.filter(|t| !write || t.writable) {
            return Ok(Some(t));
        }
        if self.space.access(page, write).is_err() {
            return Err(self.refusal(page, write));
        }
        let now = self.space.translate_frame(page);
        Ok(now.filter(|t| !write || t.writable))
    }

    /// The page of our own device-private memory the primary maps at
    /// `page`, if it maps one.
    fn own_device_private(&self, page: u64) -> Option<Translation> {
        let view = self.space.device_view(page, Some(self.device.owner))?;
        view.device_private.then_some(view.translation)
    }

    /// Our writable exclusive entry at `page`, converting the page first
    /// if the primary holds none (converting it again would take it back
    /// from ourselves: the conversion faults the page in for writing, which
    /// reverts an exclusive entry under a `Clear`). A read-only one is
    /// converted again, so that the primary refuses as Linux's GUP with
    /// `FOLL_WRITE` would.
    fn exclusive_view(&self, page: u64) -> Result<Option<DeviceView>, FaultError> {
        let owner = self.device.owner;
        let ours = |v: &DeviceView| v.exclusive && v.translation.writable;
        if let Some(view) = self.space.device_view(page, Some(owner)).filter(ours) {
            return Ok(Some(view));
        }
        self.space
            .make_device_exclusive(page, owner)
            .map_err(|_| FaultError::Unmapped)?;
        Ok(self.space.device_view(page, Some(owner)).filter(ours))
    }

    /// Why the primary refused a fault at `page` (`hmm_range_fault`'s
    /// errno): `Denied` for a write to a readable VMA without `VM_WRITE`,
    /// `Unmapped` otherwise. Only on the error path: it copies the VMAs.
    fn refusal(&self, page: u64, write: bool) -> FaultError {
        let vmas = self.space.vmas();
        let vma = vmas.iter().find(|v| v.start <= page && page < v.end);
        let flags = vma.map(|v| v.flags);
        let readable_only =
            flags.is_some_and(|f| f.contains(VmFlags::READ) && !f.contains(VmFlags::WRITE));
        if write && readable_only {
            FaultError::Denied
        } else {
            FaultError::Unmapped
        }
    }

    /// The table's generation, read before a walk; `Released` after exit.
    fn generation(&self) -> Result<u64, FaultError> {
        let table = self.device.table.lock();
        if table.released {
            return Err(FaultError::Released);
        }
        Ok(table.generation)
    }

    fn run_walk_hook(&self, page: u64, attempt: usize) {
        let hook = self.walk_hook.read().clone();
        if let Some(hook) = hook {
            hook(page, attempt);
        }
    }

    /// Makes sure every page of `[start, end)` is covered by a subscription.
    fn subscribe(&self, start: u64, end: u64) -> Result<(), FaultError> {
        let mut page = start;
        while page < end {
            let sub = self.subscription(page)?;
            page = sub.last().saturating_add(1);
        }
        Ok(())
    }

    /// A subscription covering `page`, subscribing its [`CHUNK`] if none
    /// does.
    fn subscription(&self, page: u64) -> Result<Arc<Subscription>, FaultError> {
        let mut subs = self.subs.lock();
        let covering = subs.iter().find(|s| s.start() <= page && page <= s.last());
        if let Some(sub) = covering {
            return Ok(Arc::clone(sub));
        }
        let sub = self.insert(align_down(page, CHUNK), CHUNK)?;
        subs.push(Arc::clone(&sub));
        Ok(sub)
    }

    /// `mmu_interval_notifier_insert` of `[start, start + len)`.
    fn insert(&self, start: u64, len: u64) -> Result<Arc<Subscription>, FaultError> {
        if self.is_released() {
            return Err(FaultError::Released);
        }
        let ops = MirrorOps(Arc::clone(&self.device));
        match IntervalNotifier::insert(self.space.mm(), start, len, ops) {
            Ok(sub) => Ok(Arc::new(sub)),
            Err(Error::NoUsers) => Err(FaultError::Released),
            Err(_) => Err(FaultError::Unmapped),
        }
    }
}

/// `[va, va + len)` cut at page boundaries: each piece's address and its
/// range in the caller's buffer.
fn page_pieces(va: u64, len: usize) -> Vec<(u64, std::ops::Range<usize>)> {
    let end = va.saturating_add(len as u64);
    let mut pieces = Vec::new();
    let mut at = va;
    while at < end {
        let next = (align_down(at, PAGE_SIZE) + PAGE_SIZE).min(end);
        pieces.push((at, (at - va) as usize..(next - va) as usize));
        at = next;
    }
    pieces
}

impl Secondary for DeviceMirror {
    fn name(&self) -> &'static str {
        NAME
    }

    fn fault(&self, va: u64, write: bool) -> Result<(), FaultError> {
        DeviceMirror::fault(self, va, write)
    }

    fn access(&self, va: u64, write: bool) -> Access {
        DeviceMirror::access(self, va, write)
    }

    fn counters(&self) -> Counters {
        self.device.counts.counters()
    }
}

impl fmt::Debug for DeviceMirror {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let table = self.device.table.lock();
        f.debug_struct("DeviceMirror")
            .field("owner", &self.device.owner)
            .field("bug", &self.device.bug)
            .field("mapped", &table.ptes.len())
            .field("released", &table.released)
            .finish_non_exhaustive()
    }
}
