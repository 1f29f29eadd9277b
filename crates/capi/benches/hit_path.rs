//! The hit path through the C API against the same through the Rust API,
//! on the calling process: `read_begin` + `read_retry` of an interval
//! subscription no invalidation disturbs, and a registration-cache hit
//! (`mmun_rcache_get` + `mmun_rcache_put` against `Rcache::acquire` + drop,
//! both with user callbacks as the registrar).
//!
//! The C side calls the exported `extern "C"` entry points (handle lookup,
//! `catch_unwind` guard, the self-deadlock check) as a C program linked
//! with `libmmun.a` would, minus the PLT jump a `libmmun.so` caller adds.
//!
//! The header's inline `read_begin` + `read_retry` are C by nature: that
//! row compiles `c/inline_loop.c` with the system's `cc` at run time and
//! times its loop against the same loop in Rust.
//!
//! `cargo bench -p mmun-capi --bench hit_path`; compare the medians.

use std::ffi::{c_int, c_void};
use std::hint::black_box;

use criterion::Criterion;
use mmun::interval::{
    MmunInterval, MmunIntervalSeq, mmun_interval_insert, mmun_interval_read_begin,
    mmun_interval_read_retry, mmun_interval_remove, mmun_interval_seq_get, mmun_interval_set_seq,
};
use mmun::range::MmunRange;
use mmun::rcache::{
    MmunRcache, mmun_rcache_create, mmun_rcache_destroy, mmun_rcache_get, mmun_rcache_put,
    mmun_region_memh,
};
use mmun_core::{IntervalNotifier, IntervalNotifierOps, IntervalSub, Range, Seq};
use mmun_secondary::rcache::{Callbacks, Rcache, RcacheConfig};

const LEN: u64 = 1 << 20;
/// A range nothing maps: no change ever reaches the subscriptions.
const START: u64 = 0x7e00_0000_0000;

struct Mirror;
impl IntervalNotifierOps for Mirror {
    fn invalidate(&self, sub: &IntervalSub, _range: &Range<'_>, cur_seq: Seq) -> bool {
        sub.set_seq(cur_seq);
        true
    }
}

extern "C" fn c_mirror(
    sub: *mut MmunInterval,
    _range: *const MmunRange,
    cur_seq: u64,
    _arg: *mut c_void,
) -> c_int {
    c_int::from(mmun_interval_set_seq(sub, cur_seq) == 0)
}

extern "C" fn mem_reg(_: *mut c_void, addr: u64, _: u64, memh: *mut u64) -> c_int {
    // SAFETY: the cache passes writable storage.
    unsafe { *memh = addr };
    0
}

extern "C" fn mem_dereg(_: *mut c_void, _: u64, _: u64, _: u64) {}

fn rcache_hits(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    let buf = vec![0u8; 1 << 16];
    let addr = buf.as_ptr() as u64 + 4096;

    let process = mmun_uring::Process::current().unwrap();
    let registrar = Callbacks::new(
        |addr: u64, _len: u64| -> Result<u64, mmun_uring::UringError> { Ok(addr) },
        |_: &u64| {},
    );
    let rust = Rcache::with_backend(process, registrar, RcacheConfig::default());
    drop(rust.get(addr, 64).unwrap());
    group.bench_function("rust rcache acquire+drop", |b| {
        b.iter(|| {
            let in_use = rust.acquire(black_box(addr), 64).unwrap();
            black_box(*in_use.registration())
        })
    });

    let mut cache: *mut MmunRcache = std::ptr::null_mut();
    let null = std::ptr::null_mut();
    // SAFETY: `cache` is writable storage for the handle.
    let created = unsafe {
        mmun_rcache_create(
            Some(mem_reg),
            Some(mem_dereg),
            null,
            u64::MAX,
            u64::MAX,
            &mut cache,
        )
    };
    assert_eq!(created, 0);
    group.bench_function("c rcache get+put", |b| {
        b.iter(|| {
            let mut region = std::ptr::null_mut();
            // SAFETY: `region` is writable storage for the region pointer.
            let got =
                unsafe { mmun_rcache_get(black_box(cache), black_box(addr), 64, &mut region) };
            black_box(got);
            // SAFETY: a region `get` just returned, of a live cache.
            black_box(unsafe { mmun_region_memh(region) });
            // SAFETY: as above.
            black_box(unsafe { mmun_rcache_put(region) })
        })
    });
    assert_eq!(mmun_rcache_destroy(cache), 0);
    drop(rust);
    drop(buf);
}

/// `mmun_bench_inline_loop` of `c/inline_loop.c`: `n` rounds of the
/// header's inline `read_begin` + `read_retry`.
///
/// # Safety
///
/// The words must be those `mmun_interval_seq_get` filled for an interval
/// still inserted.
type InlineLoop = unsafe extern "C" fn(*const MmunIntervalSeq, u64) -> u64;

/// Compiles `c/inline_loop.c` with `cc -O2` against `include/mmun.h` and
/// loads it; `None` (and why, on stderr) without a C compiler.
fn inline_loop() -> Option<InlineLoop> {
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::env::temp_dir().join(format!("mmun-inline-loop-{}.so", std::process::id()));
    let built = std::process::Command::new("cc")
        .args(["-O2", "-fPIC", "-shared", "-o"])
        .arg(&out)
        .arg("-I")
        .arg(here.join("include"))
        .arg(here.join("benches/c/inline_loop.c"))
        .status();
    if !matches!(built, Ok(s) if s.success()) {
        eprintln!("SKIPPED c inline read_begin+read_retry: cc failed ({built:?})");
        return None;
    }
    let path = std::ffi::CString::new(out.to_str()?).ok()?;
    // SAFETY: a library we just built, with no initialisers; lazy binding
    // leaves the never-taken slow path's symbol unresolved.
    let lib = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL) };
    let _ = std::fs::remove_file(&out);
    if lib.is_null() {
        eprintln!("SKIPPED c inline read_begin+read_retry: dlopen failed");
        return None;
    }
    // SAFETY: a symbol of that library, by its C name.
    let sym = unsafe { libc::dlsym(lib, c"mmun_bench_inline_loop".as_ptr()) };
    // SAFETY: the symbol is the function of `InlineLoop`'s signature.
    (!sym.is_null()).then(|| unsafe { std::mem::transmute::<*mut c_void, InlineLoop>(sym) })
}

fn main() {
    assert_eq!(mmun::mmun_install(), 0, "hooks installed");
    let mut c = Criterion::default().configure_from_args();
    let mut group = c.benchmark_group("hit_path");

    let rust = IntervalNotifier::insert(mmun_linux::process_mm(), START, LEN, Mirror).unwrap();
    group.bench_function("rust read_begin+read_retry", |b| {
        b.iter(|| {
            let sub = black_box(&rust);
            let seq = sub.read_begin();
            black_box(sub.read_retry(seq))
        })
    });
    // The same loop shape as the C one below: criterion's per-iteration
    // overhead is not part of either.
    group.bench_function("rust read_begin+read_retry (loop)", |b| {
        b.iter_custom(|n| {
            let sub = black_box(&rust);
            let t = std::time::Instant::now();
            let mut retries = 0u64;
            for _ in 0..n {
                let seq = sub.read_begin();
                retries += u64::from(sub.read_retry(seq));
            }
            black_box(retries);
            t.elapsed()
        })
    });

    let mut handle: *mut MmunInterval = std::ptr::null_mut();
    // SAFETY: `handle` is writable storage for the handle.
    let inserted = unsafe {
        mmun_interval_insert(
            START,
            LEN,
            Some(c_mirror),
            std::ptr::null_mut(),
            &mut handle,
        )
    };
    assert_eq!(inserted, 0);
    group.bench_function("c read_begin+read_retry", |b| {
        b.iter(|| {
            let sub = black_box(handle);
            let mut seq = 0;
            // SAFETY: `seq` is writable storage for a u64.
            let begun = unsafe { mmun_interval_read_begin(sub, &mut seq) };
            black_box(begun);
            black_box(mmun_interval_read_retry(sub, seq))
        })
    });
    if let Some(c_loop) = inline_loop() {
        let mut words = MmunIntervalSeq {
            interval: std::ptr::null(),
            invalidating: std::ptr::null(),
            sub: std::ptr::null_mut(),
        };
        // SAFETY: `words` is writable storage for the struct.
        assert_eq!(unsafe { mmun_interval_seq_get(handle, &mut words) }, 0);
        group.bench_function("c inline read_begin+read_retry (loop)", |b| {
            b.iter_custom(|n| {
                let t = std::time::Instant::now();
                // SAFETY: the words of a live interval, read by the header's
                // inline functions.
                black_box(unsafe { c_loop(&words, n) });
                t.elapsed()
            })
        });
    }
    assert_eq!(mmun_interval_remove(handle), 0);
    rust.remove();

    rcache_hits(&mut group);
    group.finish();
    c.final_summary();
}
