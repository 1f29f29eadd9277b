//! The registration cache's hit path: `get` (and dropping the handle, UCX's
//! `put`) on a warm cache of 1, 100 and 10 000 single-page registrations.
//!
//! * `get_hit/same/N`: the same registration every time (UCX's measured
//!   case, `ucs_rcache_get`+`put` at 38 ns on this kind of machine);
//! * `get_hit/cycle/N`: a different registration each time, round-robin
//!   over all N, so the binary search takes every path.
//!
//! ```text
//! cargo bench -p mmun-secondary --bench rcache
//! ```

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion};
use mmun_secondary::Coherence;
use mmun_secondary::rcache::{RcacheConfig, RegistrationCache};
use mmun_softmmu::layout::PAGE_SIZE;
use mmun_softmmu::{AddressSpace, MapRequest, Memory};

const BASE: u64 = 0x1000_0000;

/// A cache holding `n` live registrations, one per page, every other page
/// (so that neighbours are not merged), and their addresses.
fn warm_cache(n: u64) -> (RegistrationCache, Vec<u64>) {
    let space = Arc::new(AddressSpace::new(Arc::new(Memory::new())));
    let mut req = MapRequest {
        addr: BASE,
        len: 2 * n * PAGE_SIZE,
        fixed: true,
        populate: true,
        ..MapRequest::default()
    };
    req.prot.read = true;
    req.prot.write = true;
    space.mmap(req).expect("mmap");
    let cache = RegistrationCache::new(space, Arc::new(Coherence::new()), RcacheConfig::default());
    let addrs: Vec<u64> = (0..n).map(|i| BASE + 2 * i * PAGE_SIZE).collect();
    for &addr in &addrs {
        cache.get(addr, PAGE_SIZE).expect("register");
    }
    assert_eq!(cache.len() as u64, n);
    (cache, addrs)
}

fn bench_hits(c: &mut Criterion) {
    let mut group = c.benchmark_group("get_hit");
    for n in [1, 100, 10_000] {
        let (cache, addrs) = warm_cache(n);
        let registrations = cache.stats().registrations;
        let same = addrs[addrs.len() / 2];
        group.bench_function(BenchmarkId::new("same", n), |b| {
            b.iter(|| black_box(&cache.get(black_box(same), 64)).is_ok());
        });
        let mut i = 0;
        group.bench_function(BenchmarkId::new("cycle", n), |b| {
            b.iter(|| {
                i = if i + 1 == addrs.len() { 0 } else { i + 1 };
                black_box(&cache.get(black_box(addrs[i]), 64)).is_ok()
            });
        });
        assert_eq!(cache.stats().registrations, registrations, "every get hit");
    }
    group.finish();
}

fn main() {
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
        .configure_from_args();
    bench_hits(&mut criterion);
    criterion.final_summary();
}
