//! Calls that would wait for this thread's own invalidation, or for its own
//! SRCU read section, panic naming the rule in every build (CI runs this
//! file in release as well): the checks are per-thread and cheap, so unlike
//! lockdep's lock-order graph they are never compiled out.

mod common;

use std::sync::{Arc, Mutex};

use common::within;
use mmun_core::{
    Event, HeldMmLock, IntervalNotifier, IntervalNotifierOps, IntervalSub, Invalidation, Mm,
    Notifier, NotifierOps, Range, Seq, StartFn,
};

fn clear(held: &impl HeldMmLock, start: u64, end: u64) -> Range<'_> {
    Range::new(held, Event::Clear, start, end)
}

/// Runs `f` on its own thread (fresh per-thread state) and returns the
/// message of the panic it must end in; a hang fails the test.
fn panic_of(f: impl FnOnce() + Send + 'static) -> String {
    let payload = within(10, move || std::thread::spawn(f).join())
        .expect_err("expected a panic naming the rule, got none");
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

struct SetsSeq;
impl IntervalNotifierOps for SetsSeq {
    fn invalidate(&self, sub: &IntervalSub, _: &Range<'_>, seq: Seq) -> bool {
        sub.set_seq(seq);
        true
    }
}

type Slot<T> = Mutex<Option<T>>;

#[test]
fn read_begin_between_start_and_end_on_the_same_thread_panics() {
    let text = panic_of(|| {
        let mm = Mm::new();
        let sub = IntervalNotifier::insert(&mm, 0, 0x1000, SetsSeq).unwrap();
        let lock = mm.mmap_read();
        let inv = Invalidation::start(clear(&lock, 0, 0x1000));
        let _ = sub.read_begin();
        inv.end();
    });
    assert!(text.contains("mmu_interval_read_begin()"), "{text}");
    assert!(text.contains("between start and end"), "{text}");
}

/// The non-panicking form reports the same rule as `None`, and only where
/// `read_begin` would wait: before the covering start it reads normally.
#[test]
fn try_read_begin_between_start_and_end_refuses_instead_of_panicking() {
    within(10, || {
        let mm = Mm::new();
        let sub = IntervalNotifier::insert(&mm, 0, 0x1000, SetsSeq).unwrap();
        assert!(sub.try_read_begin().is_some(), "nothing open: reads");
        let lock = mm.mmap_read();
        let inv = Invalidation::start(clear(&lock, 0, 0x1000));
        assert_eq!(sub.try_read_begin(), None, "would wait on itself");
        inv.end();
        drop(lock);
        let seq = sub.try_read_begin().expect("ended: reads again");
        assert!(!sub.read_retry(seq));
    });
}

static READER: Slot<IntervalNotifier<SetsSeq>> = Mutex::new(None);

#[test]
fn read_begin_from_a_list_callback_of_a_covering_invalidation_panics() {
    static READS: NotifierOps<()> = NotifierOps {
        invalidate_range_start: Some(StartFn::Infallible(|_, _| {
            if let Some(sub) = READER.lock().unwrap().as_ref() {
                let _ = sub.read_begin();
            }
        })),
        ..NotifierOps::EMPTY
    };
    let text = panic_of(|| {
        let mm = Mm::new();
        *READER.lock().unwrap() = Some(IntervalNotifier::insert(&mm, 0, 0x1000, SetsSeq).unwrap());
        let _n = Notifier::register(&mm, &READS, ()).unwrap();
        let lock = mm.mmap_read();
        Invalidation::start(clear(&lock, 0, 0x1000)).end();
    });
    READER.lock().unwrap_or_else(|e| e.into_inner()).take();
    assert!(text.contains("mmu_interval_read_begin()"), "{text}");
}

#[test]
fn remove_between_start_and_end_of_a_covering_range_panics() {
    let text = panic_of(|| {
        let mm = Mm::new();
        let sub = IntervalNotifier::insert(&mm, 0, 0x1000, SetsSeq).unwrap();
        let lock = mm.mmap_read();
        let _inv = Invalidation::start(clear(&lock, 0, 0x1000));
        sub.remove();
    });
    assert!(text.contains("mmu_interval_notifier_remove()"), "{text}");
}

static REGISTERS: Slot<Arc<Mm>> = Mutex::new(None);

#[test]
fn registering_from_a_callback_panics_instead_of_deadlocking() {
    static OPS: NotifierOps<()> = NotifierOps {
        invalidate_range_start: Some(StartFn::Infallible(|_, _| {
            let mm = REGISTERS.lock().unwrap().clone();
            if let Some(mm) = mm {
                let _ = Notifier::register(&mm, &NotifierOps::<()>::EMPTY, ());
            }
        })),
        ..NotifierOps::EMPTY
    };
    let text = panic_of(|| {
        let mm = Mm::new();
        let _n = Notifier::register(&mm, &OPS, ()).unwrap();
        *REGISTERS.lock().unwrap() = Some(Arc::clone(&mm));
        let lock = mm.mmap_read();
        Invalidation::start(clear(&lock, 0, 0x1000)).end();
    });
    REGISTERS.lock().unwrap_or_else(|e| e.into_inner()).take();
    assert!(text.contains("mmu_notifier_register()"), "{text}");
    assert!(text.contains("takes every lock of the mm"), "{text}");
}

#[test]
fn synchronize_from_a_list_callback_panics() {
    static OPS: NotifierOps<()> = NotifierOps {
        invalidate_range_start: Some(StartFn::Infallible(|_, _| mmun_core::synchronize())),
        ..NotifierOps::EMPTY
    };
    let text = panic_of(|| {
        let mm = Mm::new();
        let _n = Notifier::register(&mm, &OPS, ()).unwrap();
        let lock = mm.mmap_read();
        Invalidation::start(clear(&lock, 0, 0x1000)).end();
    });
    assert!(text.contains("SRCU read section"), "{text}");
}

/// A range of another address space does not count: waiting on `mm`
/// while an invalidation of `other` is open is fine.
#[test]
fn an_open_invalidation_of_another_mm_does_not_trip_the_check() {
    let mm = Mm::new();
    let other = Mm::new();
    let _o = IntervalNotifier::insert(&other, 0, 0x1000, SetsSeq).unwrap();
    let sub = IntervalNotifier::insert(&mm, 0, 0x1000, SetsSeq).unwrap();
    let lock = other.mmap_read();
    let inv = Invalidation::start(clear(&lock, 0, 0x1000));
    let seq = sub.read_begin();
    assert!(!sub.read_retry(seq));
    let _n = Notifier::register(&mm, &NotifierOps::<()>::EMPTY, ()).unwrap();
    inv.end();
}
