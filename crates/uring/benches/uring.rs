//! The io_uring registration cache on the real process:
//!
//! * `cache_hit/get_put`: `get` of a registered 4 KiB buffer and dropping
//!   the handle (UCX's `ucs_rcache_get` + `put`, 38-42 ns on this kind of
//!   machine); `cache_hit/rcache_get_put`: the same through the generic
//!   cache alone, without the fork check; `cache_hit/with_fixed`: the hit
//!   path the I/O takes (this thread's snapshot revalidated with one load,
//!   the use count taken and dropped);
//! * `read_fixed_4k/*`: one 4 KiB `READ_FIXED` of a file in the page cache,
//!   submitted and reaped on one ring, into a buffer that is
//!   `preregistered` (a fixed buffer registered once, the floor),
//!   `through_cache` (`with_fixed`: hit, use, I/O, end of use) or `register_per_io`
//!   (`IORING_REGISTER_BUFFERS_UPDATE` in, I/O, update out: what a program
//!   without a cache does).
//!
//! Then the same three interleaved (one of each per round, 20,000 rounds)
//! with their medians and ratios printed, which keeps the machine's drift
//! out of the ratios.
//!
//! ```text
//! cargo bench -p mmun-uring --bench uring
//! ```
//!
//! Skips (prints why) where io_uring is disabled or not permitted.

use std::fs::File;
use std::hint::black_box;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use criterion::Criterion;
use io_uring::{opcode, types};
use mmun_uring::{Ring, UringCache, UringConfig};

const LEN: usize = 4096;

/// The three ways of reading 4 KiB into one buffer.
struct Bench {
    cache: UringCache,
    /// A ring with `buf` registered once as fixed buffer 0.
    pre: Ring,
    /// A ring with a one-slot sparse table, filled and emptied per I/O.
    per_io: Ring,
    file: File,
    buf: *mut u8,
}

impl Bench {
    fn new() -> Result<Bench, mmun_uring::UringError> {
        let cache = UringCache::new(UringConfig::default())?;
        let path = std::env::temp_dir().join(format!("mmun-uring-bench-{}", std::process::id()));
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        std::fs::remove_file(&path)?;
        file.write_all(&vec![7u8; 1 << 20])?;
        // A page-aligned anonymous buffer, locked so that idle-memory
        // reclaim cannot page it out between samples.
        // SAFETY: a fresh anonymous mapping, leaked for the bench's life.
        let buf = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        assert_ne!(buf, libc::MAP_FAILED);
        // SAFETY: our own mapping.
        unsafe { libc::mlock(buf, LEN) };
        let iov = libc::iovec {
            iov_base: buf,
            iov_len: LEN,
        };
        let pre = Ring::new(64)?;
        // SAFETY: `buf` stays mapped for the bench's life.
        unsafe { pre.uring().submitter().register_buffers(&[iov])? };
        let per_io = Ring::new(64)?;
        per_io.uring().submitter().register_buffers_sparse(1)?;
        Ok(Bench {
            cache,
            pre,
            per_io,
            file,
            buf: buf.cast(),
        })
    }

    fn read(&self, ring: &Ring, index: u16) {
        let entry = opcode::ReadFixed::new(
            types::Fd(self.file.as_raw_fd()),
            self.buf,
            LEN as u32,
            index,
        )
        .build();
        // SAFETY: `buf` is registered at `index` on `ring` for the call.
        let n = unsafe { ring.run(&entry) }.expect("io_uring_enter");
        assert_eq!(n, LEN as i32);
    }

    fn preregistered(&self) {
        self.read(&self.pre, 0);
    }

    fn through_cache(&self) {
        self.cache
            .with_fixed(self.buf as u64, LEN as u64, |in_use| {
                self.read(self.cache.ring(), in_use.registration().index());
            })
            .expect("with_fixed");
    }

    fn register_per_io(&self) {
        let submitter = self.per_io.uring().submitter();
        let fill = [libc::iovec {
            iov_base: self.buf.cast(),
            iov_len: LEN,
        }];
        let empty = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }];
        // SAFETY: `buf` stays mapped; the slot is emptied after the I/O.
        unsafe { submitter.register_buffers_update(0, &fill, None) }.expect("register");
        self.read(&self.per_io, 0);
        // SAFETY: an empty iovec clears the slot.
        unsafe { submitter.register_buffers_update(0, &empty, None) }.expect("unregister");
    }
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

/// Nanoseconds of one call of `f`.
fn timed(f: impl Fn()) -> u64 {
    let t = Instant::now();
    f();
    t.elapsed().as_nanos() as u64
}

/// The three I/O ways alternating, medians and ratios printed.
fn interleaved(bench: &Bench) {
    const ROUNDS: usize = 20_000;
    let (mut pre, mut cached, mut per_io) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        pre.push(timed(|| bench.preregistered()));
        cached.push(timed(|| bench.through_cache()));
        per_io.push(timed(|| bench.register_per_io()));
    }
    let (pre, cached, per_io) = (median(pre), median(cached), median(per_io));
    println!("interleaved 4 KiB READ_FIXED, medians of {ROUNDS} rounds:");
    println!("  preregistered   {pre:>7} ns");
    println!(
        "  through_cache   {cached:>7} ns  ({:.3}x preregistered)",
        cached as f64 / pre as f64
    );
    println!(
        "  register_per_io {per_io:>7} ns  ({:.3}x preregistered, {:.2}x through_cache)",
        per_io as f64 / pre as f64,
        per_io as f64 / cached as f64
    );
}

/// Median nanoseconds of one `f`, over 2,000 batches of 1,000.
fn batch_median(f: impl Fn()) -> f64 {
    let batches: Vec<u64> = (0..2_000)
        .map(|_| {
            timed(|| {
                for _ in 0..1_000 {
                    f();
                }
            })
        })
        .collect();
    median(batches) as f64 / 1_000.0
}

fn main() {
    let bench = match Bench::new() {
        Ok(bench) => bench,
        Err(err) => {
            println!("skipped: {err}");
            return;
        }
    };
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
        .configure_from_args();
    bench.through_cache();
    let registrations = bench.cache.stats().registrations;
    c.bench_function("cache_hit/get_put", |b| {
        b.iter(|| {
            let buf = bench.cache.get(black_box(bench.buf as u64), LEN as u64);
            black_box(&buf.expect("hit"));
        });
    });
    c.bench_function("cache_hit/with_fixed", |b| {
        b.iter(|| {
            let index = bench
                .cache
                .with_fixed(black_box(bench.buf as u64), LEN as u64, |u| {
                    u.registration().index()
                });
            black_box(index.expect("hit"));
        });
    });
    c.bench_function("cache_hit/rcache_get_put", |b| {
        b.iter(|| {
            let buf = bench
                .cache
                .rcache()
                .get(black_box(bench.buf as u64), LEN as u64);
            black_box(&buf.expect("hit"));
        });
    });
    let mut group = c.benchmark_group("read_fixed_4k");
    group.bench_function("preregistered", |b| b.iter(|| bench.preregistered()));
    group.bench_function("through_cache", |b| b.iter(|| bench.through_cache()));
    group.bench_function("register_per_io", |b| b.iter(|| bench.register_per_io()));
    group.finish();
    assert_eq!(
        bench.cache.stats().registrations,
        registrations,
        "every get hit"
    );
    let get_put = batch_median(|| {
        let buf = bench.cache.get(black_box(bench.buf as u64), LEN as u64);
        black_box(&buf.expect("hit"));
    });
    let with_fixed = batch_median(|| {
        let index = bench
            .cache
            .with_fixed(black_box(bench.buf as u64), LEN as u64, |u| {
                u.registration().index()
            });
        black_box(index.expect("hit"));
    });
    println!(
        "cache hit, medians of 2,000 batches of 1,000: get + put {get_put:.1} ns, with_fixed {with_fixed:.1} ns"
    );
    interleaved(&bench);
    c.final_summary();
}
