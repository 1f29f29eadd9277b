//! The trace sink end to end in this process: configured from the
//! environment, records arrive on the pipe intact; a pipe that is not the
//! one named (inode mismatch) or that went away turns tracing off rather
//! than writing into someone else's fd.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use mmun_core::Event;
use mmun_linux::trace_sink::{self, RECORD_SIZE};
use mmun_linux::{Call, Phase, Source, TraceRecord};

fn pipe() -> (std::fs::File, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both fds are fresh and ours.
    unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            OwnedFd::from_raw_fd(fds[1]),
        )
    }
}

fn record(k: u64) -> TraceRecord {
    TraceRecord {
        time_ns: trace_sink::now_ns(),
        pid: std::process::id(),
        tid: 7,
        event: Event::Unmap,
        start: k * 0x1000,
        end: (k + 1) * 0x1000,
        source: Source::Hook,
        call: Call::Munmap,
        phase: Phase::Start,
    }
}

#[test]
fn records_reach_the_named_pipe_and_stop_when_it_is_gone() {
    // 1. No environment: disabled, emit is a no-op.
    trace_sink::init_from_env();
    assert!(!trace_sink::enabled());
    trace_sink::emit(&record(0));

    // 2. The right pipe: records arrive, in order, intact.
    let (mut rx, tx) = pipe();
    let ino = std::fs::metadata(format!("/proc/self/fd/{}", tx.as_raw_fd()))
        .unwrap()
        .ino();
    // SAFETY: this binary has one test; no other thread reads the env.
    unsafe { std::env::set_var(trace_sink::ENV_FD, format!("{}:{ino}", tx.as_raw_fd())) };
    trace_sink::init_from_env();
    assert!(trace_sink::enabled());
    let sent: Vec<TraceRecord> = (1..=100).map(record).collect();
    for r in &sent {
        trace_sink::emit(r);
    }
    let mut buf = vec![0u8; 100 * RECORD_SIZE];
    rx.read_exact(&mut buf).unwrap();
    let got: Vec<TraceRecord> = buf
        .chunks_exact(RECORD_SIZE)
        .map(|c| trace_sink::decode(c.try_into().unwrap()).unwrap())
        .collect();
    assert_eq!(got, sent);

    // 3. Same fd number, other inode: refused.
    // SAFETY: as above.
    unsafe {
        std::env::set_var(
            trace_sink::ENV_FD,
            format!("{}:{}", tx.as_raw_fd(), ino + 1),
        )
    };
    trace_sink::init_from_env();
    assert!(
        !trace_sink::enabled(),
        "an fd that is not our pipe is never written"
    );

    // 4. The reader went away: the write fails (EPIPE, SIGPIPE ignored
    // here) and tracing stops instead of retrying forever.
    // SAFETY: as above.
    unsafe { std::env::set_var(trace_sink::ENV_FD, format!("{}:{ino}", tx.as_raw_fd())) };
    trace_sink::init_from_env();
    assert!(trace_sink::enabled());
    drop(rx);
    // SAFETY: ignoring SIGPIPE for this test process.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    trace_sink::emit(&record(1));
    assert!(!trace_sink::enabled());
}
