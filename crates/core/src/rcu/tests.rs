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

    /// Runs `synchronize` on a thread of its own while a reader is in its
    /// section, checks after `settle` that it still waits (`why` if not),
    /// then lets the reader go with `release` and waits for the updater.
    /// Returns whether the grace period ended.
    fn grace_period_waits_for_the_reader(
        synchronize: impl FnOnce() + Send + 'static,
        settle: Duration,
        why: &str,
        release: impl FnOnce(),
    ) -> bool {
        let done = Arc::new(AtomicBool::new(false));
        let updater = thread::spawn({
            let done = done.clone();
            move || {
                synchronize();
                done.store(true, SeqCst);
            }
        });
        thread::sleep(settle);
        assert!(!done.load(SeqCst), "{why}");
        release();
        updater.join().unwrap();
        done.load(SeqCst)
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
            let flips_before = srcu.inner.flips().load(SeqCst);
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
            while srcu.inner.flips().load(SeqCst) == flips_before {
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

    /// `call` wakes a worker that went idle (it only notifies an idle
    /// one: one that gathers or runs a batch takes the new callback with
    /// the next), and the gathered callbacks run without a barrier to
    /// hurry them, in queue order.
    #[test]
    fn calls_after_the_worker_went_idle_run_without_a_barrier() {
        within("calls to an idle worker", || {
            let srcu = Srcu::new();
            srcu.call(Box::new(|| {}));
            srcu.barrier();
            for burst in 0..3 {
                // Long enough for the worker to be asleep on an empty queue.
                thread::sleep(Duration::from_millis(20));
                let (tx, rx) = mpsc::channel();
                for i in 0..20 {
                    let tx = tx.clone();
                    srcu.call(Box::new(move || tx.send(i).unwrap()));
                }
                let ran: Vec<i32> = (0..20)
                    .map(|_| rx.recv_timeout(Duration::from_secs(5)))
                    .collect::<Result<_, _>>()
                    .unwrap_or_else(|e| panic!("burst {burst}: a callback never ran ({e})"));
                assert_eq!(ran, (0..20).collect::<Vec<_>>(), "in queue order");
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

    /// The dispatch path's guard counts no depth: the section is found
    /// from the thread's slot itself (`Slot::open_sections`). It must
    /// still count as a read section, nested or not, so that a grace period
    /// asked for inside it panics instead of waiting for itself.
    #[test]
    fn global_dispatch_sections_count_as_read_sections() {
        // Free slots, as registration leaves them: this thread claims one
        // (without, its sections would go to the shared slot).
        crate::rcu::prepare_global_readers();
        assert!(!global().in_read_section());
        drop(global().read_lock_global());
        assert!(
            crate::rcu::local::global_slot().is_some(),
            "this thread claimed no slot"
        );
        let outer = global().read_lock_global();
        assert!(global().in_read_section());
        {
            let _inner = global().read_lock_global();
            let _generic = global().read_lock();
            assert!(global().in_read_section());
        }
        assert!(global().in_read_section(), "the outer section ended early");
        drop(outer);
        assert!(!global().in_read_section());
        let inside = std::panic::catch_unwind(|| {
            let _guard = global().read_lock_global();
            global().synchronize();
        });
        assert!(
            inside.is_err(),
            "synchronize inside a dispatch section did not panic"
        );
        // The unwinding guard ended its section: grace periods finish.
        assert!(!global().in_read_section());
        global().synchronize();
    }

    /// A grace period waits for a dispatch-path section of another thread,
    /// and ends once it is over.
    #[test]
    fn a_grace_period_waits_for_a_dispatch_section() {
        let (entered_tx, entered_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        crate::rcu::prepare_global_readers();
        let reader = thread::spawn(move || {
            // The first section claims the thread's slot; the second is
            // the fast path every later dispatch takes.
            drop(global().read_lock_global());
            assert!(crate::rcu::local::global_slot().is_some());
            let guard = global().read_lock_global();
            entered_tx.send(()).unwrap();
            release_rx.recv().unwrap();
            drop(guard);
        });
        entered_rx.recv().unwrap();
        let done = grace_period_waits_for_the_reader(
            || global().synchronize(),
            Duration::from_millis(50),
            "the grace period ignored a dispatch section",
            || {
                release_tx.send(()).unwrap();
                reader.join().unwrap();
            },
        );
        assert!(done);
    }

    #[test]
    fn debug_output() {
        let srcu = Srcu::new();
        assert!(format!("{srcu:?}").starts_with("Srcu"));
        let guard = srcu.read_lock();
        assert!(format!("{guard:?}").starts_with("SrcuReadGuard"));
    }

    const OBJECTS: usize = 8;
    const ALIVE: u64 = 1;
    const DEAD: u64 = 2;

    /// What the stress tests retire: objects marked alive or dead, and the
    /// index of the published one.
    struct Objects {
        state: Arc<Vec<AtomicU64>>,
        current: AtomicUsize,
    }

    impl Objects {
        fn new() -> Self {
            Self {
                state: Arc::new(
                    (0..OBJECTS)
                        .map(|i| AtomicU64::new(if i == 0 { ALIVE } else { DEAD }))
                        .collect(),
                ),
                current: AtomicUsize::new(0),
            }
        }

        /// One read section that checks the published object stays alive
        /// throughout; `dawdle` makes it sleep instead of spinning briefly.
        fn read(&self, srcu: &Srcu, dawdle: bool) {
            let relaxed = std::sync::atomic::Ordering::Relaxed;
            let guard = srcu.read_lock();
            let i = self.current.load(std::sync::atomic::Ordering::Acquire);
            assert_eq!(self.state[i].load(relaxed), ALIVE, "saw a dead object");
            if dawdle {
                thread::sleep(Duration::from_micros(50));
            } else {
                for _ in 0..16 {
                    std::hint::spin_loop();
                }
            }
            assert_eq!(self.state[i].load(relaxed), ALIVE, "object died in section");
            drop(guard);
        }

        /// Publishes the next object and retires the previous one after a
        /// grace period: `synchronize`, or every eighth time `call` +
        /// `barrier`.
        fn retire_one(&self, srcu: &Srcu, nth: u64) {
            let relaxed = std::sync::atomic::Ordering::Relaxed;
            let old = self.current.load(relaxed);
            let new = (old + 1) % OBJECTS;
            self.state[new].store(ALIVE, relaxed);
            self.current
                .store(new, std::sync::atomic::Ordering::Release);
            if nth % 8 == 7 {
                let state = self.state.clone();
                srcu.call(Box::new(move || state[old].store(DEAD, relaxed)));
                srcu.barrier();
            } else {
                srcu.synchronize();
                self.state[old].store(DEAD, relaxed);
            }
        }
    }

    /// Readers look objects up through a published index and check they are
    /// alive for their whole section; the writer republishes, waits a grace
    /// period (or defers through call + barrier), and only then marks the old
    /// object dead.
    fn stress(srcu: &Srcu) {
        let objects = Objects::new();
        let stop = AtomicBool::new(false);
        thread::scope(|s| {
            let readers: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        let mut sections = 0u64;
                        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                            objects.read(srcu, sections.is_multiple_of(64));
                            sections += 1;
                        }
                        sections
                    })
                })
                .collect();
            let deadline = Instant::now() + Duration::from_millis(500);
            let mut retired = 0u64;
            while Instant::now() < deadline {
                objects.retire_one(srcu, retired);
                retired += 1;
            }
            stop.store(true, SeqCst);
            let sections: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
            assert!(retired > 8, "only {retired} grace periods");
            assert!(sections > 100, "only {sections} read sections");
        });
    }

    #[test]
    fn stress_readers_never_see_a_retired_object() {
        within("stress", || stress(&Srcu::new()));
    }

    #[test]
    fn stress_readers_never_see_a_retired_object_symmetric_fences() {
        within("stress, symmetric fences", || {
            let srcu = Srcu::new_with_symmetric_fences();
            assert!(!srcu.uses_membarrier());
            stress(&srcu);
        });
    }

    #[test]
    fn stress_readers_never_see_a_retired_object_global() {
        within("stress, global domain", || stress(global()));
    }

    /// Many short-lived reader threads, a few alive at a time, each taking a
    /// few sections while a writer retires objects continuously: exited
    /// threads' slots are handed to new threads, which continue from their
    /// counts, and the registry stays as small as the peak thread count.
    fn short_lived_readers(srcu: &Srcu) {
        const ROUNDS: usize = 150;
        const PER_ROUND: usize = 4;
        let objects = Objects::new();
        let stop = AtomicBool::new(false);
        thread::scope(|s| {
            let writer = s.spawn(|| {
                let mut retired = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    objects.retire_one(srcu, retired);
                    retired += 1;
                }
                retired
            });
            for _ in 0..ROUNDS {
                let round: Vec<_> = (0..PER_ROUND)
                    .map(|t| {
                        s.spawn({
                            let objects = &objects;
                            move || {
                                for n in 0..8 {
                                    objects.read(srcu, t == 0 && n == 0);
                                }
                            }
                        })
                    })
                    .collect();
                // Joining waits for the threads' thread-local destructors,
                // which release their slots.
                for t in round {
                    t.join().unwrap();
                }
            }
            stop.store(true, SeqCst);
            let retired = writer.join().unwrap();
            assert!(retired > 2, "only {retired} grace periods");
        });
        if !srcu.inner.is_global {
            let slots = srcu.inner.slot_count();
            assert!(
                slots <= PER_ROUND,
                "{slots} slots for at most {PER_ROUND} concurrent readers: exited \
                 threads' slots were not reused"
            );
        }
    }

    #[test]
    fn short_lived_readers_reuse_slots() {
        within("short-lived readers", || short_lived_readers(&Srcu::new()));
    }

    #[test]
    fn short_lived_readers_reuse_slots_symmetric_fences() {
        within("short-lived readers, symmetric fences", || {
            short_lived_readers(&Srcu::new_with_symmetric_fences());
        });
    }

    #[test]
    fn short_lived_readers_reuse_slots_global() {
        within("short-lived readers, global domain", || {
            short_lived_readers(global());
        });
    }

    /// A reader ends its section and exits while a grace period waits for
    /// it; the grace period ends, and the next thread takes over the
    /// exited thread's slot, counts included, under another grace period.
    #[test]
    fn reader_exits_while_another_thread_synchronizes() {
        for srcu in [Srcu::new(), Srcu::new_with_symmetric_fences()] {
            let srcu = Arc::new(srcu);
            within("reader exits during synchronize", move || {
                let (entered_tx, entered_rx) = mpsc::channel();
                let (release_tx, release_rx) = mpsc::channel::<()>();
                let reader = thread::spawn({
                    let srcu = srcu.clone();
                    move || {
                        let guard = srcu.read_lock();
                        entered_tx.send(()).unwrap();
                        release_rx.recv().unwrap();
                        drop(guard);
                        // ...and the thread exits, releasing its slot.
                    }
                });
                entered_rx.recv().unwrap();
                let srcu_for_updater = srcu.clone();
                grace_period_waits_for_the_reader(
                    move || srcu_for_updater.synchronize(),
                    Duration::from_millis(10),
                    "synchronize ignored a live reader",
                    || {
                        release_tx.send(()).unwrap();
                        reader.join().unwrap();
                    },
                );
                assert_eq!(srcu.inner.slot_count(), 1);

                // The next reader inherits the slot; a grace period still
                // waits for it, and ends once it is done.
                let (entered_tx, entered_rx) = mpsc::channel();
                let (release_tx, release_rx) = mpsc::channel::<()>();
                let reader = thread::spawn({
                    let srcu = srcu.clone();
                    move || {
                        let outer = srcu.read_lock();
                        drop(srcu.read_lock());
                        entered_tx.send(()).unwrap();
                        release_rx.recv().unwrap();
                        drop(outer);
                    }
                });
                entered_rx.recv().unwrap();
                assert_eq!(
                    srcu.inner.slot_count(),
                    1,
                    "the exited reader's slot was not reused"
                );
                let srcu_for_updater = srcu.clone();
                grace_period_waits_for_the_reader(
                    move || srcu_for_updater.synchronize(),
                    Duration::from_millis(10),
                    "synchronize ignored a reader on a reused slot",
                    || {
                        release_tx.send(()).unwrap();
                        reader.join().unwrap();
                    },
                );
                srcu.synchronize();
            });
        }
    }

    /// Read sections taken and ended from thread-local destructors, after
    /// the domain's own thread-locals may already be gone, and a guard that
    /// outlives them: the counts stay balanced (grace periods still end).
    #[test]
    fn read_sections_during_thread_local_teardown() {
        use std::cell::RefCell;

        use crate::rcu::SrcuReadGuard;

        struct ReadOnDrop(&'static Srcu, &'static Srcu);
        impl Drop for ReadOnDrop {
            fn drop(&mut self) {
                let a = self.0.read_lock();
                let b = self.1.read_lock();
                drop(a);
                drop(b);
            }
        }
        type Held = RefCell<Option<(SrcuReadGuard<'static>, SrcuReadGuard<'static>)>>;

        for own in [Srcu::new(), Srcu::new_with_symmetric_fences()] {
            let own: &'static Srcu = Box::leak(Box::new(own));
            within("sections in TLS destructors", move || {
                thread_local! {
                    static LATE: RefCell<Option<ReadOnDrop>> = const { RefCell::new(None) };
                    static HELD: Held = const { RefCell::new(None) };
                }
                thread::spawn(move || {
                    // Registered first, so destroyed last (after the
                    // domains' thread-locals, on glibc): takes sections then.
                    LATE.with(|late| *late.borrow_mut() = Some(ReadOnDrop(global(), own)));
                    // Holds guards until its destructor, after the domains'
                    // thread-locals were destroyed with a section open.
                    HELD.with(|held| {
                        *held.borrow_mut() = Some((global().read_lock(), own.read_lock()));
                    });
                    assert!(global().in_read_section() && own.in_read_section());
                })
                .join()
                .unwrap();
                // glibc runs thread-local destructors in reverse order of
                // registration, so both LATE and HELD ran after the domains'
                // thread-locals: LATE's section went to the shared slot, and
                // so did both unlocks (HELD's guard took its lock in the
                // thread's own slot, which stays claimed for good).
                #[cfg(target_env = "gnu")]
                assert_eq!(own.inner.fallback_counts().iter().sum::<usize>(), 3);
                own.synchronize();
                global().synchronize();
                // A later thread's sections are counted and waited for as usual.
                thread::spawn(move || {
                    let _guard = own.read_lock();
                    assert!(own.in_read_section());
                })
                .join()
                .unwrap();
                #[cfg(target_env = "gnu")]
                assert_eq!(
                    own.inner.slot_count(),
                    2,
                    "a slot with an open section was reused"
                );
                own.synchronize();
            });
        }
    }

    #[test]
    fn membarrier_mode_is_reported() {
        // Whether the system offers membarrier(2) depends on the kernel and
        // any seccomp filter; the domains must agree with each other.
        let available = Srcu::new().uses_membarrier();
        assert_eq!(global().uses_membarrier(), available);
        assert_eq!(Srcu::default().uses_membarrier(), available);
        assert!(!Srcu::new_with_symmetric_fences().uses_membarrier());
        eprintln!("membarrier(2) available: {available}");
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

    /// Two readers on threads of their own, one of which may exit (its
    /// thread-locals hand its slot back) before the other claims a slot,
    /// and either may register its slot while the grace period scans: the
    /// reused slot's counts carry over, and late registrations are covered.
    #[test]
    fn slot_reuse_and_late_registration() {
        static REUSED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        builder().check(|| {
            let srcu = Arc::new(Srcu::new());
            let published = Arc::new(AtomicBool::new(true));
            let freed = Arc::new(AtomicBool::new(false));
            let reader = || {
                let (srcu, published, freed) = (srcu.clone(), published.clone(), freed.clone());
                thread::spawn(move || {
                    let guard = srcu.read_lock();
                    if published.load(Relaxed) {
                        assert!(!freed.load(Relaxed), "freed inside the section");
                    }
                    drop(guard);
                })
            };
            let first = reader();
            let second = reader();
            published.store(false, Relaxed);
            srcu.synchronize();
            freed.store(true, Relaxed);
            first.join().unwrap();
            second.join().unwrap();
            if srcu.inner.slot_count() == 1 {
                REUSED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
        assert!(
            REUSED.load(std::sync::atomic::Ordering::Relaxed) > 0,
            "no execution reused a slot"
        );
    }
}
