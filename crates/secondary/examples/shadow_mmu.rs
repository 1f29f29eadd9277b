//! A KVM-like shadow MMU mirroring a software-MMU address space: what it
//! sees as the primary faults, changes, ages and finally exits, then a short
//! concurrent run whose every use the coherence oracle checks.
//!
//! Run with `cargo run -p mmun-secondary --example shadow_mmu`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use mmun_script::{Advice, Prot};
use mmun_secondary::shadow_mmu::ShadowMmu;
use mmun_secondary::{Access, Coherence, Secondary};
use mmun_softmmu::layout::PAGE_SIZE;
use mmun_softmmu::{AddressSpace, MapRequest, Memory};

const PAGES: u64 = 16;

fn main() {
    let space = Arc::new(AddressSpace::new(Arc::new(Memory::new())));
    let oracle = Arc::new(Coherence::new());
    let shadow = ShadowMmu::new(Arc::clone(&space), Arc::clone(&oracle), None)
        .expect("the address space is live");
    let base = space
        .mmap(MapRequest {
            len: PAGES * PAGE_SIZE,
            prot: Prot::RW,
            ..MapRequest::default()
        })
        .expect("mmap");

    step(&shadow, "fault every page for writing", || {
        for page in 0..PAGES {
            shadow.fault(base + page * PAGE_SIZE, true).expect("fault");
        }
    });
    step(&shadow, "age: primary and shadow were young", || {
        println!(
            "    age -> {} young",
            space.age(base, base + PAGES * PAGE_SIZE)
        );
        println!(
            "    age -> {} young",
            space.age(base, base + PAGES * PAGE_SIZE)
        );
    });
    step(&shadow, "the shadow alone uses page 0", || {
        assert_eq!(shadow.access(base, false), Access::Hit);
        println!("    test_young(page 0) -> {}", space.test_young(base));
    });
    step(&shadow, "munmap pages 0..4", || {
        space.munmap(base, 4 * PAGE_SIZE).expect("munmap");
    });
    step(&shadow, "mprotect pages 4..8 read-only", || {
        let read_only = Prot {
            read: true,
            write: false,
            exec: false,
        };
        space
            .mprotect(base + 4 * PAGE_SIZE, 4 * PAGE_SIZE, read_only)
            .expect("mprotect");
        println!(
            "    write fault -> {:?}",
            shadow.fault(base + 4 * PAGE_SIZE, true)
        );
        println!(
            "    read fault  -> {:?}",
            shadow.fault(base + 4 * PAGE_SIZE, false)
        );
    });
    step(&shadow, "MADV_DONTNEED pages 8..10, migrate 10..12", || {
        space
            .madvise(base + 8 * PAGE_SIZE, 2 * PAGE_SIZE, Advice::DontNeed)
            .expect("madvise");
        space.migrate(base + 10 * PAGE_SIZE, base + 12 * PAGE_SIZE);
    });
    step(
        &shadow,
        "KSM merges pages 12..16, the shadow refaults them",
        || {
            space.ksm_merge(base + 12 * PAGE_SIZE, base + 16 * PAGE_SIZE);
            for page in 12..PAGES {
                shadow.fault(base + page * PAGE_SIZE, false).expect("fault");
            }
        },
    );
    concurrent(&space, &shadow, base);
    step(&shadow, "the process exits", || space.exit());
    println!(
        "oracle: {} checks here, {} violations",
        shadow.stats().checks,
        oracle.violation_count()
    );
}

/// Runs one step and prints what the shadow saw during it.
fn step(shadow: &ShadowMmu, what: &str, f: impl FnOnce()) {
    println!("{what}:");
    let before = shadow.stats();
    f();
    let after = shadow.stats();
    let c = (before.counters, after.counters);
    println!(
        "    +{} faults, +{} retries, +{} hits, +{} misses, +{} invalidations \
         (+{} zapped), +{} aging calls (+{} young), +{} change_pte; \
         {} entries, seq {}{}",
        c.1.faults - c.0.faults,
        c.1.retries - c.0.retries,
        c.1.hits - c.0.hits,
        c.1.misses - c.0.misses,
        c.1.invalidations - c.0.invalidations,
        after.zapped - before.zapped,
        after.aging - before.aging,
        after.young - before.young,
        after.change_pte - before.change_pte,
        after.entries,
        after.seq,
        if after.released { ", released" } else { "" },
    );
}

/// Two vCPU threads fault and use pages while the main thread keeps
/// migrating and zapping them; collisions show up as retries.
fn concurrent(space: &AddressSpace, shadow: &ShadowMmu, base: u64) {
    step(shadow, "two vCPUs against 2000 migrations and zaps", || {
        let stop = AtomicBool::new(false);
        thread::scope(|scope| {
            for cpu in 0..2u64 {
                let stop = &stop;
                scope.spawn(move || {
                    let mut n = cpu;
                    while !stop.load(Ordering::Relaxed) {
                        let va = base + (8 + n % 4) * PAGE_SIZE;
                        if shadow.access(va, true) == Access::Miss {
                            let _ = shadow.fault(va, true);
                        }
                        n += 1;
                    }
                });
            }
            for round in 0..2000u64 {
                let va = base + (8 + round % 4) * PAGE_SIZE;
                if round % 2 == 0 {
                    space.migrate(va, va + PAGE_SIZE);
                } else {
                    let _ = space.madvise(va, PAGE_SIZE, Advice::DontNeed);
                }
                thread::yield_now();
            }
            stop.store(true, Ordering::Relaxed);
        });
    });
}
