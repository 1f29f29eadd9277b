//! The core's fork protocol through this backend's atfork handlers
//! (`lifecycle.rs` runs `mmun_core::fork` itself, so the core's automatic
//! handlers stand down): children forked while a parent thread sits in a
//! list notifier's start callback (an SRCU read section) and another
//! churns list updates (`call_srcu`; the worker's grace period waits for
//! that reader, so it is mid-batch at every fork) subscribe a list
//! notifier on their fresh process `Mm`, unregister it (a grace period),
//! wait for their deferred frees and exit through `exit` (the atexit
//! release). Without the protocol the first child hangs on the parent
//! thread's open section; each child arms `alarm(10)`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;

use mmun_core::{Event, Invalidation, Mm, Notifier, NotifierOps, Range, SharedNotifier, StartFn};

static ENTERED: Barrier = Barrier::new(2);
static RELEASE: Barrier = Barrier::new(2);
static BLOCKING: AtomicBool = AtomicBool::new(true);

static BLOCKING_START: NotifierOps<()> = NotifierOps {
    invalidate_range_start: Some(StartFn::Infallible(|(), _| {
        if BLOCKING.swap(false, Ordering::SeqCst) {
            ENTERED.wait();
            RELEASE.wait();
        }
    })),
    ..NotifierOps::EMPTY
};
static QUIET: NotifierOps<()> = NotifierOps::EMPTY;
static SHARED: NotifierOps<()> = NotifierOps {
    alloc_notifier: Some(|_| Ok(())),
    ..NotifierOps::EMPTY
};

/// Forks; the child runs `body` under a 10 s alarm and `exit`s (atexit
/// handlers included) with 0, or 1 if `body` panicked. Returns how the
/// child ended.
fn fork_child(body: fn()) -> Result<(), String> {
    // SAFETY: the child runs `body` and exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: a plain system call.
        unsafe { libc::alarm(10) };
        let ok = std::panic::catch_unwind(body).is_ok();
        // SAFETY: `exit` runs the atexit handlers (the release of the
        // child's `Mm`), as a real program's exit does.
        unsafe { libc::exit(if ok { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    if libc::WIFSIGNALED(status) {
        return Err(format!(
            "child killed by signal {} (14 = SIGALRM: hung for 10 s)",
            libc::WTERMSIG(status)
        ));
    }
    match libc::WEXITSTATUS(status) {
        0 => Ok(()),
        code => Err(format!("child failed (exit {code})")),
    }
}

fn child_body() {
    let mm = mmun_linux::process_mm();
    let n = Notifier::register(mm, &QUIET, ()).unwrap();
    n.unregister(); // synchronize_srcu
    let _kept = Notifier::register(mm, &QUIET, ()).unwrap();
    mmun_core::synchronize(); // srcu_barrier: the list updates' frees
    std::mem::forget(_kept); // released by the atexit handler at exit
}

#[test]
fn children_forked_amid_srcu_activity_complete_their_own() {
    mmun_linux::install().expect("libc patched");
    // The SRCU domain is process-wide: a reader and registrations on an
    // `Mm` of their own (whose mmap lock the fork handlers never take)
    // occupy it as well as the process `Mm` would.
    let mm = Mm::new();
    let _blocker = Notifier::register(&mm, &BLOCKING_START, ()).unwrap();
    let reader = thread::spawn({
        let mm = mm.clone();
        move || {
            let lock = mm.mmap_read();
            Invalidation::start(Range::new(&lock, Event::Clear, 0, 0x1000)).end();
        }
    });
    ENTERED.wait(); // the reader is inside the start callback
    let stop = Arc::new(AtomicBool::new(false));
    let churner = thread::spawn({
        let (stop, mm) = (stop.clone(), Mm::new());
        move || {
            // get + put: list updates and `call_srcu`, never a wait (the
            // worker's grace period waits for the blocked reader instead).
            while !stop.load(Ordering::Relaxed) {
                SharedNotifier::get(&mm, &SHARED).unwrap().put();
            }
        }
    });
    let outcome = (0..50)
        .try_for_each(|round| fork_child(child_body).map_err(|e| format!("round {round}: {e}")));
    stop.store(true, Ordering::Relaxed);
    RELEASE.wait();
    reader.join().unwrap();
    churner.join().unwrap();
    outcome.unwrap();
}
