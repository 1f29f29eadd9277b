//! Whole-address-space notifiers: registration lifecycle and dispatch
//! (spec §1.4, §1.6, §1.7, §1.8; scenarios §4.4 items 1, 2, 4, 6, 7, 8 and
//! bug history §5 #2, #3, #4, #12, #14, #18).

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use common::*;
use mmun_core::{
    Error, Event, HeldMmLock, Invalidation, Mm, Notifier, NotifierOps, Owner, Range,
    SharedNotifier, StartFn, Warning, WouldBlock,
};

fn unmap(held: &impl HeldMmLock, start: u64, end: u64) -> Range<'_> {
    Range::new(held, Event::Unmap, start, end)
}

#[test]
fn start_and_end_reach_every_notifier_newest_first() {
    let mm = Mm::new();
    let log = Log::default();
    let a = Notifier::register(&mm, &FULL, ListRec::new("a", &log)).unwrap();
    let b = Notifier::register(&mm, &FULL, ListRec::new("b", &log)).unwrap();
    let lock = mm.mmap_read();
    Invalidation::start(unmap(&lock, 0x1000, 0x5000)).end();
    let calls = log.take();
    let order: Vec<_> = calls
        .iter()
        .map(|c| (who_of(c), std::mem::discriminant(c)))
        .collect();
    let start = std::mem::discriminant(&calls[0]);
    let inv_range = std::mem::discriminant(&calls[2]);
    let end = std::mem::discriminant(&calls[3]);
    assert_eq!(
        order,
        vec![
            ("b", start),
            ("a", start),
            ("b", inv_range),
            ("b", end),
            ("a", inv_range),
            ("a", end)
        ]
    );
    assert_eq!(
        calls[0],
        Call::Start {
            who: "b",
            event: Event::Unmap,
            start: 0x1000,
            end: 0x5000,
            blockable: true,
            owner: None
        }
    );
    drop(lock);
    drop((a, b));
}

#[test]
fn only_end_skips_invalidate_range() {
    let mm = Mm::new();
    let log = Log::default();
    let _n = Notifier::register(&mm, &FULL, ListRec::new("n", &log)).unwrap();
    let lock = mm.mmap_read();
    Invalidation::start(Range::new(&lock, Event::Clear, 0, 0x1000)).only_end();
    let calls = log.take();
    assert!(
        calls
            .iter()
            .all(|c| !matches!(c, Call::InvalidateRange { .. })),
        "{calls:?}"
    );
    assert!(matches!(calls.last(), Some(Call::End { .. })));
}

#[test]
fn dropping_an_invalidation_ends_it() {
    let mm = Mm::new();
    let log = Log::default();
    let _n = Notifier::register(&mm, &FULL, ListRec::new("n", &log)).unwrap();
    let lock = mm.mmap_read();
    {
        let _inv = Invalidation::start(unmap(&lock, 0, 0x1000));
    }
    let ends = log
        .take()
        .iter()
        .filter(|c| matches!(c, Call::End { .. }))
        .count();
    assert_eq!(ends, 1);
}

#[test]
fn owner_and_event_are_passed_through() {
    let mm = Mm::new();
    let log = Log::default();
    let _n = Notifier::register(&mm, &FULL, ListRec::new("n", &log)).unwrap();
    let owner = Owner::unique();
    let lock = mm.mmap_read();
    Invalidation::start(Range::new(&lock, Event::Migrate, 0, 0x1000).with_owner(owner)).end();
    assert!(matches!(
        log.take()[0],
        Call::Start { event: Event::Migrate, owner: Some(o), .. } if o == owner
    ));
}

#[test]
fn callbacks_not_provided_are_not_called_and_do_not_count() {
    let mm = Mm::new();
    let log = Log::default();
    let _empty =
        Notifier::register(&mm, &NotifierOps::EMPTY, ListRec::young("empty", &log)).unwrap();
    let lock = mm.mmap_read();
    Invalidation::start(unmap(&lock, 0, 0x1000)).end();
    drop(lock);
    assert!(!mm.clear_flush_young(0, 0x1000));
    assert!(!mm.clear_young(0, 0x1000));
    assert!(!mm.test_young(0));
    mm.invalidate_range(0, 0x1000);
    assert_eq!(log.len(), 0);
}

#[test]
fn clear_young_results_are_ored_over_every_notifier() {
    let mm = Mm::new();
    let log = Log::default();
    let _old = Notifier::register(&mm, &YOUNG_ONLY, ListRec::young("old", &log)).unwrap();
    let _new = Notifier::register(&mm, &YOUNG_ONLY, ListRec::new("new", &log)).unwrap();
    assert!(mm.clear_flush_young(0x2000, 0x3000));
    assert!(mm.clear_young(0x2000, 0x3000));
    let calls = log.take();
    assert_eq!(
        calls,
        vec![
            Call::ClearFlushYoung {
                who: "new",
                start: 0x2000,
                end: 0x3000
            },
            Call::ClearFlushYoung {
                who: "old",
                start: 0x2000,
                end: 0x3000
            },
            Call::ClearYoung {
                who: "new",
                start: 0x2000,
                end: 0x3000
            },
            Call::ClearYoung {
                who: "old",
                start: 0x2000,
                end: 0x3000
            },
        ]
    );
}

#[test]
fn test_young_stops_at_the_first_young_answer() {
    let mm = Mm::new();
    let log = Log::default();
    let _c = Notifier::register(&mm, &YOUNG_ONLY, ListRec::new("c", &log)).unwrap();
    let _b = Notifier::register(&mm, &YOUNG_ONLY, ListRec::young("b", &log)).unwrap();
    let _a = Notifier::register(&mm, &YOUNG_ONLY, ListRec::new("a", &log)).unwrap();
    assert!(mm.test_young(0x7000));
    assert_eq!(
        log.take(),
        vec![
            Call::TestYoung {
                who: "a",
                address: 0x7000
            },
            Call::TestYoung {
                who: "b",
                address: 0x7000
            }
        ]
    );
}

#[test]
fn young_notify_helpers_call_primary_first_and_secondary_always() {
    let mm = Mm::new();
    let log = Log::default();
    let _n = Notifier::register(&mm, &YOUNG_ONLY, ListRec::new("n", &log)).unwrap();
    let primary_ran = AtomicBool::new(false);
    let young = mmun_core::notify::ptep_clear_flush_young_notify(&mm, 0x1234, || {
        assert_eq!(log.len(), 0, "primary runs before the notifiers");
        primary_ran.store(true, Ordering::Relaxed);
        true
    });
    assert!(young && primary_ran.load(Ordering::Relaxed));
    assert!(mmun_core::notify::pmdp_clear_young_notify(
        &mm,
        0x20_1234,
        || true
    ));
    assert_eq!(
        log.take(),
        vec![
            Call::ClearFlushYoung {
                who: "n",
                start: 0x1000,
                end: 0x2000
            },
            Call::ClearYoung {
                who: "n",
                start: 0x20_0000,
                end: 0x40_0000
            },
        ]
    );
}

#[test]
fn clear_flush_notify_flushes_the_aligned_entry_after_the_primary() {
    let mm = Mm::new();
    let log = Log::default();
    let _n = Notifier::register(&mm, &FULL, ListRec::new("n", &log)).unwrap();
    let old = mmun_core::notify::pmdp_huge_clear_flush_notify(&mm, 0x40_0000, || {
        assert_eq!(log.len(), 0);
        7u64
    });
    assert_eq!(old, 7);
    mmun_core::notify::pudp_huge_clear_flush_notify(&mm, 0x4000_0000, || ());
    mmun_core::notify::ptep_clear_flush_notify(&mm, 0x1fff, || ());
    assert_eq!(
        log.take(),
        vec![
            Call::InvalidateRange {
                who: "n",
                start: 0x40_0000,
                end: 0x60_0000
            },
            Call::InvalidateRange {
                who: "n",
                start: 0x4000_0000,
                end: 0x8000_0000
            },
            Call::InvalidateRange {
                who: "n",
                start: 0x1000,
                end: 0x2000
            },
        ]
    );
}

#[test]
fn set_pte_at_notify_calls_change_pte_before_the_primary_inside_a_clear_range() {
    let mm = Mm::new();
    let log = Log::default();
    let _n = Notifier::register(&mm, &FULL, ListRec::new("n", &log)).unwrap();
    let lock = mm.mmap_read();
    let inv = Invalidation::start(Range::new(&lock, Event::Clear, 0x1000, 0x2000));
    log.take();
    inv.set_pte_at_notify(0x1000, 0xabc, |pte| {
        assert_eq!(
            log.take(),
            vec![Call::ChangePte {
                who: "n",
                address: 0x1000,
                pte: 0xabc
            }]
        );
        assert_eq!(pte, 0xabc);
    });
    inv.only_end();
    assert!(mm.warnings().is_empty());
}

#[test]
#[cfg(debug_assertions)]
fn change_pte_inside_an_invalidation_that_is_not_clear_or_migrate_is_warned() {
    let mm = Mm::new();
    let log = Log::default();
    let _n = Notifier::register(&mm, &FULL, ListRec::new("n", &log)).unwrap();
    let lock = mm.mmap_read();
    let inv = Invalidation::start(Range::new(&lock, Event::Unmap, 0x1000, 0x2000));
    inv.change_pte(0x1000, 2);
    inv.end();
    assert_eq!(mm.warnings(), vec![Warning::ChangePteNotNested]);
}

#[test]
#[should_panic(expected = "outside the invalidation [0x1000, 0x2000) it must be nested in")]
fn change_pte_outside_its_invalidations_range_names_the_rule() {
    let mm = Mm::new();
    let lock = mm.mmap_read();
    let inv = Invalidation::start(Range::new(&lock, Event::Clear, 0x1000, 0x2000));
    inv.change_pte(0x2000, 1);
}

#[test]
#[should_panic(expected = "the flushed entry [0x0, 0x200000) outside the invalidation")]
fn a_nested_huge_flush_must_fit_the_invalidation() {
    let mm = Mm::new();
    let lock = mm.mmap_read();
    let inv = Invalidation::start(Range::new(&lock, Event::Clear, 0x1000, 0x2000));
    inv.pmdp_huge_clear_flush_notify(0x1000, || ());
}

#[test]
fn a_nested_flush_calls_invalidate_range_over_the_entry_after_the_primary() {
    let mm = Mm::new();
    let log = Log::default();
    let _n = Notifier::register(&mm, &FULL, ListRec::new("n", &log)).unwrap();
    let lock = mm.mmap_read();
    let inv = Invalidation::start(Range::new(&lock, Event::Clear, 0x1000, 0x3000));
    log.take();
    let old = inv.ptep_clear_flush_notify(0x2345, || {
        assert!(log.take().is_empty(), "the primary first");
        7
    });
    assert_eq!(old, 7);
    assert_eq!(
        log.take(),
        vec![Call::InvalidateRange {
            who: "n",
            start: 0x2000,
            end: 0x3000
        }]
    );
    inv.end();
}

#[test]
fn ops_with_a_fallible_start_and_an_end_are_rejected() {
    static BAD: NotifierOps<()> = NotifierOps {
        invalidate_range_start: Some(StartFn::Fallible(|_, _| Ok(()))),
        invalidate_range_end: Some(|_, _| {}),
        ..NotifierOps::EMPTY
    };
    let mm = Mm::new();
    let err = Notifier::register(&mm, &BAD, ()).err().unwrap();
    assert_eq!(err, Error::FallibleStartWithEnd);
    assert_eq!(err.errno(), 22);
}

static BAD_OPS_ALLOCS: AtomicUsize = AtomicUsize::new(0);

/// `get` refuses ops that break the start/end rule before it makes their
/// state: neither `alloc_notifier` nor `free_notifier` runs.
#[test]
fn get_refuses_bad_ops_without_calling_alloc_or_free() {
    static BAD: NotifierOps<()> = NotifierOps {
        invalidate_range_start: Some(StartFn::Fallible(|_, _| Ok(()))),
        invalidate_range_end: Some(|_, _| {}),
        alloc_notifier: Some(|_| {
            BAD_OPS_ALLOCS.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }),
        free_notifier: Some(|_| {
            BAD_OPS_ALLOCS.fetch_add(100, Ordering::SeqCst);
        }),
        ..NotifierOps::EMPTY
    };
    let mm = Mm::new();
    let err = SharedNotifier::get(&mm, &BAD).err().unwrap();
    assert_eq!(err, Error::FallibleStartWithEnd);
    assert_eq!(BAD_OPS_ALLOCS.load(Ordering::SeqCst), 0);
}

/// §5 #12: A (with end), B (fails, no end), C (with end): every start is
/// called, then A and C get their end, the caller gets EAGAIN and has no end
/// to call.
#[test]
fn nonblock_failure_calls_every_start_then_ends_of_the_others() {
    let mm = Mm::new();
    let log = Log::default();
    let _c = Notifier::register(&mm, &FULL, ListRec::new("C", &log)).unwrap();
    let _b = Notifier::register(&mm, &FALLIBLE, ListRec::new("B", &log)).unwrap();
    let _a = Notifier::register(&mm, &FULL, ListRec::new("A", &log)).unwrap();
    let lock = mm.mmap_read();
    let refused = Invalidation::start_nonblock(unmap(&lock, 0, 0x1000)).unwrap_err();
    assert_eq!(refused, WouldBlock);
    let calls: Vec<_> = log
        .take()
        .into_iter()
        .map(|c| match c {
            Call::Start { who, blockable, .. } => {
                assert!(!blockable);
                format!("{who}.start")
            }
            Call::End { who, .. } => format!("{who}.end"),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(calls, ["A.start", "B.start", "C.start", "A.end", "C.end"]);
    assert!(
        mm.warnings().is_empty(),
        "a non-blockable refusal is legitimate"
    );
}

#[test]
fn a_start_that_fails_while_blockable_is_warned() {
    static ALWAYS_FAILS: NotifierOps<()> = NotifierOps {
        invalidate_range_start: Some(StartFn::Fallible(|_, _| Err(WouldBlock))),
        ..NotifierOps::EMPTY
    };
    let mm = Mm::new();
    let _n = Notifier::register(&mm, &ALWAYS_FAILS, ()).unwrap();
    let lock = mm.mmap_read();
    Invalidation::start(unmap(&lock, 0, 0x1000)).end();
    assert_eq!(mm.warnings(), vec![Warning::StartFailedBlockable]);
}

#[test]
fn nonblock_start_that_nobody_refuses_is_not_blockable_and_needs_an_end() {
    let mm = Mm::new();
    let log = Log::default();
    let _n = Notifier::register(&mm, &FULL, ListRec::new("n", &log)).unwrap();
    let lock = mm.mmap_read();
    let inv = Invalidation::start_nonblock(unmap(&lock, 0, 0x1000)).unwrap();
    assert!(!inv.range().is_blockable());
    inv.end();
    assert!(matches!(
        log.take()[..],
        [
            Call::Start {
                blockable: false,
                ..
            },
            _,
            Call::End { .. }
        ]
    ));
}

#[test]
fn unregister_calls_release_once_and_stops_callbacks() {
    let mm = Mm::new();
    let log = Log::default();
    let n = Notifier::register(&mm, &FULL, ListRec::new("n", &log)).unwrap();
    n.unregister();
    assert_eq!(log.take(), vec![Call::Release { who: "n" }]);
    let lock = mm.mmap_read();
    Invalidation::start(unmap(&lock, 0, 0x1000)).end();
    assert_eq!(log.len(), 0);
    assert!(mm.has_notifiers(), "has_notifiers stays true, as in Linux");
}

/// §1.7 and §4.4 item 6: exit calls `release` once and unlinks; a later
/// unregister does not call it again.
#[test]
fn exit_releases_and_a_later_unregister_is_only_a_synchronize() {
    let mm = Mm::new();
    let log = Log::default();
    let n = Notifier::register(&mm, &FULL, ListRec::new("n", &log)).unwrap();
    assert!(mm.exit());
    assert!(!mm.exit(), "exit happens once");
    assert_eq!(log.take(), vec![Call::Release { who: "n" }]);
    let lock = mm.mmap_read();
    Invalidation::start(unmap(&lock, 0, u64::MAX)).end();
    drop(lock);
    n.unregister();
    assert_eq!(
        log.take(),
        vec![],
        "no callback after release, no second release"
    );
}

#[test]
fn registration_after_exit_fails_with_einval() {
    let mm = Mm::new();
    mm.exit();
    let err = Notifier::register(&mm, &FULL, ListRec::new("n", &Log::default()))
        .err()
        .unwrap();
    assert_eq!((err.errno(), err), (22, Error::NoUsers));
}

/// The address space comes from the guard: there is no other to name.
#[test]
fn register_locked_registers_on_the_guards_address_space() {
    let (mm, other) = (Mm::new(), Mm::new());
    let log = Log::default();
    let guard = other.mmap_write();
    let n = Notifier::register_locked(&guard, &FULL, ListRec::new("n", &log)).unwrap();
    drop(guard);
    assert!(Arc::ptr_eq(n.mm(), &other));
    assert!(!mm.has_notifiers());
    let lock = other.mmap_read();
    Invalidation::start(unmap(&lock, 0, 0x1000)).end();
    drop(lock);
    assert!(
        !log.take().is_empty(),
        "a change of the guard's mm reaches it"
    );
    n.unregister();
}

/// §5 #3/#4: unregister racing exit, at many interleavings: no crash, the
/// list ends empty, `release` runs once or twice, never zero times.
#[test]
fn unregister_racing_exit_releases_at_least_once() {
    for _ in 0..200 {
        let mm = Mm::new();
        let log = Log::default();
        let n = Notifier::register(&mm, &FULL, ListRec::new("n", &log)).unwrap();
        let barrier = Arc::new(Barrier::new(2));
        let (mm2, b2) = (Arc::clone(&mm), Arc::clone(&barrier));
        let exiter = std::thread::spawn(move || {
            b2.wait();
            mm2.exit();
        });
        barrier.wait();
        n.unregister();
        exiter.join().unwrap();
        let releases = log
            .take()
            .iter()
            .filter(|c| matches!(c, Call::Release { .. }))
            .count();
        assert!((1..=2).contains(&releases), "release ran {releases} times");
    }
}

static SLEEPY_ENTERED: AtomicBool = AtomicBool::new(false);
static SLEEPY_DONE: AtomicBool = AtomicBool::new(false);

/// §5 #2: a callback that sleeps while another thread unregisters; the
/// unregister waits for it.
#[test]
fn unregister_waits_for_a_sleeping_callback() {
    static SLEEPY: NotifierOps<()> = NotifierOps {
        invalidate_range_start: Some(StartFn::Infallible(|_, _| {
            SLEEPY_ENTERED.store(true, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(100));
            SLEEPY_DONE.store(true, Ordering::SeqCst);
        })),
        ..NotifierOps::EMPTY
    };
    let mm = Mm::new();
    let n = Notifier::register(&mm, &SLEEPY, ()).unwrap();
    let mm2 = Arc::clone(&mm);
    let invalidator = std::thread::spawn(move || {
        let lock = mm2.mmap_read();
        Invalidation::start(Range::new(&lock, Event::Clear, 0, 0x1000)).end();
    });
    while !SLEEPY_ENTERED.load(Ordering::SeqCst) {
        std::thread::yield_now();
    }
    n.unregister();
    assert!(
        SLEEPY_DONE.load(Ordering::SeqCst),
        "unregister returned while the callback ran"
    );
    invalidator.join().unwrap();
}

/// §5 #14: unregister between start and end: the notifier gets no end.
#[test]
fn unregister_inside_an_open_range_gets_no_end() {
    let mm = Mm::new();
    let log = Log::default();
    let n = Notifier::register(&mm, &FULL, ListRec::new("n", &log)).unwrap();
    let lock = mm.rmap_lock();
    let inv = Invalidation::start(unmap(&lock, 0, 0x1000));
    let mm2 = Arc::clone(&mm);
    within(10, move || {
        let _ = &mm2;
        n.unregister()
    });
    inv.end();
    let calls = log.take();
    assert!(
        matches!(calls[..], [Call::Start { .. }, Call::Release { .. }]),
        "{calls:?}"
    );
}

/// §4.4 item 5 and §5 #18: registration waits while another thread sits
/// between start and end (holding only the rmap/VMA-lock stand-in), so the
/// new notifier never sees an end without a start.
#[test]
fn register_waits_for_an_open_range() {
    let mm = Mm::new();
    let log = Log::default();
    let registered = Arc::new(AtomicBool::new(false));
    let lock = mm.rmap_lock();
    let inv = Invalidation::start(unmap(&lock, 0, 0x1000));
    let (mm2, log2, reg2) = (Arc::clone(&mm), log.clone(), Arc::clone(&registered));
    let registrar = std::thread::spawn(move || {
        let n = Notifier::register(&mm2, &FULL, ListRec::new("late", &log2)).unwrap();
        reg2.store(true, Ordering::SeqCst);
        n
    });
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        !registered.load(Ordering::SeqCst),
        "register landed inside an open range"
    );
    inv.end();
    drop(lock);
    let late = registrar.join().unwrap();
    assert_eq!(
        log.take(),
        vec![],
        "the late notifier saw an end without a start"
    );
    drop(late);
}

// ---- get / put ----

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

static SHARED_LOG: Mutex<Option<Log>> = Mutex::new(None);
static SHARED: NotifierOps<ListRec> = NotifierOps {
    alloc_notifier: Some(|mm| {
        let log = SHARED_LOG.lock().unwrap().clone().unwrap_or_default();
        let _ = mm;
        ALLOCS.fetch_add(1, Ordering::SeqCst);
        Ok(ListRec::new("shared", &log))
    }),
    free_notifier: Some(|r| r.log.push(Call::Free { who: r.who })),
    release: Some(|r, _| r.log.push(Call::Release { who: r.who })),
    invalidate_range_start: Some(StartFn::Infallible(|r, range| {
        r.log.push(start_call(r.who, range))
    })),
    ..NotifierOps::EMPTY
};

#[test]
fn get_returns_the_same_subscription_and_put_frees_after_the_last_user() {
    let log = Log::default();
    *SHARED_LOG.lock().unwrap() = Some(log.clone());
    let mm = Mm::new();
    let first = SharedNotifier::get(&mm, &SHARED).unwrap();
    let second = SharedNotifier::get(&mm, &SHARED).unwrap();
    assert_eq!(second.users(), 2);
    assert!(
        std::ptr::eq(&*first, &*second),
        "one subscription per ops per mm"
    );
    first.put();
    mmun_core::synchronize();
    assert_eq!(log.take(), vec![], "still one user: nothing freed");
    second.put();
    mmun_core::synchronize();
    assert_eq!(
        log.take(),
        vec![Call::Free { who: "shared" }],
        "put never calls release"
    );
    let lock = mm.mmap_read();
    Invalidation::start(unmap(&lock, 0, 0x1000)).end();
    assert_eq!(log.take(), vec![]);
}

#[test]
fn get_overflows_at_u32_max_users() {
    static OPS: NotifierOps<()> = NotifierOps {
        alloc_notifier: Some(|_| Ok(())),
        ..NotifierOps::EMPTY
    };
    let mm = Mm::new();
    let first = SharedNotifier::get(&mm, &OPS).unwrap();
    first.set_users_for_test(u32::MAX);
    let err = SharedNotifier::get(&mm, &OPS).unwrap_err();
    assert_eq!((err.clone(), err.errno()), (Error::Overflow, 75));
    first.set_users_for_test(1);
}

#[test]
fn get_passes_alloc_errors_through_and_needs_alloc() {
    static FAILS: NotifierOps<()> = NotifierOps {
        alloc_notifier: Some(|_| Err(Error::Alloc(12))),
        ..NotifierOps::EMPTY
    };
    static NO_ALLOC: NotifierOps<()> = NotifierOps::EMPTY;
    let mm = Mm::new();
    assert_eq!(
        SharedNotifier::get(&mm, &FAILS).unwrap_err(),
        Error::Alloc(12)
    );
    assert_eq!(
        SharedNotifier::get(&mm, &NO_ALLOC).unwrap_err(),
        Error::NoAllocNotifier
    );
}

static FREED_ON_FAILURE: AtomicUsize = AtomicUsize::new(0);

#[test]
fn free_notifier_runs_synchronously_when_registration_fails() {
    static OPS: NotifierOps<()> = NotifierOps {
        alloc_notifier: Some(|_| Ok(())),
        free_notifier: Some(|_| {
            FREED_ON_FAILURE.fetch_add(1, Ordering::SeqCst);
        }),
        ..NotifierOps::EMPTY
    };
    let mm = Mm::new();
    mm.exit();
    assert_eq!(SharedNotifier::get(&mm, &OPS).unwrap_err(), Error::NoUsers);
    assert_eq!(FREED_ON_FAILURE.load(Ordering::SeqCst), 1);
}

static HELD_FOR_RELEASE: Mutex<Option<SharedNotifier<()>>> = Mutex::new(None);
static PUT_IN_RELEASE_FREED: AtomicBool = AtomicBool::new(false);

/// §4.4 item 6: put from inside `release` neither deadlocks nor calls
/// release again, and `free_notifier` runs only after the callbacks drain.
#[test]
fn put_from_inside_release() {
    static OPS: NotifierOps<()> = NotifierOps {
        alloc_notifier: Some(|_| Ok(())),
        release: Some(|_, _| {
            if let Some(n) = HELD_FOR_RELEASE.lock().unwrap().take() {
                n.put();
                assert!(
                    !PUT_IN_RELEASE_FREED.load(Ordering::SeqCst),
                    "freed inside a callback"
                );
            }
        }),
        free_notifier: Some(|_| PUT_IN_RELEASE_FREED.store(true, Ordering::SeqCst)),
        ..NotifierOps::EMPTY
    };
    let mm = Mm::new();
    *HELD_FOR_RELEASE.lock().unwrap() = Some(SharedNotifier::get(&mm, &OPS).unwrap());
    within(10, move || mm.exit());
    mmun_core::synchronize();
    assert!(PUT_IN_RELEASE_FREED.load(Ordering::SeqCst));
}

#[test]
#[should_panic(expected = "SRCU read section")]
fn unregister_from_inside_a_callback_panics_instead_of_deadlocking() {
    static INNER: Mutex<Option<Notifier<()>>> = Mutex::new(None);
    static OPS: NotifierOps<()> = NotifierOps {
        clear_young: Some(|_, _, _, _| {
            if let Some(n) = INNER.lock().unwrap().take() {
                n.unregister();
            }
            false
        }),
        ..NotifierOps::EMPTY
    };
    let mm = Mm::new();
    let victim = Notifier::register(&mm, &NotifierOps::EMPTY, ()).unwrap();
    *INNER.lock().unwrap() = Some(victim);
    let _caller = Notifier::register(&mm, &OPS, ()).unwrap();
    mm.clear_young(0, 0x1000);
}
