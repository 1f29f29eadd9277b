//! A thread with a cancellation pending that unmaps memory while tracing is
//! on: the hook reports the start and the end, and the thread is cancelled
//! only at its next cancellation point outside the hook. (With libc's
//! `write` in the trace sink, a cancellation point, the thread acted on
//! the cancellation inside the hook, after its start had been reported:
//! a start without an end, and an unwind through `extern "C"` frames that
//! aborts the process.)

use std::io::Read;
use std::os::fd::FromRawFd;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

use mmun_core::{Notifier, NotifierOps};
use mmun_linux::trace_sink::{self, RECORD_SIZE};
use mmun_linux::{Call, Phase};

// SAFETY: the prototype of `pthread_setcancelstate` (<pthread.h>).
unsafe extern "C" {
    fn pthread_setcancelstate(state: i32, old: *mut i32) -> i32;
}
const PTHREAD_CANCEL_ENABLE: i32 = 0;
const PTHREAD_CANCEL_DISABLE: i32 = 1;

const LEN: usize = 16 * 4096;

static MAPPING: AtomicU64 = AtomicU64::new(0);
static TID: AtomicI32 = AtomicI32::new(0);
static STAGE: AtomicI32 = AtomicI32::new(0);

/// The thread: cancellation disabled until the main thread has cancelled
/// it, then enabled (deferred: nothing happens yet) around one `munmap`.
extern "C" fn victim(_: *mut libc::c_void) -> *mut libc::c_void {
    // SAFETY: plain pthread and mmap calls on our own mapping.
    unsafe {
        pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, std::ptr::null_mut());
        TID.store(libc::gettid(), Ordering::Release);
        STAGE.store(1, Ordering::Release);
        while STAGE.load(Ordering::Acquire) != 2 {
            std::hint::spin_loop();
        }
        pthread_setcancelstate(PTHREAD_CANCEL_ENABLE, std::ptr::null_mut());
        let ret = libc::munmap(MAPPING.load(Ordering::Acquire) as *mut _, LEN);
        pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, std::ptr::null_mut());
        (ret as isize + 100) as *mut libc::c_void
    }
}

static OPS: NotifierOps<()> = NotifierOps::EMPTY;

/// The scenario, in a forked child (an abort must not take the test
/// harness down): exit code 0 if the munmap completed and its start and
/// end both reached the pipe.
fn scenario() -> i32 {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    let ino = std::fs::metadata(format!("/proc/self/fd/{}", fds[1]))
        .unwrap()
        .ino();
    // SAFETY: the child is single-threaded here; nothing else reads the env.
    unsafe { std::env::set_var(trace_sink::ENV_FD, format!("{}:{ino}", fds[1])) };
    trace_sink::init_from_env();
    assert!(trace_sink::enabled());
    mmun_linux::install().expect("libc patched");
    let _subscribed = Notifier::register(mmun_linux::process_mm(), &OPS, ()).unwrap();
    // SAFETY: a fresh anonymous mapping.
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
    MAPPING.store(p as u64, Ordering::Release);
    let mut thread: libc::pthread_t = 0;
    // SAFETY: starts `victim`, joined below.
    let created = unsafe {
        libc::pthread_create(&mut thread, std::ptr::null(), victim, std::ptr::null_mut())
    };
    assert_eq!(created, 0);
    while STAGE.load(Ordering::Acquire) != 1 {
        std::hint::spin_loop();
    }
    // SAFETY: the thread is alive (it waits for stage 2).
    assert_eq!(unsafe { libc::pthread_cancel(thread) }, 0);
    STAGE.store(2, Ordering::Release);
    let mut result: *mut libc::c_void = std::ptr::null_mut();
    // SAFETY: joins the thread started above.
    assert_eq!(unsafe { libc::pthread_join(thread, &mut result) }, 0);
    if result as isize != 100 {
        eprintln!("munmap did not return 0 in the thread: {result:?}");
        return 3;
    }
    // SAFETY: our pipe's ends; the write end closes so reading ends.
    let mut rx = unsafe {
        libc::close(fds[1]);
        std::fs::File::from_raw_fd(fds[0])
    };
    let mut bytes = Vec::new();
    rx.read_to_end(&mut bytes).unwrap();
    let tid = TID.load(Ordering::Acquire) as u32;
    let mut phases = Vec::new();
    for chunk in bytes.chunks_exact(RECORD_SIZE) {
        let r = trace_sink::decode(chunk.try_into().unwrap()).unwrap();
        if r.tid == tid && r.call == Call::Munmap && r.start == p as u64 {
            phases.push(r.phase);
        }
    }
    if phases != [Phase::Start, Phase::End] {
        eprintln!("the thread's munmap records: {phases:?}");
        return 4;
    }
    0
}

#[test]
fn a_pending_cancellation_does_not_act_inside_a_hook() {
    // SAFETY: the child runs the scenario and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let code = std::panic::catch_unwind(scenario).unwrap_or(5);
        // SAFETY: ends the child without running the parent's handlers.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for our child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child status {status:#x} (signal {}): see its stderr",
        if libc::WIFSIGNALED(status) {
            libc::WTERMSIG(status)
        } else {
            0
        }
    );
}
