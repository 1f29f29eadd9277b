//! Multi-threaded stress of the interval seq protocol and the list notifier
//! lifecycle against a shared primary page table (spec §1.3–§1.6).
//!
//! * Three *device* threads mirror pages of a 64-page primary table through
//!   interval notifiers, with the documented loop (read_begin → read the
//!   primary without the driver lock → lock → read_retry → program). Every
//!   access checks, under the device lock, that each mirrored entry equals
//!   the primary's current value: a stale entry fails the test.
//! * Two *core VM* threads repeatedly take the mmap read lock or the rmap
//!   stand-in, start an invalidation of a random range with a random event,
//!   give every page in it a new frame and generation, and end it.
//! * One *churn* thread inserts and removes extra interval notifiers and
//!   registers and unregisters a list notifier, checking that no
//!   registration ever sees more ends than starts, nor any callback after
//!   its unregister returned.
//!
//! Work is bounded by iteration counts; a watchdog turns a hang into a
//! failure. The counts are printed at the end.
#![cfg(not(mmun_loom))]

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use mmun_core::lockdep::{LockClass, Mutex};
use mmun_core::{
    Event, IntervalNotifier, IntervalNotifierOps, IntervalSub, Invalidation, Mm, Notifier,
    NotifierOps, Range, Seq, StartFn,
};

const PAGE: u64 = 0x1000;
const PAGES: usize = 64;
/// Pages per device interval notifier.
const INTERVAL_PAGES: usize = 8;
/// Each device mirrors `[16 d, 16 d + 32)`: neighbours overlap by 16 pages.
const DEVICE_PAGES: usize = 32;
const DEVICES: usize = 3;
const VMS: usize = 2;
/// Accesses per device.
const DEVICE_ITERS: usize = 80_000;
/// Invalidations per core VM thread.
const VM_ITERS: usize = 30_000;
/// Pages faulted together, read one by one between read_begin and the lock.
const FAULT_BATCH: usize = 4;
/// If no retry has happened after the fixed iterations (it always has in
/// practice), devices and VMs go on until one does or this much time has
/// passed. Nothing else waits for another thread's progress: with
/// invalidations overlapping back to back, `read_begin` can starve (the
/// liveness caveat of spec §1.3), so the VMs must stop on their own.
const RETRY_GRACE: Duration = Duration::from_secs(10);
/// The watchdog.
const HANG: Duration = Duration::from_secs(60);

static DEVICE_LOCK: LockClass = LockClass::new("stress device->lock");
static CHURN_LOCK: LockClass = LockClass::new("stress churn->lock");

/// xorshift64*: a small deterministic PRNG per thread.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The primary page table: per page `frame << 8 | generation`.
struct Primary {
    ptes: Vec<AtomicU64>,
}

impl Primary {
    fn new() -> Primary {
        Primary {
            ptes: (0..PAGES as u64).map(|p| AtomicU64::new(p << 8)).collect(),
        }
    }
    fn read(&self, page: usize) -> u64 {
        self.ptes[page].load(Ordering::Acquire)
    }
    /// Gives `page` a new frame and the next generation. Only ever called
    /// between the start and the end of an invalidation covering it.
    fn replace(&self, page: usize, frame: u64) {
        let old = self.ptes[page].load(Ordering::Relaxed);
        let generation = (old + 1) & 0xff;
        self.ptes[page].store((frame << 8) | generation, Ordering::Release);
    }
}

#[derive(Default)]
struct Stats {
    faults: AtomicUsize,
    retries: AtomicUsize,
    gave_up: AtomicUsize,
    accesses: AtomicUsize,
    checks: AtomicUsize,
    device_invalidates: AtomicUsize,
    invalidations: AtomicUsize,
    pages_changed: AtomicUsize,
    extra_inserts: AtomicUsize,
    extra_invalidates: AtomicUsize,
    registrations: AtomicUsize,
    list_starts: AtomicUsize,
    list_ends: AtomicUsize,
}

// ---------------------------------------------------------------------------
// Devices
// ---------------------------------------------------------------------------

/// One device: its mirror of the primary table, behind its driver lock.
struct Device {
    id: usize,
    /// `Some(value)`: the device maps the page with that primary entry.
    mirror: Mutex<[Option<u64>; PAGES]>,
}

/// The ops of one device interval: pages `[first, first + INTERVAL_PAGES)`.
struct DeviceInterval {
    device: Arc<Device>,
    first: usize,
    stats: Arc<Stats>,
}

impl IntervalNotifierOps for DeviceInterval {
    fn invalidate(&self, sub: &IntervalSub, range: &Range<'_>, cur_seq: Seq) -> bool {
        let mut mirror = self.device.mirror.lock();
        sub.set_seq(cur_seq);
        let first = (range.start() / PAGE) as usize;
        let end = range.end().div_ceil(PAGE) as usize;
        for page in first.max(self.first)..end.min(self.first + INTERVAL_PAGES) {
            mirror[page] = None;
        }
        self.stats
            .device_invalidates
            .fetch_add(1, Ordering::Relaxed);
        true
    }
}

/// Checks every mirrored page of the device against the primary table.
/// Called with the device lock held: a valid mirror cannot change under it.
fn check_mirror(device: &Device, mirror: &[Option<u64>; PAGES], primary: &Primary, stats: &Stats) {
    for (page, entry) in mirror.iter().enumerate() {
        if let Some(value) = *entry {
            let current = primary.read(page);
            assert_eq!(
                value, current,
                "device {} maps page {page} stale: mirrored {value:#x}, primary {current:#x}",
                device.id
            );
            stats.checks.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn no_retry_yet(stats: &Stats) -> bool {
    stats.retries.load(Ordering::Relaxed) == 0
}

fn device_main(
    device: Arc<Device>,
    intervals: Vec<IntervalNotifier<DeviceInterval>>,
    primary: Arc<Primary>,
    stats: Arc<Stats>,
    seed: u64,
) {
    let mut rng = Rng::new(seed);
    let base = intervals[0].ops().first;
    let began = Instant::now();
    let mut iteration = 0;
    while iteration < DEVICE_ITERS || (no_retry_yet(&stats) && began.elapsed() < RETRY_GRACE) {
        iteration += 1;
        let page = base + rng.below(DEVICE_PAGES);
        let interval = &intervals[(page - base) / INTERVAL_PAGES];
        let ops = interval.ops();
        stats.accesses.fetch_add(1, Ordering::Relaxed);
        {
            let mirror = device.mirror.lock();
            check_mirror(&device, &mirror, &primary, &stats);
            if mirror[page].is_some() {
                continue;
            }
        }
        // Fault: the batch up to the end of the page's interval.
        let batch = page..(page + FAULT_BATCH).min(ops.first + INTERVAL_PAGES);
        let mut programmed = false;
        for _ in 0..1_000 {
            let seq = interval.read_begin();
            let mut values = [0; FAULT_BATCH];
            for (slot, p) in values.iter_mut().zip(batch.clone()) {
                *slot = primary.read(p);
                if rng.below(4) == 0 {
                    thread::yield_now();
                }
            }
            let mut mirror = device.mirror.lock();
            if interval.read_retry(seq) {
                stats.retries.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            for (value, p) in values.iter().zip(batch.clone()) {
                mirror[p] = Some(*value);
            }
            check_mirror(&device, &mirror, &primary, &stats);
            programmed = true;
            break;
        }
        if programmed {
            stats.faults.fetch_add(1, Ordering::Relaxed);
        } else {
            stats.gave_up.fetch_add(1, Ordering::Relaxed);
        }
    }
    for interval in intervals {
        interval.remove();
    }
}

// ---------------------------------------------------------------------------
// Core VM
// ---------------------------------------------------------------------------

const EVENTS: [Event; 7] = [
    Event::Unmap,
    Event::Clear,
    Event::ProtectionVma,
    Event::ProtectionPage,
    Event::SoftDirty,
    Event::Migrate,
    Event::Exclusive,
];

fn invalidate_random(mm: &Mm, primary: &Primary, stats: &Stats, rng: &mut Rng) {
    let first = rng.below(PAGES);
    let end = (first + 1 + rng.below(8)).min(PAGES);
    let event = EVENTS[rng.below(EVENTS.len())];
    let (start, stop) = (first as u64 * PAGE, end as u64 * PAGE);
    let change = |inv: Invalidation<'_>, rng: &mut Rng| {
        for page in first..end {
            primary.replace(page, rng.next() & 0xf_ffff);
            if rng.below(8) == 0 {
                thread::yield_now();
            }
        }
        stats
            .pages_changed
            .fetch_add(end - first, Ordering::Relaxed);
        if rng.below(4) == 0 {
            inv.only_end();
        } else {
            inv.end();
        }
    };
    if rng.below(2) == 0 {
        let lock = mm.mmap_read();
        change(
            Invalidation::start(Range::new(&lock, event, start, stop)),
            rng,
        );
    } else {
        let lock = mm.rmap_lock();
        change(
            Invalidation::start(Range::new(&lock, event, start, stop)),
            rng,
        );
    }
    stats.invalidations.fetch_add(1, Ordering::Relaxed);
}

// ---------------------------------------------------------------------------
// Churn: extra interval notifiers and a list notifier coming and going
// ---------------------------------------------------------------------------

struct Extra {
    lock: Mutex<()>,
    stats: Arc<Stats>,
}

impl IntervalNotifierOps for Extra {
    fn invalidate(&self, sub: &IntervalSub, _range: &Range<'_>, cur_seq: Seq) -> bool {
        let _guard = self.lock.lock();
        sub.set_seq(cur_seq);
        self.stats.extra_invalidates.fetch_add(1, Ordering::Relaxed);
        true
    }
}

/// One registration's view of the invalidations.
#[derive(Default)]
struct Lifetime {
    starts: AtomicUsize,
    ends: AtomicUsize,
    unregistered: AtomicBool,
}

fn lifetime_start(lifetime: &Lifetime, _range: &Range<'_>) {
    assert!(
        !lifetime.unregistered.load(Ordering::SeqCst),
        "invalidate_range_start after unregister returned"
    );
    lifetime.starts.fetch_add(1, Ordering::SeqCst);
}

fn lifetime_end(lifetime: &Lifetime, _range: &Range<'_>) {
    assert!(
        !lifetime.unregistered.load(Ordering::SeqCst),
        "invalidate_range_end after unregister returned"
    );
    let ends = lifetime.ends.fetch_add(1, Ordering::SeqCst) + 1;
    let starts = lifetime.starts.load(Ordering::SeqCst);
    assert!(
        ends <= starts,
        "a registration saw {ends} ends but only {starts} starts"
    );
}

static LIFETIME_OPS: NotifierOps<Arc<Lifetime>> = NotifierOps {
    invalidate_range_start: Some(StartFn::Infallible(|l, r| lifetime_start(l, r))),
    invalidate_range_end: Some(|l, r| lifetime_end(l, r)),
    ..NotifierOps::EMPTY
};

fn churn_main(mm: Arc<Mm>, stats: Arc<Stats>, stop: Arc<AtomicBool>, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut extras: Vec<IntervalNotifier<Extra>> = Vec::new();
    let mut registered: Option<(Notifier<Arc<Lifetime>>, Arc<Lifetime>)> = None;
    while !stop.load(Ordering::Relaxed) {
        match rng.below(4) {
            0 | 1 if extras.len() < 4 => {
                let first = rng.below(PAGES);
                let pages = 1 + rng.below(PAGES - first);
                let extra = Extra {
                    lock: Mutex::new(&CHURN_LOCK, ()),
                    stats: stats.clone(),
                };
                let sub =
                    IntervalNotifier::insert(&mm, first as u64 * PAGE, pages as u64 * PAGE, extra)
                        .unwrap();
                // A fresh interval must be usable through read_begin at once.
                let seq = sub.read_begin();
                assert!(seq.is_odd());
                extras.push(sub);
                stats.extra_inserts.fetch_add(1, Ordering::Relaxed);
            }
            0 | 1 => {
                let victim = rng.below(extras.len());
                extras.swap_remove(victim).remove();
            }
            2 => {
                if let Some((notifier, lifetime)) = registered.take() {
                    notifier.unregister();
                    lifetime.unregistered.store(true, Ordering::SeqCst);
                    stats
                        .list_starts
                        .fetch_add(lifetime.starts.load(Ordering::SeqCst), Ordering::Relaxed);
                    stats
                        .list_ends
                        .fetch_add(lifetime.ends.load(Ordering::SeqCst), Ordering::Relaxed);
                } else {
                    let lifetime = Arc::new(Lifetime::default());
                    let notifier =
                        Notifier::register(&mm, &LIFETIME_OPS, lifetime.clone()).unwrap();
                    registered = Some((notifier, lifetime));
                    stats.registrations.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ => thread::yield_now(),
        }
    }
    if let Some((notifier, lifetime)) = registered {
        notifier.unregister();
        lifetime.unregistered.store(true, Ordering::SeqCst);
        stats
            .list_starts
            .fetch_add(lifetime.starts.load(Ordering::SeqCst), Ordering::Relaxed);
        stats
            .list_ends
            .fetch_add(lifetime.ends.load(Ordering::SeqCst), Ordering::Relaxed);
    }
    for extra in extras {
        extra.remove();
    }
}

// ---------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------

/// Increments the counter when dropped, unwinding included.
struct CountOnDrop(Arc<AtomicUsize>);

impl Drop for CountOnDrop {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn run() -> Arc<Stats> {
    let mm = Mm::new();
    let primary = Arc::new(Primary::new());
    let stats = Arc::new(Stats::default());
    let devices_done = Arc::new(AtomicUsize::new(0));
    let stop_churn = Arc::new(AtomicBool::new(false));

    // Insert every device interval up front (the first insert enables the
    // tree under the mmap write lock).
    let mut device_threads = Vec::new();
    for id in 0..DEVICES {
        let device = Arc::new(Device {
            id,
            mirror: Mutex::new(&DEVICE_LOCK, [None; PAGES]),
        });
        let base = id * 16;
        let intervals: Vec<_> = (0..DEVICE_PAGES / INTERVAL_PAGES)
            .map(|i| {
                let first = base + i * INTERVAL_PAGES;
                let ops = DeviceInterval {
                    device: device.clone(),
                    first,
                    stats: stats.clone(),
                };
                IntervalNotifier::insert(
                    &mm,
                    first as u64 * PAGE,
                    (INTERVAL_PAGES as u64) * PAGE,
                    ops,
                )
                .unwrap()
            })
            .collect();
        let (primary, stats, done) = (primary.clone(), stats.clone(), devices_done.clone());
        device_threads.push(thread::spawn(move || {
            // Counted even if the device panics, so that the rest stops.
            let _done = CountOnDrop(done);
            device_main(device, intervals, primary, stats, 0x1000 + id as u64);
        }));
    }

    let vm_threads: Vec<_> = (0..VMS)
        .map(|id| {
            let (mm, primary, stats, done) = (
                mm.clone(),
                primary.clone(),
                stats.clone(),
                devices_done.clone(),
            );
            thread::spawn(move || {
                let mut rng = Rng::new(0x2000 + id as u64);
                let began = Instant::now();
                let mut iteration = 0;
                while iteration < VM_ITERS
                    || (no_retry_yet(&stats)
                        && done.load(Ordering::SeqCst) < DEVICES
                        && began.elapsed() < RETRY_GRACE)
                {
                    iteration += 1;
                    invalidate_random(&mm, &primary, &stats, &mut rng);
                    // Lets the epoch close now and then on few CPUs.
                    if rng.below(4) == 0 {
                        thread::yield_now();
                    }
                }
            })
        })
        .collect();

    let churn = thread::spawn({
        let (mm, stats, stop) = (mm.clone(), stats.clone(), stop_churn.clone());
        move || churn_main(mm, stats, stop, 0x3000)
    });

    // Join everything before reporting the first failure, so that a failing
    // thread does not leave the others spinning.
    let mut results: Vec<_> = device_threads.into_iter().map(|t| t.join()).collect();
    results.extend(vm_threads.into_iter().map(|t| t.join()));
    stop_churn.store(true, Ordering::Relaxed);
    results.push(churn.join());
    for result in results {
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    }
    assert!(mm.warnings().is_empty(), "WARNs: {:?}", mm.warnings());
    stats
}

#[test]
fn devices_never_see_stale_ptes_under_concurrent_invalidation() {
    let began = Instant::now();
    let (tx, rx) = mpsc::channel();
    let worker = thread::spawn(move || {
        let stats = run();
        let _ = tx.send(());
        stats
    });
    let stats = match rx.recv_timeout(HANG) {
        Ok(()) => worker.join().unwrap(),
        Err(mpsc::RecvTimeoutError::Disconnected) => match worker.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(_) => unreachable!("finished without reporting"),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("stress test hung for {HANG:?}"),
    };
    let get = |counter: &AtomicUsize| counter.load(Ordering::Relaxed);
    eprintln!(
        "stress: {:.2?}: device accesses {}, faults {}, retries {}, gave up {}, mirror checks {}, \
         device invalidates {}; VM invalidations {}, pages changed {}; extra inserts {}, extra \
         invalidates {}; list registrations {}, starts {}, ends {}",
        began.elapsed(),
        get(&stats.accesses),
        get(&stats.faults),
        get(&stats.retries),
        get(&stats.gave_up),
        get(&stats.checks),
        get(&stats.device_invalidates),
        get(&stats.invalidations),
        get(&stats.pages_changed),
        get(&stats.extra_inserts),
        get(&stats.extra_invalidates),
        get(&stats.registrations),
        get(&stats.list_starts),
        get(&stats.list_ends),
    );
    assert!(get(&stats.faults) > 0, "no device ever faulted a page in");
    assert!(get(&stats.device_invalidates) > 0);
    assert!(
        get(&stats.retries) > 0,
        "no read_retry ever failed: the race was not exercised"
    );
    assert!(get(&stats.list_ends) <= get(&stats.list_starts));
}
