//! Interval notifiers: dispatch, the seq protocol and deferred insert/remove
//! (spec §1.3, §1.4, §1.5, §1.7; §4.4 items 2, 3, 4, 6; §5 #10, #16, and
//! the latent issues (a) and (b)).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use mmun_core::{
    Error, Event, HeldMmLock, IntervalNode, IntervalNotifier, IntervalNotifierOps, IntervalSub,
    Invalidation, Mm, Notifier, Range, Seq, Warning, WouldBlock,
};

fn range(held: &impl HeldMmLock, start: u64, end: u64) -> Range<'_> {
    Range::new(held, Event::Clear, start, end)
}

fn seqs(calls: &[Call]) -> Vec<u64> {
    calls
        .iter()
        .filter_map(|c| match c {
            Call::Invalidate { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect()
}

#[test]
fn only_overlapping_intervals_are_called_in_ascending_start_with_the_whole_range() {
    let mm = Mm::new();
    let log = Log::default();
    let _c = IntervalNotifier::insert(&mm, 0x3000, 0x1000, Recorder::new("c", &log)).unwrap();
    let _a = IntervalNotifier::insert(&mm, 0x1000, 0x1000, Recorder::new("a", &log)).unwrap();
    let _far = IntervalNotifier::insert(&mm, 0x9000, 0x1000, Recorder::new("far", &log)).unwrap();
    let _b = IntervalNotifier::insert(&mm, 0x1000, 0x3000, Recorder::new("b", &log)).unwrap();
    let lock = mm.mmap_read();
    Invalidation::start(range(&lock, 0x1800, 0x3001)).end();
    let calls = log.take();
    let who: Vec<_> = calls.iter().map(who_of).collect();
    // Equal starts in insertion order: the kernel's interval tree sends an
    // equal start to the right of the nodes already there, so its in-order
    // walk meets the earlier insertion first.
    assert_eq!(
        who,
        ["a", "b", "c"],
        "ascending start, insertion order on ties"
    );
    assert!(calls.iter().all(|c| matches!(
        c,
        Call::Invalidate {
            start: 0x1800,
            end: 0x3001,
            event: Event::Clear,
            blockable: true,
            ..
        }
    )));
    let s = seqs(&calls);
    assert!(
        s.iter().all(|&x| x == s[0] && x % 2 == 1),
        "one odd cur_seq for the epoch: {s:?}"
    );
}

#[test]
fn interval_ending_at_the_top_of_the_address_space() {
    let mm = Mm::new();
    let log = Log::default();
    let top = IntervalNotifier::insert(&mm, u64::MAX - 0xfff, 0x1000, Recorder::new("top", &log))
        .unwrap();
    assert_eq!(top.last(), u64::MAX);
    let lock = mm.mmap_read();
    Invalidation::start(range(&lock, u64::MAX - 0x10, u64::MAX)).end();
    assert_eq!(log.take().len(), 1);
}

#[test]
fn zero_length_and_overflowing_intervals_are_eoverflow() {
    let mm = Mm::new();
    let log = Log::default();
    let zero = IntervalNotifier::insert(&mm, 0x1000, 0, Recorder::new("z", &log));
    assert_eq!(zero.err().map(|e| e.errno()), Some(75));
    let wraps = IntervalNotifier::insert(&mm, u64::MAX - 0xfff, 0x1001, Recorder::new("w", &log));
    assert_eq!(wraps.err(), Some(Error::Overflow));
}

#[test]
fn insert_into_an_exited_mm_is_einval() {
    let mm = Mm::new();
    mm.exit();
    let err = IntervalNotifier::insert(&mm, 0, 0x1000, Recorder::new("x", &Log::default()));
    assert_eq!(err.err(), Some(Error::NoUsers));
}

/// Latent issue (b): an empty range matches no interval (Linux would query
/// `[x, x - 1]` and hit an interval spanning x - 1 and x).
#[test]
fn an_empty_range_hits_no_interval() {
    let mm = Mm::new();
    let log = Log::default();
    let _n = IntervalNotifier::insert(&mm, 0x1000, 0x2000, Recorder::new("n", &log)).unwrap();
    let lock = mm.mmap_read();
    Invalidation::start(range(&lock, 0x2000, 0x2000)).end();
    assert_eq!(log.len(), 0);
}

#[test]
fn itree_runs_before_the_list_at_start_and_at_end() {
    let mm = Mm::new();
    let log = Log::default();
    let isub = IntervalNotifier::insert(&mm, 0, 0x1000, Recorder::new("isub", &log)).unwrap();
    let _list = Notifier::register(&mm, &FULL, ListRec::new("list", &log)).unwrap();
    let before = isub.read_begin();
    let lock = mm.mmap_read();
    let inv = Invalidation::start(range(&lock, 0, 0x1000));
    assert!(isub.check_retry(before), "set_seq ran during start");
    inv.end();
    let who: Vec<_> = log.take().iter().map(who_of).collect();
    assert_eq!(who, ["isub", "list", "list", "list"]);
    // The epoch closed before the list's end ran: read_begin returns at once.
    let s = isub.read_begin();
    assert!(!isub.read_retry(s));
}

#[test]
fn read_begin_then_invalidation_forces_retry_and_check_retry_sees_it() {
    let mm = Mm::new();
    let log = Log::default();
    let n = IntervalNotifier::insert(&mm, 0x1000, 0x1000, Recorder::new("n", &log)).unwrap();
    let seq = n.read_begin();
    assert!(seq.is_odd());
    assert!(!n.read_retry(seq) && !n.check_retry(seq));
    let lock = mm.mmap_read();
    Invalidation::start(range(&lock, 0x1000, 0x2000)).end();
    assert!(n.read_retry(seq) && n.check_retry(seq));
    let again = n.read_begin();
    assert!(!n.read_retry(again));
    // A range elsewhere does not disturb it.
    Invalidation::start(range(&lock, 0x5000, 0x6000)).end();
    assert!(!n.read_retry(again));
}

/// §1.5: insert while idle, partially excluded and fully excluded.
#[test]
fn insert_in_each_exclusion_state() {
    let mm = Mm::new();
    let log = Log::default();
    let hit = IntervalNotifier::insert(&mm, 0x1000, 0x1000, Recorder::new("hit", &log)).unwrap();
    let idle_seq = hit.read_begin();
    let lock = mm.rmap_lock();

    // Partially excluded: a range is running but hit nothing (seq even).
    let miss = Invalidation::start(range(&lock, 0x8000, 0x9000));
    let partial =
        IntervalNotifier::insert(&mm, 0x4000, 0x1000, Recorder::new("partial", &log)).unwrap();
    // The new interval is treated as covered: read_begin must wait for the end.
    let mm2 = Arc::clone(&mm);
    let waited = Arc::new(AtomicBool::new(false));
    let w2 = Arc::clone(&waited);
    let partial = Arc::new(partial);
    let p2 = Arc::clone(&partial);
    let reader = std::thread::spawn(move || {
        let s = p2.read_begin();
        w2.store(true, Ordering::SeqCst);
        let _ = &mm2;
        s
    });
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        !waited.load(Ordering::SeqCst),
        "read_begin returned inside the epoch"
    );
    miss.end();
    let s = reader.join().unwrap();
    assert!(!partial.read_retry(s));

    // Fully excluded: an invalidation hit `hit`, so the tree is frozen.
    let full = Invalidation::start(range(&lock, 0x1000, 0x2000));
    let deferred =
        IntervalNotifier::insert(&mm, 0x1000, 0x1000, Recorder::new("deferred", &log)).unwrap();
    log.take();
    let nested = Invalidation::start(range(&lock, 0x1000, 0x2000));
    assert_eq!(
        log.take().iter().map(who_of).collect::<Vec<_>>(),
        ["hit"],
        "a deferred insert is not in the frozen tree"
    );
    nested.end();
    full.end();
    Invalidation::start(range(&lock, 0x1000, 0x2000)).end();
    // Equal starts in the order they were linked into the tree (the
    // kernel's interval tree puts an equal start to the right): `hit`
    // before `deferred`, which joined when the epoch closed.
    assert_eq!(
        log.take().iter().map(who_of).collect::<Vec<_>>(),
        ["hit", "deferred"],
        "both linked, equal starts in insertion order"
    );
    assert!(hit.read_retry(idle_seq));
    drop(lock);
    let _ = (deferred, partial);
}

/// §4.4 item 3: the waiter is woken only by the last overlapping end.
#[test]
fn read_begin_waits_for_the_last_overlapping_end() {
    let mm = Mm::new();
    let log = Log::default();
    let n =
        Arc::new(IntervalNotifier::insert(&mm, 0x1000, 0x1000, Recorder::new("n", &log)).unwrap());
    let lock = mm.rmap_lock();
    let first = Invalidation::start(range(&lock, 0x1000, 0x2000));
    let second = Invalidation::start(range(&lock, 0x7000, 0x8000));
    let done = Arc::new(AtomicBool::new(false));
    let (n2, d2) = (Arc::clone(&n), Arc::clone(&done));
    let reader = std::thread::spawn(move || {
        let s = n2.read_begin();
        d2.store(true, Ordering::SeqCst);
        s
    });
    first.end();
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        !done.load(Ordering::SeqCst),
        "woken before the last concurrent end"
    );
    second.end();
    let s = reader.join().unwrap();
    assert!(!n.read_retry(s));
}

#[test]
fn read_begin_after_sequence_wrap_around() {
    let mm = Mm::new();
    mm.set_invalidate_seq_for_test(u64::MAX - 1);
    let log = Log::default();
    let n = IntervalNotifier::insert(&mm, 0, 0x1000, Recorder::new("n", &log)).unwrap();
    let lock = mm.mmap_read();
    for _ in 0..3 {
        let s = n.read_begin();
        Invalidation::start(range(&lock, 0, 0x1000)).end();
        assert!(n.read_retry(s));
        let s2 = n.read_begin();
        assert!(!n.read_retry(s2));
    }
    let seen = seqs(&log.take());
    assert_eq!(
        seen,
        [u64::MAX, 1, 3],
        "seq wraps from odd u64::MAX to 0, then counts on"
    );
}

/// §5 #16 and §4.4 item 3: remove while its own callback runs on another
/// thread blocks until that invalidation's end.
#[test]
fn remove_waits_for_the_epoch_in_which_its_callback_runs() {
    struct Slow {
        entered: Arc<AtomicBool>,
        finished: Arc<AtomicBool>,
    }
    impl IntervalNotifierOps for Slow {
        fn invalidate(&self, sub: &IntervalSub, _: &Range<'_>, seq: Seq) -> bool {
            sub.set_seq(seq);
            self.entered.store(true, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(80));
            self.finished.store(true, Ordering::SeqCst);
            true
        }
    }
    let mm = Mm::new();
    let (entered, finished) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let slow = Slow {
        entered: Arc::clone(&entered),
        finished: Arc::clone(&finished),
    };
    let n = IntervalNotifier::insert(&mm, 0, 0x1000, slow).unwrap();
    let mm2 = Arc::clone(&mm);
    let invalidator = std::thread::spawn(move || {
        let lock = mm2.mmap_read();
        Invalidation::start(range(&lock, 0, 0x1000)).end();
    });
    while !entered.load(Ordering::SeqCst) {
        std::thread::yield_now();
    }
    n.remove();
    assert!(
        finished.load(Ordering::SeqCst),
        "remove returned while the callback ran"
    );
    invalidator.join().unwrap();
}

#[test]
fn remove_of_a_deferred_insert_does_not_wait_and_never_joins_the_tree() {
    let mm = Mm::new();
    let log = Log::default();
    let _hit = IntervalNotifier::insert(&mm, 0, 0x1000, Recorder::new("hit", &log)).unwrap();
    let lock = mm.rmap_lock();
    let inv = Invalidation::start(range(&lock, 0, 0x1000));
    let deferred = IntervalNotifier::insert(&mm, 0, 0x1000, Recorder::new("gone", &log)).unwrap();
    within(5, move || deferred.remove());
    inv.end();
    log.take();
    Invalidation::start(range(&lock, 0, 0x1000)).end();
    assert_eq!(log.take().iter().map(who_of).collect::<Vec<_>>(), ["hit"]);
}

#[test]
fn remove_while_idle_is_immediate_and_stops_callbacks() {
    let mm = Mm::new();
    let log = Log::default();
    let n = IntervalNotifier::insert(&mm, 0, 0x1000, Recorder::new("n", &log)).unwrap();
    n.remove();
    let lock = mm.mmap_read();
    Invalidation::start(range(&lock, 0, 0x1000)).end();
    assert_eq!(log.len(), 0);
    assert!(mm.warnings().is_empty());
}

/// §4.4 item 4: an interval refusing a non-blockable range aborts it with
/// EAGAIN; the list is not called; nothing stays counted.
#[test]
fn nonblock_refusal_aborts_before_the_list_and_restores_the_count() {
    let mm = Mm::new();
    let log = Log::default();
    let polite = IntervalNotifier::insert(&mm, 0, 0x1000, Recorder::new("polite", &log)).unwrap();
    let _refuses =
        IntervalNotifier::insert(&mm, 0x800, 0x1000, Recorder::refusing("refuses", &log)).unwrap();
    let _list = Notifier::register(&mm, &FULL, ListRec::new("list", &log)).unwrap();
    let lock = mm.mmap_read();
    let s = polite.read_begin();
    let result = Invalidation::start_nonblock(range(&lock, 0, 0x2000));
    assert_eq!(result.err(), Some(WouldBlock));
    let calls = log.take();
    assert_eq!(
        calls.iter().map(who_of).collect::<Vec<_>>(),
        ["polite"],
        "list not called"
    );
    assert!(polite.read_retry(s), "the callback that ran forces a retry");
    // Nothing stays counted: read_begin and remove return without waiting.
    drop(lock);
    let polite = Arc::new(polite);
    let p2 = Arc::clone(&polite);
    let again = within(5, move || p2.read_begin());
    assert!(!polite.read_retry(again));
    assert!(mm.warnings().is_empty());
    let polite = Arc::try_unwrap(polite).ok().unwrap();
    within(5, move || polite.remove());
}

#[test]
fn a_refusal_of_a_blockable_range_is_warned_and_ignored() {
    struct Rude;
    impl IntervalNotifierOps for Rude {
        fn invalidate(&self, _: &IntervalSub, _: &Range<'_>, _: Seq) -> bool {
            false
        }
    }
    let mm = Mm::new();
    let log = Log::default();
    let _rude = IntervalNotifier::insert(&mm, 0, 0x1000, Rude).unwrap();
    let _next = IntervalNotifier::insert(&mm, 0x100, 0x1000, Recorder::new("next", &log)).unwrap();
    let lock = mm.mmap_read();
    Invalidation::start(range(&lock, 0, 0x1000)).end();
    assert_eq!(log.len(), 1, "the walk continues");
    assert_eq!(mm.warnings(), vec![Warning::IntervalRefusedBlockable]);
}

/// Latent issue (a): an interval notifier accepts, then a list notifier
/// refuses: the tree side must not stay counted (Linux leaks it).
#[test]
fn list_refusal_after_interval_acceptance_leaves_no_epoch_open() {
    let mm = Mm::new();
    let log = Log::default();
    let n = IntervalNotifier::insert(&mm, 0, 0x1000, Recorder::new("isub", &log)).unwrap();
    let _b = Notifier::register(&mm, &FALLIBLE, ListRec::new("B", &log)).unwrap();
    {
        let lock = mm.mmap_read();
        assert!(Invalidation::start_nonblock(range(&lock, 0, 0x1000)).is_err());
    }
    let n = Arc::new(n);
    let n2 = Arc::clone(&n);
    let fresh = within(5, move || n2.read_begin());
    assert!(!n.read_retry(fresh));
    let n = Arc::try_unwrap(n).ok().unwrap();
    within(5, move || n.remove());
}

/// §1.7: exit sends Release over everything to intervals (list notifiers get
/// `release`), intervals stay subscribed and then see the exit-time Unmap.
#[test]
fn exit_sends_release_to_intervals_and_keeps_them() {
    let mm = Mm::new();
    let log = Log::default();
    let n = IntervalNotifier::insert(&mm, 0x1000, 0x1000, Recorder::new("isub", &log)).unwrap();
    let list = Notifier::register(&mm, &FULL, ListRec::new("list", &log)).unwrap();
    mm.exit();
    {
        let lock = mm.mmap_write();
        Invalidation::start(Range::new(&lock, Event::Unmap, 0, u64::MAX)).end();
    }
    let calls = log.take();
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert!(matches!(
        calls[0],
        Call::Invalidate {
            event: Event::Release,
            start: 0,
            end: u64::MAX,
            blockable: true,
            ..
        }
    ));
    assert_eq!(calls[1], Call::Release { who: "list" });
    assert!(matches!(
        calls[2],
        Call::Invalidate {
            event: Event::Unmap,
            start: 0,
            end: u64::MAX,
            ..
        }
    ));
    drop(list);
    n.remove();
}

/// The address space comes from the guard: there is no other to name.
#[test]
fn insert_locked_inserts_on_the_guards_address_space() {
    let (mm, other) = (Mm::new(), Mm::new());
    let log = Log::default();
    let guard = other.mmap_write();
    let n = IntervalNotifier::insert_locked(&guard, 0, 0x1000, Recorder::new("x", &log)).unwrap();
    drop(guard);
    assert!(Arc::ptr_eq(n.mm(), &other));
    let lock = mm.mmap_read();
    Invalidation::start(range(&lock, 0, 0x1000)).end();
    drop(lock);
    assert!(
        log.take().is_empty(),
        "the other address space's change misses it"
    );
    let lock = other.mmap_read();
    Invalidation::start(range(&lock, 0, 0x1000)).end();
    drop(lock);
    assert_eq!(log.take().len(), 1, "a change of the guard's mm reaches it");
    n.remove();
}

// ---- panics and misuse ----

struct Panics;
impl IntervalNotifierOps for Panics {
    fn invalidate(&self, _: &IntervalSub, _: &Range<'_>, _: Seq) -> bool {
        panic!("driver bug");
    }
}

/// A panic inside a callback reaches the caller and leaves no odd seq, no
/// counted range and no SRCU reader behind.
#[test]
fn a_panicking_callback_leaves_the_subscriptions_consistent() {
    let mm = Mm::new();
    let log = Log::default();
    let good = IntervalNotifier::insert(&mm, 0, 0x1000, Recorder::new("good", &log)).unwrap();
    let bad = IntervalNotifier::insert(&mm, 0x800, 0x1000, Panics).unwrap();
    let list = Notifier::register(&mm, &FULL, ListRec::new("list", &log)).unwrap();
    let mm2 = Arc::clone(&mm);
    let outcome = std::thread::spawn(move || {
        let lock = mm2.mmap_read();
        Invalidation::start(range(&lock, 0, 0x2000)).end();
    })
    .join();
    assert!(outcome.is_err(), "the panic propagates");
    within(5, move || {
        let s = good.read_begin();
        assert!(!good.read_retry(s));
        bad.remove();
        good.remove();
        list.unregister();
    });
}

/// A list notifier that panics in `invalidate_range_start` after the tree
/// counted the range: the epoch must still close.
#[test]
fn a_panicking_list_start_after_the_tree_counted_leaves_no_epoch_open() {
    static PANICS: mmun_core::NotifierOps<()> = mmun_core::NotifierOps {
        invalidate_range_start: Some(mmun_core::StartFn::Infallible(|_, _| panic!("driver bug"))),
        ..mmun_core::NotifierOps::EMPTY
    };
    let mm = Mm::new();
    let log = Log::default();
    let good = IntervalNotifier::insert(&mm, 0, 0x1000, Recorder::new("good", &log)).unwrap();
    let bad = Notifier::register(&mm, &PANICS, ()).unwrap();
    let mm2 = Arc::clone(&mm);
    let outcome = std::thread::spawn(move || {
        let lock = mm2.mmap_read();
        Invalidation::start(range(&lock, 0, 0x1000)).end();
    })
    .join();
    assert!(outcome.is_err(), "the panic propagates");
    within(5, move || {
        let s = good.read_begin();
        assert!(!good.read_retry(s));
        good.remove();
        bad.unregister();
    });
}

/// A self-deadlock check of every build (`tests/self_deadlock.rs` has the
/// others; CI runs both files in release too).
#[test]
fn remove_from_inside_its_own_callback_panics_naming_the_rule() {
    static SELF_REMOVE: Mutex<Option<IntervalNotifier<Remover>>> = Mutex::new(None);
    struct Remover;
    impl IntervalNotifierOps for Remover {
        fn invalidate(&self, sub: &IntervalSub, _: &Range<'_>, seq: Seq) -> bool {
            sub.set_seq(seq);
            if let Some(me) = SELF_REMOVE.lock().unwrap().take() {
                me.remove();
            }
            true
        }
    }
    let mm = Mm::new();
    *SELF_REMOVE.lock().unwrap() = Some(IntervalNotifier::insert(&mm, 0, 0x1000, Remover).unwrap());
    let mm2 = Arc::clone(&mm);
    let message = within(10, move || {
        std::thread::spawn(move || {
            let lock = mm2.mmap_read();
            Invalidation::start(range(&lock, 0, 0x1000)).end();
        })
        .join()
        .unwrap_err()
    });
    let text = message
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(text.contains("mmu_interval_notifier_remove()"), "{text}");
    assert!(text.contains("invalidate callback"), "{text}");
}

/// Acknowledges every invalidation; zero-sized, like the bench's driver.
struct Ack;

impl IntervalNotifierOps for Ack {
    fn invalidate(&self, sub: &IntervalSub, _range: &Range<'_>, cur_seq: Seq) -> bool {
        sub.set_seq(cur_seq);
        true
    }
}

#[test]
fn handles_in_every_seq_chunk_see_their_own_invalidations() {
    // 3000 subscriptions fill the first two chunks of seq words (1024 and
    // 2048 words) and start the third; the handles move as the Vec grows.
    let mm = Mm::new();
    let mut subs = Vec::new();
    for i in 0..3000u64 {
        subs.push(IntervalNotifier::insert(&mm, i * 0x2000, 0x1000, Ack).unwrap());
    }
    let before: Vec<Seq> = subs.iter().map(|s| s.read_begin()).collect();
    let lock = mm.mmap_read();
    for i in (0..3000).step_by(7) {
        let start = i as u64 * 0x2000;
        Invalidation::start(range(&lock, start, start + 0x1000)).end();
    }
    drop(lock);
    for (i, (sub, seq)) in subs.iter().zip(&before).enumerate() {
        assert_eq!(sub.read_retry(*seq), i % 7 == 0, "subscription {i}");
    }
}

#[test]
fn a_handle_is_one_pointer_and_a_node_header_four_words() {
    // The caller's share of the memory per interval notifier (the bench
    // prints the total): the handle is the box of its node; the node's
    // header is the seq word, the dispatch pointer, the start and the
    // address space, followed by the driver state (zero-sized here).
    assert_eq!(size_of::<IntervalNotifier<Ack>>(), size_of::<usize>());
    assert_eq!(size_of::<IntervalNode<Ack>>(), 4 * size_of::<u64>());
}

#[test]
fn equal_starts_are_removed_one_by_one_in_any_order() {
    // Removal finds the tree entry from the start and the node's address:
    // among equal starts it must take exactly its own, and the others keep
    // their insertion order (the kernel's: its interval tree sends an equal
    // start to the right, and removing a node does not reorder the rest).
    let mm = Mm::new();
    let log = Log::default();
    let mut subs: Vec<_> = (0..40u64)
        .map(|i| {
            let who: &'static str = Box::leak(format!("s{i}").into_boxed_str());
            let length = 0x1000 * (1 + i % 3);
            IntervalNotifier::insert(&mm, 0x4000, length, Recorder::new(who, &log)).unwrap()
        })
        .collect();
    let remaining = |subs: &[IntervalNotifier<Recorder>]| -> Vec<&'static str> {
        subs.iter().map(|s| s.ops().who).collect()
    };
    let order = (0..40).rev().step_by(3).chain((0..20).step_by(2));
    for i in order {
        if i >= subs.len() {
            continue;
        }
        subs.remove(i).remove();
        let lock = mm.mmap_read();
        Invalidation::start(range(&lock, 0x4000, 0x4001)).end();
        let called: Vec<_> = log.take().iter().map(who_of).collect();
        assert_eq!(
            called,
            remaining(&subs),
            "after removing #{i}: insertion order"
        );
    }
    assert!(mm.warnings().is_empty(), "{:?}", mm.warnings());
}
