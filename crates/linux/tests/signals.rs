//! Asynchronous signals raised between a hook's start and its end are
//! delivered after the end (a handler that `siglongjmp`s out could
//! otherwise abandon the hook with the mmap lock held); fault signals are
//! never held back, and the thread's mask is restored after the call.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use mmun_core::{Notifier, NotifierOps, Range, StartFn};
use mmun_linux::signals::current_mask;

const LEN: usize = 4 * 4096;

static WATCH: AtomicU64 = AtomicU64::new(0);
static HANDLED: AtomicBool = AtomicBool::new(false);
static MASK_AT_START: AtomicU64 = AtomicU64::new(0);
static HANDLED_AT_END: AtomicBool = AtomicBool::new(true);

extern "C" fn on_usr1(_: i32) {
    HANDLED.store(true, Ordering::SeqCst);
}

fn start(_: &(), range: &Range<'_>) {
    if range.start() != WATCH.load(Ordering::SeqCst) {
        return;
    }
    MASK_AT_START.store(current_mask(), Ordering::SeqCst);
    // SAFETY: signals this thread; the handler only stores a flag.
    unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGUSR1) };
}

fn end(_: &(), range: &Range<'_>) {
    if range.start() == WATCH.load(Ordering::SeqCst) {
        HANDLED_AT_END.store(HANDLED.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

static OPS: NotifierOps<()> = NotifierOps {
    invalidate_range_start: Some(StartFn::Infallible(start)),
    invalidate_range_end: Some(end),
    ..NotifierOps::EMPTY
};

#[test]
fn a_signal_raised_inside_a_hook_is_handled_after_its_end() {
    mmun_linux::install().expect("libc patched");
    // SAFETY: installs a handler that only stores an atomic flag.
    unsafe { libc::signal(libc::SIGUSR1, on_usr1 as *const () as libc::sighandler_t) };
    let _n = Notifier::register(mmun_linux::process_mm(), &OPS, ()).unwrap();
    // SAFETY: a fresh anonymous mapping, unmapped below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            LEN,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    let before = current_mask();
    WATCH.store(p as u64, Ordering::SeqCst);
    // SAFETY: unmaps our own mapping.
    assert_eq!(unsafe { libc::munmap(p, LEN) }, 0);
    WATCH.store(0, Ordering::SeqCst);
    let bit = |s: i32| 1u64 << (s - 1);
    let held = MASK_AT_START.load(Ordering::SeqCst);
    assert_ne!(held & bit(libc::SIGUSR1), 0, "SIGUSR1 held back: {held:#x}");
    assert_ne!(held & bit(libc::SIGINT), 0, "SIGINT held back: {held:#x}");
    assert_eq!(held & bit(libc::SIGSEGV), 0, "SIGSEGV never: {held:#x}");
    assert_eq!(held & bit(libc::SIGBUS), 0, "SIGBUS never: {held:#x}");
    assert!(
        !HANDLED_AT_END.load(Ordering::SeqCst),
        "the handler ran before the end"
    );
    assert!(HANDLED.load(Ordering::SeqCst), "and after it, in the call");
    assert_eq!(current_mask(), before, "the mask is restored");
}
