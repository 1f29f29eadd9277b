//! The mmun extensions a real-process primary needs: the `Mm` observer
//! (interval ranges, registration scopes) and the `LATE` range flag.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, Ordering};

use mmun_core::{
    Event, IntervalNotifier, IntervalNotifierOps, IntervalSub, Invalidation, Mm, MmObserver,
    Notifier, NotifierOps, Range, RangeFlags, Seq,
};

#[derive(Default)]
struct Log {
    intervals: Mutex<Vec<(&'static str, u64, u64)>>,
    depth: AtomicI32,
    max_depth: AtomicI32,
}

impl MmObserver for Log {
    fn interval_inserted(&self, start: u64, last: u64) {
        assert_eq!(
            self.depth.load(Ordering::SeqCst),
            0,
            "called inside a scope"
        );
        self.intervals.lock().unwrap().push(("insert", start, last));
    }
    fn interval_removed(&self, start: u64, last: u64) {
        assert_eq!(
            self.depth.load(Ordering::SeqCst),
            0,
            "called inside a scope"
        );
        self.intervals.lock().unwrap().push(("remove", start, last));
    }
    fn registration(&self, entering: bool) {
        let now = self
            .depth
            .fetch_add(if entering { 1 } else { -1 }, Ordering::SeqCst)
            + if entering { 1 } else { -1 };
        assert!(now >= 0, "leave without enter");
        self.max_depth.fetch_max(now, Ordering::SeqCst);
    }
}

struct Quiet;
impl IntervalNotifierOps for Quiet {
    fn invalidate(&self, sub: &IntervalSub, _range: &Range<'_>, cur_seq: Seq) -> bool {
        sub.set_seq(cur_seq);
        true
    }
}

fn leaked_log() -> &'static Log {
    Box::leak(Box::default())
}

#[test]
fn interval_insert_and_remove_reach_the_observer_outside_any_scope() {
    let log = leaked_log();
    let mm = Mm::with_observer(log);
    let a = IntervalNotifier::insert(&mm, 0x1000, 0x2000, Quiet).unwrap();
    let b = IntervalNotifier::insert(&mm, 0x8000, 0x1000, Quiet).unwrap();
    a.remove();
    drop(b);
    assert_eq!(
        *log.intervals.lock().unwrap(),
        [
            ("insert", 0x1000, 0x2fff),
            ("insert", 0x8000, 0x8fff),
            ("remove", 0x1000, 0x2fff),
            ("remove", 0x8000, 0x8fff),
        ]
    );
    assert!(
        log.max_depth.load(Ordering::SeqCst) >= 1,
        "no scope entered"
    );
    assert_eq!(log.depth.load(Ordering::SeqCst), 0, "scopes unbalanced");
}

#[test]
fn list_registration_and_the_mmap_write_lock_are_scopes() {
    static OPS: NotifierOps<()> = NotifierOps::EMPTY;
    let log = leaked_log();
    let mm = Mm::with_observer(log);
    {
        let _write = mm.mmap_write();
        assert_eq!(log.depth.load(Ordering::SeqCst), 1);
    }
    assert_eq!(log.depth.load(Ordering::SeqCst), 0);
    let n = Notifier::register(&mm, &OPS, ()).unwrap();
    n.unregister();
    assert_eq!(log.depth.load(Ordering::SeqCst), 0);
    assert!(
        log.intervals.lock().unwrap().is_empty(),
        "list notifiers have no interval"
    );
}

#[test]
fn dispatch_never_calls_the_observer() {
    let log = leaked_log();
    let mm = Mm::with_observer(log);
    let _sub = IntervalNotifier::insert(&mm, 0, 0x1000, Quiet).unwrap();
    let before = log.max_depth.load(Ordering::SeqCst);
    log.max_depth.store(0, Ordering::SeqCst);
    let lock = mm.mmap_read();
    Invalidation::start(Range::new(&lock, Event::Unmap, 0, 0x1000)).end();
    assert_eq!(log.max_depth.load(Ordering::SeqCst), 0);
    assert!(before >= 1);
}

#[test]
fn late_survives_the_entry_points_and_reaches_callbacks() {
    struct SeesLate(AtomicI32);
    impl IntervalNotifierOps for SeesLate {
        fn invalidate(&self, sub: &IntervalSub, range: &Range<'_>, cur_seq: Seq) -> bool {
            sub.set_seq(cur_seq);
            assert!(range.is_blockable());
            self.0.store(i32::from(range.is_late()), Ordering::SeqCst);
            true
        }
    }
    let mm = Mm::new();
    let sub = IntervalNotifier::insert(&mm, 0, 0x1000, SeesLate(AtomicI32::new(-1))).unwrap();
    let lock = mm.mmap_read();
    let late = Range::new(&lock, Event::Unmap, 0, 0x1000).with_flags(RangeFlags::LATE);
    Invalidation::start(late).end();
    assert_eq!(sub.ops().0.load(Ordering::SeqCst), 1);
    Invalidation::start(Range::new(&lock, Event::Unmap, 0, 0x1000)).end();
    assert_eq!(sub.ops().0.load(Ordering::SeqCst), 0);
    assert_eq!(
        format!("{:?}", RangeFlags::LATE.union(RangeFlags::BLOCKABLE)),
        "BLOCKABLE|LATE"
    );
}
