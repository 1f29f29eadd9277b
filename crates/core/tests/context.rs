//! The debug-build stand-ins for lockdep and `might_sleep` (spec §1.9;
//! §5 #9): sleeping in a non-blockable callback, and the lock-order cycles
//! through `__mmu_notifier_invalidate_range_start_map`.
#![cfg(debug_assertions)]

mod common;

use std::sync::Arc;

use common::within;
use mmun_core::lockdep::{LockClass, Mutex};
use mmun_core::{
    Event, IntervalNotifier, IntervalNotifierOps, IntervalSub, Invalidation, Mm, Notifier,
    NotifierOps, Range, Seq, StartFn,
};

fn panic_text(result: std::thread::Result<()>) -> String {
    let payload = result.expect_err("expected a panic");
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// Runs `f` on its own thread (so per-thread state starts clean) and returns
/// the panic message it must produce.
fn panics(f: impl FnOnce() + Send + 'static) -> String {
    within(10, move || panic_text(std::thread::spawn(f).join()))
}

#[test]
fn sleeping_in_a_nonblock_list_callback_is_reported() {
    static SLEEPS: NotifierOps<()> = NotifierOps {
        invalidate_range_start: Some(StartFn::Infallible(|_, _| mmun_core::might_sleep())),
        ..NotifierOps::EMPTY
    };
    let text = panics(|| {
        let mm = Mm::new();
        let _n = Notifier::register(&mm, &SLEEPS, ()).unwrap();
        let lock = mm.mmap_read();
        let _ = Invalidation::start_nonblock(Range::new(&lock, Event::Unmap, 0, 0x1000));
    });
    assert!(text.contains("might_sleep()"), "{text}");
}

#[test]
fn sleeping_in_a_blockable_callback_is_fine() {
    static SLEEPS: NotifierOps<()> = NotifierOps {
        invalidate_range_start: Some(StartFn::Infallible(|_, _| mmun_core::might_sleep())),
        ..NotifierOps::EMPTY
    };
    let mm = Mm::new();
    let _n = Notifier::register(&mm, &SLEEPS, ()).unwrap();
    let lock = mm.mmap_read();
    Invalidation::start(Range::new(&lock, Event::Unmap, 0, 0x1000)).end();
}

#[test]
fn blocking_on_a_lock_in_atomic_context_callbacks_is_reported() {
    static CLASS: LockClass = LockClass::new("young-test lock");
    static LOCK: Mutex<()> = Mutex::new(&CLASS, ());
    static YOUNG_LOCKS: NotifierOps<()> = NotifierOps {
        clear_young: Some(|_, _, _, _| {
            drop(LOCK.lock());
            false
        }),
        ..NotifierOps::EMPTY
    };
    let text = panics(|| {
        let mm = Mm::new();
        let _n = Notifier::register(&mm, &YOUNG_LOCKS, ()).unwrap();
        mm.clear_young(0, 0x1000);
    });
    assert!(text.contains("might_sleep()"), "{text}");
}

struct TakesLock(&'static Mutex<()>);
impl IntervalNotifierOps for TakesLock {
    fn invalidate(&self, sub: &IntervalSub, range: &Range<'_>, seq: Seq) -> bool {
        let _guard = if range.is_blockable() {
            self.0.lock()
        } else {
            match self.0.try_lock() {
                Some(g) => g,
                None => return false,
            }
        };
        sub.set_seq(seq);
        true
    }
}

/// The driver lock is taken in the callback (map → lock), then held around
/// an invalidation start (lock → map): a cycle, reported on the second
/// order even though nothing deadlocked.
#[test]
fn driver_lock_held_around_invalidate_range_start_is_a_cycle() {
    static CLASS: LockClass = LockClass::new("driver lock A");
    static LOCK: Mutex<()> = Mutex::new(&CLASS, ());
    let text = panics(|| {
        let mm = Mm::new();
        let _n = IntervalNotifier::insert(&mm, 0, 0x1000, TakesLock(&LOCK)).unwrap();
        let lock = mm.mmap_read();
        Invalidation::start(Range::new(&lock, Event::Clear, 0, 0x1000)).end();
        let _held = LOCK.lock();
        Invalidation::start(Range::new(&lock, Event::Clear, 0x8000, 0x9000)).end();
    });
    assert!(text.contains("possible circular locking"), "{text}");
    assert!(text.contains("driver lock A"), "{text}");
    assert!(text.contains("invalidate_range_start"), "{text}");
}

/// `read_begin` under the lock its callback takes: reported even when no
/// invalidation is running at that moment.
#[test]
fn read_begin_under_the_callback_lock_is_a_cycle() {
    static CLASS: LockClass = LockClass::new("driver lock B");
    static LOCK: Mutex<()> = Mutex::new(&CLASS, ());
    let text = panics(|| {
        let mm = Mm::new();
        let n = IntervalNotifier::insert(&mm, 0, 0x1000, TakesLock(&LOCK)).unwrap();
        {
            let lock = mm.mmap_read();
            Invalidation::start(Range::new(&lock, Event::Clear, 0, 0x1000)).end();
        }
        let _held = LOCK.lock();
        let _ = n.read_begin();
    });
    assert!(text.contains("possible circular locking"), "{text}");
}

/// The correct pattern (read_begin, then the lock, then read_retry) is quiet.
#[test]
fn the_documented_retry_loop_is_not_reported() {
    static CLASS: LockClass = LockClass::new("driver lock C");
    static LOCK: Mutex<()> = Mutex::new(&CLASS, ());
    let mm = Mm::new();
    let n = IntervalNotifier::insert(&mm, 0, 0x1000, TakesLock(&LOCK)).unwrap();
    for _ in 0..3 {
        {
            let lock = mm.mmap_read();
            Invalidation::start(Range::new(&lock, Event::Clear, 0, 0x1000)).end();
        }
        let seq = n.read_begin();
        let _held = LOCK.lock();
        let _ = n.read_retry(seq);
    }
}

#[test]
fn read_begin_from_inside_a_callback_of_the_same_mm_panics_instead_of_hanging() {
    static OTHER: std::sync::Mutex<Option<Arc<IntervalNotifier<Plain>>>> =
        std::sync::Mutex::new(None);
    struct Plain;
    impl IntervalNotifierOps for Plain {
        fn invalidate(&self, sub: &IntervalSub, _: &Range<'_>, seq: Seq) -> bool {
            sub.set_seq(seq);
            true
        }
    }
    struct ReadsInside;
    impl IntervalNotifierOps for ReadsInside {
        fn invalidate(&self, sub: &IntervalSub, _: &Range<'_>, seq: Seq) -> bool {
            sub.set_seq(seq);
            let other = OTHER.lock().unwrap().clone();
            if let Some(other) = other {
                let _ = other.read_begin();
            }
            true
        }
    }
    let text = panics(|| {
        let mm = Mm::new();
        // `Plain` comes first in the walk, so its seq is current when
        // `ReadsInside` asks: read_begin would wait for this very epoch.
        let other = Arc::new(IntervalNotifier::insert(&mm, 0, 0x1000, Plain).unwrap());
        *OTHER.lock().unwrap() = Some(other);
        let _me = IntervalNotifier::insert(&mm, 0x100, 0x1000, ReadsInside).unwrap();
        let lock = mm.mmap_read();
        Invalidation::start(Range::new(&lock, Event::Clear, 0, 0x2000)).end();
    });
    assert!(text.contains("mmu_interval_read_begin()"), "{text}");
    OTHER.lock().unwrap().take();
}

#[test]
fn synchronize_inside_a_callback_panics_naming_the_rule() {
    static OPS: NotifierOps<()> = NotifierOps {
        test_young: Some(|_, _, _| {
            mmun_core::synchronize();
            false
        }),
        ..NotifierOps::EMPTY
    };
    let text = panics(|| {
        let mm = Mm::new();
        let _n = Notifier::register(&mm, &OPS, ()).unwrap();
        mm.test_young(0);
    });
    assert!(text.contains("SRCU read section"), "{text}");
}
