//! The hit path through the C API against the same through the Rust API,
//! on the calling process: `read_begin` + `read_retry` of an interval
//! subscription no invalidation disturbs, and a registration-cache hit
//! (`mmun_rcache_get` + `mmun_rcache_put` against `Rcache::get` + `enter`
//! + drop, both with user callbacks as the registrar).
//!
//! The C side calls the exported `extern "C"` entry points (handle lookup,
//! `catch_unwind` guard, the self-deadlock check) as a C program linked
//! with `libmmun.a` would, minus the PLT jump a `libmmun.so` caller adds.
//!
//! `cargo bench -p mmun-capi --bench hit_path`; compare the medians.

use std::ffi::{c_int, c_void};
use std::hint::black_box;

use criterion::Criterion;
use mmun::interval::{
    MmunInterval, mmun_interval_insert, mmun_interval_read_begin, mmun_interval_read_retry,
    mmun_interval_remove, mmun_interval_set_seq,
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
    group.bench_function("rust rcache get+enter+drop", |b| {
        b.iter(|| {
            let handle = rust.get(black_box(addr), 64).unwrap();
            let in_use = handle.enter().unwrap();
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
    assert_eq!(mmun_interval_remove(handle), 0);
    rust.remove();

    rcache_hits(&mut group);
    group.finish();
    c.final_summary();
}
