//! The race workload: two device threads fault and use pages while a
//! mutator thread migrates, zaps and forks, and a racer thread runs one
//! invalidation inside a device fault's window (between its walk of the
//! primary and its device lock) on every few faults, through the mirror's
//! walk hook. The same workload runs with and without an injected bug:
//! without, the oracle must find nothing; with, it must find the bug.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};

use mmun_script::{Advice, Prot};
use mmun_secondary::device_mirror::{DeviceMirror, MirrorStats};
use mmun_secondary::{Bug, Counters, FaultError, Violation};
use parking_lot::Mutex;

use super::{B, Fixture, P, Rng, map_on, with_watchdog};

/// Pages of the window the devices use.
const PAGES: u64 = 64;
/// Device threads.
const DEVICE_THREADS: u64 = 2;
/// Faults per device thread.
const ITERATIONS: usize = 3000;
/// The racer runs in one first fault attempt of this many.
const EVERY: u64 = 4;
/// Upper bound of the mutator's changes (it stops with the devices).
const MAX_MUTATIONS: usize = 100_000;

/// What the racer does inside a fault's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Racer {
    /// `munmap` of the faulting page (the device thread maps it again).
    Munmap,
    /// One pass of the OOM reaper: non-blockable `Unmap` of every VMA.
    OomReap,
    /// Another device migrates the page to itself (`Migrate` with its
    /// owner, foreign to the mirror under test).
    ForeignMigrate,
    /// Another device takes the page exclusively (`Exclusive` with its
    /// owner); the primary's entry then serves only that device.
    ForeignExclusive,
    /// The mirror under test migrates the page to itself: its own
    /// `Migrate` range is skipped, so only its table generation makes the
    /// fault retry.
    OwnMigrate,
}

/// What a run found.
#[derive(Debug)]
pub struct Outcome {
    /// Stale uses the oracle found.
    pub violations: u64,
    /// Uses it checked.
    pub checks: u64,
    /// The first violations in full.
    pub first: Vec<Violation>,
    /// The mirror's counters.
    pub counters: Counters,
    /// The mirror's other counts.
    pub stats: MirrorStats,
    /// How many times the racer ran inside a fault's window.
    pub races: u64,
}

/// Runs the workload against a mirror built with `bug`, under the watchdog.
pub fn run(bug: Option<Bug>, racer: Racer) -> Outcome {
    with_watchdog(move || run_unguarded(bug, racer))
}

fn run_unguarded(bug: Option<Bug>, racer: Racer) -> Outcome {
    let fx = Fixture::with_bug(bug);
    fx.map(B, PAGES, Prot::RW);
    let other = fx.second_mirror();
    let (to_racer, requests) = mpsc::channel::<u64>();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    install_hook(&fx.mirror, to_racer, done_rx);
    let stop = AtomicBool::new(false);
    let races = AtomicU64::new(0);
    std::thread::scope(|s| {
        let (fx, other, stop, races) = (&fx, &other, &stop, &races);
        s.spawn(move || race_loop(fx, other, racer, requests, done_tx, races));
        s.spawn(move || mutate_loop(fx, stop));
        let devices: Vec<_> = (0..DEVICE_THREADS)
            .map(|t| s.spawn(move || device_loop(fx, 0x9e37_79b9_7f4a_7c15 ^ (t + 1))))
            .collect();
        for device in devices {
            device.join().expect("device thread");
        }
        stop.store(true, Ordering::Relaxed);
        // Drops the hook and its sender: the racer's loop ends.
        fx.mirror.set_walk_hook(None);
    });
    Outcome {
        violations: fx.coherence.violation_count(),
        checks: fx.coherence.checks(),
        first: fx.coherence.violations(),
        counters: mmun_secondary::Secondary::counters(&*fx.mirror),
        stats: fx.mirror.stats(),
        races: races.load(Ordering::Relaxed),
    }
}

/// On one first attempt in [`EVERY`], hands the page to the racer and waits
/// until it has done its invalidation.
fn install_hook(mirror: &DeviceMirror, to_racer: Sender<u64>, done: Receiver<()>) {
    let channel = Mutex::new((to_racer, done));
    let calls = AtomicU64::new(0);
    mirror.set_walk_hook(Some(Arc::new(move |page, attempt| {
        if attempt != 0 || !calls.fetch_add(1, Ordering::Relaxed).is_multiple_of(EVERY) {
            return;
        }
        let channel = channel.lock();
        if channel.0.send(page).is_ok() {
            let _ = channel.1.recv();
        }
    })));
}

fn race_loop(
    fx: &Fixture,
    other: &DeviceMirror,
    racer: Racer,
    requests: Receiver<u64>,
    done: Sender<()>,
    races: &AtomicU64,
) {
    for page in requests {
        match racer {
            Racer::Munmap => {
                let _ = fx.space.munmap(page, P);
            }
            Racer::OomReap => {
                let _ = fx.space.oom_reap_once();
            }
            Racer::ForeignMigrate => {
                let _ = other.migrate_to_device(page, page + P);
            }
            Racer::ForeignExclusive => {
                let _ = other.make_exclusive(page);
            }
            Racer::OwnMigrate => {
                let _ = fx.mirror.migrate_to_device(page, page + P);
            }
        }
        races.fetch_add(1, Ordering::Relaxed);
        let _ = done.send(());
    }
}

/// Layout-preserving changes that replace frames or permissions.
fn mutate_loop(fx: &Fixture, stop: &AtomicBool) {
    let mut rng = Rng::new(0x5eed);
    for _ in 0..MAX_MUTATIONS {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let page = B + rng.below(PAGES) * P;
        match rng.below(4) {
            0 | 1 => {
                fx.space.migrate(page, page + P);
            }
            2 => {
                let _ = fx.space.madvise(page, P, Advice::DontNeed);
            }
            _ => fx.space.fork().exit(),
        }
    }
}

/// Faults a random page and uses it, then uses another through whatever
/// the device holds; maps a page again when the racer unmapped it.
fn device_loop(fx: &Fixture, seed: u64) {
    let mut rng = Rng::new(seed);
    for _ in 0..ITERATIONS {
        let page = B + rng.below(PAGES) * P;
        let write = rng.chance(75);
        match fx.mirror.fault(page, write) {
            Ok(()) => {
                fx.mirror.access(page, write);
            }
            Err(FaultError::Unmapped) => {
                // Nothing may be left mapped for this page.
                fx.mirror.access(page, false);
                map_on(&fx.space, page, 1, Prot::RW, false);
            }
            Err(FaultError::Busy) => {}
            Err(FaultError::Released) => panic!("released while the address space lives"),
            Err(e) => panic!("a fault of read-write memory failed with {e}"),
        }
        let elsewhere = B + rng.below(PAGES) * P;
        fx.mirror.access(elsewhere, rng.chance(50));
    }
}
