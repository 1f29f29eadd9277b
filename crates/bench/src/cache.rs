//! The registration cache on the calling process: hits and misses, with a
//! do-nothing registrar (the same work `ucs_rcache` does in UCX's figures)
//! and with io_uring fixed-buffer slots; then 4 KiB `READ_FIXED` through
//! the cache against a buffer registered once and against registering
//! around every I/O.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;

use io_uring::{opcode, types};
use mmun_secondary::rcache::{Callbacks, Rcache, RcacheConfig};
use mmun_uring::{Process, Ring, UringCache, UringConfig, UringError};

use crate::measure::{Variant, interleaved};
use crate::row::{Row, Section, Skipped, Target};

const BUF: usize = 16 * 4096;
const IO: usize = 4096;
const HIT_BATCH: u32 = 1000;
const HITS: &str = "registration cache on this process";
const READS: &str = "io_uring 4 KiB READ_FIXED";

/// UCX's figures on the same work, when measured: hit and miss medians.
#[derive(Debug, Clone, Copy)]
pub struct UcxCache {
    /// `ucs_rcache_get` + `put` of a registered buffer.
    pub hit_ns: f64,
    /// The same of a buffer whose registration an unmap invalidated.
    pub miss_ns: f64,
}

/// A private, populated, locked 16-page buffer (locked: this machine's
/// idle-memory reclaim must not page it out between rounds).
fn buffer() -> Result<u64, String> {
    // SAFETY: a fresh anonymous mapping of our own, kept for the run.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            BUF,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(format!("mmap: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: our own mapping; failure only means it may be reclaimed.
    unsafe { libc::mlock(p, BUF) };
    Ok(p as u64)
}

/// Unmaps and maps `at` again (through libc: the cache's notifier drops
/// its registration), populated.
fn remap(at: u64) {
    // SAFETY: our own buffer, unmapped and mapped again at the same place.
    unsafe {
        libc::munmap(at as *mut libc::c_void, BUF);
        let p = libc::mmap(
            at as *mut libc::c_void,
            BUF,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_POPULATE,
            -1,
            0,
        );
        assert_eq!(p as u64, at, "mmap(MAP_FIXED) of the bench buffer");
    }
}

/// Hit and miss of the generic cache with a do-nothing registrar, beside
/// UCX's `ucs_rcache` (whose `mem_reg` does nothing either).
pub fn hits(rounds: usize, ucx: Option<UcxCache>) -> Section {
    let process = match Process::current() {
        Ok(p) => p,
        Err(e) => return skipped(HITS, e.to_string()),
    };
    let registrar = Callbacks::new(
        |addr: u64, _len: u64| Ok::<u64, UringError>(addr),
        |_: &u64| {},
    );
    let cache = Rcache::with_backend(process, registrar, RcacheConfig::default());
    let (Ok(hot), Ok(cold)) = (buffer(), buffer()) else {
        return skipped(HITS, "no memory for the bench buffers".into());
    };
    if let Err(e) = cache.get(hot, BUF as u64) {
        return skipped(HITS, format!("the first get failed: {e}"));
    }
    let (mut s_hit, mut r_hit) = (|| {}, || drop(cache.acquire(hot, BUF as u64).expect("hit")));
    let (mut s_miss, mut r_miss) = (
        || remap(cold),
        || drop(cache.acquire(cold, BUF as u64).expect("miss")),
    );
    let m = interleaved(
        &mut [
            Variant {
                name: "hit",
                setup: &mut s_hit,
                run: &mut r_hit,
                batch: HIT_BATCH,
            },
            Variant {
                name: "miss",
                setup: &mut s_miss,
                run: &mut r_miss,
                batch: 1,
            },
        ],
        rounds,
    );
    let ucx_ref = |f: fn(&UcxCache) -> f64| ucx.as_ref().map_or(f64::NAN, f);
    Section::Rows(vec![
        Row {
            group: HITS,
            ours: "hit: acquire + put, no-op registrar".into(),
            ours_ns: m[0],
            reference: "ucs_rcache hit".into(),
            reference_ns: ucx_ref(|u| u.hit_ns),
            target: Target::NsAtMost(20.0),
        },
        Row {
            group: HITS,
            ours: "miss: acquire + put, no-op registrar".into(),
            ours_ns: m[1],
            reference: "ucs_rcache miss".into(),
            reference_ns: ucx_ref(|u| u.miss_ns),
            target: Target::None,
        },
    ])
}

fn skipped(group: &'static str, reason: String) -> Section {
    Section::Skipped(Skipped { group, reason })
}

/// The three ways to read 4 KiB into one buffer, and the io_uring cache's
/// hit paths.
struct Reads {
    cache: UringCache,
    pre: Ring,
    per_io: Ring,
    file: File,
    buf: u64,
}

impl Reads {
    fn new() -> Result<Reads, String> {
        let cache = UringCache::new(UringConfig::default()).map_err(|e| e.to_string())?;
        let path = std::env::temp_dir().join(format!("mmun-bench-read-{}", std::process::id()));
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let _ = std::fs::remove_file(&path);
        file.write_all(&vec![7u8; 1 << 20])
            .map_err(|e| e.to_string())?;
        let buf = buffer()?;
        let pre = Ring::new(64).map_err(|e| e.to_string())?;
        let iov = libc::iovec {
            iov_base: buf as *mut libc::c_void,
            iov_len: IO,
        };
        // SAFETY: the buffer stays mapped (and locked) for the run.
        unsafe { pre.uring().submitter().register_buffers(&[iov]) }.map_err(|e| e.to_string())?;
        let per_io = Ring::new(64).map_err(|e| e.to_string())?;
        per_io
            .uring()
            .submitter()
            .register_buffers_sparse(1)
            .map_err(|e| e.to_string())?;
        Ok(Reads {
            cache,
            pre,
            per_io,
            file,
            buf,
        })
    }

    fn read(&self, ring: &Ring, index: u16) {
        let entry = opcode::ReadFixed::new(
            types::Fd(self.file.as_raw_fd()),
            self.buf as *mut u8,
            IO as u32,
            index,
        )
        .build();
        // SAFETY: the buffer is registered at `index` on `ring` for the call.
        let n = unsafe { ring.run(&entry) }.expect("io_uring_enter");
        assert_eq!(n, IO as i32, "a whole 4 KiB read");
    }

    fn through_cache(&self) {
        self.cache
            .with_fixed(self.buf, IO as u64, |in_use| {
                self.read(self.cache.ring(), in_use.registration().index());
            })
            .expect("with_fixed");
    }

    fn register_per_io(&self) {
        let submitter = self.per_io.uring().submitter();
        let fill = [libc::iovec {
            iov_base: self.buf as *mut libc::c_void,
            iov_len: IO,
        }];
        let empty = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }];
        // SAFETY: the buffer stays mapped; the slot is emptied after the I/O.
        unsafe { submitter.register_buffers_update(0, &fill, None) }.expect("register");
        self.read(&self.per_io, 0);
        // SAFETY: an empty iovec clears the slot.
        unsafe { submitter.register_buffers_update(0, &empty, None) }.expect("unregister");
    }
}

/// The io_uring cache's hits and the three ways of reading.
pub fn reads(rounds: usize) -> Vec<Section> {
    let reads = match Reads::new() {
        Ok(r) => r,
        Err(e) => return vec![skipped(READS, e)],
    };
    reads.through_cache(); // the first use registers
    let (mut s1, mut r1) = (
        || {},
        || {
            reads
                .cache
                .with_fixed(reads.buf, IO as u64, |u| {
                    std::hint::black_box(u.registration().index())
                })
                .expect("hit");
        },
    );
    let (mut s2, mut r2) = (
        || {},
        || drop(reads.cache.acquire(reads.buf, IO as u64).expect("hit")),
    );
    let hits = interleaved(
        &mut [
            Variant {
                name: "with_fixed",
                setup: &mut s1,
                run: &mut r1,
                batch: HIT_BATCH,
            },
            Variant {
                name: "acquire",
                setup: &mut s2,
                run: &mut r2,
                batch: HIT_BATCH,
            },
        ],
        rounds,
    );
    let (mut n1, mut pre) = (|| {}, || reads.read(&reads.pre, 0));
    let (mut n2, mut cached) = (|| {}, || reads.through_cache());
    let (mut n3, mut per_io) = (|| {}, || reads.register_per_io());
    let io = interleaved(
        &mut [
            Variant {
                name: "pre",
                setup: &mut n1,
                run: &mut pre,
                batch: 1,
            },
            Variant {
                name: "cached",
                setup: &mut n2,
                run: &mut cached,
                batch: 1,
            },
            Variant {
                name: "per_io",
                setup: &mut n3,
                run: &mut per_io,
                batch: 1,
            },
        ],
        rounds,
    );
    let hit = |ours: &str, ns: f64| Row {
        group: HITS,
        ours: ours.into(),
        ours_ns: ns,
        reference: String::new(),
        reference_ns: f64::NAN,
        target: Target::NsAtMost(20.0),
    };
    let read = |reference: &str, reference_ns: f64, target: Target| Row {
        group: READS,
        ours: "through the cache (hit, use, I/O)".into(),
        ours_ns: io[1],
        reference: reference.into(),
        reference_ns,
        target,
    };
    vec![
        Section::Rows(vec![
            hit("io_uring slots hit: with_fixed (the I/O path)", hits[0]),
            hit("io_uring slots hit: acquire + put", hits[1]),
        ]),
        Section::Rows(vec![
            read("buffer registered once", io[0], Target::RatioAtMost(1.05)),
            read("registering around each I/O", io[2], Target::Faster),
        ]),
    ]
}
