//! `tools/testing/selftests/mm/hmm-tests.c` ported onto the device mirror
//! and the software MMU (spec §4.1), plus one race test per injected bug.
//!
//! Every test ends by asking the coherence oracle, which checked each
//! device access against the primary, whether any use was stale.
//! Deviations from the C tests: frames carry no data, so "the device sees
//! the data" means "the device maps the frame the CPU wrote" and a device
//! write is visible as a new content generation of that frame; the
//! software MMU has no device-private memory, so a migration to the device
//! lands in new ordinary frames and "back to system" is a regular
//! migration.

mod mirror_common;

use mirror_common::race::{self, Racer};
use mirror_common::{B, Fixture, M2, P, R, with_watchdog};
use mmun_script::Prot;
use mmun_secondary::{Access, Bug, FaultError, Secondary};
use mmun_softmmu::MremapFlags;
use mmun_softmmu::frame::ZERO_PFN;

/// `hmm.open_close`: opening subscribes an interval, closing removes it;
/// afterwards invalidations no longer reach the device.
#[test]
fn open_close() {
    let fx = Fixture::new();
    fx.map(B, 4, Prot::RW);
    fx.mirror.mirror_range(B, 4 * P).unwrap();
    assert_eq!(fx.mirror.subscriptions(), vec![(B, B + 4 * P)]);
    fx.space.munmap(B, P).unwrap();
    assert_eq!(fx.mirror.counters().invalidations, 1);
    fx.mirror.close();
    assert!(fx.mirror.subscriptions().is_empty());
    fx.space.munmap(B + P, P).unwrap();
    assert_eq!(fx.mirror.counters().invalidations, 1, "closed");
}

/// `hmm.anon_read`: device reads of read-only anonymous memory, the first
/// two pages never written (zero page), the rest written by the CPU.
#[test]
fn anon_read() {
    let fx = Fixture::new();
    fx.map(B, 8, Prot::RW);
    fx.cpu_write(B + 2 * P, 6);
    fx.space.mprotect(B, 8 * P, R).unwrap();
    for i in 0..8 {
        let va = B + i * P;
        fx.mirror.fault(va, false).unwrap();
        let pte = fx.mirror.entry(va).unwrap();
        let expected = if i < 2 { ZERO_PFN } else { fx.cpu_pfn(va) };
        assert_eq!(pte.translation.pfn, expected, "page {i}");
        assert!(!pte.translation.writable);
        assert_eq!(fx.mirror.access(va, false), Access::Hit);
        assert_eq!(fx.mirror.access(va, true), Access::Miss, "read-only");
    }
    assert_eq!(fx.mirror.counters().retries, 0, "one fault round");
    assert_eq!(fx.mirror.fault(B, true), Err(FaultError::Unmapped));
    fx.assert_coherent();
}

/// `hmm.anon_read_prot`: after `mprotect(PROT_NONE)` the device read fails
/// and the device maps nothing.
#[test]
fn anon_read_prot() {
    let fx = Fixture::new();
    fx.map(B, 4, Prot::RW);
    fx.cpu_write(B, 4);
    fx.space.mprotect(B, 4 * P, Prot::NONE).unwrap();
    for i in 0..4 {
        assert_eq!(fx.mirror.fault(B + i * P, false), Err(FaultError::Unmapped));
        assert_eq!(fx.mirror.access(B + i * P, false), Access::Miss);
    }
    assert!(fx.mirror.entries(B, B + 4 * P).is_empty());
    fx.assert_coherent();
}

/// `hmm.anon_write`: device writes land in the frames the CPU maps, in one
/// fault round.
#[test]
fn anon_write() {
    let fx = Fixture::new();
    fx.map(B, 8, Prot::RW);
    for i in 0..8 {
        let va = B + i * P;
        fx.mirror.fault(va, true).unwrap();
        let pfn = fx.mirror.entry(va).unwrap().translation.pfn;
        let before = fx.memory.frame(pfn).generation;
        assert_eq!(fx.mirror.access(va, true), Access::Hit);
        assert_eq!(fx.cpu_pfn(va), pfn, "the CPU sees the device's page");
        assert!(fx.memory.frame(pfn).generation > before, "written");
    }
    let counters = fx.mirror.counters();
    assert_eq!((counters.faults, counters.retries), (8, 0));
    fx.assert_coherent();
}

/// `hmm.anon_write_prot`: a device read maps the zero page; a device write
/// to a read-only mapping fails; after mprotect it succeeds and the zero
/// page is replaced (the invalidations zapped the zero-page entry).
#[test]
fn anon_write_prot() {
    let fx = Fixture::new();
    fx.map(B, 1, R);
    fx.mirror.fault(B, false).unwrap();
    assert_eq!(fx.mirror.entry(B).unwrap().translation.pfn, ZERO_PFN);
    assert_eq!(fx.mirror.fault(B, true), Err(FaultError::Unmapped));
    assert_eq!(fx.mirror.access(B, true), Access::Miss);
    fx.space.mprotect(B, P, Prot::RW).unwrap();
    assert!(fx.mirror.entry(B).is_none(), "mprotect zapped it");
    fx.mirror.fault(B, true).unwrap();
    let pte = fx.mirror.entry(B).unwrap();
    assert_ne!(pte.translation.pfn, ZERO_PFN);
    assert!(pte.translation.writable);
    assert_eq!(fx.mirror.access(B, true), Access::Hit);
    assert!(fx.mirror.stats().zapped >= 1);
    fx.assert_coherent();
}

/// `hmm.anon_write_child`: the child's device writes private memory; the
/// child gets its own copies, the parent's pages stay as they were, and
/// the parent's device lost its now write-protected mappings at fork.
#[test]
fn anon_write_child() {
    let fx = Fixture::new();
    fx.map(B, 4, Prot::RW);
    fx.cpu_write(B, 4);
    for i in 0..4 {
        fx.mirror.fault(B + i * P, true).unwrap();
    }
    let child = std::sync::Arc::new(fx.space.fork());
    assert!(fx.mirror.entries(B, B + 4 * P).is_empty(), "fork zapped");
    let child_mirror = fx.mirror_of(&child);
    for i in 0..4 {
        let va = B + i * P;
        let parent_pfn = fx.cpu_pfn(va);
        let parent_generation = fx.memory.frame(parent_pfn).generation;
        child_mirror.fault(va, true).unwrap();
        assert_eq!(child_mirror.access(va, true), Access::Hit);
        let child_pfn = child_mirror.entry(va).unwrap().translation.pfn;
        assert_ne!(child_pfn, parent_pfn, "copied on write");
        assert_eq!(fx.cpu_pfn(va), parent_pfn);
        assert_eq!(fx.memory.frame(parent_pfn).generation, parent_generation);
    }
    child.exit();
    fx.assert_coherent();
}

/// `hmm.anon_write_child_shared`: with `MAP_SHARED` the child's device
/// writes the parent's pages.
#[test]
fn anon_write_child_shared() {
    let fx = Fixture::new();
    fx.map_shared(B, 4);
    fx.cpu_write(B, 4);
    let child = std::sync::Arc::new(fx.space.fork());
    let child_mirror = fx.mirror_of(&child);
    for i in 0..4 {
        let va = B + i * P;
        let pfn = fx.cpu_pfn(va);
        let before = fx.memory.frame(pfn).generation;
        child_mirror.fault(va, true).unwrap();
        assert_eq!(child_mirror.access(va, true), Access::Hit);
        assert_eq!(child_mirror.entry(va).unwrap().translation.pfn, pfn);
        assert!(fx.memory.frame(pfn).generation > before, "parent sees it");
    }
    child.exit();
    fx.assert_coherent();
}

/// `hmm.anon_write_huge`: a THP-backed 2 MiB range is mirrored as 512 base
/// pages of one huge folio, in one fault round.
#[test]
fn anon_write_huge() {
    let fx = Fixture::new();
    fx.map(B, 2 * M2 / P, Prot::RW);
    fx.space
        .madvise(B, M2, mmun_script::Advice::HugePage)
        .unwrap();
    let pages = M2 / P;
    for i in 0..pages {
        fx.mirror.fault(B + i * P, true).unwrap();
        assert_eq!(fx.mirror.access(B + i * P, true), Access::Hit);
    }
    let head = fx.mirror.entry(B).unwrap().translation.pfn;
    assert_eq!(fx.memory.frame(head).order, 9, "a huge folio backs it");
    for i in 0..pages {
        let pte = fx.mirror.entry(B + i * P).unwrap();
        assert_eq!(pte.translation.pfn, head + i);
    }
    assert_eq!(fx.mirror.counters().retries, 0);
    fx.assert_coherent();
}

/// mremap moves the pages: the device loses the old addresses and finds
/// the same frames at the new ones.
#[test]
fn mremap_moves_the_mirror() {
    let fx = Fixture::new();
    fx.map(B, 4, Prot::RW);
    let mut frames = Vec::new();
    for i in 0..4 {
        fx.mirror.fault(B + i * P, true).unwrap();
        frames.push(fx.mirror.entry(B + i * P).unwrap().translation.pfn);
    }
    let to = B + 64 * P;
    let flags = MremapFlags {
        fixed: Some(to),
        may_move: true,
        ..MremapFlags::default()
    };
    assert_eq!(fx.space.mremap(B, 4 * P, 4 * P, flags), Ok(to));
    assert!(fx.mirror.entries(B, B + 4 * P).is_empty());
    assert_eq!(fx.mirror.access(B, false), Access::Miss);
    assert_eq!(fx.mirror.fault(B, false), Err(FaultError::Unmapped));
    for (i, pfn) in (0..4).zip(frames) {
        fx.mirror.fault(to + i * P, true).unwrap();
        assert_eq!(fx.mirror.entry(to + i * P).unwrap().translation.pfn, pfn);
        assert_eq!(fx.mirror.access(to + i * P, true), Access::Hit);
    }
    fx.assert_coherent();
}

/// munmap of half a mirrored range zaps exactly that half.
#[test]
fn munmap_zaps_the_mirror() {
    let fx = Fixture::new();
    fx.map(B, 8, Prot::RW);
    for i in 0..8 {
        fx.mirror.fault(B + i * P, true).unwrap();
    }
    fx.space.munmap(B + 4 * P, 4 * P).unwrap();
    for i in 0..8 {
        let va = B + i * P;
        let expected = if i < 4 { Access::Hit } else { Access::Miss };
        assert_eq!(fx.mirror.access(va, true), expected, "page {i}");
        if i >= 4 {
            assert_eq!(fx.mirror.fault(va, false), Err(FaultError::Unmapped));
        }
    }
    fx.assert_coherent();
}

/// `hmm.anon_teardown`: device reads race a thread that unmaps half the
/// buffer; every read either succeeds on the live mapping or fails
/// cleanly, and nothing stale is ever used.
#[test]
fn anon_teardown() {
    const PAGES: u64 = 64;
    const ROUNDS: u64 = 20;
    with_watchdog(|| {
        let fx = Fixture::new();
        for round in 0..ROUNDS {
            fx.map(B, PAGES, Prot::RW);
            fx.cpu_write(B, PAGES);
            let (tx, rx) = std::sync::mpsc::channel();
            let failed = std::thread::scope(|s| {
                let space = &fx.space;
                s.spawn(move || {
                    // Unmap once the device has read `round` pages.
                    let _ = rx.recv();
                    space.munmap(B + PAGES / 2 * P, PAGES / 2 * P).unwrap();
                });
                let mut failed = 0;
                for i in 0..PAGES {
                    if i == round {
                        tx.send(()).unwrap();
                    }
                    let fault = fx.mirror.fault(B + i * P, false);
                    // The munmap may zap the page between fault and use.
                    let used = fault.map(|()| fx.mirror.access(B + i * P, false));
                    match used {
                        Ok(Access::Hit) => {}
                        Ok(Access::Miss) | Err(FaultError::Unmapped) => {
                            assert!(i >= PAGES / 2, "page {i} is never unmapped");
                            failed += 1;
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
                failed
            });
            assert!(failed <= PAGES / 2, "only the unmapped half fails");
            let gone = fx.mirror.entries(B + PAGES / 2 * P, B + PAGES * P);
            assert!(gone.is_empty(), "the unmapped half is zapped: {gone:?}");
            fx.space.munmap(B, PAGES * P).unwrap();
        }
        assert!(fx.coherence.checks() > 0);
        fx.assert_coherent();
    });
}

/// `hmm.anon_read_multiple`: mmap, read, munmap cycles, each in one fault
/// round.
#[test]
fn anon_read_multiple() {
    let fx = Fixture::new();
    for cycle in 0..10 {
        fx.map(B, 8, Prot::RW);
        fx.cpu_write(B, 8);
        for i in 0..8 {
            fx.mirror.fault(B + i * P, false).unwrap();
            assert_eq!(fx.mirror.access(B + i * P, false), Access::Hit);
        }
        fx.space.munmap(B, 8 * P).unwrap();
        assert!(fx.mirror.entries(B, B + 8 * P).is_empty(), "cycle {cycle}");
    }
    let counters = fx.mirror.counters();
    assert_eq!((counters.faults, counters.retries), (80, 0));
    fx.assert_coherent();
}

/// `hmm.exclusive`: the device takes pages exclusively (its own `Exclusive`
/// ranges skipped), uses them while the CPU cannot reach them, and a CPU
/// access takes each back under a `Clear` that zaps the device's entry.
#[test]
fn exclusive() {
    let fx = Fixture::new();
    fx.map(B, 4, Prot::RW);
    fx.cpu_write(B, 4);
    let frames: Vec<u64> = (0..4).map(|i| fx.cpu_pfn(B + i * P)).collect();
    for i in 0..4 {
        let va = B + i * P;
        fx.mirror.make_exclusive(va).unwrap();
        let pte = fx.mirror.entry(va).unwrap();
        assert!(pte.exclusive && pte.translation.writable);
        assert_eq!(pte.translation.pfn, frames[i as usize]);
        assert_eq!(fx.space.translate(va), None, "the CPU cannot reach it");
        assert_eq!(fx.mirror.access(va, true), Access::Hit);
        assert_eq!(fx.mirror.access(va, false), Access::Hit);
    }
    assert!(fx.mirror.stats().skipped >= 4, "own Exclusive ranges");
    fx.cpu_write(B, 4);
    let exclusive = fx.mirror.entries(B, B + 4 * P);
    assert!(exclusive.is_empty(), "CHECK_EXCLUSIVE: {exclusive:?}");
    for i in 0..4 {
        assert_eq!(fx.cpu_pfn(B + i * P), frames[i as usize], "given back");
    }
    fx.assert_coherent();
}

/// The oracle accepts a device-exclusive entry only for the device that
/// made it: another device's use of the page is stale.
#[test]
fn exclusive_entry_counts_only_for_its_device() {
    let fx = Fixture::new();
    fx.map(B, 1, Prot::RW);
    fx.cpu_write(B, 1);
    let other = fx.second_mirror();
    other.fault(B, true).unwrap();
    fx.mirror.make_exclusive(B).unwrap();
    assert!(other.entry(B).is_none(), "a foreign Exclusive zaps");
    assert_eq!(fx.mirror.access(B, true), Access::Hit);
    fx.assert_coherent();
    let held = fx.mirror.entry(B).unwrap().translation;
    let used = mmun_secondary::coherence::Use {
        secondary: "other",
        va: B,
        write: false,
        held,
        device: Some(other.owner()),
    };
    let verdict = fx.coherence.try_check(&fx.space, &used);
    assert!(matches!(
        verdict,
        Err(mmun_secondary::coherence::CheckError::Stale(_))
    ));
}

/// `hmm.exclusive_mprotect`: mprotect(PROT_READ) removes the exclusive
/// mapping; a device write then fails.
#[test]
fn exclusive_mprotect() {
    let fx = Fixture::new();
    fx.map(B, 4, Prot::RW);
    fx.cpu_write(B, 4);
    for i in 0..4 {
        fx.mirror.make_exclusive(B + i * P).unwrap();
    }
    fx.space.mprotect(B, 4 * P, R).unwrap();
    assert!(fx.mirror.entries(B, B + 4 * P).is_empty());
    for i in 0..4 {
        let va = B + i * P;
        assert_eq!(fx.mirror.access(va, true), Access::Miss);
        assert_eq!(fx.mirror.fault(va, true), Err(FaultError::Unmapped));
        assert_eq!(fx.mirror.make_exclusive(va), Err(FaultError::Unmapped));
    }
    fx.assert_coherent();
}

/// `hmm.exclusive_cow`: fork of exclusively held pages zaps the device, and
/// CPU writes in both processes then work on their own pages.
#[test]
fn exclusive_cow() {
    let fx = Fixture::new();
    fx.map(B, 4, Prot::RW);
    fx.cpu_write(B, 4);
    let frames: Vec<u64> = (0..4).map(|i| fx.cpu_pfn(B + i * P)).collect();
    for i in 0..4 {
        fx.mirror.make_exclusive(B + i * P).unwrap();
    }
    let child = fx.space.fork();
    assert!(fx.mirror.entries(B, B + 4 * P).is_empty(), "fork zapped");
    for i in 0..4 {
        let va = B + i * P;
        fx.space.access(va, true).unwrap();
        child.access(va, true).unwrap();
        // Fork made the entries present and shared them copy-on-write
        // (6.18 `copy_nonpresent_pte`): the first writer copies, the last
        // one has the page to itself and reuses it.
        let (parent_pfn, child_pfn) = (fx.cpu_pfn(va), child.translate(va).unwrap().0);
        assert_ne!(parent_pfn, child_pfn);
        assert_eq!(child_pfn, frames[i as usize]);
    }
    child.exit();
    fx.assert_coherent();
}

/// `hmm.migrate` / `hmm.migrate_fault`: migration to the device skips its
/// own `Migrate` range and leaves the device holding the new frames; CPU
/// accesses keep working, and a migration back (a regular migration,
/// `Clear` per page) zaps the device, which faults the system frames in.
#[test]
fn migrate_to_device_and_back() {
    let fx = Fixture::new();
    fx.map(B, 8, Prot::RW);
    fx.cpu_write(B, 8);
    for i in 0..8 {
        fx.mirror.fault(B + i * P, false).unwrap();
    }
    let old: Vec<_> = (0..8)
        .map(|i| fx.mirror.entry(B + i * P).unwrap())
        .collect();
    assert_eq!(fx.mirror.migrate_to_device(B, B + 8 * P), Ok(8));
    for i in 0..8 {
        let va = B + i * P;
        let pte = fx.mirror.entry(va).unwrap();
        assert_ne!(pte.translation, old[i as usize].translation, "new frame");
        assert_eq!(Some(pte.translation), fx.space.translate_frame(va));
        assert_eq!(fx.mirror.access(va, true), Access::Hit);
    }
    let stats = fx.mirror.stats();
    assert_eq!((stats.skipped, stats.migrated), (1, 8));
    fx.cpu_write(B, 4);
    assert_eq!(fx.space.migrate(B, B + 8 * P), 8);
    assert!(fx.mirror.entries(B, B + 8 * P).is_empty());
    for i in 0..8 {
        fx.mirror.fault(B + i * P, true).unwrap();
        let pfn = fx.mirror.entry(B + i * P).unwrap().translation.pfn;
        assert_eq!(pfn, fx.cpu_pfn(B + i * P));
    }
    fx.assert_coherent();
}

/// `hmm2.double_map`: two devices mirror the same pages; one migrates them
/// to itself, the other is zapped (foreign owner) and faults the new
/// frames.
#[test]
fn migrate_with_two_devices() {
    let fx = Fixture::new();
    fx.map(B, 4, Prot::RW);
    fx.cpu_write(B, 4);
    let other = fx.second_mirror();
    for i in 0..4 {
        fx.mirror.fault(B + i * P, false).unwrap();
        other.fault(B + i * P, false).unwrap();
    }
    assert_eq!(other.migrate_to_device(B, B + 4 * P), Ok(4));
    assert!(
        fx.mirror.entries(B, B + 4 * P).is_empty(),
        "foreign Migrate"
    );
    assert_eq!(other.entries(B, B + 4 * P).len(), 4);
    for i in 0..4 {
        let va = B + i * P;
        assert_eq!(fx.mirror.access(va, false), Access::Miss);
        fx.mirror.fault(va, false).unwrap();
        assert_eq!(fx.mirror.entry(va), other.entry(va));
        assert_eq!(other.access(va, true), Access::Hit);
    }
    fx.assert_coherent();
}

/// Exit releases the device: everything is dropped and later faults are
/// refused.
#[test]
fn release_on_exit() {
    let fx = Fixture::new();
    fx.map(B, 4, Prot::RW);
    for i in 0..4 {
        fx.mirror.fault(B + i * P, true).unwrap();
    }
    fx.space.exit();
    assert!(fx.mirror.is_released());
    assert!(fx.mirror.entries(0, u64::MAX).is_empty());
    assert_eq!(fx.mirror.fault(B, false), Err(FaultError::Released));
    assert_eq!(fx.mirror.access(B, false), Access::Miss);
    assert_eq!(fx.mirror.mirror_range(B, P), Err(FaultError::Released));
    assert_eq!(
        fx.mirror.fault(B + 16 * M2, false),
        Err(FaultError::Released)
    );
    fx.assert_coherent();
}

/// The OOM reaper's non-blockable range is refused while the device lock
/// is busy, and honoured (zapped) otherwise.
#[test]
fn non_blockable_range_is_refused_when_busy() {
    with_watchdog(|| {
        let fx = Fixture::new();
        fx.map(B, 4, Prot::RW);
        for i in 0..4 {
            fx.mirror.fault(B + i * P, true).unwrap();
        }
        // The reaper runs on another thread while this one holds the
        // device lock: its callback must refuse instead of waiting.
        let reaped = fx.mirror.with_table(|_| {
            std::thread::scope(|s| s.spawn(|| fx.space.oom_reap_once()).join().unwrap())
        });
        assert!(!reaped, "refused while the device lock was held");
        assert_eq!(fx.mirror.stats().refused, 1);
        assert_eq!(fx.mirror.entries(B, B + 4 * P).len(), 4, "nothing zapped");
        assert!(fx.space.oom_reap_once(), "accepted once the lock is free");
        assert!(fx.mirror.entries(B, B + 4 * P).is_empty());
        fx.assert_coherent();
    });
}

/// Each injected bug, run in the race workload, is caught by the oracle.
fn assert_caught(bug: Bug, racer: Racer) {
    let outcome = race::run(Some(bug), racer);
    assert!(outcome.races > 0, "{outcome:#?}");
    assert!(
        outcome.violations > 0,
        "{bug} went unnoticed in {} checks: {outcome:#?}",
        outcome.checks
    );
    assert!(outcome.first.iter().all(|v| v.secondary == "device-mirror"));
}

/// The same workload without a bug: many races, retries, no violation.
fn assert_clean(racer: Racer) {
    let outcome = race::run(None, racer);
    assert!(outcome.races > 0 && outcome.checks > 0, "{outcome:#?}");
    assert!(
        outcome.counters.retries > 0,
        "the race window was hit: {outcome:#?}"
    );
    assert!(
        outcome.stats.zapped > 0,
        "invalidations zapped: {outcome:#?}"
    );
    assert_eq!(outcome.violations, 0, "{:#?}", outcome.first);
}

#[test]
fn bug_no_set_seq_is_caught() {
    assert_caught(Bug::NoSetSeq, Racer::Munmap);
}

#[test]
fn bug_no_read_retry_is_caught() {
    assert_caught(Bug::NoReadRetry, Racer::Munmap);
}

#[test]
fn bug_program_before_retry_is_caught() {
    assert_caught(Bug::ProgramBeforeRetry, Racer::Munmap);
}

#[test]
fn bug_ignore_nonblocking_is_caught() {
    assert_caught(Bug::IgnoreNonBlocking, Racer::OomReap);
}

#[test]
fn bug_skip_foreign_owner_is_caught() {
    assert_caught(Bug::SkipForeignOwner, Racer::ForeignMigrate);
}

/// The same bug against another device's exclusive conversions: the
/// oracle knows the entry serves only that device.
#[test]
fn bug_skip_foreign_owner_is_caught_by_exclusive() {
    assert_caught(Bug::SkipForeignOwner, Racer::ForeignExclusive);
}

#[test]
fn correct_mirror_survives_munmap_races() {
    assert_clean(Racer::Munmap);
}

#[test]
fn correct_mirror_survives_oom_reaper_races() {
    assert_clean(Racer::OomReap);
}

#[test]
fn correct_mirror_survives_foreign_migration_races() {
    assert_clean(Racer::ForeignMigrate);
}

#[test]
fn correct_mirror_survives_own_migration_races() {
    assert_clean(Racer::OwnMigrate);
}

#[test]
fn correct_mirror_survives_foreign_exclusive_races() {
    assert_clean(Racer::ForeignExclusive);
}
