//! The fsync family (`writeback.rs`): each call that writes back a file
//! delivers a `ProtectionPage` start before the system call and its end
//! after it over the file's shared mappings — seen here through the dirty
//! pages `/proc/self/smaps` counts in the mapping: dirty at the start,
//! clean at the end.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::{Mutex, MutexGuard, OnceLock};

use mmun_core::{Event, Notifier, NotifierOps, Range, StartFn};

const PAGE: usize = 4096;

// Safe wrappers: each call only passes our own descriptors and mappings.
fn c_fsync(fd: i32) -> i32 {
    // SAFETY: a descriptor we own.
    unsafe { libc::fsync(fd) }
}
fn c_fdatasync(fd: i32) -> i32 {
    // SAFETY: a descriptor we own.
    unsafe { libc::fdatasync(fd) }
}
fn c_msync(addr: *mut libc::c_void, len: usize, flags: i32) -> i32 {
    // SAFETY: msync only reads the address range; callers pass their own.
    unsafe { libc::msync(addr, len, flags) }
}
fn c_sync_file_range(fd: i32, offset: i64, nbytes: i64, flags: u32) -> i32 {
    // SAFETY: a descriptor we own.
    unsafe { libc::sync_file_range(fd, offset, nbytes, flags) }
}
fn c_syncfs(fd: i32) -> i32 {
    // SAFETY: a descriptor we own.
    unsafe { libc::syncfs(fd) }
}
fn c_sync() {
    // SAFETY: no arguments.
    unsafe { libc::sync() }
}

/// One callback: start or end, event, range, and the dirty kB smaps
/// reported for the watched mapping at that moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    start_phase: bool,
    event: Event,
    start: u64,
    end: u64,
    dirty_kb: u64,
}

#[derive(Default)]
struct Log {
    /// (thread, mapping whose dirty pages are sampled), 0: not watching.
    watch: Mutex<(i32, u64)>,
    seen: Mutex<Vec<Seen>>,
}

/// `Private_Dirty` + `Shared_Dirty` of the mapping starting at `start`.
fn dirty_kb(start: u64) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let header = format!("{start:x}-");
    let mut inside = false;
    let mut kb = 0;
    for line in smaps.lines() {
        if line.as_bytes().first().is_some_and(u8::is_ascii_hexdigit) && line.contains('-') {
            inside = line.starts_with(&header);
        } else if inside
            && (line.starts_with("Private_Dirty:") || line.starts_with("Shared_Dirty:"))
        {
            kb += line
                .split_whitespace()
                .nth(1)
                .unwrap()
                .parse::<u64>()
                .unwrap();
        }
    }
    kb
}

impl Log {
    fn record(&self, start_phase: bool, range: &Range<'_>) {
        let (tid, sample) = *self.watch.lock().unwrap();
        // SAFETY: gettid has no preconditions.
        if tid == 0 || tid != unsafe { libc::gettid() } {
            return;
        }
        let seen = Seen {
            start_phase,
            event: range.event(),
            start: range.start(),
            end: range.end(),
            dirty_kb: dirty_kb(sample),
        };
        self.seen.lock().unwrap().push(seen);
    }
}

static OPS: NotifierOps<Log> = NotifierOps {
    invalidate_range_start: Some(StartFn::Infallible(|log, range| log.record(true, range))),
    invalidate_range_end: Some(|log, range| log.record(false, range)),
    ..NotifierOps::EMPTY
};

fn setup() -> (MutexGuard<'static, ()>, &'static Notifier<Log>) {
    static LOCK: Mutex<()> = Mutex::new(());
    static REC: OnceLock<Notifier<Log>> = OnceLock::new();
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    mmun_linux::install().expect("libc patched");
    let rec = REC.get_or_init(|| {
        Notifier::register(mmun_linux::process_mm(), &OPS, Log::default()).unwrap()
    });
    (guard, rec)
}

/// Runs `f`, logging this thread's callbacks and sampling `sample`'s
/// dirty pages in each.
fn run(rec: &Notifier<Log>, sample: u64, f: impl FnOnce()) -> Vec<Seen> {
    rec.seen.lock().unwrap().clear();
    // SAFETY: gettid has no preconditions.
    *rec.watch.lock().unwrap() = (unsafe { libc::gettid() }, sample);
    f();
    *rec.watch.lock().unwrap() = (0, 0);
    std::mem::take(&mut *rec.seen.lock().unwrap())
}

/// Where the test files live: the target's temporary directory, on a
/// file system with writeback (tmpfs has none: its pages stay dirty).
fn dir() -> std::path::PathBuf {
    option_env!("CARGO_TARGET_TMPDIR").map_or_else(std::env::temp_dir, Into::into)
}

/// Whether [`dir`] writes back; prints why the test skips otherwise.
fn has_writeback() -> bool {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    let path = std::ffi::CString::new(dir().to_str().unwrap()).unwrap();
    // SAFETY: an all-zero statfs is a valid value to be overwritten.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a statfs we own.
    assert_eq!(unsafe { libc::statfs(path.as_ptr(), &mut st) }, 0);
    let ok = st.f_type != TMPFS_MAGIC;
    if !ok {
        eprintln!("SKIPPED: {} is on tmpfs (no writeback)", dir().display());
    }
    ok
}

/// A file of `pages` pages in [`dir`], open read-write.
fn file(pages: usize) -> File {
    let f = tempfile_in(&dir());
    f.set_len((pages * PAGE) as u64).unwrap();
    f
}

fn tempfile_in(dir: &std::path::Path) -> File {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.join(format!("mmun-writeback-{}-{n}", std::process::id()));
    let f = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    f
}

/// Maps `pages` pages of `f` from `offset_pages`, writes them (dirty).
fn map(f: &File, pages: usize, offset_pages: usize, flags: i32) -> u64 {
    // SAFETY: a fresh mapping of our own file, written within its length.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            pages * PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            f.as_raw_fd(),
            (offset_pages * PAGE) as i64,
        );
        assert_ne!(p, libc::MAP_FAILED);
        std::ptr::write_bytes(p.cast::<u8>(), 0x5a, pages * PAGE);
        p as u64
    }
}

fn unmap(p: u64, pages: usize) {
    // SAFETY: our own mapping.
    assert_eq!(unsafe { libc::munmap(p as *mut _, pages * PAGE) }, 0);
}

/// The ranges of the starts, sorted; checks each start has its end right
/// after all starts (same ranges), every event is `ProtectionPage`.
fn starts(seen: &[Seen]) -> Vec<(u64, u64)> {
    let n = seen.len() / 2;
    assert_eq!(seen.len(), 2 * n, "{seen:#x?}");
    for (s, e) in seen[..n].iter().zip(&seen[n..]) {
        assert!(
            s.start_phase && !e.start_phase,
            "starts, then ends: {seen:#x?}"
        );
        assert_eq!((s.start, s.end), (e.start, e.end), "{seen:#x?}");
        assert_eq!(s.event, Event::ProtectionPage, "{seen:#x?}");
    }
    let mut r: Vec<_> = seen[..n].iter().map(|s| (s.start, s.end)).collect();
    r.sort_unstable();
    r
}

/// Dirty at every start, clean at every end: the starts ran before the
/// writeback, the ends after it.
fn dirty_then_clean(seen: &[Seen]) {
    for s in seen {
        if s.start_phase {
            assert!(s.dirty_kb > 0, "start before the writeback: {seen:#x?}");
        } else {
            assert_eq!(s.dirty_kb, 0, "end after the writeback: {seen:#x?}");
        }
    }
}

fn sorted(mut v: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    v.sort_unstable();
    v
}

#[test]
fn fsync_covers_every_shared_mapping_of_the_file_and_no_private_one() {
    if !has_writeback() {
        return;
    }
    let (_g, rec) = setup();
    let f = file(8);
    let a = map(&f, 8, 0, libc::MAP_SHARED);
    let b = map(&f, 2, 4, libc::MAP_SHARED);
    let private = map(&f, 8, 0, libc::MAP_PRIVATE);
    let other = file(4);
    let unrelated = map(&other, 4, 0, libc::MAP_SHARED);
    // SAFETY: fsync of our own file.
    let seen = run(rec, a, || assert_eq!(c_fsync(f.as_raw_fd()), 0));
    let p = PAGE as u64;
    assert_eq!(starts(&seen), sorted(vec![(a, a + 8 * p), (b, b + 2 * p)]));
    dirty_then_clean(&seen);
    assert!(
        seen.iter()
            .all(|s| s.start != private && s.start != unrelated)
    );
    for (m, n) in [(a, 8), (b, 2), (private, 8), (unrelated, 4)] {
        unmap(m, n);
    }
}

#[test]
fn fdatasync_covers_the_shared_mapping() {
    if !has_writeback() {
        return;
    }
    let (_g, rec) = setup();
    let f = file(4);
    let a = map(&f, 4, 0, libc::MAP_SHARED);
    // SAFETY: fdatasync of our own file.
    let seen = run(rec, a, || assert_eq!(c_fdatasync(f.as_raw_fd()), 0));
    assert_eq!(starts(&seen), vec![(a, a + 4 * PAGE as u64)]);
    dirty_then_clean(&seen);
    unmap(a, 4);
}

#[test]
fn fsync_of_an_unmapped_file_is_silent() {
    if !has_writeback() {
        return;
    }
    let (_g, rec) = setup();
    let f = file(4);
    let seen = run(rec, 0, || {
        // SAFETY: fsync of our own file.
        assert_eq!(c_fsync(f.as_raw_fd()), 0);
    });
    assert!(seen.is_empty(), "{seen:#x?}");
}

#[test]
fn msync_sync_covers_every_shared_mapping_of_the_file_async_nothing() {
    if !has_writeback() {
        return;
    }
    let (_g, rec) = setup();
    let f = file(8);
    let a = map(&f, 8, 0, libc::MAP_SHARED);
    let b = map(&f, 2, 6, libc::MAP_SHARED);
    let p = PAGE as u64;
    // SAFETY: msync of our own mapping.
    let seen = run(rec, a, || {
        assert_eq!(c_msync((a + p) as *mut _, PAGE, libc::MS_ASYNC), 0)
    });
    assert!(seen.is_empty(), "MS_ASYNC writes nothing back: {seen:#x?}");
    // SAFETY: msync of our own mapping.
    let seen = run(rec, a, || {
        assert_eq!(c_msync((a + p) as *mut _, PAGE, libc::MS_SYNC), 0)
    });
    assert_eq!(starts(&seen), sorted(vec![(a, a + 8 * p), (b, b + 2 * p)]));
    for s in &seen {
        assert!(
            s.start_phase || s.dirty_kb < 32,
            "the page written back is clean at the end: {seen:#x?}"
        );
    }
    assert!(
        seen[0].dirty_kb > 0,
        "start before the writeback: {seen:#x?}"
    );
    unmap(a, 8);
    unmap(b, 2);
}

#[test]
fn sync_file_range_write_covers_the_range_widened_to_2_mib() {
    if !has_writeback() {
        return;
    }
    let (_g, rec) = setup();
    let pages = 1024; // 4 MiB
    let f = file(pages);
    let a = map(&f, pages, 0, libc::MAP_SHARED);
    let fd = f.as_raw_fd();
    let wait = libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: sync_file_range of our own file.
    let seen = run(rec, a, || {
        assert_eq!(c_sync_file_range(fd, 0, PAGE as i64, wait), 0)
    });
    assert!(
        seen.is_empty(),
        "waiting alone writes nothing back: {seen:#x?}"
    );
    let flags = wait | libc::SYNC_FILE_RANGE_WRITE;
    // SAFETY: sync_file_range of our own file.
    let seen = run(rec, a, || {
        assert_eq!(c_sync_file_range(fd, PAGE as i64, PAGE as i64, flags), 0);
    });
    assert_eq!(starts(&seen), vec![(a, a + (2 << 20))]);
    assert!(
        seen[0].dirty_kb == (pages * PAGE / 1024) as u64,
        "{seen:#x?}"
    );
    assert_eq!(
        seen[1].dirty_kb,
        (pages * PAGE / 1024 - 4) as u64,
        "one page cleaned: {seen:#x?}"
    );
    // SAFETY: as above; nbytes 0 means up to the end of the file.
    let seen = run(rec, a, || {
        assert_eq!(c_sync_file_range(fd, (3 << 20) as i64, 0, flags), 0);
    });
    assert_eq!(starts(&seen), vec![(a + (2 << 20), a + (4 << 20))]);
    unmap(a, pages);
}

#[test]
fn syncfs_and_sync_cover_every_shared_file_mapping() {
    if !has_writeback() {
        return;
    }
    let (_g, rec) = setup();
    let f = file(4);
    let a = map(&f, 4, 0, libc::MAP_SHARED);
    let private = map(&f, 4, 0, libc::MAP_PRIVATE);
    let p = PAGE as u64;
    // SAFETY: syncfs of our own file's file system.
    let seen = run(rec, a, || assert_eq!(c_syncfs(f.as_raw_fd()), 0));
    let r = starts(&seen);
    assert!(r.contains(&(a, a + 4 * p)), "{seen:#x?}");
    assert!(!r.iter().any(|&(s, _)| s == private), "{seen:#x?}");
    // SAFETY: dirties our own mapping again, then syncs everything.
    unsafe { std::ptr::write_bytes(a as *mut u8, 0x11, 4 * PAGE) };
    let seen = run(rec, a, c_sync);
    assert!(starts(&seen).contains(&(a, a + 4 * p)), "{seen:#x?}");
    unmap(a, 4);
    unmap(private, 4);
}
