//! The fork protocol (`mmun_core::fork`): a child forked while other
//! threads are inside the global SRCU domain (a read section open, the
//! callback worker mid-batch, callers churning `call_srcu`) can still
//! register, unregister, wait for grace periods and run its own deferred
//! callbacks. Without the protocol each child here hangs; it arms
//! `alarm(10)` so that a hang becomes a SIGALRM death the parent reports.

#![cfg(unix)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;

use mmun_core::{Event, Invalidation, Mm, Notifier, NotifierOps, Range, SharedNotifier, StartFn};

/// Runs `body` in a forked child with a 10 s alarm and reports whether the
/// child exited 0 (it exits 1 if `body` panics, and dies of SIGALRM if it
/// hangs). The caller releases its blocked threads before asserting, so
/// that a failure unwinds without waiting for them.
fn in_child(what: &str, body: impl FnOnce()) -> Result<(), String> {
    // SAFETY: the child only runs `body` and `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: plain system calls in the child.
        unsafe { libc::alarm(10) };
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).is_ok();
        // SAFETY: ends the child without running the parent's atexit work.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(rc, pid);
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        let hung = if sig == libc::SIGALRM {
            " (SIGALRM: it hung for 10 s)"
        } else {
            ""
        };
        return Err(format!(
            "{what}: the child was killed by signal {sig}{hung}"
        ));
    }
    match libc::WEXITSTATUS(status) {
        0 => Ok(()),
        code => Err(format!("{what}: the child failed (exit {code})")),
    }
}

/// What the child does: a list notifier's whole life, a grace period, and
/// a deferred free it waits for.
fn child_uses_srcu() {
    static FREED: AtomicBool = AtomicBool::new(false);
    static QUIET: NotifierOps<()> = NotifierOps::EMPTY;
    static FREE_FLAG: NotifierOps<()> = NotifierOps {
        alloc_notifier: Some(|_| Ok(())),
        free_notifier: Some(|()| FREED.store(true, Ordering::SeqCst)),
        ..NotifierOps::EMPTY
    };
    let mm = Mm::new();
    let n = Notifier::register(&mm, &QUIET, ()).unwrap();
    {
        let lock = mm.mmap_read();
        Invalidation::start(Range::new(&lock, Event::Unmap, 0, 0x1000)).end();
    }
    n.unregister(); // synchronize_srcu
    SharedNotifier::get(&mm, &FREE_FLAG).unwrap().put(); // call_srcu
    mmun_core::synchronize(); // srcu_barrier
    assert!(
        FREED.load(Ordering::SeqCst),
        "the child's free_notifier did not run"
    );
}

/// Blocks a callback until the test lets it go.
#[derive(Debug)]
struct Gate {
    entered: Arc<Barrier>,
    release: Arc<Barrier>,
}

impl Gate {
    fn pass(&self) {
        self.entered.wait();
        self.release.wait();
    }
}

fn gate() -> (Gate, Arc<Barrier>, Arc<Barrier>) {
    let (entered, release) = (Arc::new(Barrier::new(2)), Arc::new(Barrier::new(2)));
    let gate = Gate {
        entered: entered.clone(),
        release: release.clone(),
    };
    (gate, entered, release)
}

#[test]
fn fork_while_another_thread_is_inside_a_read_section() {
    static BLOCKING_START: NotifierOps<Gate> = NotifierOps {
        invalidate_range_start: Some(StartFn::Infallible(|gate, _| gate.pass())),
        ..NotifierOps::EMPTY
    };
    let mm = Mm::new();
    let (gate, entered, release) = gate();
    let n = Notifier::register(&mm, &BLOCKING_START, gate).unwrap();
    let reader = thread::spawn({
        let mm = mm.clone();
        move || {
            let lock = mm.mmap_read();
            Invalidation::start(Range::new(&lock, Event::Unmap, 0, 0x1000)).end();
        }
    });
    entered.wait(); // the reader is inside the start callback, in a section
    let outcome = in_child("read section open in the parent", child_uses_srcu);
    release.wait();
    reader.join().unwrap();
    n.unregister();
    outcome.unwrap();
}

#[test]
fn fork_while_the_callback_worker_runs_a_batch() {
    static ENTERED: Barrier = Barrier::new(2);
    static RELEASE: Barrier = Barrier::new(2);
    static BLOCKING_FREE: NotifierOps<()> = NotifierOps {
        alloc_notifier: Some(|_| Ok(())),
        free_notifier: Some(|()| {
            ENTERED.wait();
            RELEASE.wait();
        }),
        ..NotifierOps::EMPTY
    };
    static PARENT_RUNS: AtomicUsize = AtomicUsize::new(0);
    static COUNTED_FREE: NotifierOps<()> = NotifierOps {
        alloc_notifier: Some(|_| Ok(())),
        free_notifier: Some(|()| {
            PARENT_RUNS.fetch_add(1, Ordering::SeqCst);
        }),
        ..NotifierOps::EMPTY
    };
    let mm = Mm::new();
    SharedNotifier::get(&mm, &BLOCKING_FREE).unwrap().put();
    ENTERED.wait(); // the mmun-srcu worker is inside this batch
    // Queued behind the running batch: the parent's work, not the child's.
    SharedNotifier::get(&mm, &COUNTED_FREE).unwrap().put();
    let outcome = in_child("worker mid-batch in the parent", || {
        child_uses_srcu();
        assert_eq!(
            PARENT_RUNS.load(Ordering::SeqCst),
            0,
            "the child ran a callback the parent queued"
        );
    });
    RELEASE.wait();
    mmun_core::synchronize();
    outcome.unwrap();
    assert_eq!(PARENT_RUNS.load(Ordering::SeqCst), 1);
}

/// Children forked in a loop while other threads churn `call_srcu`, grace
/// periods and read sections: whatever instant the fork lands on (a queue
/// or registry lock held, a grace period running, sections open), the
/// child completes its own SRCU work.
#[test]
fn forks_during_srcu_churn() {
    static START: NotifierOps<()> = NotifierOps {
        alloc_notifier: Some(|_| Ok(())),
        invalidate_range_start: Some(StartFn::Infallible(|(), _| thread::yield_now())),
        ..NotifierOps::EMPTY
    };
    let stop = Arc::new(AtomicBool::new(false));
    let mm = Mm::new();
    let _listener = Notifier::register(&mm, &QUIET_LIST, ()).unwrap();
    let churners: Vec<_> = (0..3)
        .map(|i| {
            let (stop, mm) = (stop.clone(), mm.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match i {
                        0 => SharedNotifier::get(&mm, &START).unwrap().put(),
                        1 => {
                            let lock = mm.mmap_read();
                            Invalidation::start(Range::new(&lock, Event::Unmap, 0, 0x1000)).end();
                        }
                        _ => Notifier::register(&mm, &QUIET_LIST, ())
                            .unwrap()
                            .unregister(),
                    }
                }
            })
        })
        .collect();
    let outcome =
        (0..100).try_for_each(|round| in_child(&format!("fork round {round}"), child_uses_srcu));
    stop.store(true, Ordering::Relaxed);
    for t in churners {
        t.join().unwrap();
    }
    mmun_core::synchronize();
    outcome.unwrap();
}

static QUIET_LIST: NotifierOps<()> = NotifierOps::EMPTY;
