//! A recorder for the hook tests: a list notifier that logs every start and
//! end overlapping one watched range, with what the callback could see of
//! the memory at that moment — without allocating (callbacks may run under
//! malloc's locks).

#![allow(dead_code)]

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};

use mmun_core::{Event, Mm, Notifier, NotifierOps, Range, StartFn};
use mmun_linux::maps;

/// One logged callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// `true` for start, `false` for end.
    pub start_phase: bool,
    pub event: Event,
    pub start: u64,
    pub end: u64,
    pub late: bool,
    /// The permissions of the VMA holding the first watched byte inside the
    /// range when the callback ran, or `b"----"` if nothing was mapped.
    pub perms: [u8; 4],
    /// The first watched byte inside the range, when readable.
    pub byte: Option<u8>,
}

const SLOTS: usize = 64;

pub struct Log {
    /// Only this thread's calls are logged (0: every thread's); callbacks
    /// run in the calling thread, so other threads reusing freed addresses
    /// meanwhile do not disturb a test.
    tid: AtomicU64,
    lo: AtomicU64,
    hi: AtomicU64,
    n: AtomicUsize,
    slots: [[AtomicU64; 6]; SLOTS],
    perms: [[AtomicU8; 4]; SLOTS],
}

impl Default for Log {
    fn default() -> Log {
        Log {
            tid: AtomicU64::new(0),
            lo: AtomicU64::new(0),
            hi: AtomicU64::new(0),
            n: AtomicUsize::new(0),
            slots: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            perms: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU8::new(0))),
        }
    }
}

fn perms_at(addr: u64) -> [u8; 4] {
    let mut perms = *b"----";
    let _ = maps::for_each_vma(|v| {
        if v.start <= addr && addr < v.end {
            perms = v.perms;
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    });
    perms
}

fn gettid() -> u64 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() as u64 }
}

/// Whether the page holding `addr` is resident (reading a non-resident
/// page would fault it in, or raise SIGBUS past a file's end).
fn resident(addr: u64) -> bool {
    let mut vec = 0u8;
    // SAFETY: mincore writes one byte for one page.
    let ret = unsafe { libc::mincore((addr & !(PAGE as u64 - 1)) as *mut _, PAGE, &mut vec) };
    ret == 0 && vec & 1 == 1
}

impl Log {
    fn record(&self, start_phase: bool, range: &Range<'_>) {
        let (lo, hi) = (
            self.lo.load(Ordering::Acquire),
            self.hi.load(Ordering::Acquire),
        );
        if !range.overlaps(lo, hi) {
            return;
        }
        let tid = self.tid.load(Ordering::Acquire);
        if tid != 0 && tid != gettid() {
            return;
        }
        let first = range.start().max(lo);
        let perms = perms_at(first);
        let byte = if perms[0] == b'r' && resident(first) {
            // SAFETY: the VMA holding `first` is readable and its page
            // resident (so not past a truncated file's end) right now, and
            // the callback runs before (start) or after (end) the change in
            // this same thread, so nothing unmaps it meanwhile.
            u64::from(unsafe { std::ptr::read_volatile(first as *const u8) }) | 0x100
        } else {
            0
        };
        let i = self.n.fetch_add(1, Ordering::AcqRel);
        if i >= SLOTS {
            return;
        }
        let s = &self.slots[i];
        s[0].store(u64::from(start_phase), Ordering::Relaxed);
        s[1].store(range.event() as u64, Ordering::Relaxed);
        s[2].store(range.start(), Ordering::Relaxed);
        s[3].store(range.end(), Ordering::Relaxed);
        s[4].store(u64::from(range.is_late()), Ordering::Relaxed);
        s[5].store(byte, Ordering::Relaxed);
        for (k, p) in perms.iter().enumerate() {
            self.perms[i][k].store(*p, Ordering::Relaxed);
        }
    }

    /// Watches `[lo, hi)` for this thread's calls from now on and forgets
    /// what was logged.
    pub fn watch(&self, lo: u64, hi: u64) {
        self.tid.store(gettid(), Ordering::Release);
        self.lo.store(lo, Ordering::Release);
        self.hi.store(hi, Ordering::Release);
        self.n.store(0, Ordering::Release);
    }

    /// Watches `[lo, hi)` for every thread's calls.
    pub fn watch_all_threads(&self, lo: u64, hi: u64) {
        self.watch(lo, hi);
        self.tid.store(0, Ordering::Release);
    }

    /// What was logged since `watch`.
    pub fn take(&self) -> Vec<Seen> {
        let n = self.n.load(Ordering::Acquire).min(SLOTS);
        let seen = (0..n)
            .map(|i| {
                let s = &self.slots[i];
                let byte = s[5].load(Ordering::Relaxed);
                Seen {
                    start_phase: s[0].load(Ordering::Relaxed) == 1,
                    event: Event::try_from(s[1].load(Ordering::Relaxed) as u8).unwrap(),
                    start: s[2].load(Ordering::Relaxed),
                    end: s[3].load(Ordering::Relaxed),
                    late: s[4].load(Ordering::Relaxed) == 1,
                    perms: std::array::from_fn(|k| self.perms[i][k].load(Ordering::Relaxed)),
                    byte: (byte & 0x100 != 0).then_some(byte as u8),
                }
            })
            .collect();
        self.n.store(0, Ordering::Release);
        seen
    }
}

static OPS: NotifierOps<Log> = NotifierOps {
    invalidate_range_start: Some(StartFn::Infallible(|log, range| log.record(true, range))),
    invalidate_range_end: Some(|log, range| log.record(false, range)),
    ..NotifierOps::EMPTY
};

/// A recorder registered on the process `Mm`.
pub fn recorder() -> Notifier<Log> {
    Notifier::register(mmun_linux::process_mm(), &OPS, Log::default()).unwrap()
}

/// A recorder on any `Mm`.
pub fn recorder_on(mm: &Arc<Mm>) -> Notifier<Log> {
    Notifier::register(mm, &OPS, Log::default()).unwrap()
}

pub const PAGE: usize = 4096;

/// A populated anonymous private mapping of `pages`, each page filled with
/// `fill`.
pub fn anon(pages: usize, fill: u8) -> *mut u8 {
    // SAFETY: a fresh mapping, written within its length.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            pages * PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
            -1,
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        std::ptr::write_bytes(p.cast::<u8>(), fill, pages * PAGE);
        p.cast()
    }
}

/// The start and end logged for exactly one invalidation.
pub fn one_pair(seen: &[Seen]) -> (Seen, Seen) {
    assert_eq!(
        seen.len(),
        2,
        "expected one start and one end, got {seen:#x?}"
    );
    assert!(seen[0].start_phase && !seen[1].start_phase, "{seen:#x?}");
    assert_eq!(
        (seen[0].event, seen[0].start, seen[0].end),
        (seen[1].event, seen[1].start, seen[1].end)
    );
    (seen[0], seen[1])
}

/// Compiles `source` into the shared library `lib{name}.so` with the
/// system C compiler (plus `extra_flags`); `None`, with a message saying
/// the test skipped, where there is no working `cc`.
pub fn build_c_library(
    name: &str,
    source: &str,
    extra_flags: &[&str],
) -> Option<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("mmun-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("lib.c");
    let so = dir.join(format!("lib{name}.so"));
    std::fs::write(&src, source).unwrap();
    match std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-O1"])
        .args(extra_flags)
        .arg("-o")
        .arg(&so)
        .arg(&src)
        .status()
    {
        Ok(s) if s.success() => Some(so),
        other => {
            eprintln!("SKIPPED: no working C compiler (`cc`): {other:?}");
            None
        }
    }
}
