//! What the io_uring cache tests share: a cache or a printed skip, a file
//! of known contents, anonymous mappings, and the churn harness (threads
//! reading the file into cached buffers while others unmap, remap, zap,
//! free and reallocate them).

#![allow(dead_code)]

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::thread;
use std::time::{Duration, Instant};

use io_uring::{opcode, types};
use mmun_uring::{UringCache, UringConfig, UringError};

pub const PAGE: usize = 4096;

/// A cache, or `None` after printing why the test is skipped (io_uring
/// disabled or forbidden here, or the hooks cannot be installed).
pub fn cache_or_skip(test: &str, config: UringConfig) -> Option<UringCache> {
    match UringCache::new(config) {
        Ok(cache) => Some(cache),
        Err(err @ (UringError::Hooks(_) | UringError::PfnUnavailable(_))) => {
            eprintln!("{test}: skipped: {err}");
            None
        }
        Err(err) if err.is_unavailable() => {
            eprintln!("{test}: skipped: {err}");
            None
        }
        Err(err) => panic!("{test}: {err}"),
    }
}

/// The byte a pattern file holds at `offset`: each 8-byte word is its own
/// offset mixed with a constant, so a byte read into the wrong place, from
/// the wrong offset, or not at all shows.
pub fn expected(offset: u64) -> u8 {
    let word = (offset / 8) ^ 0x9e37_79b9_7f4a_7c15;
    word.to_le_bytes()[(offset % 8) as usize]
}

/// A temporary file of `len` pattern bytes, removed when dropped.
pub struct PatternFile {
    pub file: File,
    path: std::path::PathBuf,
    pub len: u64,
}

impl PatternFile {
    pub fn new(tag: &str, len: u64) -> PatternFile {
        let path = std::env::temp_dir().join(format!("mmun-uring-{tag}-{}", std::process::id()));
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("create the pattern file");
        let bytes: Vec<u8> = (0..len).map(expected).collect();
        file.write_all(&bytes).expect("write the pattern");
        file.sync_all().expect("sync");
        PatternFile { file, path, len }
    }
}

impl Drop for PatternFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A private anonymous read-write mapping of `len` bytes (no THP: a
/// khugepaged collapse would change frames without a libc call).
pub fn map_anon(len: usize) -> u64 {
    // SAFETY: a fresh anonymous mapping, nothing else refers to it.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED, "mmap");
    // SAFETY: advice on our own fresh mapping.
    unsafe { libc::madvise(p, len, libc::MADV_NOHUGEPAGE) };
    p as u64
}

/// How a churn region's memory was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Mmap,
    Malloc,
}

/// One buffer the threads fight over, behind a read-write lock that keeps
/// a reader's memory mapped for the duration of its check (the
/// structural changes take it for writing); `MADV_DONTNEED` needs only a
/// read lock, so it runs while I/O is in flight.
#[derive(Debug)]
struct Region {
    addr: u64,
    len: usize,
    kind: Kind,
    /// Held by the reader filling and checking the region, so that two
    /// readers never write the same bytes (read locks are shared).
    io: Mutex<()>,
}

impl Region {
    fn new(kind: Kind, len: usize) -> Region {
        let addr = match kind {
            Kind::Mmap => map_anon(len),
            // SAFETY: a plain allocation, freed by `release`.
            Kind::Malloc => (unsafe { libc::malloc(len) }) as u64,
        };
        assert_ne!(addr, 0, "allocation");
        Region {
            addr,
            len,
            kind,
            io: Mutex::new(()),
        }
    }

    fn release(&self) {
        match self.kind {
            // SAFETY: our own mapping / allocation; no reader holds it
            // (the caller holds the region's write lock).
            Kind::Mmap => unsafe {
                libc::munmap(self.addr as *mut libc::c_void, self.len);
            },
            // SAFETY: as above.
            Kind::Malloc => unsafe { libc::free(self.addr as *mut libc::c_void) },
        }
    }
}

/// What a churn run did and found.
#[derive(Debug, Default)]
pub struct Report {
    pub ios: u64,
    pub bytes: u64,
    /// Bytes that were not what the file holds at that offset after the
    /// read completed.
    pub lost: u64,
    pub mutations: u64,
    pub registrations: u64,
    pub invalidations: u64,
    pub elapsed: Duration,
}

/// A seeded xorshift, one per thread.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Runs `readers` threads doing `READ_FIXED` of `file` into the regions
/// through `cache` and `mutators` threads changing the regions' memory,
/// for `duration` or until `stop_on_loss` and a byte is lost.
///
/// The buffers are not `mlock`ed (`MADV_DONTNEED` refuses locked ranges):
/// idle-memory reclaim (this machine's DAMON) may page them out between
/// reads, which is harmless — registering faults them back in, and every
/// byte is checked inside the use, while the registration pins the pages,
/// and reclaim skips pinned pages.
pub fn churn(
    cache: &UringCache,
    file: &PatternFile,
    readers: usize,
    mutators: usize,
    duration: Duration,
    stop_on_loss: bool,
) -> Report {
    let regions: Vec<RwLock<Region>> = (0..8)
        .map(|i| {
            let (kind, len) = match i % 4 {
                0 => (Kind::Mmap, 16 * PAGE),
                1 => (Kind::Mmap, 3 * PAGE),
                2 => (Kind::Malloc, 64 * 1024 + 40),
                _ => (Kind::Malloc, 300 * 1024),
            };
            RwLock::new(Region::new(kind, len))
        })
        .collect();
    let stop = AtomicBool::new(false);
    let (ios, bytes, lost, mutations) = (
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
    );
    let before = cache.stats();
    let started = Instant::now();
    thread::scope(|s| {
        for t in 0..readers {
            let (regions, stop, ios, bytes, lost) = (&regions, &stop, &ios, &bytes, &lost);
            s.spawn(move || {
                let mut rng = Rng(0x1234_5678 + t as u64 * 77);
                while !stop.load(Ordering::Relaxed) {
                    let region = regions[rng.below(regions.len() as u64) as usize]
                        .read()
                        .unwrap();
                    let got = read_and_check(cache, file, &region, &mut rng);
                    drop(region);
                    ios.fetch_add(1, Ordering::Relaxed);
                    bytes.fetch_add(got.0, Ordering::Relaxed);
                    if got.1 > 0 {
                        lost.fetch_add(got.1, Ordering::Relaxed);
                        if stop_on_loss {
                            stop.store(true, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
        for t in 0..mutators {
            let (regions, stop, mutations) = (&regions, &stop, &mutations);
            s.spawn(move || {
                let mut rng = Rng(0xdead_beef + t as u64 * 131);
                while !stop.load(Ordering::Relaxed) {
                    let region = &regions[rng.below(regions.len() as u64) as usize];
                    mutate(region, &mut rng);
                    mutations.fetch_add(1, Ordering::Relaxed);
                    thread::sleep(Duration::from_micros(rng.below(200)));
                }
            });
        }
        while !stop.load(Ordering::Relaxed) && started.elapsed() < duration {
            thread::sleep(Duration::from_millis(10));
        }
        stop.store(true, Ordering::Relaxed);
    });
    for region in &regions {
        region.write().unwrap().release();
    }
    let after = cache.stats();
    Report {
        ios: ios.into_inner(),
        bytes: bytes.into_inner(),
        lost: lost.into_inner(),
        mutations: mutations.into_inner(),
        registrations: after.registrations - before.registrations,
        invalidations: after.invalidations - before.invalidations,
        elapsed: started.elapsed(),
    }
}

/// One read of the pattern file into a random part of `region`, then the
/// check of every byte through the virtual address, made while the use is
/// still held (so a concurrent `MADV_DONTNEED` waits for it). Returns the
/// bytes read and the bytes that were wrong.
fn read_and_check(
    cache: &UringCache,
    file: &PatternFile,
    region: &Region,
    rng: &mut Rng,
) -> (u64, u64) {
    let len = 1 + rng.below(region.len.min(8 * PAGE) as u64) as usize;
    let at = region.addr + rng.below((region.len - len) as u64 + 1);
    let offset = rng.below(file.len - len as u64);
    let _io = region.io.lock().unwrap();
    // Poison first: bytes the read did not bring keep it.
    // SAFETY: the region's read lock keeps it mapped and ours.
    unsafe { std::ptr::write_bytes(at as *mut u8, 0xa5, len) };
    let read = |index: u16| {
        let entry = opcode::ReadFixed::new(
            types::Fd(file.file.as_raw_fd()),
            at as *mut u8,
            len as u32,
            index,
        )
        .offset(offset)
        .build();
        // SAFETY: the buffer stays mapped (read lock) and registered (the
        // caller's use) until the completion is reaped.
        let n = unsafe { cache.ring().run(&entry) }.expect("io_uring_enter");
        if n != len as i32 {
            // A slot emptied under the use (-EFAULT) or a short read: the
            // data did not arrive.
            return len as u64;
        }
        // SAFETY: as above; the read completed. Checked inside the use, so
        // a concurrent MADV_DONTNEED waits for the check.
        let landed = unsafe { std::slice::from_raw_parts(at as *const u8, len) };
        landed
            .iter()
            .enumerate()
            .filter(|&(i, &b)| b != expected(offset + i as u64))
            .count() as u64
    };
    // Every way in: the handle (get, then enter), this thread's snapshot
    // around a closure (with_fixed), and the use alone (acquire).
    let wrong = match rng.below(3) {
        0 => cache
            .with_fixed(at, len as u64, |in_use| read(in_use.registration().index()))
            .expect("with_fixed"),
        1 => {
            let in_use = cache.acquire(at, len as u64).expect("acquire");
            read(in_use.registration().index())
        }
        _ => loop {
            let buf = cache.get(at, len as u64).expect("get");
            if let Some(in_use) = buf.enter() {
                break read(in_use.registration().index());
            }
        },
    };
    (len as u64, wrong)
}

/// One change of `region`'s memory, chosen at random.
fn mutate(region: &RwLock<Region>, rng: &mut Rng) {
    match rng.below(5) {
        0 => {
            // Zap part of it while I/O may be in flight on it.
            let r = region.read().unwrap();
            let page = rng.below((r.len / PAGE) as u64) as usize * PAGE;
            let start = (r.addr as usize).next_multiple_of(PAGE) + page;
            let end = (start + 2 * PAGE).min((r.addr as usize + r.len) & !(PAGE - 1));
            if start < end {
                // SAFETY: pages of our own region; they read as zero next.
                unsafe {
                    libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED)
                };
            }
        }
        1 => {
            // Release and allocate again: malloc may hand back the same
            // address, mmap often does.
            let mut r = region.write().unwrap();
            r.release();
            *r = Region::new(r.kind, r.len);
        }
        2 => {
            let mut r = region.write().unwrap();
            if r.kind == Kind::Mmap {
                // New pages over the same addresses.
                remap_fixed(r.addr, r.len);
            } else {
                r.release();
                *r = Region::new(r.kind, r.len);
            }
        }
        3 => {
            let mut r = region.write().unwrap();
            if r.kind == Kind::Mmap {
                // Move it (the pages go with it, the old range is unmapped)
                // onto a fresh mapping it replaces.
                let to = map_anon(r.len);
                // SAFETY: both are our own mappings; readers are locked out.
                let moved = unsafe {
                    libc::mremap(
                        r.addr as *mut libc::c_void,
                        r.len,
                        r.len,
                        libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                        to as *mut libc::c_void,
                    )
                };
                assert_eq!(moved as u64, to, "mremap");
                r.addr = to;
            }
        }
        _ => {
            // Shrink and grow back in place: the tail's pages are new.
            let mut r = region.write().unwrap();
            if r.kind == Kind::Mmap && r.len > PAGE {
                let half = (r.len / 2) & !(PAGE - 1);
                let p = r.addr as *mut libc::c_void;
                // SAFETY: our own mapping; readers are locked out.
                let shrunk = unsafe { libc::mremap(p, r.len, half, 0) };
                assert_eq!(shrunk, p, "mremap shrink");
                // SAFETY: as above; growing in place fails if another
                // mapping took the space meanwhile.
                if unsafe { libc::mremap(p, half, r.len, 0) } == libc::MAP_FAILED {
                    // SAFETY: our own (shrunk) mapping.
                    unsafe { libc::munmap(p, half) };
                    r.addr = map_anon(r.len);
                }
            }
        }
    }
}

/// `mmap(MAP_FIXED)` of fresh anonymous pages over `[addr, addr + len)`.
fn remap_fixed(addr: u64, len: usize) {
    // SAFETY: replaces our own mapping; the caller locked readers out.
    let p = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
            -1,
            0,
        )
    };
    assert_eq!(p as u64, addr, "mmap(MAP_FIXED)");
    // SAFETY: advice on our own mapping.
    unsafe { libc::madvise(p, len, libc::MADV_NOHUGEPAGE) };
}
