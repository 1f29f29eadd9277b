//! The handler survives a SIGPROF storm (a profiler's timer, plus signals
//! aimed at the handler thread itself): every watched unmap is still
//! delivered, and the net shuts down cleanly afterwards.

mod uffd_support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use mmun_linux::uffd::{LateChange, Watch};
use uffd_support::*;

static HITS: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_prof(_: libc::c_int) {
    HITS.fetch_add(1, Ordering::Relaxed);
}

#[test]
fn handler_survives_a_sigprof_storm() {
    let Some(net) = net_or_skip("handler_survives_a_sigprof_storm") else {
        return;
    };
    // SAFETY: installs a handler that only bumps an atomic; no SA_RESTART,
    // so interrupted system calls fail with EINTR.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_prof as *const () as usize;
        libc::sigaction(libc::SIGPROF, &sa, std::ptr::null_mut());
        let every = libc::timeval {
            tv_sec: 0,
            tv_usec: 200,
        };
        let timer = libc::itimerval {
            it_interval: every,
            it_value: every,
        };
        libc::setitimer(libc::ITIMER_PROF, &timer, std::ptr::null_mut());
    }
    let stop = AtomicBool::new(false);
    let handler = net.handler_tid().expect("handler running");
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: a signal to a thread of our own process.
                unsafe {
                    libc::syscall(libc::SYS_tgkill, libc::getpid(), handler, libc::SIGPROF);
                    libc::kill(libc::getpid(), libc::SIGPROF);
                }
                // Tens of thousands of signals a second, without also
                // taking a whole core from the handler on a 2-core host.
                std::thread::sleep(std::time::Duration::from_micros(20));
            }
        });
        // Stops the storm even if an assertion below fails.
        struct Stop<'a>(&'a AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let _stop = Stop(&stop);
        let began = std::time::Instant::now();
        for round in 0..2000 {
            let a = map(4);
            assert_eq!(net.watch(a, a + 4 * PAGE).unwrap(), Watch::Armed);
            assert_eq!(raw_munmap(a, 4 * PAGE), 0);
            let want = LateChange::Unmap {
                start: a,
                end: a + 4 * PAGE,
            };
            assert!(
                wait_for(want),
                "round {round}, {:?} into the storm: {want:x?} not delivered; \
                 net {:?}, armed {:x?}, delivered here {:x?}",
                began.elapsed(),
                net.stats(),
                net.armed_ranges(),
                delivered_in(a, a + 4 * PAGE),
            );
            net.unwatch(a, a + 4 * PAGE);
        }
    });
    // SAFETY: stops the timer.
    unsafe {
        let zero = libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        };
        let off = libc::itimerval {
            it_interval: zero,
            it_value: zero,
        };
        libc::setitimer(libc::ITIMER_PROF, &off, std::ptr::null_mut());
    }
    eprintln!(
        "SIGPROF handled {} times during the run",
        HITS.load(Ordering::Relaxed)
    );
    assert!(HITS.load(Ordering::Relaxed) > 0, "the storm happened");
    assert_eq!(net.stats().unmaps, 2000);
    drop(net); // clean shutdown: joins the handler
}
