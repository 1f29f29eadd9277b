//! Turns a hang into a clear message: a thread that watches every other
//! thread's heartbeat and aborts the process if one stops.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::shared::Shared;

/// How often the watchdog looks.
const LOOK: Duration = Duration::from_millis(100);

/// Watches `run`'s heartbeats until `done` is set; if some slot has not
/// moved for the configured stall time, prints what it knows and aborts.
pub(crate) fn watch(run: &Shared, done: &AtomicBool) {
    let stall = run.config.stall;
    let mut last: Vec<(u64, Instant)> = run
        .beats
        .iter()
        .map(|b| (b.load(Ordering::Relaxed), Instant::now()))
        .collect();
    while !done.load(Ordering::Relaxed) {
        thread::sleep(LOOK);
        for (slot, (seen, since)) in last.iter_mut().enumerate() {
            let now = run.beats[slot].load(Ordering::Relaxed);
            if now != *seen {
                (*seen, *since) = (now, Instant::now());
            } else if since.elapsed() >= stall && !done.load(Ordering::Relaxed) {
                abort(run, slot, stall);
            }
        }
    }
}

/// Sets the watchdog's `done` flag when dropped.
#[derive(Debug)]
pub(crate) struct Dismiss<'a>(pub(crate) &'a AtomicBool);

impl Drop for Dismiss<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn abort(run: &Shared, slot: usize, stall: Duration) -> ! {
    let accessors = run.config.accessors;
    let who = match slot {
        0 => "the main thread".to_owned(),
        s if s <= accessors => format!("accessor {}", s - 1),
        s => format!("mutator {}", s - 1 - accessors),
    };
    // Straight to fd 2, not `eprintln!`: under `cargo test` the print
    // macros are captured, and the capture dies with the abort.
    let _ = writeln!(
        std::io::stderr(),
        "mmun stress: watchdog: {who} made no progress for {stall:?} in round {} \
         (seed {}, inject {}): deadlock or livelock; aborting",
        run.round.load(Ordering::Relaxed),
        run.config.seed,
        run.config.inject.map_or("none", |b| b.name()),
    );
    std::process::abort()
}
