//! Shared by the `uffd_*` tests: an allocation-free recorder for delivered
//! changes, raw system calls that bypass any interposition, and the skip.

#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mmun_linux::uffd::{LateChange, UffdError, UffdNet};

const SLOTS: usize = 1 << 16;
static LOG: [AtomicU64; SLOTS * 4] = [const { AtomicU64::new(0) }; SLOTS * 4];
static NEXT: AtomicUsize = AtomicUsize::new(0);
static DONE: AtomicUsize = AtomicUsize::new(0);

/// The `deliver` function of the tests: appends to a fixed log, no heap.
pub fn record(change: LateChange) {
    let (k, a, b, c) = match change {
        LateChange::Unmap { start, end } => (1, start, end, 0),
        LateChange::Remove { start, end } => (2, start, end, 0),
        LateChange::Remap { from, to, len } => (3, from, to, len),
    };
    let i = NEXT.fetch_add(1, Ordering::AcqRel) % SLOTS;
    LOG[4 * i + 1].store(a, Ordering::Relaxed);
    LOG[4 * i + 2].store(b, Ordering::Relaxed);
    LOG[4 * i + 3].store(c, Ordering::Relaxed);
    LOG[4 * i].store(k, Ordering::Release);
    DONE.fetch_add(1, Ordering::AcqRel);
}

/// Tests of one binary run one at a time: a VA one test unmapped may be
/// mapped again by the next, and the delivered log is global.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Forgets what was delivered before (each test starts with an empty log).
pub fn clear() {
    let n = DONE.load(Ordering::Acquire).min(SLOTS);
    for slot in LOG.iter().take(4 * n).step_by(4) {
        slot.store(0, Ordering::Release);
    }
}

/// Every change delivered so far (tests run in parallel: filter by range).
pub fn delivered() -> Vec<LateChange> {
    let n = DONE.load(Ordering::Acquire).min(SLOTS);
    (0..n)
        .filter_map(|i| {
            let get = |j: usize| LOG[4 * i + j].load(Ordering::Acquire);
            match get(0) {
                1 => Some(LateChange::Unmap {
                    start: get(1),
                    end: get(2),
                }),
                2 => Some(LateChange::Remove {
                    start: get(1),
                    end: get(2),
                }),
                3 => Some(LateChange::Remap {
                    from: get(1),
                    to: get(2),
                    len: get(3),
                }),
                _ => None,
            }
        })
        .collect()
}

/// Whether a change touches `[start, end)`.
pub fn touches(c: &LateChange, start: u64, end: u64) -> bool {
    let (s, e) = match *c {
        LateChange::Unmap { start, end } | LateChange::Remove { start, end } => (start, end),
        LateChange::Remap { from, to, len } => {
            return (from < end && start < from + len) || (to < end && start < to + len);
        }
    };
    s < end && start < e
}

/// The changes touching `[start, end)`.
pub fn delivered_in(start: u64, end: u64) -> Vec<LateChange> {
    delivered()
        .into_iter()
        .filter(|c| touches(c, start, end))
        .collect()
}

/// Waits up to 30 s for `want` to be among the changes delivered.
///
/// The unmapping thread is held until the handler has read the event, so
/// delivery follows within microseconds on a quiet machine; the generous
/// bound is for a loaded CI host, where a sleeping waiter (or the handler)
/// may not run for seconds. The log is checked once more after the
/// deadline, so a waiter that slept through it still sees a delivery.
pub fn wait_for(want: LateChange) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if delivered().contains(&want) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Starts a net delivering to [`record`], or prints why the test skips.
pub fn net_or_skip(test: &str) -> Option<UffdNet> {
    clear();
    match UffdNet::start(record) {
        Ok(net) => Some(net),
        Err(e @ UffdError::Unavailable(_)) => {
            eprintln!("{test}: skipped: {e}");
            None
        }
        Err(e) => panic!("{test}: {e}"),
    }
}

pub const PAGE: u64 = 4096;

/// `mmap` anonymous private read-write memory, populated, via the raw
/// system call.
pub fn map(pages: u64) -> u64 {
    // SAFETY: a fresh anonymous mapping, nothing else refers to it.
    let p = unsafe {
        libc::syscall(
            libc::SYS_mmap,
            0usize,
            (pages * PAGE) as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
            -1,
            0,
        )
    };
    assert!(p > 0 && (p as u64) < u64::MAX - PAGE, "mmap failed");
    p as u64
}

/// Raw `munmap`.
pub fn raw_munmap(addr: u64, len: u64) -> i64 {
    // SAFETY: the tests unmap only mappings they made.
    unsafe { libc::syscall(libc::SYS_munmap, addr as usize, len as usize) }
}

/// Raw `madvise`.
pub fn raw_madvise(addr: u64, len: u64, advice: i32) -> i64 {
    // SAFETY: the tests advise only mappings they made.
    unsafe { libc::syscall(libc::SYS_madvise, addr as usize, len as usize, advice) }
}

/// Raw `mremap` with `MREMAP_MAYMOVE | MREMAP_FIXED`.
pub fn raw_mremap_fixed(from: u64, len: u64, to: u64) -> i64 {
    // SAFETY: the tests move only mappings they made, onto VA they own.
    unsafe {
        libc::syscall(
            libc::SYS_mremap,
            from as usize,
            len as usize,
            len as usize,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            to as usize,
        )
    }
}

/// How many VMAs the process has.
pub fn vma_count() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .count()
}
