//! A callback that unwinds out of `invalidate_range_start`: every list
//! notifier that gets an end got its start first (or has no start callback),
//! and the tree's epoch is closed.

mod common;

use std::sync::Arc;

use common::*;
use mmun_core::{
    Event, HeldMmLock, IntervalNotifier, IntervalNotifierOps, IntervalSub, Invalidation, Mm,
    Notifier, NotifierOps, Range, Seq, StartFn,
};

fn clear(held: &impl HeldMmLock, start: u64, end: u64) -> Range<'_> {
    Range::new(held, Event::Clear, start, end)
}

fn log_end(r: &ListRec, range: &Range<'_>) {
    r.log.push(Call::End {
        who: r.who,
        start: range.start(),
        end: range.end(),
    });
}

fn log_invalidate_range(r: &ListRec, _: &Mm, start: u64, end: u64) {
    r.log.push(Call::InvalidateRange {
        who: r.who,
        start,
        end,
    });
}

/// No start callback: gets its end after any start, finished or not.
static END_ONLY: NotifierOps<ListRec> = NotifierOps {
    invalidate_range_end: Some(log_end),
    invalidate_range: Some(log_invalidate_range),
    ..NotifierOps::EMPTY
};

/// A start that runs (and is logged) but never returns, and an end.
static START_PANICS: NotifierOps<ListRec> = NotifierOps {
    invalidate_range_start: Some(StartFn::Infallible(|r, range| {
        r.log.push(start_call(r.who, range));
        panic!("driver bug in {}", r.who);
    })),
    invalidate_range_end: Some(log_end),
    invalidate_range: Some(log_invalidate_range),
    ..NotifierOps::EMPTY
};

struct Panics;
impl IntervalNotifierOps for Panics {
    fn invalidate(&self, _: &IntervalSub, _: &Range<'_>, _: Seq) -> bool {
        panic!("driver bug in an interval callback");
    }
}

/// Runs a blockable invalidation of `[0, 0x1000)` on its own thread and
/// checks that it unwinds.
fn invalidate_and_unwind(mm: &Arc<Mm>) {
    let mm = Arc::clone(mm);
    let outcome = within(10, move || {
        std::thread::spawn(move || {
            let lock = mm.mmap_read();
            Invalidation::start(clear(&lock, 0, 0x1000)).end();
        })
        .join()
    });
    assert!(outcome.is_err(), "the callback's panic reaches the caller");
}

fn ends_of(calls: &[Call]) -> Vec<&'static str> {
    calls
        .iter()
        .filter(|c| matches!(c, Call::End { .. }))
        .map(who_of)
        .collect()
}

/// The interval callback unwinds before the list starts: a list notifier
/// with a start gets nothing, one without a start gets its end as usual.
#[test]
fn interval_callback_unwinding_ends_only_list_notifiers_without_a_start() {
    let mm = Mm::new();
    let log = Log::default();
    let full = Notifier::register(&mm, &FULL, ListRec::new("full", &log)).unwrap();
    let end_only = Notifier::register(&mm, &END_ONLY, ListRec::new("end-only", &log)).unwrap();
    let bad = IntervalNotifier::insert(&mm, 0, 0x1000, Panics).unwrap();
    invalidate_and_unwind(&mm);
    let calls = log.take();
    assert_eq!(
        calls,
        vec![
            Call::InvalidateRange {
                who: "end-only",
                start: 0,
                end: 0x1000
            },
            Call::End {
                who: "end-only",
                start: 0,
                end: 0x1000
            },
        ],
        "no start reached `full`, so no end may either"
    );
    within(5, move || {
        bad.remove(); // the epoch is closed: this does not wait forever
        drop((full, end_only));
    });
}

/// Newest first: `newer` starts, `panics` unwinds in its start, `older`
/// never starts. Only `newer` (and the start-less notifier) get an end.
#[test]
fn list_start_unwinding_ends_only_notifiers_that_started() {
    let mm = Mm::new();
    let log = Log::default();
    let end_only = Notifier::register(&mm, &END_ONLY, ListRec::new("end-only", &log)).unwrap();
    let older = Notifier::register(&mm, &FULL, ListRec::new("older", &log)).unwrap();
    let panics = Notifier::register(&mm, &START_PANICS, ListRec::new("panics", &log)).unwrap();
    let newer = Notifier::register(&mm, &FULL, ListRec::new("newer", &log)).unwrap();
    let interval =
        IntervalNotifier::insert(&mm, 0, 0x1000, Recorder::new("interval", &log)).unwrap();
    invalidate_and_unwind(&mm);
    let calls = log.take();
    let starts: Vec<_> = calls
        .iter()
        .filter(|c| matches!(c, Call::Start { .. }))
        .map(who_of)
        .collect();
    assert_eq!(starts, ["newer", "panics"], "{calls:#?}");
    assert_eq!(ends_of(&calls), ["newer", "end-only"], "{calls:#?}");
    within(5, move || {
        let seq = interval.read_begin(); // the tree's epoch was closed
        assert!(!interval.read_retry(seq));
        drop((end_only, older, panics, newer, interval));
    });
}

/// The non-blocking refusal path is unchanged: every start is called and
/// every notifier with an end gets it (v5.12 `c2655835fd8c`).
#[test]
fn nonblock_refusal_still_ends_every_notifier_with_an_end() {
    let mm = Mm::new();
    let log = Log::default();
    let _a = Notifier::register(&mm, &FULL, ListRec::new("a", &log)).unwrap();
    let _b = Notifier::register(&mm, &FALLIBLE, ListRec::new("b", &log)).unwrap();
    let _c = Notifier::register(&mm, &END_ONLY, ListRec::new("c", &log)).unwrap();
    let lock = mm.mmap_read();
    assert!(Invalidation::start_nonblock(clear(&lock, 0, 0x1000)).is_err());
    assert_eq!(ends_of(&log.take()), ["c", "a"]);
}

static REFUSES: NotifierOps<()> = NotifierOps {
    invalidate_range_start: Some(StartFn::Fallible(|_, _| Err(mmun_core::WouldBlock))),
    ..NotifierOps::EMPTY
};

static NOTHING: NotifierOps<()> = NotifierOps::EMPTY;

/// Registers on the calling thread, which panics naming the rule if this
/// thread still has an invalidation of `mm` recorded as open.
fn register_here(mm: &Arc<Mm>) {
    Notifier::register(mm, &NOTHING, ()).unwrap().unregister();
}

/// A start that unwinds (caught on its thread) leaves no invalidation
/// recorded as open there: the thread may register afterwards. (The
/// `Invalidation` is built only once the start returned, so the record is
/// dropped on its own while unwinding.)
#[test]
fn a_start_that_unwinds_leaves_nothing_open_on_its_thread() {
    let mm = Mm::new();
    let log = Log::default();
    let panics = Notifier::register(&mm, &START_PANICS, ListRec::new("panics", &log)).unwrap();
    let mm2 = Arc::clone(&mm);
    within(10, move || {
        std::thread::spawn(move || {
            let lock = mm2.mmap_read();
            let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                Invalidation::start(clear(&lock, 0, 0x1000)).end();
            }));
            assert!(unwound.is_err(), "the callback's panic reaches the caller");
            drop(lock);
            drop(panics);
            register_here(&mm2);
        })
        .join()
        .expect("registering after an unwound start");
    });
}

/// A refused non-blockable start leaves no invalidation recorded as open.
#[test]
fn a_refused_nonblocking_start_leaves_nothing_open_on_its_thread() {
    let mm = Mm::new();
    let refuses = Notifier::register(&mm, &REFUSES, ()).unwrap();
    let lock = mm.mmap_read();
    assert!(Invalidation::start_nonblock(clear(&lock, 0, 0x1000)).is_err());
    drop(lock);
    drop(refuses);
    register_here(&mm);
}

/// Counts its end calls and panics in the first one.
static ENDS_SEEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

static END_PANICS_ONCE: NotifierOps<()> = NotifierOps {
    invalidate_range_end: Some(|_, _| {
        if ENDS_SEEN.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            panic!("driver bug in an end callback");
        }
    }),
    ..NotifierOps::EMPTY
};

/// An end callback that unwinds ends nothing a second time: the
/// invalidation counts as ended before its end callbacks run, so the drop
/// glue that runs while unwinding finds nothing to do.
#[test]
fn an_end_that_unwinds_is_not_repeated() {
    let mm = Mm::new();
    let notifier = Notifier::register(&mm, &END_PANICS_ONCE, ()).unwrap();
    let mm2 = Arc::clone(&mm);
    let outcome = within(10, move || {
        std::thread::spawn(move || {
            let lock = mm2.mmap_read();
            Invalidation::start(clear(&lock, 0, 0x1000)).end();
        })
        .join()
    });
    assert!(
        outcome.is_err(),
        "the end callback's panic reaches the caller"
    );
    assert_eq!(ENDS_SEEN.load(std::sync::atomic::Ordering::SeqCst), 1);
    notifier.unregister();
}
