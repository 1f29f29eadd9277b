//! Unit tests (std backend) and loom models (`--cfg mmun_loom`) of the SRCU
//! domain.

#[cfg(not(mmun_loom))]
mod std_tests {
    use std::sync::atomic::AtomicBool;
    use std::sync::mpsc::{self, RecvTimeoutError};
    use std::thread;
    use std::time::{Duration, Instant};

    use crate::rcu::{Srcu, global};
    use crate::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
    use crate::sync::{Arc, Mutex};

    /// Runs `f` on its own thread and fails the test if it has not finished
    /// within ten seconds, turning a deadlock into a failure. A panic in `f`
    /// is propagated as is.
    fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        let handle = thread::spawn(move || {
            let out = f();
            let _ = tx.send(());
            out
        });
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(()) => handle.join().expect("finished"),
            Err(RecvTimeoutError::Disconnected) => match handle.join() {
                Err(panic) => std::panic::resume_unwind(panic),
                Ok(_) => unreachable!("the thread finished without reporting"),
            },
            Err(RecvTimeoutError::Timeout) => panic!("{what}: still running after 10 s (hang)"),
        }
    }

    #[test]
    fn synchronize_waits_for_a_sleeping_reader() {
        within("synchronize vs sleeping reader", || {
            let srcu = Arc::new(Srcu::new());
            let reader_done = Arc::new(AtomicBool::new(false));
            let (entered_tx, entered_rx) = mpsc::channel();
            let reader = thread::spawn({
                let (srcu, reader_done) = (srcu.clone(), reader_done.clone());
                move || {
                    let guard = srcu.read_lock();
                    entered_tx.send(()).unwrap();
                    thread::sleep(Duration::from_millis(50));
                    reader_done.store(true, SeqCst);
                    drop(guard);
                }
            });
            entered_rx.recv().unwrap();
            srcu.synchronize();
            assert!(
                reader_done.load(SeqCst),
                "synchronize() returned while a pre-existing reader was inside its section"
            );
            reader.join().unwrap();
        });
    }

    #[test]
    fn synchronize_waits_for_the_outer_of_nested_guards() {
        within("synchronize vs nested reader", || {
            let srcu = Arc::new(Srcu::new());
            let outer_done = Arc::new(AtomicBool::new(false));
            let (entered_tx, entered_rx) = mpsc::channel();
            let reader = thread::spawn({
                let (srcu, outer_done) = (srcu.clone(), outer_done.clone());
                move || {
                    let outer = srcu.read_lock();
                    let inner = srcu.read_lock();
                    drop(inner);
                    entered_tx.send(()).unwrap();
                    thread::sleep(Duration::from_millis(30));
                    outer_done.store(true, SeqCst);
                    drop(outer);
                }
            });
            entered_rx.recv().unwrap();
            srcu.synchronize();
            assert!(outer_done.load(SeqCst));
            reader.join().unwrap();
        });
    }

    #[test]
    fn synchronize_does_not_wait_for_later_readers() {
        within("synchronize vs a reader that began after it", || {
            let srcu = Arc::new(Srcu::new());
            // Reader A begins before the grace period and holds it open.
            let (entered_tx, entered_rx) = mpsc::channel();
            let (release_tx, release_rx) = mpsc::channel::<()>();
            let early = thread::spawn({
                let srcu = srcu.clone();
                move || {
                    let guard = srcu.read_lock();
                    entered_tx.send(()).unwrap();
                    release_rx.recv().unwrap();
                    drop(guard);
                }
            });
            entered_rx.recv().unwrap();
            let flips_before = srcu.inner.flips.load(SeqCst);
            let returned = Arc::new(AtomicBool::new(false));
            let updater = thread::spawn({
                let (srcu, returned) = (srcu.clone(), returned.clone());
                move || {
                    srcu.synchronize();
                    returned.store(true, SeqCst);
                }
            });
            // Once the index has flipped, the grace period has started and
            // is waiting for A alone.
            while srcu.inner.flips.load(SeqCst) == flips_before {
                thread::sleep(Duration::from_millis(1));
            }
            // This reader began after synchronize(); it stays in its section
            // until synchronize() returns, which would hang if the grace
            // period waited for it.
            let late = srcu.read_lock();
            release_tx.send(()).unwrap();
            while !returned.load(SeqCst) {
                thread::sleep(Duration::from_millis(1));
            }
            drop(late);
            early.join().unwrap();
            updater.join().unwrap();
        });
    }

    #[test]
    fn call_runs_once_after_readers_on_the_worker_thread() {
        within("call after a reader", || {
            let srcu = Arc::new(Srcu::new());
            let in_section = Arc::new(AtomicBool::new(false));
            let (entered_tx, entered_rx) = mpsc::channel();
            let (release_tx, release_rx) = mpsc::channel::<()>();
            let reader = thread::spawn({
                let (srcu, in_section) = (srcu.clone(), in_section.clone());
                move || {
                    let guard = srcu.read_lock();
                    in_section.store(true, SeqCst);
                    entered_tx.send(()).unwrap();
                    release_rx.recv().unwrap();
                    in_section.store(false, SeqCst);
                    drop(guard);
                }
            });
            entered_rx.recv().unwrap();

            let runs = Arc::new(AtomicUsize::new(0));
            let saw_reader = Arc::new(AtomicBool::new(true));
            let ran_on = Arc::new(Mutex::new(None));
            srcu.call(Box::new({
                let (runs, saw_reader, ran_on, in_section) = (
                    runs.clone(),
                    saw_reader.clone(),
                    ran_on.clone(),
                    in_section.clone(),
                );
                move || {
                    saw_reader.store(in_section.load(SeqCst), SeqCst);
                    let me = thread::current();
                    *ran_on.lock() = Some((me.id(), me.name().map(str::to_owned)));
                    runs.fetch_add(1, SeqCst);
                }
            }));
            // The reader is still inside: the callback cannot have run, no
            // matter how long we give it.
            thread::sleep(Duration::from_millis(20));
            assert_eq!(
                runs.load(SeqCst),
                0,
                "callback ran during a pre-existing section"
            );
            release_tx.send(()).unwrap();
            reader.join().unwrap();

            srcu.barrier();
            assert_eq!(runs.load(SeqCst), 1);
            assert!(
                !saw_reader.load(SeqCst),
                "callback overlapped the reader's section"
            );
            let (id, name) = ran_on.lock().clone().expect("callback recorded its thread");
            assert_ne!(id, thread::current().id());
            assert_eq!(name.as_deref(), Some("mmun-srcu"));
            srcu.barrier();
            assert_eq!(runs.load(SeqCst), 1, "callback ran more than once");
        });
    }

    #[test]
    fn call_inside_a_read_section_does_not_deadlock() {
        within("call inside a read section", || {
            let srcu = Srcu::new();
            let ran = Arc::new(AtomicBool::new(false));
            {
                let _guard = srcu.read_lock();
                srcu.call(Box::new({
                    let ran = ran.clone();
                    move || ran.store(true, SeqCst)
                }));
                thread::sleep(Duration::from_millis(5));
                assert!(
                    !ran.load(SeqCst),
                    "callback ran inside the caller's section"
                );
            }
            srcu.barrier();
            assert!(ran.load(SeqCst));
        });
    }

    #[test]
    fn call_from_a_callback_and_barrier_from_a_callback() {
        within("calls from callbacks", || {
            let srcu = Arc::new(Srcu::new());
            let nested_ran = Arc::new(AtomicBool::new(false));
            let barrier_panicked = Arc::new(AtomicBool::new(false));
            srcu.call(Box::new({
                let (srcu2, nested_ran, barrier_panicked) =
                    (srcu.clone(), nested_ran.clone(), barrier_panicked.clone());
                move || {
                    // synchronize() is fine on the worker...
                    srcu2.synchronize();
                    // ...barrier() would wait for this very batch.
                    let panicked =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| srcu2.barrier()))
                            .is_err();
                    barrier_panicked.store(panicked, SeqCst);
                    srcu2.call(Box::new(move || nested_ran.store(true, SeqCst)));
                }
            }));
            srcu.barrier(); // covers the outer callback...
            srcu.barrier(); // ...and the one it queued before the first returned
            assert!(nested_ran.load(SeqCst));
            assert!(barrier_panicked.load(SeqCst));
        });
    }

    #[test]
    fn barrier_waits_for_all_queued_calls() {
        within("barrier", || {
            let srcu = Arc::new(Srcu::new());
            let threads: Vec<_> = (0..4)
                .map(|t| {
                    let srcu = srcu.clone();
                    thread::spawn(move || {
                        let count = Arc::new(AtomicUsize::new(0));
                        for i in 0..25 {
                            let count = count.clone();
                            srcu.call(Box::new(move || {
                                if i % 10 == t {
                                    thread::sleep(Duration::from_millis(1));
                                }
                                count.fetch_add(1, SeqCst);
                            }));
                        }
                        srcu.barrier();
                        assert_eq!(count.load(SeqCst), 25);
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
        });
    }

    #[test]
    fn barrier_without_calls_returns() {
        within("empty barrier", || Srcu::new().barrier());
    }

    #[test]
    fn nested_guards_and_in_read_section() {
        let srcu = Srcu::new();
        let other = Srcu::new();
        assert!(!srcu.in_read_section());
        let outer = srcu.read_lock();
        assert!(srcu.in_read_section());
        assert!(!other.in_read_section());
        let inner = srcu.read_lock();
        let in_other = other.read_lock();
        assert!(srcu.in_read_section() && other.in_read_section());
        drop(inner);
        assert!(srcu.in_read_section());
        drop(in_other);
        assert!(!other.in_read_section());
        // Another domain's updates do not wait for this domain's readers.
        within("synchronize of another domain", move || {
            let other = Srcu::new();
            other.synchronize();
        });
        let on_other_thread = thread::scope(|s| s.spawn(|| srcu.in_read_section()).join());
        assert!(!on_other_thread.unwrap(), "depth leaked to another thread");
        drop(outer);
        assert!(!srcu.in_read_section());
    }

    #[test]
    fn synchronize_inside_another_domains_section_is_fine() {
        let a = Srcu::new();
        let b = Srcu::new();
        let _guard = a.read_lock();
        b.synchronize();
        b.barrier();
    }

    #[test]
    #[should_panic(
        expected = "synchronize_srcu() called inside an SRCU read section of the same domain"
    )]
    fn synchronize_inside_a_read_section_panics() {
        let srcu = Srcu::new();
        let _outer = srcu.read_lock();
        let _inner = srcu.read_lock();
        srcu.synchronize();
    }

    #[test]
    #[should_panic(
        expected = "srcu_barrier() called inside an SRCU read section of the same domain"
    )]
    fn barrier_inside_a_read_section_panics() {
        let srcu = Srcu::new();
        let _guard = srcu.read_lock();
        srcu.barrier();
    }

    #[test]
    fn global_is_one_domain() {
        assert!(std::ptr::eq(global(), global()));
        {
            let _guard = global().read_lock();
            assert!(global().in_read_section());
        }
        global().synchronize();
    }

    #[test]
    fn debug_output() {
        let srcu = Srcu::new();
        assert!(format!("{srcu:?}").starts_with("Srcu"));
        let guard = srcu.read_lock();
        assert!(format!("{guard:?}").starts_with("SrcuReadGuard"));
    }

    /// Readers look objects up through a published index and check they are
    /// alive for their whole section; the writer republishes, waits a grace
    /// period (or defers through call + barrier), and only then marks the old
    /// object dead.
    #[test]
    fn stress_readers_never_see_a_retired_object() {
        const SLOTS: usize = 8;
        const ALIVE: u64 = 1;
        const DEAD: u64 = 2;
        within("stress", || {
            let srcu = Arc::new(Srcu::new());
            let slots: Arc<Vec<AtomicU64>> = Arc::new(
                (0..SLOTS)
                    .map(|i| AtomicU64::new(if i == 0 { ALIVE } else { DEAD }))
                    .collect(),
            );
            let current = Arc::new(AtomicUsize::new(0));
            let stop = Arc::new(AtomicBool::new(false));
            let readers: Vec<_> = (0..4)
                .map(|_| {
                    let (srcu, slots, current, stop) =
                        (srcu.clone(), slots.clone(), current.clone(), stop.clone());
                    thread::spawn(move || {
                        let mut sections = 0u64;
                        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                            let guard = srcu.read_lock();
                            let i = current.load(std::sync::atomic::Ordering::Acquire);
                            let relaxed = std::sync::atomic::Ordering::Relaxed;
                            assert_eq!(slots[i].load(relaxed), ALIVE, "saw a dead object");
                            if sections.is_multiple_of(64) {
                                thread::sleep(Duration::from_micros(50));
                            } else {
                                for _ in 0..16 {
                                    std::hint::spin_loop();
                                }
                            }
                            assert_eq!(slots[i].load(relaxed), ALIVE, "object died in section");
                            drop(guard);
                            sections += 1;
                        }
                        sections
                    })
                })
                .collect();

            let deadline = Instant::now() + Duration::from_millis(500);
            let mut retired = 0u64;
            while Instant::now() < deadline {
                let relaxed = std::sync::atomic::Ordering::Relaxed;
                let old = current.load(relaxed);
                let new = (old + 1) % SLOTS;
                slots[new].store(ALIVE, relaxed);
                current.store(new, std::sync::atomic::Ordering::Release);
                if retired % 8 == 7 {
                    let slots = slots.clone();
                    srcu.call(Box::new(move || slots[old].store(DEAD, relaxed)));
                    srcu.barrier();
                } else {
                    srcu.synchronize();
                    slots[old].store(DEAD, relaxed);
                }
                retired += 1;
            }
            stop.store(true, SeqCst);
            let sections: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
            assert!(retired > 8, "only {retired} grace periods");
            assert!(sections > 100, "only {sections} read sections");
        });
    }
}

#[cfg(mmun_loom)]
mod loom_models {
    use crate::rcu::Srcu;
    use crate::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
    use crate::sync::{Arc, thread};

    /// A model builder bounded to two preemptions unless
    /// `LOOM_MAX_PREEMPTIONS` says otherwise.
    fn builder() -> loom::model::Builder {
        let mut builder = loom::model::Builder::new();
        if builder.preemption_bound.is_none() {
            builder.preemption_bound = Some(2);
        }
        builder
    }

    /// The reader either misses the unpublication (then the grace period
    /// must cover its section, so it never sees `freed`), or sees it. All
    /// flag accesses are relaxed: only the domain's fences order them.
    #[test]
    fn grace_period_covers_a_concurrent_reader() {
        builder().check(|| {
            let srcu = Arc::new(Srcu::new());
            let published = Arc::new(AtomicBool::new(true));
            let freed = Arc::new(AtomicBool::new(false));
            let reader = thread::spawn({
                let (srcu, published, freed) = (srcu.clone(), published.clone(), freed.clone());
                move || {
                    let guard = srcu.read_lock();
                    if published.load(Relaxed) {
                        assert!(!freed.load(Relaxed), "freed inside the section");
                    }
                    drop(guard);
                }
            });
            published.store(false, Relaxed);
            srcu.synchronize();
            freed.store(true, Relaxed);
            reader.join().unwrap();
        });
    }

    /// Two back-to-back grace periods retiring two objects: covers a reader
    /// that loaded the index before the first flip and entered late, which
    /// only phase 1 of the second grace period sees.
    #[test]
    fn two_grace_periods_cover_a_straggler() {
        builder().check(|| {
            let srcu = Arc::new(Srcu::new());
            let current = Arc::new(AtomicUsize::new(0));
            let freed: Arc<[AtomicBool; 2]> =
                Arc::new([AtomicBool::new(false), AtomicBool::new(false)]);
            let reader = thread::spawn({
                let (srcu, current, freed) = (srcu.clone(), current.clone(), freed.clone());
                move || {
                    let guard = srcu.read_lock();
                    let obj = current.load(Relaxed);
                    if obj < 2 {
                        assert!(!freed[obj].load(Relaxed), "object {obj} freed in section");
                    }
                    drop(guard);
                }
            });
            for obj in 0..2 {
                current.store(obj + 1, Relaxed);
                srcu.synchronize();
                freed[obj].store(true, Relaxed);
            }
            reader.join().unwrap();
        });
    }

    /// `call` + `barrier`: the callback runs exactly once, after a section
    /// that may have seen the object, and `barrier` waits for it.
    #[test]
    fn call_runs_after_a_concurrent_reader_and_barrier_waits() {
        builder().check(|| {
            let srcu = Arc::new(Srcu::new());
            let published = Arc::new(AtomicBool::new(true));
            let freed = Arc::new(AtomicBool::new(false));
            let runs = Arc::new(AtomicUsize::new(0));
            let reader = thread::spawn({
                let (srcu, published, freed) = (srcu.clone(), published.clone(), freed.clone());
                move || {
                    let guard = srcu.read_lock();
                    if published.load(Relaxed) {
                        assert!(!freed.load(Relaxed), "callback ran inside the section");
                    }
                    drop(guard);
                }
            });
            published.store(false, Relaxed);
            srcu.call(Box::new({
                let (freed, runs) = (freed.clone(), runs.clone());
                move || {
                    freed.store(true, Relaxed);
                    runs.fetch_add(1, Relaxed);
                }
            }));
            srcu.barrier();
            assert_eq!(runs.load(Relaxed), 1);
            reader.join().unwrap();
            srcu.barrier();
            assert_eq!(runs.load(Relaxed), 1);
        });
    }

    /// `call` from inside a read section returns, and the callback runs only
    /// after that section, whichever of two barriers (one concurrent) runs it.
    #[test]
    fn call_inside_a_section_runs_after_it() {
        builder().check(|| {
            let srcu = Arc::new(Srcu::new());
            let ended = Arc::new(AtomicBool::new(false));
            let runs = Arc::new(AtomicUsize::new(0));
            let reader = thread::spawn({
                let (srcu, ended, runs) = (srcu.clone(), ended.clone(), runs.clone());
                move || {
                    let guard = srcu.read_lock();
                    srcu.call(Box::new({
                        let ended = ended.clone();
                        move || {
                            assert!(
                                ended.load(Relaxed),
                                "callback overlapped its caller's section"
                            );
                            runs.fetch_add(1, Relaxed);
                        }
                    }));
                    ended.store(true, Relaxed);
                    drop(guard);
                }
            });
            srcu.barrier();
            reader.join().unwrap();
            srcu.barrier();
            assert_eq!(runs.load(Relaxed), 1);
        });
    }
}
