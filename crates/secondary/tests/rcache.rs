//! The registration cache on the software MMU: hits, invalidation by each
//! kind of address-space change, LRU eviction, deferred removal, pins,
//! refused non-blocking invalidation, and concurrent stress with and
//! without the injected bugs, all checked by the coherence oracle.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use mmun_secondary::rcache::{RcacheConfig, RegistrationCache};
use mmun_secondary::{Access, Bug, Coherence, Secondary, ViolationKind};
use mmun_softmmu::frame::FrameKind;
use mmun_softmmu::layout::PAGE_SIZE;
use mmun_softmmu::{AddressSpace, MapRequest, Memory, MremapFlags, Pfn};
use mmun_testkit::Rng;

/// Two mappings far apart (different PMDs), so an operation on one never
/// reaches the other, even when mremap realigns its range to a PMD.
const A: u64 = 0x4000_0000;
const B: u64 = 0x8000_0000;
/// Where mremap moves things to.
const ELSEWHERE: u64 = 0xc000_0000;

struct World {
    space: Arc<AddressSpace>,
    coherence: Arc<Coherence>,
    cache: RegistrationCache,
}

fn world(config: RcacheConfig) -> World {
    let space = Arc::new(AddressSpace::new(Arc::new(Memory::new())));
    let coherence = Arc::new(Coherence::new());
    let cache = RegistrationCache::new(Arc::clone(&space), Arc::clone(&coherence), config);
    World {
        space,
        coherence,
        cache,
    }
}

/// A private read-write anonymous mapping of `pages` at `addr`, populated
/// (write faults) unless `lazy`.
fn map(space: &AddressSpace, addr: u64, pages: u64, lazy: bool) {
    let mut req = MapRequest {
        addr,
        len: pages * PAGE_SIZE,
        fixed: true,
        populate: !lazy,
        ..MapRequest::default()
    };
    req.prot.read = true;
    req.prot.write = true;
    assert_eq!(space.mmap(req), Ok(addr));
}

fn mprotect(space: &AddressSpace, addr: u64, len: u64, write: bool) {
    let mut prot = MapRequest::default().prot;
    prot.read = true;
    prot.write = write;
    space.mprotect(addr, len, prot).unwrap();
}

fn pfn(space: &AddressSpace, va: u64) -> Pfn {
    space.translate_frame(va).expect("mapped").pfn
}

fn refcount(space: &AddressSpace, pfn: Pfn) -> u32 {
    space.memory().frame(pfn).refcount
}

fn is_free(space: &AddressSpace, pfn: Pfn) -> bool {
    space.memory().frame(pfn).kind == FrameKind::Free
}

#[test]
fn a_hit_after_a_miss_returns_the_same_registration() {
    let w = world(RcacheConfig::default());
    map(&w.space, A, 8, false);
    let first = w.cache.get(A + 0x10, 3 * PAGE_SIZE).unwrap();
    assert_eq!((first.start(), first.end()), (A, A + 4 * PAGE_SIZE));
    let again = w.cache.get(A + PAGE_SIZE, 2 * PAGE_SIZE).unwrap();
    assert_eq!(again.id(), first.id(), "a sub-range hits");
    assert_eq!(w.cache.stats().registrations, 1);
    for va in (A..A + 4 * PAGE_SIZE).step_by(PAGE_SIZE as usize) {
        assert_eq!(first.translation(va), w.space.translate_frame(va));
        assert_eq!(first.access(va, true), Access::Hit);
    }
    // One byte past it is a miss, and an overlapping request merges.
    assert!(w.cache.lookup(A + 4 * PAGE_SIZE, 1).is_none());
    let merged = w.cache.get(A + 3 * PAGE_SIZE, 2 * PAGE_SIZE).unwrap();
    assert_eq!((merged.start(), merged.end()), (A, A + 5 * PAGE_SIZE));
    assert!(!first.is_valid(), "replaced by the merged registration");
    assert_eq!(first.access(A, false), Access::Miss);
    assert_eq!(w.cache.get(A, PAGE_SIZE).unwrap().id(), merged.id());
    assert_eq!(w.cache.len(), 1);
    assert_eq!(w.coherence.violation_count(), 0);
    assert!(w.coherence.checks() >= 4);
}

/// Three registrations: `hit` in A's first two pages (the operation's
/// target), `beside` in A's pages 4..6, `far` in B. `op` changes A's first
/// two pages; only `hit` may be invalidated.
fn only_the_overlapping_registration_is_invalidated(op: impl FnOnce(&AddressSpace)) {
    let w = world(RcacheConfig::default());
    map(&w.space, A, 8, false);
    map(&w.space, B, 4, false);
    let hit = w.cache.get(A, 2 * PAGE_SIZE).unwrap();
    let beside = w.cache.get(A + 4 * PAGE_SIZE, 2 * PAGE_SIZE).unwrap();
    let far = w.cache.get(B, 2 * PAGE_SIZE).unwrap();
    op(&w.space);
    assert!(!hit.is_valid());
    assert!(!hit.is_pinned());
    assert_eq!(hit.access(A, false), Access::Miss);
    assert!(w.cache.lookup(A, PAGE_SIZE).is_none());
    for (h, va) in [(&beside, A + 4 * PAGE_SIZE), (&far, B)] {
        assert!(h.is_valid() && h.is_pinned());
        assert_eq!(w.cache.lookup(va, PAGE_SIZE).map(|l| l.id()), Some(h.id()));
        assert_eq!(h.access(va, false), Access::Hit);
    }
    assert_eq!(w.cache.len(), 2);
    assert_eq!(w.coherence.violation_count(), 0);
}

#[test]
fn munmap_invalidates_overlapping_registrations_only() {
    only_the_overlapping_registration_is_invalidated(|s| {
        s.munmap(A + PAGE_SIZE, PAGE_SIZE).unwrap()
    });
}

#[test]
fn madvise_dontneed_invalidates_overlapping_registrations_only() {
    only_the_overlapping_registration_is_invalidated(|s| {
        s.madvise(A + PAGE_SIZE, PAGE_SIZE, mmun_script::Advice::DontNeed)
            .unwrap()
    });
}

#[test]
fn mprotect_invalidates_overlapping_registrations_only() {
    only_the_overlapping_registration_is_invalidated(|s| mprotect(s, A, PAGE_SIZE, false));
}

#[test]
fn mremap_invalidates_overlapping_registrations_only() {
    only_the_overlapping_registration_is_invalidated(|s| {
        let flags = MremapFlags {
            may_move: true,
            fixed: Some(ELSEWHERE),
            ..MremapFlags::default()
        };
        assert_eq!(
            s.mremap(A, 2 * PAGE_SIZE, 2 * PAGE_SIZE, flags),
            Ok(ELSEWHERE)
        );
    });
}

#[test]
fn mmap_over_a_registration_invalidates_it() {
    only_the_overlapping_registration_is_invalidated(|s| map(s, A, 1, true));
}

#[test]
fn the_least_recently_used_idle_registration_is_evicted_at_the_bound() {
    let w = world(RcacheConfig {
        max_regions: 3,
        ..RcacheConfig::default()
    });
    map(&w.space, A, 8, false);
    let page = |i: u64| A + 2 * i * PAGE_SIZE;
    let ids: Vec<u64> = (0..3)
        .map(|i| w.cache.get(page(i), PAGE_SIZE).unwrap().id())
        .collect();
    let b_frame = pfn(&w.space, page(1));
    assert_eq!(refcount(&w.space, b_frame), 2, "mapped and pinned");
    // Touch the oldest: the next registration evicts the second instead.
    assert!(w.cache.lookup(page(0), PAGE_SIZE).is_some());
    let d = w.cache.get(page(3), PAGE_SIZE).unwrap();
    assert_eq!(w.cache.len(), 3);
    assert_eq!(w.cache.stats().evictions, 1);
    assert!(w.cache.lookup(page(1), PAGE_SIZE).is_none(), "evicted");
    assert_eq!(w.cache.lookup(page(0), PAGE_SIZE).unwrap().id(), ids[0]);
    assert_eq!(w.cache.lookup(page(2), PAGE_SIZE).unwrap().id(), ids[2]);
    assert_eq!(refcount(&w.space, b_frame), 1, "eviction unpinned it");
    assert_eq!(w.cache.notifiers(), 3, "and removed its notifier");
    drop(d);
}

#[test]
fn a_registration_in_use_is_not_evicted() {
    let w = Arc::new(world(RcacheConfig {
        max_regions: 2,
        ..RcacheConfig::default()
    }));
    map(&w.space, A, 4, false);
    let oldest = w.cache.get(A, PAGE_SIZE).unwrap().id();
    let newer = w.cache.get(A + PAGE_SIZE, PAGE_SIZE).unwrap().id();
    // `oldest` is the least recently used, but a use of it is in flight
    // (on another thread: a use must not call into the cache).
    let (in_use, release) = (Arc::new(Barrier::new(2)), Arc::new(Barrier::new(2)));
    let user = {
        let (w, in_use, release) = (Arc::clone(&w), Arc::clone(&in_use), Arc::clone(&release));
        thread::spawn(move || {
            let h = w.cache.lookup(A, PAGE_SIZE).unwrap();
            let guard = h.begin_use().unwrap();
            in_use.wait();
            release.wait();
            drop(guard);
        })
    };
    in_use.wait();
    // Make `newer` as recent as the use made `oldest`: only the use
    // keeps `oldest` from being the one evicted.
    assert_eq!(
        w.cache.lookup(A + PAGE_SIZE, PAGE_SIZE).unwrap().id(),
        newer
    );
    w.cache.get(A + 2 * PAGE_SIZE, PAGE_SIZE).unwrap();
    release.wait();
    user.join().unwrap();
    assert_eq!(
        w.cache.lookup(A, PAGE_SIZE).unwrap().id(),
        oldest,
        "in use: kept"
    );
    assert!(
        w.cache.lookup(A + PAGE_SIZE, PAGE_SIZE).is_none(),
        "idle: evicted"
    );
    assert_eq!(w.cache.len(), 2);
}

#[test]
fn the_byte_bound_evicts_too() {
    let w = world(RcacheConfig {
        max_bytes: 4 * PAGE_SIZE,
        ..RcacheConfig::default()
    });
    map(&w.space, A, 8, false);
    w.cache.get(A, 2 * PAGE_SIZE).unwrap();
    w.cache.get(A + 3 * PAGE_SIZE, 2 * PAGE_SIZE).unwrap();
    assert_eq!(w.cache.live_bytes(), 4 * PAGE_SIZE);
    w.cache.get(A + 6 * PAGE_SIZE, 2 * PAGE_SIZE).unwrap();
    assert_eq!(w.cache.live_bytes(), 4 * PAGE_SIZE);
    assert!(w.cache.lookup(A, PAGE_SIZE).is_none());
    assert_eq!(w.cache.stats().evictions, 1);
}

#[test]
fn removal_is_deferred_to_the_reaper() {
    let w = world(RcacheConfig::default());
    map(&w.space, A, 4, false);
    map(&w.space, B, 4, false);
    let dead = w.cache.get(A, PAGE_SIZE).unwrap().id();
    w.cache.get(B, PAGE_SIZE).unwrap();
    w.space.munmap(A, PAGE_SIZE).unwrap();
    // The callback may not remove its own notifier: it waits in the index.
    assert_eq!(
        (w.cache.len(), w.cache.pending(), w.cache.notifiers()),
        (1, 1, 2)
    );
    assert_eq!(w.cache.reap(), 1);
    assert_eq!(
        (w.cache.len(), w.cache.pending(), w.cache.notifiers()),
        (1, 0, 1)
    );
    assert_eq!(w.cache.stats().reaped, 1);
    // The next miss reaps as well.
    w.space.munmap(B, PAGE_SIZE).unwrap();
    assert_eq!(w.cache.pending(), 1);
    let fresh = w.cache.get(A + PAGE_SIZE, PAGE_SIZE).unwrap();
    assert_ne!(fresh.id(), dead);
    assert_eq!((w.cache.pending(), w.cache.notifiers()), (0, 1));
}

#[test]
fn invalidation_unpins_so_munmap_frees_the_frames() {
    let w = world(RcacheConfig::default());
    map(&w.space, A, 2, false);
    let h = w.cache.get(A, 2 * PAGE_SIZE).unwrap();
    let frames = [pfn(&w.space, A), pfn(&w.space, A + PAGE_SIZE)];
    for f in frames {
        assert_eq!(refcount(&w.space, f), 2, "mapped and pinned");
    }
    w.space.munmap(A, 2 * PAGE_SIZE).unwrap();
    assert!(!h.is_pinned());
    for f in frames {
        assert!(is_free(&w.space, f), "the zap dropped the last reference");
    }
    drop(h);
    w.cache.reap();
    assert_eq!(w.space.memory().allocated(), 1, "only the zero page");
}

#[test]
fn dropping_the_cache_unpins_everything() {
    let w = world(RcacheConfig::default());
    map(&w.space, A, 4, false);
    w.cache.get(A, 4 * PAGE_SIZE).unwrap();
    let f = pfn(&w.space, A);
    assert_eq!(refcount(&w.space, f), 2);
    drop(w.cache);
    assert_eq!(refcount(&w.space, f), 1);
    w.space.munmap(A, 4 * PAGE_SIZE).unwrap();
    assert!(is_free(&w.space, f));
}

#[test]
fn a_read_only_mapping_is_registered_read_only() {
    let w = world(RcacheConfig::default());
    map(&w.space, A, 2, false);
    mprotect(&w.space, A, 2 * PAGE_SIZE, false);
    let h = w.cache.get(A, PAGE_SIZE).unwrap();
    assert!(!h.translation(A).unwrap().writable);
    assert_eq!(h.access(A, false), Access::Hit);
    assert_eq!(h.access(A, true), Access::Miss, "never written through");
    assert_eq!(
        w.cache.fault(A, true),
        Err(mmun_secondary::FaultError::Unmapped)
    );
    assert_eq!(w.cache.fault(A, false), Ok(()));
    assert_eq!(
        w.cache.get(0x1000, PAGE_SIZE).err(),
        Some(mmun_secondary::FaultError::Unmapped)
    );
    assert_eq!(w.coherence.violation_count(), 0);
}

#[test]
fn a_non_blockable_invalidation_of_a_registration_in_use_is_refused() {
    let w = world(RcacheConfig::default());
    map(&w.space, A, 2, false);
    let h = w.cache.get(A, 2 * PAGE_SIZE).unwrap();
    let frame = pfn(&w.space, A);
    let guard = h.begin_use().expect("live");
    // The OOM reaper may not sleep: the callback refuses (EAGAIN) and the
    // VMA is left alone, so the use in flight stays coherent.
    assert!(!w.space.oom_reap_once());
    assert_eq!(w.space.translate_frame(A), h.translation(A));
    assert_eq!(guard.access(A, true), Access::Hit);
    assert_eq!(w.coherence.violation_count(), 0);
    assert!(!h.is_valid(), "no new use may start");
    assert!(h.begin_use().is_none());
    drop(guard);
    assert!(w.space.oom_reap_once(), "nothing in flight: reaped");
    assert!(is_free(&w.space, frame));
    assert_eq!(w.cache.stats().invalidations, 2);
}

#[test]
fn a_blockable_invalidation_waits_for_the_use_in_flight() {
    let w = world(RcacheConfig::default());
    map(&w.space, A, 1, false);
    let h = w.cache.get(A, PAGE_SIZE).unwrap();
    let guard = h.begin_use().expect("live");
    let done = Arc::new(AtomicBool::new(false));
    let migrator = {
        let (space, done) = (Arc::clone(&w.space), Arc::clone(&done));
        thread::spawn(move || {
            let moved = space.migrate(A, A + PAGE_SIZE);
            done.store(true, Ordering::SeqCst);
            moved
        })
    };
    // The callback kills the registration first, then waits for the use.
    // (No `translate_frame` here: migration holds the page-table lock.)
    while h.is_valid() && !done.load(Ordering::SeqCst) {
        thread::yield_now();
    }
    assert!(
        !done.load(Ordering::SeqCst),
        "migration finished under a use"
    );
    assert!(h.is_pinned(), "unpinned under a use");
    drop(guard);
    assert_eq!(migrator.join().unwrap(), 1);
    assert!(!h.is_pinned());
    assert_ne!(w.space.translate_frame(A), h.translation(A));
    assert_eq!(w.coherence.violations(), vec![]);
}

#[test]
fn a_drain_about_to_sleep_says_so_and_the_last_use_wakes_it() {
    // Leaked: if the drain never wakes, dropping the cache would wait for
    // it too, and the test would hang instead of failing.
    let w: &World = Box::leak(Box::new(world(RcacheConfig::default())));
    map(&w.space, A, 1, false);
    let (told, waiting) = mpsc::channel();
    let told = std::sync::Mutex::new(told);
    w.cache
        .set_drain_hook(Box::new(move || {
            let _ = told.lock().unwrap().send(());
        }))
        .ok()
        .expect("the first drain hook");
    let h = w.cache.get(A, PAGE_SIZE).unwrap();
    let guard = h.begin_use().expect("live");
    let (finished, done) = mpsc::channel();
    let migrator = {
        let space = Arc::clone(&w.space);
        thread::spawn(move || {
            let moved = space.migrate(A, A + PAGE_SIZE);
            finished.send(()).unwrap();
            moved
        })
    };
    waiting
        .recv_timeout(Duration::from_secs(10))
        .expect("the invalidation's drain never said it waits for the use");
    // Time for the drain to fall asleep, so that only the use leaving can
    // wake it.
    thread::sleep(Duration::from_millis(50));
    assert!(done.try_recv().is_err(), "migration finished under a use");
    drop(guard);
    done.recv_timeout(Duration::from_secs(10))
        .expect("the last use left and the drain slept on");
    assert_eq!(migrator.join().unwrap(), 1);
    assert_eq!(w.coherence.violations(), vec![]);
}

#[test]
fn an_invalidation_with_no_use_in_flight_does_not_wait() {
    let w = world(RcacheConfig::default());
    map(&w.space, A, 1, false);
    let drains = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = Arc::clone(&drains);
    w.cache
        .set_drain_hook(Box::new(move || {
            counted.fetch_add(1, Ordering::SeqCst);
        }))
        .ok()
        .expect("the first drain hook");
    let h = w.cache.get(A, PAGE_SIZE).unwrap();
    drop(h.begin_use().expect("live"));
    assert_eq!(w.space.migrate(A, A + PAGE_SIZE), 1);
    assert!(!h.is_valid());
    assert_eq!(drains.load(Ordering::SeqCst), 0);
}

#[test]
fn a_use_still_in_flight_when_its_callback_returns_is_a_violation() {
    // The injected bug acknowledges without waiting, so the migration
    // finishes on this thread while the use is in flight; every page check
    // of the use passed, before the migration.
    let w = world(RcacheConfig {
        bug: Some(Bug::KeepStaleRegistration),
        ..RcacheConfig::default()
    });
    map(&w.space, A, 1, false);
    let h = w.cache.get(A, PAGE_SIZE).unwrap();
    let guard = h.begin_use().expect("live");
    assert_eq!(guard.access(A, false), Access::Hit);
    assert_eq!(w.coherence.violation_count(), 0);
    assert_eq!(w.space.migrate(A, A + PAGE_SIZE), 1);
    drop(guard);
    let violations = w.coherence.violations();
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert_eq!(violations[0].kind, ViolationKind::OutlivedInvalidation);
    assert_eq!(violations[0].va, A);
}

#[test]
fn a_fault_registers_a_buffer_around_the_page_when_asked() {
    let w = world(RcacheConfig {
        fault_pages: 8,
        ..RcacheConfig::default()
    });
    map(&w.space, A, 64, false);
    let page = A + 32 * PAGE_SIZE;
    let (mut longer, mut before) = (false, false);
    for _ in 0..64 {
        w.cache.purge();
        w.cache.fault(page + 5, true).unwrap();
        let h = w.cache.lookup(page, 1).expect("registered");
        assert!(h.start() <= page && page < h.end(), "{h:?}");
        assert!(h.end() - h.start() <= 8 * PAGE_SIZE, "{h:?}");
        longer |= h.end() - h.start() > PAGE_SIZE;
        before |= h.start() < page;
    }
    assert!(longer && before, "every buffer was the page alone");
}

#[test]
fn a_buffer_reaching_unmapped_memory_falls_back_to_the_page() {
    let w = world(RcacheConfig {
        fault_pages: 8,
        ..RcacheConfig::default()
    });
    map(&w.space, B, 1, false);
    for _ in 0..32 {
        w.cache.purge();
        w.cache.fault(B, false).unwrap();
        let h = w.cache.lookup(B, 1).expect("registered");
        assert_eq!((h.start(), h.end()), (B, B + PAGE_SIZE));
    }
}

#[test]
fn exit_releases_every_registration() {
    let w = world(RcacheConfig::default());
    map(&w.space, A, 2, false);
    let h = w.cache.get(A, 2 * PAGE_SIZE).unwrap();
    w.space.exit();
    assert!(!h.is_valid() && !h.is_pinned());
    assert_eq!(
        w.cache.get(A, PAGE_SIZE).err(),
        Some(mmun_secondary::FaultError::Released)
    );
    assert_eq!(w.space.memory().allocated(), 1);
}

// ---------------------------------------------------------------------
// Concurrency: users fault and access pages through the cache while a
// mutator changes the mapping under them.
// ---------------------------------------------------------------------

/// Pages of the stressed mapping.
const PAGES: u64 = 16;

/// One change of the mapping `[A, A + PAGES)`, under the mmap write lock
/// only: invalidations under the mmap read or rmap locks (COW, migration)
/// can deadlock against a use blocked in the oracle (see the rcache
/// module docs), so the stress stays off them. Remapping populates, so
/// no page is left to a later COW fault.
fn mutate(space: &AddressSpace, rng: &mut Rng) {
    let first = rng.below(PAGES);
    let pages = 1 + rng.below((PAGES - first).min(4));
    let (addr, len) = (A + first * PAGE_SIZE, pages * PAGE_SIZE);
    match rng.below(8) {
        0 => {
            space.munmap(addr, len).unwrap();
            map(space, addr, pages, false);
        }
        // Invalidations that hold the rmap lock or the mmap lock for read
        // only, so they can find a use in flight and wait for it.
        4 => {
            space.migrate(addr, addr + len);
        }
        5 => {
            space.ksm_merge(addr, addr + len);
        }
        6 => {
            space.reclaim(addr, addr + len);
        }
        1 => {
            mprotect(space, addr, len, false);
            mprotect(space, addr, len, true);
        }
        2 => {
            let away = MremapFlags {
                may_move: true,
                fixed: Some(ELSEWHERE),
                ..MremapFlags::default()
            };
            let back = MremapFlags {
                fixed: Some(addr),
                ..away
            };
            space.mremap(addr, len, len, away).unwrap();
            space.mremap(ELSEWHERE, len, len, back).unwrap();
        }
        7 => {
            // The child's exit, and the parent's next write faults, COW.
            space.fork().exit();
        }
        _ => map(space, addr, pages, false),
    }
}

/// One user step: the stress harness's fault-then-access on a page, or a
/// multi-page `get` and a use of each page.
fn use_once(cache: &RegistrationCache, rng: &mut Rng) {
    let write = rng.below(2) == 0;
    let first = rng.below(PAGES);
    if rng.below(4) == 0 {
        let pages = 1 + rng.below((PAGES - first).min(3));
        let handle = cache.get(A + first * PAGE_SIZE, pages * PAGE_SIZE);
        if let Some(guard) = handle.as_ref().ok().and_then(|h| h.begin_use()) {
            for p in first..first + pages {
                guard.access(A + p * PAGE_SIZE, write);
            }
        }
        return;
    }
    let va = A + first * PAGE_SIZE + rng.below(PAGE_SIZE);
    if cache.access(va, write) == Access::Miss {
        let _ = cache.fault(va, write);
    }
}

struct Run {
    violations: u64,
    checks: u64,
    invalidations: u64,
    hits: u64,
}

/// Runs `users` user threads and one mutator for at most `rounds` mutator
/// rounds (each followed by `steps` user steps per user), stopping early
/// once the oracle saw a violation if `stop_at_violation`. A watchdog
/// fails the test if it does not finish.
fn stress(config: RcacheConfig, rounds: u64, stop_at_violation: bool) -> Run {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || tx.send(stress_run(config, rounds, stop_at_violation)));
    rx.recv_timeout(Duration::from_secs(300))
        .expect("stress did not finish: deadlock?")
}

fn stress_run(config: RcacheConfig, rounds: u64, stop_at_violation: bool) -> Run {
    const USERS: u64 = 2;
    const STEPS: u64 = 20;
    let w = Arc::new(world(config));
    map(&w.space, A, PAGES, false);
    let stop = Arc::new(AtomicBool::new(false));
    let barrier = Arc::new(Barrier::new(USERS as usize + 1));
    let users: Vec<_> = (0..USERS)
        .map(|u| {
            let (w, stop, barrier) = (Arc::clone(&w), Arc::clone(&stop), Arc::clone(&barrier));
            thread::spawn(move || {
                let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15 ^ (u + 1));
                barrier.wait();
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..STEPS {
                        use_once(&w.cache, &mut rng);
                    }
                }
            })
        })
        .collect();
    let mut rng = Rng::new(0x2545_f491_4f6c_dd1d);
    barrier.wait();
    for _ in 0..rounds {
        mutate(&w.space, &mut rng);
        for _ in 0..STEPS {
            use_once(&w.cache, &mut rng);
        }
        if stop_at_violation && w.coherence.violation_count() > 0 {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for u in users {
        u.join().unwrap();
    }
    let stats = w.cache.stats();
    Run {
        violations: w.coherence.violation_count(),
        checks: w.coherence.checks(),
        invalidations: stats.invalidations,
        hits: stats.hits,
    }
}

#[test]
fn stress_finds_no_violation_in_the_correct_cache() {
    let run = stress(RcacheConfig::default(), 5_000, false);
    assert_eq!(run.violations, 0);
    assert!(run.checks > 1_000 && run.hits > 100 && run.invalidations > 100);
}

#[test]
fn stress_with_a_bounded_cache_finds_no_violation() {
    let config = RcacheConfig {
        max_regions: 3,
        ..RcacheConfig::default()
    };
    let run = stress(config, 2_000, false);
    assert_eq!(run.violations, 0);
    assert!(run.checks > 500);
}

#[test]
fn the_oracle_catches_lookups_that_skip_the_check() {
    let config = RcacheConfig {
        bug: Some(Bug::LookupNoRetry),
        ..RcacheConfig::default()
    };
    let run = stress(config, 2_000, true);
    assert!(run.violations > 0, "{} checks, no violation", run.checks);
}

#[test]
fn the_oracle_catches_registrations_kept_after_invalidation() {
    let config = RcacheConfig {
        bug: Some(Bug::KeepStaleRegistration),
        ..RcacheConfig::default()
    };
    let run = stress(config, 2_000, true);
    assert!(run.violations > 0, "{} checks, no violation", run.checks);
}
