//! The hit path through the C API against the same through the Rust API,
//! on the calling process: `read_begin` + `read_retry` of an interval
//! subscription no invalidation disturbs.
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
use mmun_core::{IntervalNotifier, IntervalNotifierOps, IntervalSub, Range, Seq};

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
    group.finish();
    assert_eq!(mmun_interval_remove(handle), 0);
    rust.remove();
    c.final_summary();
}
