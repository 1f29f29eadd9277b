//! A secondary MMU following a scripted primary, on built-in data.
//!
//! ```text
//! cargo run -p mmun-core --example follow_invalidations
//! ```
//!
//! * The *primary* page table is a `HashMap` page → PTE (frame, generation,
//!   writable). The script changes it the way the core VM would: every
//!   change of an existing PTE is wrapped in `Invalidation::start` … `end`.
//! * A *device mirror* copies PTEs of `[0x10000, 0x30000)` into its own
//!   table. It subscribes with an [`IntervalNotifier`], faults pages with the
//!   `read_begin` → walk → lock → `read_retry` → program loop, zaps on
//!   invalidation, and skips the migrations it starts itself (its [`Owner`]).
//! * A KVM-like list [`Notifier`] counts invalidations in flight.
//!
//! After every step the mirror is checked against the primary: every
//! translation it holds must be the primary's current one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use mmun_core::notify::PAGE_SIZE;
use mmun_core::{
    Event, IntervalNotifier, IntervalNotifierOps, IntervalSub, Invalidation, Mm, Notifier,
    NotifierOps, Owner, Range, Seq, StartFn,
};

type Table = HashMap<u64, Pte>;
const MIRRORED: (u64, u64) = (0x10000, 0x30000);

#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
struct Pte {
    frame: u64,
    generation: u64,
    writable: bool,
}

/// Maps `page` or changes its PTE (frame and/or protection), bumping its
/// generation; returns the new PTE.
fn set_pte(p: &mut Table, page: u64, frame: Option<u64>, writable: bool) -> Pte {
    let pte = p.entry(page).or_default();
    (pte.frame, pte.writable) = (frame.unwrap_or(pte.frame), writable);
    pte.generation += 1;
    *pte
}

fn unmap(p: &mut Table, start: u64, end: u64) {
    p.retain(|&page, _| !(start..end).contains(&page));
}

/// The device's page table and what its invalidate callback saw.
#[derive(Default)]
struct DeviceState {
    ptes: Table,
    seen: Vec<String>,
}

struct Mirror {
    owner: Owner,
    state: Mutex<DeviceState>,
}

/// The interval notifier's ops: a handle on the shared mirror.
struct MirrorOps(Arc<Mirror>);

impl IntervalNotifierOps for MirrorOps {
    fn invalidate(&self, sub: &IntervalSub, range: &Range<'_>, cur_seq: Seq) -> bool {
        let own = range.event() == Event::Migrate && range.owner() == Some(self.0.owner);
        let mut state = match self.0.state.try_lock() {
            Ok(state) => state,
            Err(_) if range.is_blockable() => self.0.state.lock().unwrap(),
            Err(_) => return false, // would sleep: refuse, the core undoes it all
        };
        if own {
            // Our own migration: the device reprograms its table itself.
            state.seen.push("skipped (own migration)".into());
            return true;
        }
        sub.set_seq(cur_seq);
        let before = state.ptes.len();
        state
            .ptes
            .retain(|&pg, _| !range.overlaps(pg, pg + PAGE_SIZE));
        let zapped = format!("zapped {} page(s)", before - state.ptes.len());
        state.seen.push(zapped);
        true
    }
}

/// KVM-like: `mmu_invalidate_in_progress` and a count of invalidations.
#[derive(Default)]
struct Kvm {
    in_progress: AtomicUsize,
    invalidations: AtomicUsize,
    released: AtomicBool,
}

static KVM_OPS: NotifierOps<Kvm> = NotifierOps {
    invalidate_range_start: Some(StartFn::Infallible(|kvm, _| {
        kvm.in_progress.fetch_add(1, Relaxed);
        kvm.invalidations.fetch_add(1, Relaxed);
    })),
    invalidate_range_end: Some(|kvm, _| {
        kvm.in_progress.fetch_sub(1, Relaxed);
    }),
    release: Some(|kvm, _| kvm.released.store(true, Relaxed)),
    ..NotifierOps::EMPTY
};

struct World {
    mm: Arc<Mm>,
    primary: Mutex<Table>,
    next_frame: AtomicU64,
    mirror: Arc<Mirror>,
    device: IntervalNotifier<MirrorOps>,
    kvm: Notifier<Kvm>,
    faults: usize,
    retries: usize,
}

/// What a change of the primary invalidates.
#[derive(Clone, Copy)]
struct Change {
    event: Event,
    start: u64,
    end: u64,
    owner: Option<Owner>,
}

impl Change {
    fn with_owner(self, owner: Owner) -> Change {
        Change {
            owner: Some(owner),
            ..self
        }
    }
}

impl World {
    fn frame(&self) -> u64 {
        self.next_frame.fetch_add(1, Relaxed)
    }

    fn range(&self, event: Event, start: u64, end: u64) -> Change {
        Change {
            event,
            start,
            end,
            owner: None,
        }
    }

    /// One change of the primary, bracketed by an invalidation of its range
    /// (made under the lock, as every invalidation's range is).
    fn change(&self, what: &str, c: Change, block: bool, mutate: impl FnOnce(&mut Table)) {
        let lock = self.mm.mmap_read();
        let r = Range::new(&lock, c.event, c.start, c.end);
        let r = c.owner.map_or(r, |o| r.with_owner(o));
        let inv = match block {
            true => Ok(Invalidation::start(r)),
            false => Invalidation::start_nonblock(r),
        };
        let Ok(inv) = inv else {
            return println!("{what:<14} refused: would block");
        };
        let (range, in_flight) = (*inv.range(), self.kvm.in_progress.load(Relaxed));
        mutate(&mut self.primary.lock().unwrap());
        inv.end();
        let seen = std::mem::take(&mut self.mirror.state.lock().unwrap().seen);
        let mirror = Some(seen.join(", ")).filter(|s| !s.is_empty());
        let kind = ["non-blockable", "blockable"][usize::from(range.is_blockable())];
        println!(
            "{what:<14} {:<15} [{:#x}, {:#x}) {kind:<13} mirror: {}; kvm in flight {in_flight}",
            range.event().name(),
            range.start(),
            range.end(),
            mirror.as_deref().unwrap_or("not hit"),
        );
        self.check_coherent();
    }

    /// A device fault: `race` runs between the walk and the lock on the
    /// first attempt, standing in for a CPU thread changing the page.
    fn fault(&mut self, page: u64, race: impl FnOnce(&World)) -> Option<Pte> {
        let mut race = Some(race);
        let mut retries = 0;
        loop {
            let seq = self.device.read_begin();
            let walked = self.primary.lock().unwrap().get(&page).copied();
            if let Some(race) = race.take() {
                race(self);
            }
            let mut state = self.mirror.state.lock().unwrap();
            if self.device.read_retry(seq) {
                retries += 1;
                continue; // an invalidation ran since read_begin: walk again
            }
            let pte = walked?; // no primary PTE: the device fault fails
            state.ptes.insert(page, pte);
            drop(state);
            (self.faults, self.retries) = (self.faults + 1, self.retries + retries);
            if retries > 0 {
                let frame = pte.frame;
                println!("fault          {page:#x} -> frame {frame} after {retries} retry");
            }
            return Some(pte);
        }
    }

    /// The invariant: every translation of the mirror is the primary's.
    fn check_coherent(&self) {
        let primary = self.primary.lock().unwrap();
        for (page, pte) in &self.mirror.state.lock().unwrap().ptes {
            let ok = primary.get(page) == Some(pte);
            assert!(ok, "stale mirror PTE at {page:#x}");
        }
    }
}

fn main() {
    let mm = Mm::new();
    let mirror = Arc::new(Mirror {
        owner: Owner::unique(),
        state: Default::default(),
    });
    let (start, end) = MIRRORED;
    let ops = MirrorOps(Arc::clone(&mirror));
    let device = IntervalNotifier::insert(&mm, start, end - start, ops).unwrap();
    let kvm = Notifier::register(&mm, &KVM_OPS, Kvm::default()).unwrap();
    let primary = Mutex::new(HashMap::new());
    let next_frame = AtomicU64::new(100);
    let mut w = World {
        mm,
        primary,
        next_frame,
        mirror,
        device,
        kvm,
        faults: 0,
        retries: 0,
    };

    // Populate: filling empty PTEs needs no invalidation.
    for page in (0x10000..0x20000)
        .step_by(PAGE_SIZE as usize)
        .chain([0x40000])
    {
        set_pte(&mut w.primary.lock().unwrap(), page, Some(w.frame()), true);
    }
    for page in (0x10000..0x18000).step_by(PAGE_SIZE as usize) {
        w.fault(page, |_| {}).expect("mapped");
    }
    println!("populate       primary maps [0x10000, 0x20000) and 0x40000; device faults 8 pages");

    // A CPU write replaces the frame (COW-like CLEAR) while the device is
    // between its walk and its lock: read_retry catches it.
    w.fault(0x18000, |w| {
        let (frame, range) = (w.frame(), w.range(Event::Clear, 0x18000, 0x19000));
        let cow = |p: &mut Table| _ = set_pte(p, 0x18000, Some(frame), true);
        w.change("cow (racing)", range, true, cow);
    })
    .expect("mapped");

    let range = w.range(Event::Unmap, 0x12000, 0x14000);
    w.change("munmap", range, true, |p| unmap(p, 0x12000, 0x14000));
    let range = w.range(Event::ProtectionVma, 0x14000, 0x18000);
    w.change("mprotect", range, true, |p| {
        for page in (0x14000..0x18000).step_by(PAGE_SIZE as usize) {
            set_pte(p, page, None, false);
        }
    });
    let pte = w.fault(0x14000, |_| {}).expect("mapped");
    let (frame, writable) = (pte.frame, pte.writable);
    println!("fault          0x14000 -> frame {frame} writable={writable}");
    assert!(w.fault(0x12000, |_| {}).is_none(), "unmapped");
    println!("fault          0x12000 -> no primary PTE, device fault fails");

    // The device migrates two pages to its own memory: it skips the
    // invalidation and reprograms its table under its lock.
    let frames = [w.frame() + 10_000, w.frame() + 10_000];
    let range = w.range(Event::Migrate, 0x10000, 0x12000);
    let range = range.with_owner(w.mirror.owner);
    w.change("migrate (own)", range, true, |p| {
        let mut device = w.mirror.state.lock().unwrap();
        for (page, frame) in [0x10000, 0x11000].into_iter().zip(frames) {
            device
                .ptes
                .insert(page, set_pte(p, page, Some(frame), true));
        }
    });
    let range = w.range(Event::Clear, 0x40000, 0x41000);
    w.change("madvise", range, true, |p| unmap(p, 0x40000, 0x41000));
    for page in [0x1c000, 0x1d000] {
        w.fault(page, |_| {}).expect("mapped");
    }
    let range = w.range(Event::Unmap, 0x1c000, 0x1e000);
    w.change("oom-reap", range, false, |p| unmap(p, 0x1c000, 0x1e000));

    // Exit: interval notifiers get RELEASE, list notifiers `release`; the
    // final teardown UNMAP reaches interval notifiers only.
    let held = w.mirror.state.lock().unwrap().ptes.len();
    let kvm_before = w.kvm.invalidations.load(Relaxed);
    assert!(w.mm.exit());
    let seen = std::mem::take(&mut w.mirror.state.lock().unwrap().seen).join(", ");
    let released = w.kvm.released.load(Relaxed);
    println!("exit           RELEASE         mirror held {held}: {seen}; kvm released: {released}");
    assert!(released);
    let everything = w.range(Event::Unmap, 0, u64::MAX);
    w.change("exit_mmap", everything, true, HashMap::clear);
    assert_eq!(w.kvm.invalidations.load(Relaxed), kvm_before);
    assert!(w.mirror.state.lock().unwrap().ptes.is_empty());
    assert_eq!(w.kvm.in_progress.load(Relaxed), 0);
    assert!(w.mm.warnings().is_empty(), "{:?}", w.mm.warnings());

    let invalidations = w.kvm.invalidations.load(Relaxed);
    let (faults, retries) = (w.faults, w.retries);
    w.device.remove();
    w.kvm.unregister();
    println!("coherent: {faults} device faults, {invalidations} invalidations, {retries} retries");
}
