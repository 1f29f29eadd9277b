//! The KVM-like shadow MMU against the software MMU: KVM-selftest-like
//! scenarios (spec §4.2), aging (access_tracking), a concurrent stress run
//! checked by the coherence oracle, and each injected bug caught.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use mmun_core::{Notifier, NotifierOps, Range, StartFn};
use mmun_script::{Advice, Prot};
use mmun_secondary::shadow_mmu::{Commit, ShadowMmu};
use mmun_secondary::{Access, Bug, Coherence, FaultError, Secondary, Violation};
use mmun_softmmu::layout::PAGE_SIZE;
use mmun_softmmu::shmem::ShmemObject;
use mmun_softmmu::{AddressSpace, MapRequest, Memory, Translation};
use mmun_testkit::Rng;

const READ_ONLY: Prot = Prot {
    read: true,
    write: false,
    exec: false,
};

/// An address space, the oracle, and a shadow MMU of the space.
struct Setup {
    space: Arc<AddressSpace>,
    oracle: Arc<Coherence>,
    shadow: Arc<ShadowMmu>,
}

fn setup(bug: Option<Bug>) -> Setup {
    let space = Arc::new(AddressSpace::new(Arc::new(Memory::new())));
    with_shadow(space, bug)
}

fn with_shadow(space: Arc<AddressSpace>, bug: Option<Bug>) -> Setup {
    let oracle = Arc::new(Coherence::new());
    let shadow = ShadowMmu::new(Arc::clone(&space), Arc::clone(&oracle), bug).unwrap();
    Setup {
        space,
        oracle,
        shadow,
    }
}

/// Maps `pages` of private anonymous read-write memory.
fn map(space: &AddressSpace, pages: u64) -> u64 {
    space
        .mmap(MapRequest {
            len: pages * PAGE_SIZE,
            prot: Prot::RW,
            ..MapRequest::default()
        })
        .unwrap()
}

fn primary(s: &Setup, va: u64) -> Translation {
    s.space.translate_frame(va).expect("primary maps the page")
}

/// The shadow maps the primary's frame (its permission may be narrower).
fn assert_mirrors(s: &Setup, va: u64) {
    let shadow = s.shadow.translation(va).expect("shadow maps the page");
    let primary = primary(s, va);
    assert_eq!((shadow.pfn, shadow.serial), (primary.pfn, primary.serial));
    assert!(
        !shadow.writable || primary.writable,
        "{shadow:?} {primary:?}"
    );
}

fn assert_no_violations(oracle: &Coherence) {
    assert_eq!(oracle.violation_count(), 0, "{:#?}", oracle.violations());
}

#[test]
fn a_fault_installs_the_primary_frame_and_uses_hit_it() {
    let s = setup(None);
    let va = map(&s.space, 1);
    assert_eq!(s.shadow.access(va, false), Access::Miss);
    s.shadow.fault(va + 8, true).unwrap();
    assert_mirrors(&s, va);
    assert!(s.shadow.translation(va).unwrap().writable);
    assert_eq!(s.shadow.access(va + 16, true), Access::Hit);
    let c = s.shadow.counters();
    assert_eq!((c.faults, c.retries, c.hits, c.misses), (1, 0, 1, 1));
    assert_eq!(s.shadow.stats().checks, 1);
    assert_no_violations(&s.oracle);
}

#[test]
fn munmap_zaps_and_later_faults_fail() {
    let s = setup(None);
    let va = map(&s.space, 2);
    s.shadow.fault(va, true).unwrap();
    s.shadow.fault(va + PAGE_SIZE, false).unwrap();
    s.space.munmap(va, PAGE_SIZE).unwrap();
    assert_eq!(s.shadow.translation(va), None);
    assert!(
        s.shadow.translation(va + PAGE_SIZE).is_some(),
        "outside the range"
    );
    assert_eq!(s.shadow.access(va, false), Access::Miss);
    assert_eq!(s.shadow.fault(va, false), Err(FaultError::Unmapped));
    let stats = s.shadow.stats();
    assert_eq!((stats.zapped, stats.in_progress, stats.ends), (1, 0, 1));
    assert_no_violations(&s.oracle);
}

#[test]
fn mprotect_read_only_refuses_writes_until_read_write_again() {
    let s = setup(None);
    let va = map(&s.space, 1);
    s.shadow.fault(va, true).unwrap();
    s.space.mprotect(va, PAGE_SIZE, READ_ONLY).unwrap();
    // KVM zaps on every event, a protection change included.
    assert_eq!(s.shadow.access(va, false), Access::Miss);
    assert_eq!(s.shadow.fault(va, true), Err(FaultError::Unmapped));
    s.shadow.fault(va, false).unwrap();
    assert!(!s.shadow.translation(va).unwrap().writable);
    assert_eq!(s.shadow.access(va, true), Access::Miss);
    assert_eq!(s.shadow.access(va, false), Access::Hit);
    s.space.mprotect(va, PAGE_SIZE, Prot::RW).unwrap();
    s.shadow.fault(va, true).unwrap();
    assert_eq!(s.shadow.access(va, true), Access::Hit);
    assert_mirrors(&s, va);
    assert_no_violations(&s.oracle);
}

#[test]
fn after_fork_the_parents_write_moves_the_shadow_to_the_copy() {
    let s = setup(None);
    let va = map(&s.space, 1);
    s.shadow.fault(va, true).unwrap();
    let shared = primary(&s, va);
    let child = s.space.fork();
    assert_eq!(s.shadow.translation(va), None, "fork write-protects: zap");
    s.shadow.fault(va, false).unwrap();
    assert_eq!(s.shadow.translation(va).unwrap().pfn, shared.pfn);
    s.space.access(va, true).unwrap(); // the parent's CPU breaks COW
    assert_eq!(s.shadow.translation(va), None, "wp_page_copy: zap");
    s.shadow.fault(va, false).unwrap();
    assert_mirrors(&s, va);
    assert_ne!(s.shadow.translation(va).unwrap().pfn, shared.pfn);
    assert_eq!(child.translate_frame(va).unwrap().pfn, shared.pfn);
    assert_eq!(s.shadow.access(va, true), Access::Hit);
    assert_no_violations(&s.oracle);
}

#[test]
fn a_fault_whose_own_walk_breaks_cow_retries_once() {
    let s = setup(None);
    let va = map(&s.space, 1);
    s.space.access(va, true).unwrap();
    let _child = s.space.fork();
    s.shadow.fault(va, false).unwrap();
    assert_eq!(
        s.shadow.access(va, true),
        Access::Miss,
        "read-only after fork"
    );
    // The walk's write fault copies the page under a `Clear`, which moves
    // the sequence past the fault's own snapshot.
    s.shadow.fault(va, true).unwrap();
    assert_eq!(s.shadow.counters().retries, 1);
    assert_mirrors(&s, va);
    assert_eq!(s.shadow.access(va, true), Access::Hit);
    assert_no_violations(&s.oracle);
}

#[test]
fn ksm_merge_leaves_the_shadow_on_the_shared_page() {
    let s = setup(None);
    let va = map(&s.space, 2);
    s.shadow.fault(va, true).unwrap();
    s.shadow.fault(va + PAGE_SIZE, true).unwrap();
    assert_eq!(s.space.ksm_merge(va, va + 2 * PAGE_SIZE), 2);
    let stats = s.shadow.stats();
    assert_eq!(stats.entries, 0);
    // write_protect_page twice and replace_page once, each inside a
    // `Clear` whose start had already zapped the page.
    assert_eq!((stats.change_pte, stats.change_pte_updates), (3, 0));
    s.shadow.fault(va, false).unwrap();
    s.shadow.fault(va + PAGE_SIZE, false).unwrap();
    let (a, b) = (
        s.shadow.translation(va),
        s.shadow.translation(va + PAGE_SIZE),
    );
    assert_eq!(a.unwrap().pfn, b.unwrap().pfn);
    assert_eq!(s.shadow.access(va, true), Access::Miss);
    s.shadow.fault(va, true).unwrap(); // breaks KSM sharing
    assert_mirrors(&s, va);
    assert_mirrors(&s, va + PAGE_SIZE);
    assert_no_violations(&s.oracle);
}

#[test]
fn migration_moves_the_shadow_to_the_new_frame() {
    let s = setup(None);
    let va = map(&s.space, 1);
    s.shadow.fault(va, true).unwrap();
    let old = primary(&s, va);
    assert_eq!(s.space.migrate(va, va + PAGE_SIZE), 1);
    assert_eq!(s.shadow.access(va, false), Access::Miss);
    s.shadow.fault(va, true).unwrap();
    assert_mirrors(&s, va);
    assert_ne!(s.shadow.translation(va).unwrap().pfn, old.pfn);
    assert_no_violations(&s.oracle);
}

#[test]
fn madvise_dontneed_zaps_and_the_next_read_sees_the_zero_page() {
    let s = setup(None);
    let va = map(&s.space, 1);
    s.shadow.fault(va, true).unwrap();
    s.space.madvise(va, PAGE_SIZE, Advice::DontNeed).unwrap();
    assert_eq!(s.shadow.translation(va), None);
    s.shadow.fault(va, false).unwrap();
    assert_mirrors(&s, va);
    assert!(!s.shadow.translation(va).unwrap().writable);
    assert_no_violations(&s.oracle);
}

/// Reclaim asks the secondaries with `clear_flush_young`; a page the shadow
/// used since the last pass is referenced and stays.
fn reclaim_passes(shadow_uses_between: bool) -> Vec<usize> {
    let memory = Arc::new(Memory::new());
    let space = Arc::new(AddressSpace::new(Arc::clone(&memory)));
    let s = with_shadow(space, None);
    let object = Arc::new(ShmemObject::new(memory, PAGE_SIZE));
    let va = s
        .space
        .mmap(MapRequest {
            len: PAGE_SIZE,
            prot: Prot::RW,
            shared: true,
            object: Some(object),
            ..MapRequest::default()
        })
        .unwrap();
    s.shadow.fault(va, false).unwrap();
    let mut passes = vec![s.space.reclaim(va, va + PAGE_SIZE)];
    if shadow_uses_between {
        assert_eq!(s.shadow.access(va, false), Access::Hit);
        passes.push(s.space.reclaim(va, va + PAGE_SIZE));
    }
    passes.push(s.space.reclaim(va, va + PAGE_SIZE));
    assert_eq!(s.shadow.translation(va), None, "reclaimed: zapped");
    assert!(s.shadow.stats().flushes >= 1);
    assert_no_violations(&s.oracle);
    passes
}

#[test]
fn reclaim_spares_a_page_the_shadow_used() {
    assert_eq!(reclaim_passes(false), [0, 1]);
    assert_eq!(reclaim_passes(true), [0, 0, 1]);
}

#[test]
fn aging_sees_shadow_accesses_like_access_tracking() {
    let s = setup(None);
    let va = map(&s.space, 2);
    s.shadow.fault(va, true).unwrap();
    assert_eq!(
        s.space.age(va, va + 2 * PAGE_SIZE),
        1,
        "young on both sides"
    );
    assert_eq!(s.space.age(va, va + 2 * PAGE_SIZE), 0, "aging cleared both");
    assert!(!s.space.test_young(va));
    // A use through the shadow alone: the primary's bit stays clear.
    assert_eq!(s.shadow.access(va, false), Access::Hit);
    assert!(s.space.test_young(va));
    assert!(s.space.test_young(va), "test_young does not clear");
    assert_eq!(s.space.age(va, va + 2 * PAGE_SIZE), 1);
    assert_eq!(s.space.age(va, va + 2 * PAGE_SIZE), 0);
    assert!(!s.space.test_young(va));
    let stats = s.shadow.stats();
    assert_eq!((stats.aging, stats.young, stats.flushes), (4, 2, 0));
    assert_eq!(stats.test_young, 4);
    assert_no_violations(&s.oracle);
}

#[test]
fn exit_releases_the_shadow_and_faults_see_it_gone() {
    let s = setup(None);
    let va = map(&s.space, 1);
    s.shadow.fault(va, true).unwrap();
    s.space.exit();
    let stats = s.shadow.stats();
    assert!(stats.released);
    assert_eq!((stats.entries, stats.releases), (0, 1));
    assert_eq!(s.shadow.access(va, false), Access::Miss);
    assert_eq!(s.shadow.fault(va, false), Err(FaultError::Released));
    assert_no_violations(&s.oracle);
}

#[test]
fn the_oom_reapers_nonblocking_ranges_are_zapped() {
    let s = setup(None);
    let va = map(&s.space, 2);
    s.shadow.fault(va, true).unwrap();
    s.shadow.fault(va + PAGE_SIZE, false).unwrap();
    assert!(s.space.oom_reap_once(), "KVM's start never refuses");
    let stats = s.shadow.stats();
    assert!(stats.nonblocking >= 1);
    assert_eq!((stats.entries, stats.in_progress), (0, 0));
    assert_no_violations(&s.oracle);
}

#[test]
fn other_secondaries_bugs_are_ignored() {
    let s = setup(Some(Bug::NoSetSeq));
    assert_eq!(s.shadow.bug(), None);
    let s = setup(Some(Bug::NoSeqBump));
    assert_eq!(s.shadow.bug(), Some(Bug::NoSeqBump));
}

// ---------------------------------------------------------------------------
// Deterministic interleavings: a second notifier, registered before the
// shadow MMU and so called after it, runs a piece of "vCPU" code inside a
// real invalidation, between the shadow's start and the primary's update.

type Action = Box<dyn FnOnce() + Send>;

/// Runs its action once, inside the first start that overlaps its page.
struct Hook(Mutex<Option<(u64, Action)>>);

fn run_hook(hook: &Hook, range: &Range<'_>) {
    let mut armed = hook.0.lock().unwrap();
    if armed
        .as_ref()
        .is_some_and(|(page, _)| range.overlaps(*page, page + PAGE_SIZE))
    {
        let (_, action) = armed.take().unwrap();
        drop(armed);
        action();
    }
}

static HOOK: NotifierOps<Hook> = NotifierOps {
    invalidate_range_start: Some(StartFn::Infallible(run_hook)),
    ..NotifierOps::EMPTY
};

/// A setup whose hook notifier is called right after the shadow's start.
fn setup_with_hook(bug: Option<Bug>) -> (Setup, Notifier<Hook>) {
    let space = Arc::new(AddressSpace::new(Arc::new(Memory::new())));
    let hook = Notifier::register(space.mm(), &HOOK, Hook(Mutex::new(None))).unwrap();
    (with_shadow(space, bug), hook)
}

fn arm(hook: &Hook, page: u64, action: impl FnOnce() + Send + 'static) {
    *hook.0.lock().unwrap() = Some((page, Box::new(action)));
}

/// Where a fault's commit lands relative to a migration of its page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Window {
    /// Walked before the migration, committed after its end.
    AfterEnd,
    /// Walked before, committed between the start and the update.
    InsideInvalidation,
    /// Snapshot taken and committed between the start and the update,
    /// with a walk that saw the old PTE (Linux's start → PTL window).
    WalkInsideInvalidation,
}

struct Race {
    commit: Commit,
    access: Access,
    old: Translation,
    violations: Vec<Violation>,
}

fn race_with_migration(bug: Option<Bug>, window: Window) -> Race {
    let (s, hook) = setup_with_hook(bug);
    let va = map(&s.space, 1);
    s.space.access(va, true).unwrap();
    let old = primary(&s, va);
    let slot: Arc<Mutex<Option<Commit>>> = Arc::default();
    let (shadow, out) = (Arc::clone(&s.shadow), Arc::clone(&slot));
    let starts_before = s.shadow.counters().invalidations;
    let record = move |commit| *out.lock().unwrap() = Some(commit);
    match window {
        Window::AfterEnd => {
            let prepared = shadow.prepare_fault(va, false).unwrap();
            assert_eq!(s.space.migrate(va, va + PAGE_SIZE), 1);
            record(shadow.commit_fault(prepared).unwrap());
        }
        Window::InsideInvalidation => {
            let prepared = shadow.prepare_fault(va, false).unwrap();
            arm(&hook, va, move || {
                assert_eq!(shadow.counters().invalidations, starts_before + 1);
                record(shadow.commit_fault(prepared).unwrap());
            });
            assert_eq!(s.space.migrate(va, va + PAGE_SIZE), 1);
        }
        Window::WalkInsideInvalidation => {
            arm(&hook, va, move || {
                assert_eq!(shadow.counters().invalidations, starts_before + 1);
                let prepared = shadow.prepare_fault_from_walk(va, false, old).unwrap();
                record(shadow.commit_fault(prepared).unwrap());
            });
            assert_eq!(s.space.migrate(va, va + PAGE_SIZE), 1);
        }
    }
    let commit = slot.lock().unwrap().expect("the commit ran");
    Race {
        commit,
        access: s.shadow.access(va, false),
        old,
        violations: s.oracle.violations(),
    }
}

/// Which bug lets which window through.
fn lets_through(bug: Option<Bug>, window: Window) -> bool {
    matches!(
        (bug, window),
        (Some(Bug::NoSeqBump), Window::AfterEnd)
            | (
                Some(Bug::IgnoreInProgress),
                Window::InsideInvalidation | Window::WalkInsideInvalidation
            )
            | (Some(Bug::MissingRangeEnd), Window::WalkInsideInvalidation)
    )
}

#[test]
fn each_bug_installs_a_stale_page_in_its_window_and_the_oracle_reports_it() {
    let bugs = [
        None,
        Some(Bug::NoSeqBump),
        Some(Bug::IgnoreInProgress),
        Some(Bug::MissingRangeEnd),
    ];
    let windows = [
        Window::AfterEnd,
        Window::InsideInvalidation,
        Window::WalkInsideInvalidation,
    ];
    for bug in bugs {
        for window in windows {
            let race = race_with_migration(bug, window);
            let what = format!("{bug:?} in {window:?}");
            if lets_through(bug, window) {
                assert_eq!(race.commit, Commit::Installed, "{what}");
                assert_eq!(race.access, Access::Hit, "{what}");
                assert_eq!(race.violations.len(), 1, "{what}");
                let v = &race.violations[0];
                assert_eq!(v.held.pfn, race.old.pfn, "{what}");
                assert_ne!(v.primary.map(|p| p.pfn), Some(race.old.pfn), "{what}");
            } else {
                assert_eq!(race.commit, Commit::Stale, "{what}");
                assert_eq!(race.access, Access::Miss, "{what}");
                assert!(race.violations.is_empty(), "{what}: {:?}", race.violations);
            }
        }
    }
}

#[test]
fn change_pte_repoints_an_entry_read_only_inside_its_invalidation() {
    // Only a fault that ignores the invalidation in progress can leave an
    // entry for change_pte to find; KSM's write_protect_page then hands the
    // read-only PTE over, and the entry follows it.
    let (s, hook) = setup_with_hook(Some(Bug::IgnoreInProgress));
    let va = map(&s.space, 2);
    s.space.access(va, true).unwrap();
    s.space.access(va + PAGE_SIZE, true).unwrap();
    let prepared = s.shadow.prepare_fault(va, true).unwrap();
    assert!(prepared.translation().writable);
    let shadow = Arc::clone(&s.shadow);
    arm(&hook, va, move || {
        assert_eq!(shadow.commit_fault(prepared), Ok(Commit::Installed));
    });
    assert_eq!(s.space.ksm_merge(va, va + 2 * PAGE_SIZE), 2);
    assert_eq!(s.shadow.stats().change_pte_updates, 1);
    assert_mirrors(&s, va);
    assert!(!s.shadow.translation(va).unwrap().writable);
    assert_eq!(s.shadow.access(va, true), Access::Miss);
    assert_eq!(s.shadow.access(va, false), Access::Hit);
    assert_no_violations(&s.oracle);
}

#[test]
fn change_pte_drops_an_entry_when_the_new_pte_is_writable() {
    // wp_page_copy hands over a writable PTE for the copy: the entry left
    // by the racing fault (the shared page) must go, not be repointed.
    let (s, hook) = setup_with_hook(Some(Bug::IgnoreInProgress));
    let va = map(&s.space, 1);
    s.space.access(va, true).unwrap();
    let _child = s.space.fork();
    let prepared = s.shadow.prepare_fault(va, false).unwrap();
    let shadow = Arc::clone(&s.shadow);
    arm(&hook, va, move || {
        assert_eq!(shadow.commit_fault(prepared), Ok(Commit::Installed));
    });
    s.space.access(va, true).unwrap();
    let stats = s.shadow.stats();
    assert_eq!((stats.change_pte, stats.change_pte_updates), (1, 0));
    assert_eq!(s.shadow.translation(va), None);
    assert_eq!(s.shadow.access(va, false), Access::Miss);
    assert_no_violations(&s.oracle);
}

// ---------------------------------------------------------------------------
// Concurrency: faulting threads and a mutator, bounded in rounds, with a
// watchdog that turns a hang into a failure.

const PAGES: u64 = 32;
const CHUNK: u64 = 8;
const FAULTERS: usize = 2;

/// Aborts the test process if it is still armed after `limit`.
struct Watchdog(Option<mpsc::Sender<()>>);

impl Watchdog {
    fn arm(limit: Duration) -> Watchdog {
        let (tx, rx) = mpsc::channel::<()>();
        thread::spawn(move || {
            if rx.recv_timeout(limit) == Err(mpsc::RecvTimeoutError::Timeout) {
                eprintln!("watchdog: the stress run hung for {limit:?}");
                std::process::abort();
            }
        });
        Watchdog(Some(tx))
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.take();
    }
}

/// A vCPU: uses pages through the shadow and faults on misses. Between the
/// walk and the commit it spins a random while or yields, as a vCPU whose
/// GUP took long or slept would: that spreads its commits over the
/// mutator's invalidations.
fn faulter(shadow: &ShadowMmu, base: u64, seed: u64, stop: &AtomicBool) {
    let mut rng = Rng::new(seed);
    while !stop.load(Ordering::Relaxed) {
        let va = base + rng.below(PAGES) * PAGE_SIZE;
        let write = rng.below(2) == 0;
        if shadow.access(va, write) == Access::Hit {
            continue;
        }
        for _ in 0..4 {
            let Ok(prepared) = shadow.prepare_fault(va, write) else {
                break;
            };
            pause(&mut rng);
            if shadow.commit_fault(prepared) == Ok(Commit::Installed) {
                shadow.access(va, write);
                break;
            }
        }
    }
}

fn pause(rng: &mut Rng) {
    match rng.below(4) {
        0 => thread::yield_now(),
        _ => (0..rng.below(2000)).for_each(|_| std::hint::spin_loop()),
    }
}

/// One change of a chunk of the primary.
fn mutate(space: &AddressSpace, round: usize, start: u64) {
    let len = CHUNK * PAGE_SIZE;
    match round % 8 {
        0 => {
            space.munmap(start, len).unwrap();
            let remapped = space.mmap(MapRequest {
                addr: start,
                len,
                prot: Prot::RW,
                fixed: true,
                ..MapRequest::default()
            });
            assert_eq!(remapped, Ok(start));
        }
        1 => {
            space.mprotect(start, len, READ_ONLY).unwrap();
            space.mprotect(start, len, Prot::RW).unwrap();
        }
        2 => space.madvise(start, len, Advice::DontNeed).unwrap(),
        3 => {
            space.migrate(start, start + len);
        }
        4 => {
            space.ksm_merge(start, start + len);
        }
        5 => {
            space.age(start, start + len);
        }
        6 => {
            space.reclaim(start, start + len);
        }
        _ => space.fork().exit(),
    }
}

struct Outcome {
    oracle: Arc<Coherence>,
    shadow: Arc<ShadowMmu>,
    rounds: usize,
}

/// Runs up to `rounds` mutations against the faulters; stops early at the
/// first violation if `until_caught`.
fn stress(bug: Option<Bug>, rounds: usize, until_caught: bool) -> Outcome {
    let _watchdog = Watchdog::arm(Duration::from_secs(600));
    let s = setup(bug);
    let base = map(&s.space, PAGES);
    let stop = AtomicBool::new(false);
    let done = thread::scope(|scope| {
        for seed in 0..FAULTERS as u64 {
            let (shadow, stop) = (&s.shadow, &stop);
            scope.spawn(move || faulter(shadow, base, 0x9e37_79b9 + seed, stop));
        }
        let mut rng = Rng::new(0x2545_f491);
        let mut done = 0;
        while done < rounds && !(until_caught && s.oracle.violation_count() > 0) {
            let start = base + rng.below(PAGES / CHUNK) * CHUNK * PAGE_SIZE;
            mutate(&s.space, done, start);
            thread::yield_now();
            done += 1;
        }
        stop.store(true, Ordering::Relaxed);
        done
    });
    Outcome {
        oracle: s.oracle,
        shadow: s.shadow,
        rounds: done,
    }
}

#[test]
fn concurrent_faults_and_mutations_stay_coherent() {
    let out = stress(None, 10_000, false);
    assert_no_violations(&out.oracle);
    let stats = out.shadow.stats();
    eprintln!("{} rounds: {stats}", out.rounds);
    let c = stats.counters;
    assert!(c.faults > 0 && c.hits > 0 && c.invalidations > 0, "{stats}");
    assert!(
        stats.checks > 0 && stats.aging > 0 && stats.change_pte > 0,
        "{stats}"
    );
    assert_eq!((stats.in_progress, stats.unpaired_ends), (0, 0), "{stats}");
    assert_eq!(out.rounds, 10_000);
}

/// A bug must be caught within this many mutations.
const CATCH_WITHIN: usize = 200_000;

fn assert_caught(bug: Bug) {
    let out = stress(Some(bug), CATCH_WITHIN, true);
    assert!(
        out.oracle.violation_count() > 0,
        "{bug} not caught in {} rounds: {}",
        out.rounds,
        out.shadow.stats()
    );
    eprintln!(
        "{bug}: caught after {} rounds: {}",
        out.rounds,
        out.shadow.stats()
    );
    let v = &out.oracle.violations()[0];
    assert_eq!(v.secondary, "shadow-mmu");
}

#[test]
fn the_oracle_catches_no_seq_bump_under_concurrency() {
    assert_caught(Bug::NoSeqBump);
}

#[test]
fn the_oracle_catches_ignore_in_progress_under_concurrency() {
    assert_caught(Bug::IgnoreInProgress);
}

/// Caught through migration, which (like Linux's `try_to_migrate_one`)
/// lets walkers in between the start and the page-table update.
#[test]
fn the_oracle_catches_missing_range_end_under_concurrency() {
    assert_caught(Bug::MissingRangeEnd);
}

/// A walk waiting, on the thread that will unmap its page, for the
/// `countdown`-th release of `mmu_lock` to be committed there.
struct Preempted {
    fault: Option<mmun_secondary::shadow_mmu::PreparedFault>,
    countdown: u32,
    result: Option<Result<Commit, FaultError>>,
}

#[test]
fn a_walk_committed_at_any_release_of_mmu_lock_during_an_invalidation_is_refused() {
    let mut committed_inside = 0;
    for k in 0..4 {
        let s = setup(None);
        let va = map(&s.space, 1);
        s.space.access(va, true).unwrap();
        // Walked before the invalidation, committed during it.
        let fault = s.shadow.prepare_fault(va, true).unwrap();
        let slot = Arc::new(Mutex::new(Preempted {
            fault: None,
            countdown: k,
            result: None,
        }));
        let me = thread::current().id();
        let (hook_slot, shadow) = (Arc::clone(&slot), Arc::downgrade(&s.shadow));
        let hook = Box::new(move || {
            // Busy: this is the hook's own commit releasing the lock.
            let Ok(mut p) = hook_slot.try_lock() else {
                return;
            };
            if thread::current().id() != me || p.fault.is_none() {
                return;
            }
            if p.countdown > 0 {
                p.countdown -= 1;
                return;
            }
            let fault = p.fault.take().unwrap();
            p.result = Some(shadow.upgrade().unwrap().commit_fault(fault));
        });
        assert!(s.shadow.set_preempt_hook(hook).is_ok());
        slot.lock().unwrap().fault = Some(fault);
        s.space.munmap(va, PAGE_SIZE).unwrap();
        let mut p = slot.lock().unwrap();
        let result = match p.result.take() {
            Some(result) => {
                committed_inside += 1;
                result
            }
            None => s.shadow.commit_fault(p.fault.take().unwrap()),
        };
        assert_eq!(result, Ok(Commit::Stale), "committed at release {k}");
        assert_eq!(s.shadow.translation(va), None);
        assert_no_violations(&s.oracle);
    }
    // Releases in the start and in the end, at least.
    assert!(committed_inside >= 2, "{committed_inside}");
}
