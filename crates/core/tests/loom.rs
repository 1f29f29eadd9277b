//! loom models of the interval seq protocol (spec §1.3), deferred insert and
//! remove (§1.5, §5 #16) and the list notifier lifecycle (§1.6), through the
//! public API.
//!
//! Build with the crate's loom backend:
//!
//! ```text
//! RUSTFLAGS="--cfg mmun_loom" LOOM_MAX_PREEMPTIONS=2 \
//!     CARGO_TARGET_DIR=target/loom cargo test -p mmun-core --release --test loom
//! ```
//!
//! The driver-side state of every model (driver locks, mirrored PTEs,
//! "inside a callback" flags) uses loom primitives, so that loom also checks
//! that the subsystem orders them. Flags whose point is a happens-before
//! edge the subsystem must provide are accessed `Relaxed`: only the
//! subsystem's own synchronisation can make the assertion on them hold.
//! The address space itself is an `Arc<Mm>` from `Mm::new` (std's `Arc`
//! under the loom backend, see `src/sync/loom_backend.rs`).
#![cfg(mmun_loom)]

use std::time::Instant;

use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use loom::sync::{Arc, Mutex};
use loom::thread;

use mmun_core::{
    Event, IntervalNotifier, IntervalNotifierOps, IntervalSub, Invalidation, Mm, Notifier,
    NotifierOps, Range, Seq, SharedNotifier, StartFn,
};

const PAGE: u64 = 0x1000;

/// Checks `f` under a builder bounded to two preemptions unless
/// `LOOM_MAX_PREEMPTIONS` says otherwise, and reports how long it took.
fn check(name: &str, f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(2);
    }
    let executions = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let began = Instant::now();
    builder.check({
        let executions = executions.clone();
        move || {
            executions.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            f();
        }
    });
    eprintln!(
        "loom model {name}: {} executions in {:.2?}",
        executions.load(std::sync::atomic::Ordering::Relaxed),
        began.elapsed()
    );
}

/// One blockable invalidation of `[start, end)` under the mmap read lock,
/// with nothing done between start and end.
fn invalidate(mm: &Mm, event: Event, start: u64, end: u64) {
    let lock = mm.mmap_read();
    Invalidation::start(Range::new(&lock, event, start, end)).end();
}

// ---------------------------------------------------------------------------
// (a) The driver retry loop never leaves a stale mirror.
// ---------------------------------------------------------------------------

/// A device that mirrors one primary PTE.
struct Mirror {
    /// The driver lock, guarding the mirrored PTE (`None`: not mapped).
    lock: Mutex<Option<usize>>,
}

struct MirrorOps(Arc<Mirror>);

impl IntervalNotifierOps for MirrorOps {
    fn invalidate(&self, sub: &IntervalSub, _range: &Range<'_>, cur_seq: Seq) -> bool {
        let mut mirrored = self.0.lock.lock().unwrap();
        sub.set_seq(cur_seq);
        *mirrored = None;
        true
    }
}

/// Changes the primary PTE to `value` inside an invalidation of its page.
fn change_pte(mm: &Mm, pte: &AtomicUsize, value: usize) {
    let lock = mm.mmap_read();
    let inv = Invalidation::start(Range::new(&lock, Event::Clear, 0, PAGE));
    pte.store(value, Relaxed);
    inv.end();
}

/// Thread A faults the page into the mirror with the documented loop
/// (read_begin → read the primary PTE without the driver lock → lock →
/// read_retry → program, at most three tries); thread B and the main thread
/// each change the primary PTE inside an invalidation whose callback zaps
/// the mirror (two writers: they may share one odd epoch). Whatever the
/// interleaving, the mirror ends up empty or equal to the final primary
/// PTE.
#[test]
fn read_begin_vs_invalidate_never_loses_an_invalidation() {
    check(
        "read_begin_vs_invalidate_never_loses_an_invalidation",
        || {
            let mm = Mm::new();
            let mirror = Arc::new(Mirror {
                lock: Mutex::new(None),
            });
            // The primary PTE. Relaxed: only the protocol may order it.
            let pte = Arc::new(AtomicUsize::new(1));
            let isub = Arc::new(
                IntervalNotifier::insert(&mm, 0, PAGE, MirrorOps(mirror.clone())).unwrap(),
            );

            let fault = thread::spawn({
                let (isub, mirror, pte) = (isub.clone(), mirror.clone(), pte.clone());
                move || {
                    for _ in 0..3 {
                        let seq = isub.read_begin();
                        assert!(seq.is_odd(), "an interval's seq is always odd: {seq:?}");
                        let value = pte.load(Relaxed);
                        let mut mirrored = mirror.lock.lock().unwrap();
                        if !isub.read_retry(seq) {
                            *mirrored = Some(value);
                            return;
                        }
                    }
                }
            });

            let writer = thread::spawn({
                let (mm, pte) = (mm.clone(), pte.clone());
                move || change_pte(&mm, &pte, 2)
            });
            change_pte(&mm, &pte, 3);

            fault.join().unwrap();
            writer.join().unwrap();
            let mirrored = *mirror.lock.lock().unwrap();
            let primary = pte.load(Relaxed);
            assert!(
                mirrored.is_none() || mirrored == Some(primary),
                "stale mirror {mirrored:?}, primary {primary}"
            );
            drop(isub);
        },
    );
}

// ---------------------------------------------------------------------------
// Counting interval subscriber shared by (b), (c) and (d).
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Probe {
    /// The driver lock around `set_seq`.
    lock: Mutex<()>,
    /// Inside `invalidate` right now. Relaxed: a remover that returned must
    /// see `false` through the subsystem's happens-before edge alone.
    in_callback: AtomicBool,
    /// `remove` has returned (SeqCst: checked at callback entry).
    removed: AtomicBool,
    /// Callbacks so far.
    calls: AtomicUsize,
}

struct ProbeOps(Arc<Probe>);

impl IntervalNotifierOps for ProbeOps {
    fn invalidate(&self, sub: &IntervalSub, _range: &Range<'_>, cur_seq: Seq) -> bool {
        let probe = &*self.0;
        assert!(
            !probe.removed.load(SeqCst),
            "invalidate after remove returned"
        );
        probe.in_callback.store(true, Relaxed);
        {
            let _driver = probe.lock.lock().unwrap();
            sub.set_seq(cur_seq);
        }
        probe.calls.fetch_add(1, Relaxed);
        assert!(
            !probe.removed.load(SeqCst),
            "remove returned during invalidate"
        );
        probe.in_callback.store(false, Relaxed);
        true
    }
}

fn probe() -> (Arc<Probe>, ProbeOps) {
    let probe = Arc::new(Probe::default());
    let ops = ProbeOps(probe.clone());
    (probe, ops)
}

/// `read_begin` + `read_retry` with no invalidation running in between
/// succeeds on the first try (the seq protocol is back at rest).
fn assert_quiescent<O: IntervalNotifierOps>(sub: &IntervalNotifier<O>) {
    let seq = sub.read_begin();
    assert!(seq.is_odd(), "an interval's seq is always odd: {seq:?}");
    assert!(!sub.read_retry(seq), "retry without any invalidation");
}

/// Removes `isub` the way a driver does, then records that it returned,
/// checking that no callback is still running.
fn remove_and_check<O: IntervalNotifierOps>(isub: IntervalNotifier<O>, probe: &Probe) {
    isub.remove();
    assert!(
        !probe.in_callback.load(Relaxed),
        "remove returned while invalidate was running"
    );
    probe.removed.store(true, SeqCst);
}

// ---------------------------------------------------------------------------
// (b) An insert during an invalidation is deferred and applied at its end.
// ---------------------------------------------------------------------------

/// Thread A invalidates `[0, 2 pages)`, which hits the existing interval
/// `[0, 1 page)`; thread C invalidates `[1 page, 2 pages)`, which hits
/// nothing unless it starts after the insert; the main thread meanwhile
/// inserts `[1 page, 2 pages)`, which overlaps both. The insert lands in the
/// tree right away (idle, or partially excluded by C alone: then it opens
/// the epoch itself) or when the epoch closes (deferred): `read_begin` on it
/// returns, a later invalidation reaches it, and the protocol is at rest.
#[test]
fn insert_during_invalidation_is_deferred_and_applied_at_end() {
    check(
        "insert_during_invalidation_is_deferred_and_applied_at_end",
        || {
            let mm = Mm::new();
            let (probe1, ops1) = probe();
            let isub1 = IntervalNotifier::insert(&mm, 0, PAGE, ops1).unwrap();

            let invalidator = thread::spawn({
                let mm = mm.clone();
                move || invalidate(&mm, Event::Clear, 0, 2 * PAGE)
            });
            let other = thread::spawn({
                let mm = mm.clone();
                move || invalidate(&mm, Event::ProtectionVma, PAGE, 2 * PAGE)
            });

            let (probe2, ops2) = probe();
            let isub2 = IntervalNotifier::insert(&mm, PAGE, PAGE, ops2).unwrap();
            // Waits for A's epoch if the insert was deferred into it; must not
            // hang either way.
            let seq = isub2.read_begin();
            assert!(seq.is_odd(), "an interval's seq is always odd: {seq:?}");

            invalidator.join().unwrap();
            other.join().unwrap();
            assert_eq!(probe1.calls.load(Relaxed), 1);
            let calls2 = probe2.calls.load(Relaxed);
            assert!(calls2 <= 2);

            // The new interval is in the tree now: a later invalidation of just
            // its range reaches it (and not the first one).
            invalidate(&mm, Event::Unmap, PAGE, 2 * PAGE);
            assert_eq!(probe2.calls.load(Relaxed), calls2 + 1);
            assert_eq!(probe1.calls.load(Relaxed), 1);
            assert!(isub2.read_retry(seq), "the invalidation must force a retry");

            assert_quiescent(&isub1);
            assert_quiescent(&isub2);
            remove_and_check(isub2, &probe2);
            remove_and_check(isub1, &probe1);
        },
    );
}

// ---------------------------------------------------------------------------
// (c) Remove waits for a running callback (spec §5 #16).
// ---------------------------------------------------------------------------

/// Threads A and B invalidate the interval (possibly in one shared epoch,
/// closed by whichever ends last) while the main thread removes it. When
/// remove returns, no callback is running and none runs again. The wait
/// reads the seq under the lock, so it cannot return while the closing
/// `inv_end` is still applying the deferred removal (Linux 319561669a59);
/// the lockless read of that bug cannot even be written here, the seq being
/// inside the lock.
#[test]
fn remove_waits_for_running_callback() {
    check("remove_waits_for_running_callback", || {
        let mm = Mm::new();
        let (probe, ops) = probe();
        let isub = IntervalNotifier::insert(&mm, 0, PAGE, ops).unwrap();

        let invalidators = [Event::Clear, Event::Migrate].map(|event| {
            let mm = mm.clone();
            thread::spawn(move || invalidate(&mm, event, 0, PAGE))
        });

        remove_and_check(isub, &probe);
        let calls = probe.calls.load(SeqCst);

        for invalidator in invalidators {
            invalidator.join().unwrap();
        }
        invalidate(&mm, Event::Unmap, 0, PAGE);
        assert_eq!(probe.calls.load(Relaxed), calls, "called after remove");
        assert!(calls <= 2);
    });
}

// ---------------------------------------------------------------------------
// (d) Removing a still-deferred insert does not wait.
// ---------------------------------------------------------------------------

/// The main thread holds an invalidation open over an existing interval, so
/// the tree is frozen; thread B inserts a second interval (deferred) and
/// removes it again, which must not wait for the epoch (the main thread only
/// ends it after joining B: waiting would deadlock). Thread C concurrently
/// invalidates the second interval's range, and may be the one whose end
/// closes the epoch and applies the (cancelled) insert. The removed interval
/// is never called.
#[test]
fn remove_of_deferred_insert_does_not_wait() {
    check("remove_of_deferred_insert_does_not_wait", || {
        let mm = Mm::new();
        let (probe1, ops1) = probe();
        let isub1 = IntervalNotifier::insert(&mm, 0, PAGE, ops1).unwrap();

        let lock = mm.mmap_read();
        let inv = Invalidation::start(Range::new(&lock, Event::Clear, 0, 2 * PAGE));
        assert_eq!(probe1.calls.load(Relaxed), 1);

        let (probe2, ops2) = probe();
        let inserter = thread::spawn({
            let (mm, probe2) = (mm.clone(), probe2.clone());
            move || {
                let isub2 = IntervalNotifier::insert(&mm, PAGE, PAGE, ops2).unwrap();
                remove_and_check(isub2, &probe2);
            }
        });
        let invalidator = thread::spawn({
            let mm = mm.clone();
            move || invalidate(&mm, Event::Clear, PAGE, 2 * PAGE)
        });

        inserter.join().unwrap();
        inv.end();
        drop(lock);
        invalidator.join().unwrap();

        invalidate(&mm, Event::Unmap, 0, 2 * PAGE);
        assert_eq!(
            probe2.calls.load(Relaxed),
            0,
            "a cancelled insert was called"
        );
        assert_eq!(probe1.calls.load(Relaxed), 2);
        assert_quiescent(&isub1);
        remove_and_check(isub1, &probe1);
    });
}

// ---------------------------------------------------------------------------
// (e) get/put against free_notifier.
// ---------------------------------------------------------------------------

/// Per-execution state of the shared notifier model: `alloc_notifier` is a
/// plain `fn`, so it reaches the model through a loom static (reset for
/// every execution).
struct GetPutState {
    /// Subscriptions allocated so far; the next one's id.
    allocs: AtomicUsize,
    /// Per id: `free_notifier` calls.
    frees: [AtomicUsize; 2],
    /// Per id: callbacks running right now (Relaxed: `free_notifier` must
    /// see 0 through the grace period alone).
    in_callback: [AtomicUsize; 2],
    /// Per id: model threads holding a reference (between `get` returning
    /// and `put` being called).
    holders: [AtomicUsize; 2],
}

loom::lazy_static! {
    static ref GET_PUT: GetPutState = GetPutState {
        allocs: AtomicUsize::new(0),
        frees: Default::default(),
        in_callback: Default::default(),
        holders: Default::default(),
    };
}

/// The driver state of one shared subscription.
struct Shared {
    id: usize,
}

fn shared_alloc(_mm: &std::sync::Arc<Mm>) -> mmun_core::Result<Shared> {
    let id = GET_PUT.allocs.fetch_add(1, Relaxed);
    assert!(id < 2, "at most one subscription per getter");
    Ok(Shared { id })
}

fn shared_start(shared: &Shared, _range: &Range<'_>) {
    let state = &*GET_PUT;
    assert_eq!(
        state.frees[shared.id].load(Relaxed),
        0,
        "callback after free"
    );
    state.in_callback[shared.id].fetch_add(1, Relaxed);
    state.in_callback[shared.id].fetch_sub(1, Relaxed);
}

fn shared_free(shared: &Shared) {
    let state = &*GET_PUT;
    assert_eq!(
        state.in_callback[shared.id].load(Relaxed),
        0,
        "free_notifier while a callback runs"
    );
    assert_eq!(
        state.holders[shared.id].load(Relaxed),
        0,
        "free_notifier before the last put"
    );
    state.frees[shared.id].fetch_add(1, Relaxed);
}

static SHARED_OPS: NotifierOps<Shared> = NotifierOps {
    invalidate_range_start: Some(StartFn::Infallible(shared_start)),
    alloc_notifier: Some(shared_alloc),
    free_notifier: Some(shared_free),
    ..NotifierOps::EMPTY
};

fn get_then_put(mm: &std::sync::Arc<Mm>) {
    let shared = SharedNotifier::get(mm, &SHARED_OPS).unwrap();
    let id = shared.id;
    GET_PUT.holders[id].fetch_add(1, Relaxed);
    GET_PUT.holders[id].fetch_sub(1, Relaxed);
    shared.put();
}

/// Two threads get and put the shared subscription of one ops table while
/// the main thread invalidates; one of them then waits for the deferred
/// frees, concurrently with the invalidation. Every subscription allocated
/// (one if the gets overlapped, two otherwise) is freed exactly once, after
/// its last put and never while one of its callbacks runs. (This model
/// found `put` dropping the last user and unlinking in two critical
/// sections: a `get` in between revived the dying subscription and its
/// `put` queued a second `free_notifier`.)
#[test]
fn get_put_vs_free() {
    check("get_put_vs_free", || {
        let mm = Mm::new();
        let first = thread::spawn({
            let mm = mm.clone();
            move || {
                get_then_put(&mm);
                mmun_core::synchronize();
            }
        });
        let second = thread::spawn({
            let mm = mm.clone();
            move || get_then_put(&mm)
        });

        // Invalidating before any subscription exists calls nothing; waiting
        // (without spending a preemption) for the first `alloc_notifier`
        // lets the bound go to the interleavings inside the callback.
        while GET_PUT.allocs.load(Relaxed) == 0 {
            thread::yield_now();
        }
        invalidate(&mm, Event::Clear, 0, PAGE);

        first.join().unwrap();
        second.join().unwrap();
        mmun_core::synchronize();
        let state = &*GET_PUT;
        let allocs = state.allocs.load(Relaxed);
        assert!((1..=2).contains(&allocs));
        for id in 0..2 {
            let expected = usize::from(id < allocs);
            assert_eq!(state.frees[id].load(Relaxed), expected, "frees of {id}");
        }
    });
}

// ---------------------------------------------------------------------------
// (f) Unregister waits for a running callback.
// ---------------------------------------------------------------------------

#[derive(Default)]
struct ListProbe {
    /// Inside `invalidate_range_start` (Relaxed, as in `Probe`).
    in_callback: AtomicBool,
    /// `unregister` has returned (SeqCst: checked at callback entry).
    unregistered: AtomicBool,
    calls: AtomicUsize,
}

struct ListDriver(Arc<ListProbe>);

fn list_start(driver: &ListDriver, _range: &Range<'_>) {
    let probe = &*driver.0;
    assert!(
        !probe.unregistered.load(SeqCst),
        "callback after unregister returned"
    );
    probe.in_callback.store(true, Relaxed);
    probe.calls.fetch_add(1, Relaxed);
    probe.in_callback.store(false, Relaxed);
}

static LIST_OPS: NotifierOps<ListDriver> = NotifierOps {
    invalidate_range_start: Some(StartFn::Infallible(list_start)),
    ..NotifierOps::EMPTY
};

/// Threads A and B invalidate while the main thread unregisters the (only)
/// list notifier: once unregister returns, its start callback is not
/// running and is never called again.
#[test]
fn unregister_waits_for_callback() {
    check("unregister_waits_for_callback", || {
        let mm = Mm::new();
        let probe = Arc::new(ListProbe::default());
        let notifier = Notifier::register(&mm, &LIST_OPS, ListDriver(probe.clone())).unwrap();

        let invalidators = [(0, PAGE), (PAGE, 2 * PAGE)].map(|(start, end)| {
            let mm = mm.clone();
            thread::spawn(move || invalidate(&mm, Event::Clear, start, end))
        });

        notifier.unregister();
        assert!(
            !probe.in_callback.load(Relaxed),
            "unregister returned while a callback was running"
        );
        probe.unregistered.store(true, SeqCst);
        let calls = probe.calls.load(SeqCst);

        for invalidator in invalidators {
            invalidator.join().unwrap();
        }
        invalidate(&mm, Event::Unmap, 0, PAGE);
        assert_eq!(probe.calls.load(Relaxed), calls, "called after unregister");
        assert!(calls <= 2);
    });
}
