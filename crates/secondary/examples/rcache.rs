//! A registration cache over a simulated address space, step by step.
//!
//! ```text
//! cargo run -p mmun-secondary --example rcache
//! ```
//!
//! An RDMA-style user registers buffers (`get`), uses them (each use
//! checked against the primary by the coherence oracle), and the address
//! space changes under it: the interval notifiers invalidate exactly the
//! registrations that overlap each change, the pins go with them, and the
//! notifiers are removed later (deferred). Then the same steps with a
//! cache that keeps stale registrations, which the oracle catches.

use std::sync::Arc;

use mmun_secondary::rcache::{RcacheConfig, RegistrationCache};
use mmun_secondary::{Access, Bug, Coherence};
use mmun_softmmu::layout::PAGE_SIZE;
use mmun_softmmu::{AddressSpace, MapRequest, Memory};

const BUF: u64 = 0x4000_0000;

fn main() {
    let space = Arc::new(AddressSpace::new(Arc::new(Memory::new())));
    let coherence = Arc::new(Coherence::new());
    let config = RcacheConfig {
        max_regions: 2,
        ..RcacheConfig::default()
    };
    let cache = RegistrationCache::new(Arc::clone(&space), Arc::clone(&coherence), config);
    map(&space, BUF, 16);

    let first = cache.get(BUF + 0x10, 3 * PAGE_SIZE).expect("mapped");
    let pfn = first.translation(BUF).expect("pinned").pfn;
    let refs = space.memory().frame(pfn).refcount;
    println!(
        "get [{:#x}, +0x3000)  miss: registered [{:#x}, {:#x}), frame {pfn:#x} has {refs} refs (map + pin)",
        BUF + 0x10,
        first.start(),
        first.end()
    );
    let again = cache.get(BUF + PAGE_SIZE, PAGE_SIZE).expect("mapped");
    println!(
        "get [{:#x}, +0x1000) hit: same registration: {}",
        BUF + PAGE_SIZE,
        again.id() == first.id()
    );
    let used = [
        first.access(BUF, true),
        first.access(BUF + 2 * PAGE_SIZE, false),
    ];
    println!(
        "use two pages        {used:?}, oracle checks: {}",
        coherence.checks()
    );

    let second = cache.get(BUF + 8 * PAGE_SIZE, PAGE_SIZE).expect("mapped");
    space.munmap(BUF + PAGE_SIZE, PAGE_SIZE).expect("munmap");
    println!(
        "munmap {:#x}    first valid: {}, pinned: {}, use: {:?}; second valid: {}",
        BUF + PAGE_SIZE,
        first.is_valid(),
        first.is_pinned(),
        first.access(BUF, false),
        second.is_valid()
    );
    println!(
        "                     frame {pfn:#x} has {} refs; {} notifier(s), {} pending removal",
        space.memory().frame(pfn).refcount,
        cache.notifiers(),
        cache.pending()
    );
    drop((first, again, second));
    println!(
        "reap                 removed {}, {} notifier(s) left",
        cache.reap(),
        cache.notifiers()
    );

    for page in [10, 12, 14] {
        cache
            .get(BUF + page * PAGE_SIZE, PAGE_SIZE)
            .expect("mapped");
    }
    let stats = cache.stats();
    println!(
        "3 more registrations, bound 2: {} live, {} evicted so far",
        cache.len(),
        stats.evictions
    );
    println!(
        "correct cache: {} checks, {} violations\n",
        coherence.checks(),
        coherence.violation_count()
    );
    drop(cache);

    stale_registrations();
}

/// The same munmap with [`Bug::KeepStaleRegistration`]: the callback bumps
/// the seq but leaves the registration live and pinned.
fn stale_registrations() {
    let space = Arc::new(AddressSpace::new(Arc::new(Memory::new())));
    let coherence = Arc::new(Coherence::new());
    let config = RcacheConfig {
        bug: Some(Bug::KeepStaleRegistration),
        ..RcacheConfig::default()
    };
    let cache = RegistrationCache::new(Arc::clone(&space), Arc::clone(&coherence), config);
    map(&space, BUF, 4);
    let handle = cache.get(BUF, 4 * PAGE_SIZE).expect("mapped");
    space.munmap(BUF, 4 * PAGE_SIZE).expect("munmap");
    map(&space, BUF, 4);
    let hit = cache.get(BUF, PAGE_SIZE).expect("still cached");
    let outcome = hit.access(BUF, true);
    println!(
        "with {}: munmap + mmap, lookup hits the old registration ({}), use {outcome:?}",
        Bug::KeepStaleRegistration,
        hit.id() == handle.id()
    );
    for v in coherence.violations() {
        println!("  oracle: {v}");
    }
    assert_eq!(outcome, Access::Hit);
    assert!(coherence.violation_count() > 0, "the oracle must catch it");
}

fn map(space: &AddressSpace, addr: u64, pages: u64) {
    let mut req = MapRequest {
        addr,
        len: pages * PAGE_SIZE,
        fixed: true,
        populate: true,
        ..MapRequest::default()
    };
    req.prot.read = true;
    req.prot.write = true;
    space.mmap(req).expect("mmap");
}
