//! CPU faults, a device mirror and a thread changing the layout, all at
//! once on one address space.
//!
//! The mirror is an interval notifier over the window that follows the
//! `read_begin` / fault / `read_retry` under the driver lock / program
//! protocol, with `set_seq` and the zap under the same lock in its
//! `invalidate`. What must hold:
//!
//! * after each mirror fault, under the driver lock and with no
//!   invalidation since a fresh `read_begin`, every translation the mirror
//!   holds is the primary's translation (same frame) — the mirror never
//!   holds a translation the primary no longer has;
//! * in each `invalidate` callback (the primary has not changed anything
//!   yet), every frame the mirror holds is still allocated and mapped;
//! * after exit (RELEASE, then UNMAP of everything) the mirror is empty and
//!   only the zero pages are left.
//!
//! Bounded in iterations; a watchdog turns a hang into a failure.

mod notify_log;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use mmun_core::{IntervalNotifier, IntervalNotifierOps, IntervalSub, Range, Seq};
use mmun_softmmu::frame::{FrameKind, Pfn};
use mmun_softmmu::{AddressSpace, Config, MapRequest, Memory, ThpMode};
use mmun_softmmu::{Advice, Prot};
use mmun_testkit::Rng;
use notify_log::R;
use parking_lot::Mutex;

const B: u64 = 0x1000_0000_0000;
const P: u64 = 0x1000;
const M2: u64 = 0x20_0000;
/// Two PMD blocks.
const PAGES: u64 = 1024;
const WINDOW: u64 = PAGES * P;

/// Layout changes the mutator makes.
const MUTATIONS: usize = 2000;
/// Upper bound of faults per faulting thread (they stop with the mutator).
const MAX_FAULTS: usize = 200_000;
const WATCHDOG: Duration = Duration::from_secs(120);

/// The device: its page table (virtual page → frame), behind the driver
/// lock.
struct Mirror {
    name: &'static str,
    table: Mutex<BTreeMap<u64, Pfn>>,
    memory: Arc<Memory>,
    violations: Mutex<Vec<String>>,
    invalidations: AtomicUsize,
    releases: AtomicUsize,
}

impl Mirror {
    fn new(name: &'static str, memory: &Arc<Memory>) -> Mirror {
        Mirror {
            name,
            table: Mutex::new(BTreeMap::new()),
            memory: Arc::clone(memory),
            violations: Mutex::new(Vec::new()),
            invalidations: AtomicUsize::new(0),
            releases: AtomicUsize::new(0),
        }
    }

    fn violation(&self, what: String) {
        let mut v = self.violations.lock();
        if v.len() < 20 {
            v.push(format!("{}: {what}", self.name));
        }
    }
}

impl IntervalNotifierOps for Mirror {
    fn invalidate(&self, sub: &IntervalSub, range: &Range<'_>, cur_seq: Seq) -> bool {
        let mut table = self.table.lock();
        sub.set_seq(cur_seq);
        // The primary changes nothing before this returns: every frame the
        // device still maps must be allocated and mapped by the primary.
        for (&addr, &pfn) in table.iter() {
            let frame = self.memory.frame(pfn);
            if frame.kind == FrameKind::Zero {
                continue;
            }
            let head = self.memory.frame(frame.head);
            let mapped = frame.mapcount > 0 || head.pmd_mapcount > 0;
            if frame.kind == FrameKind::Free || !mapped {
                self.violation(format!(
                    "at {:?} {:#x}..{:#x}: the mirror maps {addr:#x} -> {pfn:#x}, which is {frame:?}",
                    range.event(),
                    range.start(),
                    range.end()
                ));
            }
        }
        let doomed: Vec<u64> = table
            .range(range.start()..range.end())
            .map(|(&a, _)| a)
            .collect();
        for addr in doomed {
            table.remove(&addr);
        }
        self.invalidations.fetch_add(1, Ordering::Relaxed);
        if range.event() == mmun_core::Event::Release {
            self.releases.fetch_add(1, Ordering::Relaxed);
        }
        true
    }
}

/// The device faults `addr` in (`hmm_range_fault` + program under the
/// driver lock). Returns whether it mapped it and how many retries it took.
fn mirror_fault(
    sub: &IntervalNotifier<Mirror>,
    space: &AddressSpace,
    addr: u64,
    write: bool,
) -> (bool, usize) {
    for retries in 0..10_000 {
        let seq = sub.read_begin();
        if space.access(addr, write).is_err() {
            return (false, retries);
        }
        let Some((pfn, _)) = space.translate(addr) else {
            continue;
        };
        let mut table = sub.ops().table.lock();
        if sub.read_retry(seq) {
            continue;
        }
        table.insert(addr, pfn);
        return (true, retries);
    }
    sub.ops()
        .violation(format!("no stable translation of {addr:#x} in 10000 tries"));
    (false, 10_000)
}

/// Under the driver lock, with no invalidation since a fresh `read_begin`:
/// the device's translations are the primary's.
fn verify(sub: &IntervalNotifier<Mirror>, space: &AddressSpace) {
    for _ in 0..10_000 {
        let seq = sub.read_begin();
        let mapped: Vec<u64> = sub.ops().table.lock().keys().copied().collect();
        let primary: Vec<(u64, Option<Pfn>)> = mapped
            .iter()
            .map(|&a| (a, space.translate(a).map(|(pfn, _)| pfn)))
            .collect();
        let table = sub.ops().table.lock();
        if sub.read_retry(seq) {
            continue;
        }
        for (addr, now) in primary {
            // Only this thread adds entries; invalidations only remove them.
            if let Some(&pfn) = table.get(&addr)
                && now != Some(pfn)
            {
                sub.ops().violation(format!(
                    "the mirror maps {addr:#x} -> {pfn:#x}, the primary {now:x?}"
                ));
            }
        }
        return;
    }
    sub.ops()
        .violation("no quiet moment to verify in 10000 tries".into());
}

/// One random layout change in the window.
fn mutate(space: &AddressSpace, rng: &mut Rng) {
    let (page, pages) = if rng.chance(30) {
        let k = rng.below(2);
        let (a, b) = (rng.below(4), rng.below(4));
        (
            k * 512 + a,
            (512 * (1 + rng.below(2)) - b).min(PAGES - k * 512 - a),
        )
    } else {
        let page = rng.below(PAGES);
        (page, (1 + rng.below(32)).min(PAGES - page))
    };
    let (addr, len) = (B + page * P, pages * P);
    let prot = match rng.below(4) {
        0 => R,
        1 => Prot::NONE,
        _ => Prot::RW,
    };
    match rng.below(10) {
        0..=2 => {
            let _ = space.mmap(MapRequest {
                addr,
                len,
                prot: Prot::RW,
                shared: rng.chance(10),
                fixed: true,
                ..MapRequest::default()
            });
            if rng.chance(50) {
                let _ = space.madvise(addr, len, Advice::HugePage);
            }
        }
        3 | 4 => {
            let _ = space.munmap(addr, len);
        }
        5 | 6 => {
            let _ = space.mprotect(addr, len, prot);
        }
        7 => {
            let advice = [
                Advice::DontNeed,
                Advice::Free,
                Advice::Collapse,
                Advice::Remove,
            ][rng.below(4) as usize];
            let _ = space.madvise(addr, len, advice);
        }
        8 => space.fork().exit(),
        _ => {
            let to = B + rng.below(PAGES - pages + 1) * P;
            let flags = mmun_softmmu::MremapFlags {
                fixed: Some(to),
                ..Default::default()
            };
            let _ = space.mremap(addr, len, len, flags);
        }
    }
}

#[derive(Debug, Default)]
struct Stats {
    cpu_faults: usize,
    mirror_faults: usize,
    mirrored: usize,
    retries: usize,
    verifies: usize,
}

fn run(seed: u64) -> (Stats, Vec<String>) {
    let memory = Arc::new(Memory::new());
    let space = Arc::new(AddressSpace::with_config(
        Arc::clone(&memory),
        Config {
            thp: ThpMode::Madvise,
            thp_zero_page: true,
        },
    ));
    space
        .mmap(MapRequest {
            addr: B,
            len: WINDOW,
            prot: Prot::RW,
            fixed: true,
            ..MapRequest::default()
        })
        .unwrap();
    let mirrors: Vec<IntervalNotifier<Mirror>> = ["mirror-a", "mirror-b"]
        .into_iter()
        .map(|name| {
            IntervalNotifier::insert(space.mm(), B, WINDOW, Mirror::new(name, &memory)).unwrap()
        })
        .collect();
    let done = AtomicBool::new(false);
    let stats = Mutex::new(Stats::default());
    // Mirror faults so far: the mutator paces itself on them, so that the
    // layout keeps changing while the devices fault.
    let ticks = AtomicUsize::new(0);
    let start = std::sync::Barrier::new(5);
    std::thread::scope(|scope| {
        // CPU threads.
        for t in 0..2u64 {
            let (space, done, stats, start) = (&space, &done, &stats, &start);
            scope.spawn(move || {
                start.wait();
                let mut rng = Rng::new(seed ^ 0x9e37_79b9_7f4a_7c15_u64.wrapping_mul(t + 1));
                let mut n = 0;
                while !done.load(Ordering::Relaxed) && n < MAX_FAULTS {
                    let addr = B + rng.below(PAGES) * P;
                    let _ = space.access(addr, rng.chance(60));
                    n += 1;
                }
                stats.lock().cpu_faults += n;
            });
        }
        // Device threads, one per mirror.
        for (t, mirror) in mirrors.iter().enumerate() {
            let (space, done, stats, start, ticks) = (&space, &done, &stats, &start, &ticks);
            scope.spawn(move || {
                start.wait();
                let mut rng = Rng::new(seed ^ 0xd1b5_4a32_d192_ed03_u64.wrapping_mul(t as u64 + 7));
                let (mut n, mut mapped, mut retries) = (0, 0, 0);
                while !done.load(Ordering::Relaxed) && n < MAX_FAULTS {
                    let addr = B + rng.below(PAGES) * P;
                    let (ok, r) = mirror_fault(mirror, space, addr, rng.chance(50));
                    mapped += usize::from(ok);
                    retries += r;
                    verify(mirror, space);
                    n += 1;
                    ticks.fetch_add(1, Ordering::Relaxed);
                }
                let mut s = stats.lock();
                s.mirror_faults += n;
                s.mirrored += mapped;
                s.retries += retries;
                s.verifies += n;
            });
        }
        // The layout changer.
        let mut rng = Rng::new(seed);
        start.wait();
        for _ in 0..MUTATIONS {
            mutate(&space, &mut rng);
            let seen = ticks.load(Ordering::Relaxed);
            for _ in 0..1000 {
                if ticks.load(Ordering::Relaxed) >= seen + 2 {
                    break;
                }
                std::thread::yield_now();
            }
        }
        done.store(true, Ordering::Relaxed);
    });
    // Quiet now: one last verification, then exit.
    for mirror in &mirrors {
        verify(mirror, &space);
    }
    space.exit();
    let mut violations = Vec::new();
    for mirror in &mirrors {
        violations.extend(mirror.ops().violations.lock().iter().cloned());
        if !mirror.ops().table.lock().is_empty() {
            violations.push(format!("{}: entries left after exit", mirror.ops().name));
        }
        if mirror.ops().releases.load(Ordering::Relaxed) != 1 {
            violations.push(format!("{}: not released exactly once", mirror.ops().name));
        }
    }
    let warnings = space.mm().warnings();
    if !warnings.is_empty() {
        violations.push(format!("core WARNs: {warnings:?}"));
    }
    drop(mirrors);
    // Only the zero pages may be left.
    let allocated = memory.allocated();
    let (mut seen, mut pfn) = (0, 0);
    while seen < allocated {
        let frame = memory.frame(pfn);
        if frame.kind != FrameKind::Free {
            seen += 1;
            let ok = matches!(frame.kind, FrameKind::Zero);
            if !ok {
                violations.push(format!("frame {pfn:#x} left after exit: {frame:?}"));
                break;
            }
        }
        pfn += 1;
    }
    let stats = stats.into_inner();
    (stats, violations)
}

/// Runs `f` on its own thread; fails instead of hanging.
fn with_watchdog<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(WATCHDOG) {
        Ok(v) => v,
        Err(RecvTimeoutError::Disconnected) => panic!("the concurrent run panicked (see above)"),
        Err(RecvTimeoutError::Timeout) => {
            panic!("the concurrent run did not finish in {WATCHDOG:?}: deadlock or livelock")
        }
    }
}

#[test]
fn a_mirror_following_the_retry_protocol_never_holds_a_stale_translation() {
    let started = Instant::now();
    for seed in [0x1234_5678_9abc_def1u64, 0x0fed_cba9_8765_4321] {
        let (stats, violations) = with_watchdog(move || run(seed));
        assert!(
            violations.is_empty(),
            "seed {seed:#x}: {} violations:\n{}",
            violations.len(),
            violations.join("\n")
        );
        assert!(stats.mirror_faults > 0 && stats.mirrored > 0, "{stats:?}");
        assert!(stats.cpu_faults > 0, "{stats:?}");
        eprintln!("seed {seed:#x}: {stats:?}");
    }
    eprintln!("took {:?}", started.elapsed());
}

/// The callback-side check alone, deterministically: an invalidation that
/// covers a mirrored page reaches the mirror before the page is freed, so
/// a mirror that maps every page of a region sees each one allocated in
/// every callback while the region is unmapped, protected, COWed and split.
#[test]
fn every_invalidation_reaches_the_mirror_before_the_primary_changes() {
    let memory = Arc::new(Memory::new());
    let space = AddressSpace::with_config(
        Arc::clone(&memory),
        Config {
            thp: ThpMode::Always,
            thp_zero_page: true,
        },
    );
    let mirror =
        IntervalNotifier::insert(space.mm(), B, WINDOW, Mirror::new("m", &memory)).unwrap();
    notify_log::map(&space, B, WINDOW, Prot::RW);
    let fill = |write: bool| {
        for page in (0..PAGES).step_by(7) {
            mirror_fault(&mirror, &space, B + page * P, write);
        }
        verify(&mirror, &space);
    };
    fill(false);
    space.access(B + 3 * P, true).unwrap(); // huge zero page → THP
    fill(true);
    let child = space.fork();
    space.access(B + 9 * P, true).unwrap(); // split + COW of a THP tail
    fill(true);
    space.mprotect(B + M2 + 5 * P, 3 * P, R).unwrap(); // split
    fill(false);
    space.madvise(B, 16 * P, Advice::DontNeed).unwrap();
    fill(true);
    space.munmap(B + 100 * P, 300 * P).unwrap(); // splits the VMA: CLEAR of the PMD too
    fill(true);
    space.munmap(B + M2, M2).unwrap(); // a whole block: UNMAP only
    fill(true);
    child.exit();
    space.exit();
    let violations = mirror.ops().violations.lock().clone();
    assert!(violations.is_empty(), "{violations:#?}");
    assert!(mirror.ops().table.lock().is_empty());
    assert!(mirror.ops().invalidations.load(Ordering::Relaxed) > 5);
}
