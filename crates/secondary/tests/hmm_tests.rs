//! `tools/testing/selftests/mm/hmm-tests.c` ported onto the device mirror
//! and the software MMU (spec §4.1), plus one race test per injected bug.
//!
//! Source: `hmm-tests.c` as stored for `linux-mm/linux-mm` (a tree past
//! v6.18: it has every v6.18 test plus the THP-migration ones that landed
//! with device THP migration). Every test ends by asking the coherence
//! oracle, which checked each device access against the primary, whether
//! any use was stale.
//!
//! # Variant
//!
//! Each `TEST_F` runs in the C file as `hmm_device_private` and
//! `hmm_device_coherent` (`hmm2_*` for the two-device tests), and so does
//! every port here: `device_private::NAME` and `device_coherent::NAME`
//! (the `in_both_variants!` list at the end). A device-private device's
//! pages are mapped by device-private entries the CPU cannot reach, and a
//! CPU touch migrates them back; a coherent device's pages stay mapped as
//! ordinary entries. Where the C file's expectations differ — `snapshot`
//! (`DEV_PRIVATE_LOCAL` and `NONE` against `DEV_COHERENT_LOCAL`/`REMOTE`),
//! `migrate_multiple` (private: back by CPU faults; coherent: explicitly),
//! `hmm_cow_in_device`, `migrate_fault`, `double_map` and the THP
//! migrations' fault-back steps — each variant's own outcome is checked.
//! One modelling difference: after a fork, a CPU touch of a shared
//! device-private page gives the touching process its own system copy
//! (Linux migrates it for every mapper through the rmap, which the
//! software MMU does not keep across address spaces); `anon_write_child`
//! observes the same values either way.
//!
//! # Data
//!
//! Frames carry bytes, so every test checks data where the C test does:
//! the CPU stores the C buffer's pattern (`ptr[i] = i`, `-i`, `i + c`)
//! through `AddressSpace::write_bytes`, the device reads and writes it
//! through its own table (`dmirror_read`/`dmirror_write`: a fault per page,
//! then `DeviceMirror::read_bytes`/`write_bytes`, each use checked by the
//! oracle), and the CPU reads it back with `read_bytes` — across
//! copy-on-write, migration to either kind of device memory and back, THP
//! splits and `mremap`. `pwrite`/`pread` of the tmpfs file are the shmem
//! object's page cache. test_hmm's `faults == 1` (one `hmm_range_fault`
//! round for the whole command) is checked as "no fault retried" where no
//! invalidation can come in between.
//!
//! # Every `TEST_F` and where it is
//!
//! | `TEST_F` (both variants unless left out) | here |
//! | --- | --- |
//! | `hmm.open_close` | [`open_close`] |
//! | `hmm.anon_read` | [`anon_read`] |
//! | `hmm.anon_read_prot` | [`anon_read_prot`] |
//! | `hmm.anon_write` | [`anon_write`] |
//! | `hmm.anon_write_prot` | [`anon_write_prot`] |
//! | `hmm.anon_write_child` | [`anon_write_child`] (all four: migrate × THP) |
//! | `hmm.anon_write_child_shared` | [`anon_write_child_shared`] |
//! | `hmm.anon_write_huge` | [`anon_write_huge`] |
//! | `hmm.anon_write_hugetlbfs` | left out: the software MMU has no hugetlbfs |
//! | `hmm.file_read` | [`file_read`] (a shmem object stands for the tmpfs file) |
//! | `hmm.file_write` | [`file_write`] |
//! | `hmm.migrate` | [`migrate`] |
//! | `hmm.migrate_fault` | [`migrate_fault`] |
//! | `hmm.migrate_release` | [`migrate_release`] (release = evict to system) |
//! | `hmm.migrate_shared` | [`migrate_shared`] |
//! | `hmm2.migrate_mixed` | [`migrate_mixed`] |
//! | `hmm.migrate_multiple` | [`migrate_multiple`] |
//! | `hmm.anon_read_multiple` | [`anon_read_multiple`] |
//! | `hmm.anon_teardown` | [`anon_teardown`] |
//! | `hmm.mixedmap` | left out: maps the device file itself (`mmap` of `/dev/hmm_dmirror`), a device-file mapping the software MMU has no counterpart for |
//! | `hmm2.snapshot` | [`snapshot`] |
//! | `hmm.compound` | left out: hugetlbfs |
//! | `hmm2.double_map` | [`double_map`] |
//! | `hmm.exclusive` | [`exclusive`] |
//! | `hmm.exclusive_mprotect` | [`exclusive_mprotect`] |
//! | `hmm.exclusive_cow` | [`exclusive_cow`] |
//! | `hmm.hmm_gup_test` | left out: needs the `gup_test` module (GUP / longterm pins of device pages) |
//! | `hmm.hmm_cow_in_device` | [`hmm_cow_in_device`] |
//! | `hmm.migrate_anon_huge_empty` | [`migrate_anon_huge_empty`] |
//! | `hmm.migrate_anon_huge_zero` | [`migrate_anon_huge_zero`] |
//! | `hmm.migrate_anon_huge_free` | [`migrate_anon_huge_free`] |
//! | `hmm.migrate_anon_huge_fault` | [`migrate_anon_huge_fault`] |
//! | `hmm.migrate_partial_unmap_fault` | [`migrate_partial_unmap_fault`] |
//! | `hmm.migrate_remap_fault` | [`migrate_remap_fault`] |
//! | `hmm.migrate_anon_huge_err` | left out: forces device allocation failures (`HMM_DMIRROR_FLAG_FAIL_ALLOC`); the device here never fails to allocate |
//! | `hmm.migrate_anon_huge_zero_err` | left out: the same |
//! | `hmm.benchmark_thp_migration` | left out: a timing benchmark, not a test (speed belongs in `mmun bench`) |

mod mirror_common;

use std::sync::Arc;

use mirror_common::race::{self, Racer};
use mirror_common::{
    B, Fixture, M2, P, R, assert_bytes, dmirror_read, dmirror_rw, dmirror_write, filled_object,
    map_object, pattern, pread, with_watchdog, zeros,
};
use mmun_script::{Advice, Prot};
use mmun_secondary::device_mirror::{DeviceMemory, DeviceMirror, SnapshotProt};
use mmun_secondary::{Access, Bug, FaultError, Secondary};
use mmun_softmmu::MremapFlags;
use mmun_softmmu::frame::ZERO_PFN;

/// Pages of `HMM_BUFFER_SIZE` (1024 × 4 KiB would be slow under the
/// oracle; 16 keep every step while staying quick).
const N: u64 = 16;

/// `hmm.open_close`: opening subscribes an interval, closing removes it;
/// afterwards invalidations no longer reach the device.
fn open_close(v: DeviceMemory) {
    let fx = Fixture::in_variant(v);
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

/// `hmm.anon_read`: device reads of read-only anonymous memory whose
/// first page was never touched (`pte_none`), whose second the CPU read
/// (the zero page already mapped), and the rest written by the CPU.
fn anon_read(v: DeviceMemory) {
    let fx = Fixture::in_variant(v);
    fx.map(B, N, Prot::RW);
    // ptr[i] = i, but the first two pages left zero.
    let data = pattern(N, |i| i as i32);
    fx.cpu_fill(B + 2 * P, &data[2 * P as usize..]);
    fx.space.mprotect(B, N * P, R).unwrap();
    assert_bytes(&fx.cpu_read(B + P, 4), &zeros(4), "the CPU reads a zero");
    assert_eq!(fx.cpu_pfn(B + P), ZERO_PFN, "the zero page is mapped");
    assert!(fx.space.translate(B).is_none(), "pte_none");
    let read = dmirror_read(&fx.mirror, B, N).unwrap();
    assert_bytes(&read[..2 * P as usize], &zeros(2 * P), "pages 0-1");
    assert_bytes(&read[2 * P as usize..], &data[2 * P as usize..], "the rest");
    for i in 0..N {
        let va = B + i * P;
        let pte = fx.mirror.entry(va).unwrap();
        let expected = if i < 2 { ZERO_PFN } else { fx.cpu_pfn(va) };
        assert_eq!(pte.translation.pfn, expected, "page {i}");
        assert!(!pte.translation.writable);
        assert_eq!(fx.mirror.access(va, true), Access::Miss, "read-only");
    }
    assert_eq!(fx.mirror.counters().retries, 0, "one fault round");
    fx.assert_coherent();
}

/// `hmm.anon_read_prot`: after `mprotect(PROT_NONE)` the device read fails
/// with `EFAULT` and maps nothing; once readable again the CPU finds its
/// data untouched.
fn anon_read_prot(v: DeviceMemory) {
    let fx = Fixture::in_variant(v);
    fx.map(B, N, Prot::RW);
    let data = pattern(N, |i| i as i32);
    fx.cpu_fill(B, &data);
    let before: Vec<_> = (0..N)
        .map(|i| fx.space.translate_frame(B + i * P))
        .collect();
    fx.space.mprotect(B, N * P, Prot::NONE).unwrap();
    let read = dmirror_rw(&fx.mirror, B, N, false);
    assert_eq!(read, Err(FaultError::Unmapped));
    assert_eq!(read.unwrap_err().errno(), -14, "EFAULT");
    assert!(fx.mirror.entries(B, B + N * P).is_empty());
    fx.space.mprotect(B, N * P, R).unwrap();
    assert_bytes(&fx.cpu_read(B, N * P), &data, "the CPU's data");
    for (i, was) in (0..N).zip(before) {
        let now = fx.space.translate_frame(B + i * P).unwrap();
        let was = was.unwrap();
        assert_eq!((now.pfn, now.serial), (was.pfn, was.serial), "page {i}");
        assert_eq!(
            fx.memory.frame(now.pfn).generation,
            fx.memory.frame(was.pfn).generation
        );
    }
    fx.assert_coherent();
}

/// `hmm.anon_write`: device writes land in the frames the CPU maps, in one
/// fault round: the CPU reads what the device wrote.
fn anon_write(v: DeviceMemory) {
    let fx = Fixture::in_variant(v);
    fx.map(B, N, Prot::RW);
    let data = pattern(N, |i| i as i32);
    assert_eq!(dmirror_write(&fx.mirror, B, &data), Ok(N));
    for i in 0..N {
        let va = B + i * P;
        let pfn = fx.mirror.entry(va).unwrap().translation.pfn;
        assert_eq!(fx.cpu_pfn(va), pfn, "the CPU sees the device's page");
    }
    assert_bytes(&fx.cpu_read(B, N * P), &data, "what the device wrote");
    let counters = fx.mirror.counters();
    assert_eq!((counters.faults, counters.retries), (N, 0));
    fx.assert_coherent();
}

/// `hmm.anon_write_prot`: a device read of a `PROT_READ` page maps the
/// zero page; a device write fails with `EPERM` and the CPU still reads
/// zeros; after mprotect(RW) the write succeeds and the zero page is
/// replaced.
fn anon_write_prot(v: DeviceMemory) {
    let fx = Fixture::in_variant(v);
    fx.map(B, N, R);
    let read = dmirror_read(&fx.mirror, B, 1).unwrap();
    assert_bytes(&read, &zeros(P), "a zero page");
    assert_eq!(fx.mirror.entry(B).unwrap().translation.pfn, ZERO_PFN);
    let data = pattern(N, |i| i as i32);
    let write = dmirror_write(&fx.mirror, B, &data);
    assert_eq!(write, Err(FaultError::Denied));
    assert_eq!(write.unwrap_err().errno(), -1, "EPERM");
    assert_eq!(fx.mirror.access(B, true), Access::Miss);
    for i in 0..N {
        // The CPU reads zeros: the zero page or nothing at all yet.
        let cpu = fx.space.translate(B + i * P);
        assert!(
            cpu.is_none_or(|(pfn, _)| pfn == ZERO_PFN),
            "page {i}: {cpu:?}"
        );
    }
    assert_bytes(&fx.cpu_read(B, N * P), &zeros(N * P), "nothing written");
    fx.space.mprotect(B, N * P, Prot::RW).unwrap();
    assert!(fx.mirror.entry(B).is_none(), "mprotect zapped it");
    let faults = fx.mirror.counters().faults;
    assert_eq!(dmirror_write(&fx.mirror, B, &data), Ok(N));
    assert_eq!(
        fx.mirror.counters().faults,
        faults + N,
        "one fault per page"
    );
    for i in 0..N {
        let pte = fx.mirror.entry(B + i * P).unwrap();
        assert_ne!(pte.translation.pfn, ZERO_PFN);
        assert!(pte.translation.writable);
        assert_eq!(fx.cpu_pfn(B + i * P), pte.translation.pfn);
    }
    assert_bytes(&fx.cpu_read(B, N * P), &data, "what the device wrote");
    assert!(fx.mirror.stats().zapped >= 1);
    fx.assert_coherent();
}

/// One run of `hmm.anon_write_child`: the parent fills the buffer
/// (THP-backed if `thp`), optionally migrates it to its device, forks; the
/// child's own device writes the child's copy; the parent's pages keep
/// their contents.
fn anon_write_child_case(v: DeviceMemory, migrate: bool, thp: bool) {
    let fx = Fixture::in_variant(v);
    let pages = if thp { M2 / P } else { N };
    fx.map(B, 2 * pages, Prot::RW);
    if thp {
        fx.space.madvise(B, M2, Advice::HugePage).unwrap();
    }
    let data = pattern(pages, |i| i as i32);
    fx.cpu_fill(B, &data);
    if thp {
        let head = fx.cpu_pfn(B);
        assert_eq!(fx.memory.frame(head).order, 9, "THP-backed");
    }
    if migrate {
        assert_eq!(
            fx.mirror.migrate_to_device(B, B + pages * P),
            Ok(pages as usize)
        );
    }
    let parent: Vec<_> = (0..pages).map(|i| fx.entry_pfn(B + i * P)).collect();
    let generations: Vec<_> = parent
        .iter()
        .map(|&pfn| fx.memory.frame(pfn).generation)
        .collect();
    let child = Arc::new(fx.space.fork());
    // The child reads the parent's values: the same frames, shared; a
    // device-private page first comes back to system memory.
    let mut seen = zeros(pages * P);
    child.read_bytes(B, &mut seen).unwrap();
    assert_bytes(&seen, &data, "the child sees the parent's values");
    for i in 0..pages {
        let va = B + i * P;
        let (pfn, _) = child.translate(va).unwrap();
        if fx.private() && migrate {
            assert_ne!(pfn, parent[i as usize], "page {i}: migrated back");
            assert_eq!(fx.memory.frame(pfn).device, None);
        } else {
            assert_eq!(pfn, parent[i as usize], "page {i}: shared");
        }
    }
    let child_mirror = fx.mirror_of(&child);
    let negated = pattern(pages, |i| -i as i32);
    assert_eq!(dmirror_write(&child_mirror, B, &negated), Ok(pages));
    if !migrate {
        let mut wrote = zeros(pages * P);
        child.read_bytes(B, &mut wrote).unwrap();
        assert_bytes(&wrote, &negated, "what the child's device wrote");
    }
    // One completed fault per page; a copy-on-write fault collides with
    // its own invalidation and retries, as hmm_range_fault's -EBUSY loop
    // does inside test_hmm's single command.
    assert_eq!(child_mirror.counters().faults, pages);
    for i in 0..pages {
        let va = B + i * P;
        let child_pfn = child_mirror.entry(va).unwrap().translation.pfn;
        assert_ne!(child_pfn, parent[i as usize], "copied on write");
        assert_eq!(
            child.translate(va).unwrap().0,
            child_pfn,
            "the child sees it"
        );
        let now = fx.entry_pfn(va);
        assert_eq!(now, parent[i as usize], "page {i}: parent unchanged");
        assert_eq!(fx.memory.frame(now).generation, generations[i as usize]);
    }
    child.exit();
    let what = format!("the parent's buffer (migrate {migrate}, thp {thp})");
    assert_bytes(&fx.cpu_read(B, pages * P), &data, &what);
    fx.assert_coherent();
}

/// `hmm.anon_write_child`, all four runs of its two loops.
fn anon_write_child(v: DeviceMemory) {
    for migrate in [false, true] {
        for thp in [false, true] {
            anon_write_child_case(v, migrate, thp);
        }
    }
}

/// `hmm.anon_write_child_shared`: with `MAP_SHARED` the child's device
/// writes the parent's pages.
fn anon_write_child_shared(v: DeviceMemory) {
    let fx = Fixture::in_variant(v);
    fx.map_shared(B, N);
    let data = pattern(N, |i| i as i32);
    fx.cpu_fill(B, &data);
    let child = Arc::new(fx.space.fork());
    let mut seen = zeros(N * P);
    child.read_bytes(B, &mut seen).unwrap();
    assert_bytes(&seen, &data, "the child sees the parent's values");
    let child_mirror = fx.mirror_of(&child);
    let negated = pattern(N, |i| -i as i32);
    assert_eq!(dmirror_write(&child_mirror, B, &negated), Ok(N));
    for i in 0..N {
        let va = B + i * P;
        let pfn = fx.cpu_pfn(va);
        assert_eq!(child_mirror.entry(va).unwrap().translation.pfn, pfn);
    }
    child.exit();
    assert_bytes(&fx.cpu_read(B, N * P), &negated, "the parent sees it");
    fx.assert_coherent();
}

/// `hmm.anon_write_huge`: a THP-backed 2 MiB range is mirrored as 512 base
/// pages of one huge folio, in one fault round.
fn anon_write_huge(v: DeviceMemory) {
    let fx = Fixture::in_variant(v);
    fx.map(B, 2 * M2 / P, Prot::RW);
    fx.space.madvise(B, M2, Advice::HugePage).unwrap();
    let pages = M2 / P;
    let data = pattern(pages, |i| i as i32);
    assert_eq!(dmirror_write(&fx.mirror, B, &data), Ok(pages));
    let head = fx.mirror.entry(B).unwrap().translation.pfn;
    assert_eq!(fx.memory.frame(head).order, 9, "a huge folio backs it");
    for i in 0..pages {
        let pte = fx.mirror.entry(B + i * P).unwrap();
        assert_eq!(pte.translation.pfn, head + i);
    }
    assert_eq!(fx.mirror.counters().retries, 0);
    assert_bytes(&fx.cpu_read(B, M2), &data, "what the device wrote");
    fx.assert_coherent();
}

/// `hmm.file_read`: a device reads a read-only shared file mapping and
/// finds the file's pages (a filled shmem object stands for the tmpfs
/// file written with `pwrite`).
fn file_read(v: DeviceMemory) {
    let fx = Fixture::in_variant(v);
    let data = pattern(N, |i| i as i32);
    let file = filled_object(&fx.memory, &data);
    map_object(&fx.space, B, N, R, &file);
    let read = dmirror_read(&fx.mirror, B, N).unwrap();
    assert_bytes(&read, &data, "what the device read");
    assert_eq!(fx.mirror.counters().retries, 0, "one fault round");
    for i in 0..N {
        let pte = fx.mirror.entry(B + i * P).unwrap();
        assert_eq!(Some(pte.translation.pfn), file.find_page(i), "page {i}");
        assert!(!pte.translation.writable);
    }
    fx.assert_coherent();
}

/// `hmm.file_write`: a device writes a shared file mapping; the CPU's
/// mapping and the file itself (`pread`: its page cache) see the writes.
fn file_write(v: DeviceMemory) {
    let fx = Fixture::in_variant(v);
    let file = Arc::new(mmun_softmmu::shmem::ShmemObject::new(
        Arc::clone(&fx.memory),
        N * P,
    ));
    map_object(&fx.space, B, N, Prot::RW, &file);
    let data = pattern(N, |i| i as i32);
    assert_eq!(dmirror_write(&fx.mirror, B, &data), Ok(N));
    assert_eq!(fx.mirror.counters().retries, 0, "one fault round");
    for i in 0..N {
        let va = B + i * P;
        let pfn = fx.mirror.entry(va).unwrap().translation.pfn;
        assert_eq!(fx.cpu_pfn(va), pfn, "the CPU mapping sees it");
        assert_eq!(file.find_page(i), Some(pfn), "the file sees it");
    }
    assert_bytes(&fx.cpu_read(B, N * P), &data, "the CPU mapping");
    assert_bytes(&pread(&file), &data, "pread of the file");
    fx.assert_coherent();
}

/// The device holds exactly the frames the CPU maps in `[start, start +
/// pages)`, each in its own device memory.
fn assert_on_device(fx: &Fixture, mirror: &DeviceMirror, start: u64, pages: u64) {
    for i in 0..pages {
        let va = start + i * P;
        let pte = mirror
            .entry(va)
            .unwrap_or_else(|| panic!("page {i} not on the device"));
        let view = fx.space.device_view(va, Some(mirror.owner())).unwrap();
        assert_eq!(pte.translation, view.translation, "page {i}");
        // Device-private: the CPU cannot reach it; coherent: it can.
        assert_eq!(view.device_private, fx.private(), "page {i}");
        assert_eq!(
            fx.space.translate_frame(va).is_none(),
            fx.private(),
            "page {i}"
        );
        let frame = fx.memory.frame(pte.translation.pfn);
        assert_eq!(
            frame.device,
            Some(mirror.owner()),
            "page {i} in device memory"
        );
        assert_eq!(mirror.access(va, false), Access::Hit);
    }
}

/// No page of `[start, start + pages)` is in any device's memory.
fn assert_in_system(fx: &Fixture, start: u64, pages: u64) {
    for i in 0..pages {
        let pfn = fx.cpu_pfn(start + i * P);
        assert_eq!(fx.memory.frame(pfn).device, None, "page {i}");
    }
}

/// `hmm.migrate`: anonymous memory moves to the device (its own `Migrate`
/// range skipped), every page counted, each in a new frame of the
/// device's memory (mapped by the CPU if coherent, by device-private
/// entries if private), holding the data the device then reads.
fn migrate(v: DeviceMemory) {
    let fx = Fixture::in_variant(v);
    fx.map(B, N, Prot::RW);
    let data = pattern(N, |i| i as i32);
    fx.cpu_fill(B, &data);
    let old: Vec<_> = (0..N).map(|i| fx.cpu_pfn(B + i * P)).collect();
    assert_eq!(fx.mirror.migrate_to_device(B, B + N * P), Ok(N as usize));
    assert_on_device(&fx, &fx.mirror, B, N);
    let read = dmirror_read(&fx.mirror, B, N).unwrap();
    assert_bytes(&read, &data, "what the device read");
    for i in 0..N {
        assert_ne!(fx.entry_pfn(B + i * P), old[i as usize], "page {i} moved");
    }
    let stats = fx.mirror.stats();
    assert_eq!((stats.skipped, stats.migrated), (1, N));
    fx.assert_coherent();
}

/// Not in `hmm-tests.c`: a sparse buffer (every other page never
/// touched) migrates whole; the fresh pages are inserted under a second
/// `Migrate` range that carries the device's owner, so the device keeps
/// the pages it mapped in the first pass.
fn migrate_sparse(v: DeviceMemory) {
    let fx = Fixture::in_variant(v);
    fx.map(B, N, Prot::RW);
    for i in (1..N).step_by(2) {
        fx.cpu_write(B + i * P, 1);
    }
    assert_eq!(fx.mirror.migrate_to_device(B, B + N * P), Ok(N as usize));
    assert_on_device(&fx, &fx.mirror, B, N);
    assert_eq!(fx.mirror.stats().skipped, 2, "both ranges were its own");
    fx.assert_coherent();
}

/// Not in `hmm-tests.c`: a device fault on a page of its own private
/// memory is answered by `hmm_range_fault` without faulting (the page
/// stays in device memory; the CPU still cannot reach it), writable only
/// with the entry's write bit. After a fork made the entries read-only, a
/// device write is refused with `EFAULT` (test_hmm's `dmirror_do_fault`
/// WARNs and fails when `HMM_PFN_WRITE` is missing).
#[test]
fn device_private_fault_reports_its_own_pages() {
    let fx = Fixture::in_variant(DeviceMemory::Private);
    assert_eq!(fx.mirror.memory_kind(), DeviceMemory::Private);
    assert_eq!(Fixture::new().mirror.memory_kind(), DeviceMemory::Coherent);
    fx.map(B, 2, Prot::RW);
    fx.cpu_write(B, 2);
    assert_eq!(fx.mirror.migrate_to_device(B, B + 2 * P), Ok(2));
    let on_device = fx.entry_pfn(B);
    fx.mirror.close();
    assert_eq!(dmirror_rw(&fx.mirror, B, 2, true), Ok(2));
    assert_eq!(fx.mirror.entry(B).unwrap().translation.pfn, on_device);
    assert!(fx.space.pte(B).is_device_private(), "not migrated back");
    assert_eq!(fx.space.translate(B), None);
    let child = fx.space.fork();
    assert_eq!(fx.mirror.fault(B, true), Err(FaultError::Unmapped));
    assert_eq!(fx.mirror.fault(B, false), Ok(()));
    child.exit();
    fx.assert_coherent();
}

/// `hmm.migrate_fault`: migrate, the CPU reads half the pages back
/// (device-private: each read migrates its page to system memory and the
/// device loses it; coherent: a plain access, no fault), then migrating
/// the mix again succeeds with every page counted: those still in the
/// device's memory stay where they are, the others move again.
fn migrate_fault(v: DeviceMemory) {
    let fx = Fixture::in_variant(v);
    fx.map(B, N, Prot::RW);
    let data = pattern(N, |i| i as i32);
    fx.cpu_fill(B, &data);
    assert_eq!(fx.mirror.migrate_to_device(B, B + N * P), Ok(N as usize));
    assert_bytes(&dmirror_read(&fx.mirror, B, N).unwrap(), &data, "device");
    let on_device: Vec<_> = (0..N).map(|i| fx.entry_pfn(B + i * P)).collect();
    let half = (N / 2 * P) as usize;
    assert_bytes(&fx.cpu_read(B, N / 2 * P), &data[..half], "CPU, half");
    for i in 0..N / 2 {
        let va = B + i * P;
        let now = fx.cpu_pfn(va);
        if fx.private() {
            assert_ne!(now, on_device[i as usize], "page {i} faulted back");
            assert_eq!(fx.memory.frame(now).device, None);
            assert_eq!(fx.mirror.entry(va), None, "the device lost it");
        } else {
            assert_eq!(now, on_device[i as usize], "no fault back");
        }
    }
    assert_eq!(fx.mirror.migrate_to_device(B, B + N * P), Ok(N as usize));
    assert_on_device(&fx, &fx.mirror, B, N);
    for i in 0..N {
        let stayed = fx.entry_pfn(B + i * P) == on_device[i as usize];
        let faulted_back = fx.private() && i < N / 2;
        assert_eq!(stayed, !faulted_back, "page {i}");
    }
    assert_bytes(&dmirror_read(&fx.mirror, B, N).unwrap(), &data, "device");
    fx.assert_coherent();
}

/// `hmm.migrate_release`: migrate, then the device releases its memory
/// (test_hmm evicts every chunk back to system memory: here the range, by
/// `migrate_to_system`); the CPU then reads system pages and the device
/// holds none of them.
fn migrate_release(v: DeviceMemory) {
    let fx = Fixture::in_variant(v);
    fx.map(B, N, Prot::RW);
    let data = pattern(N, |i| i as i32);
    fx.cpu_fill(B, &data);
    assert_eq!(fx.mirror.migrate_to_device(B, B + N * P), Ok(N as usize));
    assert_bytes(&dmirror_read(&fx.mirror, B, N).unwrap(), &data, "device");
    assert_eq!(fx.mirror.migrate_to_system(B, B + N * P), Ok(N as usize));
    assert!(fx.mirror.entries(B, B + N * P).is_empty(), "evicted");
    let half = (N / 2 * P) as usize;
    assert_bytes(&fx.cpu_read(B, N / 2 * P), &data[..half], "CPU, half");
    assert_in_system(&fx, B, N);
    fx.assert_coherent();
}

/// `hmm.migrate_shared`: shared anonymous memory is not migrated;
/// test_hmm's read-back then fails with `ENOENT`.
fn migrate_shared(v: DeviceMemory) {
    let fx = Fixture::in_variant(v);
    fx.map_shared(B, N);
    let result = fx.mirror.migrate_to_device(B, B + N * P);
    assert_eq!(result, Err(FaultError::NotFound));
    assert_eq!(result.unwrap_err().errno(), -2, "ENOENT");
    assert!(fx.mirror.entries(B, B + N * P).is_empty());
    // Written shared pages stay where they are too.
    fx.cpu_write(B, N);
    let frames: Vec<_> = (0..N).map(|i| fx.cpu_pfn(B + i * P)).collect();
    assert_eq!(
        fx.mirror.migrate_to_device(B, B + N * P),
        Err(FaultError::NotFound)
    );
    for i in 0..N {
        assert_eq!(fx.cpu_pfn(B + i * P), frames[i as usize]);
    }
    assert_in_system(&fx, B, N);
    fx.assert_coherent();
}

/// `hmm2.migrate_mixed`: `EINVAL` over `PROT_NONE` and over a hole; pages
/// 2–5 (a zero page, a read-only page, two read-write pages) all move to
/// device 1; page 5 then cannot move to device 0 (`ENOENT`: it is device
/// 1's).
fn migrate_mixed(v: DeviceMemory) {
    let fx = Fixture::in_variant(v);
    let dev0 = &fx.mirror;
    let dev1 = fx.second_mirror();
    fx.map(B, 6, Prot::NONE);
    let result = dev1.migrate_to_device(B, B + 6 * P);
    assert_eq!(result, Err(FaultError::Invalid), "PROT_NONE");
    assert_eq!(result.unwrap_err().errno(), -22, "EINVAL");
    fx.space.munmap(B + P, P).unwrap();
    assert_eq!(
        dev1.migrate_to_device(B, B + 3 * P),
        Err(FaultError::Invalid),
        "hole"
    );
    fx.space.mprotect(B + 2 * P, P, R).unwrap();
    fx.space.access(B + 2 * P, false).unwrap();
    assert_eq!(fx.cpu_pfn(B + 2 * P), ZERO_PFN);
    fx.space.mprotect(B + 3 * P, P, Prot::RW).unwrap();
    fx.cpu_write(B + 3 * P, 1);
    fx.space.mprotect(B + 3 * P, P, R).unwrap();
    fx.space.mprotect(B + 4 * P, 2 * P, Prot::RW).unwrap();
    fx.cpu_write(B + 4 * P, 2);
    assert_eq!(dev1.migrate_to_device(B + 2 * P, B + 6 * P), Ok(4));
    assert_on_device(&fx, &dev1, B + 2 * P, 4);
    for i in 2..4 {
        let view = fx.space.device_view(B + i * P, Some(dev1.owner()));
        let writable = view.unwrap().translation.writable;
        assert!(!writable, "page {i} stays read-only in device memory");
    }
    let page5 = fx.entry_pfn(B + 5 * P);
    let result = dev0.migrate_to_device(B + 5 * P, B + 6 * P);
    assert_eq!(result, Err(FaultError::NotFound));
    assert_eq!(fx.entry_pfn(B + 5 * P), page5, "left in device 1's memory");
    fx.assert_coherent();
}

/// `hmm.migrate_multiple`: ten rounds of migrating to the device and back:
/// device-private pages come back by CPU reads (each a fault that
/// migrates its page), coherent ones must be migrated back explicitly
/// (the CPU reaches them without a fault).
fn migrate_multiple(v: DeviceMemory) {
    let fx = Fixture::in_variant(v);
    for round in 0..10 {
        fx.map(B, N, Prot::RW);
        let data = pattern(N, |i| i as i32);
        fx.cpu_fill(B, &data);
        assert_eq!(fx.mirror.migrate_to_device(B, B + N * P), Ok(N as usize));
        assert_on_device(&fx, &fx.mirror, B, N);
        let read = dmirror_read(&fx.mirror, B, N).unwrap();
        assert_bytes(&read, &data, &format!("device, round {round}"));
        if !fx.private() {
            let back = fx.mirror.migrate_to_system(B, B + N * P);
            assert_eq!(back, Ok(N as usize), "round {round}");
        }
        let read = fx.cpu_read(B, N * P);
        assert_bytes(&read, &data, &format!("CPU, round {round}"));
        assert_in_system(&fx, B, N);
        assert!(fx.mirror.entries(B, B + N * P).is_empty(), "round {round}");
        fx.space.munmap(B, N * P).unwrap();
    }
    fx.assert_coherent();
}

/// `hmm2.snapshot`: a non-faulting walk of seven pages — `PROT_NONE`, a
/// hole, the zero page, a read-only page, a read-write page, a page in
/// device 0's memory and one in device 1's — as device 0 sees them. A
/// page in device 1's private memory is `NONE` to device 0: the walk does
/// not look into another owner's device-private entry without faulting.
fn snapshot(v: DeviceMemory) {
    let fx = Fixture::in_variant(v);
    let dev0 = &fx.mirror;
    let dev1 = fx.second_mirror();
    fx.map(B, 7, Prot::NONE);
    fx.space.munmap(B + P, P).unwrap();
    fx.space.mprotect(B + 2 * P, P, R).unwrap();
    fx.space.access(B + 2 * P, false).unwrap();
    fx.space.mprotect(B + 3 * P, P, Prot::RW).unwrap();
    fx.cpu_write(B + 3 * P, 1);
    fx.space.mprotect(B + 3 * P, P, R).unwrap();
    fx.space.mprotect(B + 4 * P, 3 * P, Prot::RW).unwrap();
    fx.cpu_write(B + 4 * P, 1);
    assert_eq!(dev0.migrate_to_device(B + 5 * P, B + 6 * P), Ok(1));
    assert_eq!(dev1.migrate_to_device(B + 6 * P, B + 7 * P), Ok(1));
    let faults = dev0.counters().faults;
    let seen = dev0.snapshot(B, B + 7 * P).unwrap();
    use SnapshotProt as S;
    let mut expected = vec![S::ERROR, S::ERROR, S::ZERO | S::READ, S::READ, S::WRITE];
    if fx.private() {
        expected.extend([S::DEV_PRIVATE_LOCAL | S::WRITE, S::NONE]);
    } else {
        expected.extend([
            S::DEV_COHERENT_LOCAL | S::WRITE,
            S::DEV_COHERENT_REMOTE | S::WRITE,
        ]);
    }
    assert_eq!(seen, expected);
    assert_eq!(dev0.counters().faults, faults, "nothing faulted");
    fx.assert_coherent();
}

/// A snapshot reports huge mappings with `PMD` and never faults a page in.
#[test]
fn snapshot_reports_pmd_and_faults_nothing() {
    let fx = Fixture::new();
    fx.map(B, M2 / P + 1, Prot::RW);
    fx.space.madvise(B, M2, Advice::HugePage).unwrap();
    fx.cpu_write(B, 1);
    let seen = fx.mirror.snapshot(B, B + M2 + P).unwrap();
    assert!(
        seen[..(M2 / P) as usize]
            .iter()
            .all(|&p| p == SnapshotProt::WRITE | SnapshotProt::PMD)
    );
    assert_eq!(seen[(M2 / P) as usize], SnapshotProt::NONE);
    assert!(fx.space.translate(B + M2).is_none(), "not faulted in");
}

/// `hmm2.double_map`: two devices read the same read-only pages; device 1
/// migrates them to itself (device 0, a foreign owner, is zapped); device
/// 0 reads again, read-only: coherent, it finds device 1's new frames;
/// private, its fault migrates them back to system memory (device 1
/// loses them) and it maps those.
fn double_map(v: DeviceMemory) {
    let fx = Fixture::in_variant(v);
    let dev0 = &fx.mirror;
    let dev1 = fx.second_mirror();
    fx.map(B, 6, Prot::RW);
    let data = pattern(6, |i| i as i32);
    fx.cpu_fill(B, &data);
    fx.space.mprotect(B, 6 * P, R).unwrap();
    assert_bytes(&dmirror_read(dev0, B, 6).unwrap(), &data, "device 0");
    assert_bytes(&dmirror_read(&dev1, B, 6).unwrap(), &data, "device 1");
    for i in 0..6 {
        assert_eq!(dev0.entry(B + i * P), dev1.entry(B + i * P));
    }
    assert_eq!(dev1.migrate_to_device(B, B + 6 * P), Ok(6));
    assert!(dev0.entries(B, B + 6 * P).is_empty(), "foreign Migrate");
    assert_on_device(&fx, &dev1, B, 6);
    let (faults, retries) = (dev0.counters().faults, dev0.counters().retries);
    let read = dmirror_read(dev0, B, 6).unwrap();
    assert_bytes(&read, &data, "device 0 after the migration");
    assert_eq!(dev0.counters().faults, faults + 6, "one fault per page");
    if !fx.private() {
        // Coherent pages need no migration: nothing invalidates the walk.
        assert_eq!(dev0.counters().retries, retries, "one fault round");
    }
    for i in 0..6 {
        let va = B + i * P;
        let pte = dev0.entry(va).unwrap();
        assert!(!pte.translation.writable, "still read-only");
        assert_eq!(Some(pte.translation), fx.space.translate_frame(va));
        if fx.private() {
            assert_eq!(fx.memory.frame(pte.translation.pfn).device, None);
            assert_eq!(dev1.entry(va), None, "device 1 lost page {i}");
        } else {
            assert_eq!(Some(pte), dev1.entry(va));
        }
    }
    fx.assert_coherent();
}

/// `hmm.hmm_cow_in_device`: pages in device memory, then fork; the
/// parent's writes copy them (coherent: straight from device memory;
/// private: each write first migrates its page back) into system pages,
/// which a snapshot shows as plain writable pages.
fn hmm_cow_in_device(v: DeviceMemory) {
    let fx = Fixture::in_variant(v);
    fx.map(B, 4, Prot::RW);
    let data = pattern(4, |i| i as i32);
    fx.cpu_fill(B, &data);
    assert_eq!(fx.mirror.migrate_to_device(B, B + 4 * P), Ok(4));
    let child = fx.space.fork();
    fx.cpu_fill(B, &data);
    child.exit();
    let seen = fx.mirror.snapshot(B, B + 4 * P).unwrap();
    assert_eq!(seen, vec![SnapshotProt::WRITE; 4]);
    assert_in_system(&fx, B, 4);
    fx.assert_coherent();
}

/// A `MADV_HUGEPAGE` 2 MiB of its own, mapped `prot`, from `B`.
fn huge_buffer(fx: &Fixture, prot: Prot) {
    fx.map(B, 2 * M2 / P, prot);
    fx.space.madvise(B, M2, Advice::HugePage).unwrap();
}

/// `hmm.migrate_anon_huge_empty`: an untouched THP-eligible read-only
/// range migrates whole: 512 fresh device pages.
fn migrate_anon_huge_empty(v: DeviceMemory) {
    let fx = Fixture::in_variant(v);
    huge_buffer(&fx, R);
    let pages = M2 / P;
    assert_eq!(fx.mirror.migrate_to_device(B, B + M2), Ok(pages as usize));
    assert_on_device(&fx, &fx.mirror, B, pages);
    let read = dmirror_read(&fx.mirror, B, pages).unwrap();
    assert_bytes(&read, &zeros(M2), "fresh device pages");
    fx.assert_coherent();
}

/// `hmm.migrate_anon_huge_zero`: the huge zero page (a CPU read of the
/// read-only range) is split and its 512 entries migrate; the CPU then
/// reads the device's fresh pages.
fn migrate_anon_huge_zero(v: DeviceMemory) {
    let fx = Fixture::in_variant(v);
    huge_buffer(&fx, R);
    fx.space.access(B, false).unwrap();
    assert!(fx.space.pte(B).is_none(), "a huge (zero) PMD maps it");
    let pages = M2 / P;
    assert_eq!(fx.mirror.migrate_to_device(B, B + M2), Ok(pages as usize));
    assert_on_device(&fx, &fx.mirror, B, pages);
    let read = dmirror_read(&fx.mirror, B, pages).unwrap();
    assert_bytes(&read, &zeros(M2), "what the device read");
    assert_bytes(&fx.cpu_read(B, M2), &zeros(M2), "what the CPU reads");
    for i in 0..pages {
        assert_ne!(fx.cpu_pfn(B + i * P), ZERO_PFN);
    }
    fx.assert_coherent();
}

/// `hmm.migrate_anon_huge_free`: a written THP migrates (split, 512
/// pages), then `MADV_FREE` of the range succeeds.
fn migrate_anon_huge_free(v: DeviceMemory) {
    let fx = Fixture::in_variant(v);
    huge_buffer(&fx, Prot::RW);
    let data = pattern(M2 / P, |i| i as i32);
    fx.cpu_fill(B, &data);
    assert_eq!(fx.memory.frame(fx.cpu_pfn(B)).order, 9, "THP-backed");
    assert_eq!(
        fx.mirror.migrate_to_device(B, B + M2),
        Ok((M2 / P) as usize)
    );
    assert_on_device(&fx, &fx.mirror, B, M2 / P);
    let read = dmirror_read(&fx.mirror, B, M2 / P).unwrap();
    assert_bytes(&read, &data, "what the device read");
    assert_eq!(fx.space.madvise(B, M2, Advice::Free), Ok(()));
    if fx.private() {
        // MADV_FREE passes over device-private entries (its range still
        // invalidates the device's translations).
        for i in 0..M2 / P {
            assert!(fx.space.pte(B + i * P).is_device_private(), "page {i}");
        }
    }
    fx.assert_coherent();
}

/// `hmm.migrate_anon_huge_fault`: a written THP migrates, and the CPU
/// reads every page back.
fn migrate_anon_huge_fault(v: DeviceMemory) {
    let fx = Fixture::in_variant(v);
    huge_buffer(&fx, Prot::RW);
    let data = pattern(M2 / P, |i| i as i32);
    fx.cpu_fill(B, &data);
    assert_eq!(
        fx.mirror.migrate_to_device(B, B + M2),
        Ok((M2 / P) as usize)
    );
    let read = dmirror_read(&fx.mirror, B, M2 / P).unwrap();
    assert_bytes(&read, &data, "what the device read");
    let on_device: Vec<_> = (0..M2 / P).map(|i| fx.entry_pfn(B + i * P)).collect();
    assert_bytes(&fx.cpu_read(B, M2), &data, "what the CPU reads back");
    for i in 0..M2 / P {
        let va = B + i * P;
        let now = fx.cpu_pfn(va);
        // Private: faulted back to a system page; coherent: read in place.
        assert_eq!(now == on_device[i as usize], !fx.private(), "page {i}");
        assert_eq!(fx.memory.frame(now).device.is_none(), fx.private());
    }
    fx.assert_coherent();
}

/// `hmm.migrate_partial_unmap_fault`: migrate 2 MiB (THP or not), unmap
/// 1 MiB of it at offset 0, 512 KiB or 1 MiB; the device loses that part
/// and the CPU reads the rest from device memory.
fn migrate_partial_unmap_fault(v: DeviceMemory) {
    let pages = M2 / P;
    for thp in [false, true] {
        for offset in [0, M2 / 4, M2 / 2] {
            let fx = Fixture::in_variant(v);
            fx.map(B, 2 * pages, Prot::RW);
            let advice = if thp {
                Advice::HugePage
            } else {
                Advice::NoHugePage
            };
            fx.space.madvise(B, M2, advice).unwrap();
            let data = pattern(pages, |i| i as i32);
            fx.cpu_fill(B, &data);
            assert_eq!(fx.mirror.migrate_to_device(B, B + M2), Ok(pages as usize));
            let read = dmirror_read(&fx.mirror, B, pages).unwrap();
            assert_bytes(&read, &data, "what the device read");
            fx.space.munmap(B + offset, M2 / 2).unwrap();
            let gone = fx.mirror.entries(B + offset, B + offset + M2 / 2);
            assert!(gone.is_empty(), "thp {thp} offset {offset:#x}: {gone:?}");
            for i in 0..pages {
                let va = B + i * P;
                if (offset..offset + M2 / 2).contains(&(i * P)) {
                    continue;
                }
                let page = &data[(i * P) as usize..((i + 1) * P) as usize];
                let what = format!("thp {thp} offset {offset:#x} page {i}");
                assert_bytes(&fx.cpu_read(va, P), page, &what);
                let cpu = fx.space.translate_frame(va).unwrap();
                // Private: the read faulted it back to system memory.
                let device = (!fx.private()).then(|| fx.mirror.owner());
                assert_eq!(fx.memory.frame(cpu.pfn).device, device);
                // The VMA split notifies over the whole PMD (Linux's
                // `__split_huge_pmd` does, huge or not), so the device may
                // have dropped more than the unmapped part.
                if let Some(pte) = fx.mirror.entry(va) {
                    assert_eq!(
                        pte.translation, cpu,
                        "thp {thp} offset {offset:#x} page {i}"
                    );
                }
            }
            fx.assert_coherent();
        }
    }
}

/// `hmm.migrate_remap_fault`: mremap (plain or `MREMAP_DONTUNMAP`) of a
/// 2 MiB buffer to an offset of 0, 512 KiB or 1 MiB past its end, before
/// or after migrating it; the CPU reads every page at the new place and
/// the device never holds an old translation.
fn migrate_remap_fault(v: DeviceMemory) {
    let pages = M2 / P;
    for before in [false, true] {
        for dont_unmap in [false, true] {
            for thp in [false, true] {
                for offset in [0, M2 / 4, M2 / 2] {
                    let fx = Fixture::in_variant(v);
                    fx.map(B, 8 * pages, Prot::RW);
                    let advice = if thp {
                        Advice::HugePage
                    } else {
                        Advice::NoHugePage
                    };
                    fx.space.madvise(B, M2, advice).unwrap();
                    fx.space.munmap(B + M2, 2 * M2).unwrap();
                    let data = pattern(pages, |i| i as i32);
                    fx.cpu_fill(B, &data);
                    let to = B + M2 + offset;
                    let flags = MremapFlags {
                        fixed: Some(to),
                        may_move: true,
                        dont_unmap,
                    };
                    let mut at = B;
                    if before {
                        assert_eq!(fx.space.mremap(B, M2, M2, flags), Ok(to));
                        at = to;
                    }
                    let moved = fx.mirror.migrate_to_device(at, at + M2);
                    let case = format!(
                        "before {before} dont_unmap {dont_unmap} thp {thp} offset {offset:#x}"
                    );
                    assert_eq!(moved, Ok(pages as usize), "{case}");
                    let read = dmirror_read(&fx.mirror, at, pages).unwrap();
                    assert_bytes(&read, &data, &format!("device: {case}"));
                    if !before {
                        assert_eq!(fx.space.mremap(B, M2, M2, flags), Ok(to));
                        at = to;
                    }
                    assert_bytes(&fx.cpu_read(at, M2), &data, &format!("CPU: {case}"));
                    for i in 0..pages {
                        let va = at + i * P;
                        if let Some(pte) = fx.mirror.entry(va) {
                            assert_eq!(Some(pte.translation), fx.space.translate_frame(va));
                        }
                    }
                    let stale = fx.mirror.entries(B, at.min(B + M2));
                    assert!(
                        stale
                            .iter()
                            .all(|(va, p)| Some(p.translation) == fx.space.translate_frame(*va))
                    );
                    fx.assert_coherent();
                }
            }
        }
    }
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
fn anon_teardown(v: DeviceMemory) {
    const PAGES: u64 = 64;
    const ROUNDS: u64 = 20;
    with_watchdog(move || {
        let fx = Fixture::in_variant(v);
        for round in 0..ROUNDS {
            fx.map(B, PAGES, Prot::RW);
            let data = pattern(PAGES, |i| (i + round as i64) as i32);
            fx.cpu_fill(B, &data);
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
                    let mut page = zeros(P);
                    let used = fault.map(|()| fx.mirror.read_bytes(B + i * P, &mut page));
                    match used {
                        Ok(Access::Hit) => {
                            let want = &data[(i * P) as usize..((i + 1) * P) as usize];
                            assert_bytes(&page, want, &format!("round {round} page {i}"));
                        }
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
fn anon_read_multiple(v: DeviceMemory) {
    let fx = Fixture::in_variant(v);
    for cycle in 0..10 {
        fx.map(B, 8, Prot::RW);
        let data = pattern(8, |i| (i + cycle) as i32);
        fx.cpu_fill(B, &data);
        let read = dmirror_read(&fx.mirror, B, 8).unwrap();
        assert_bytes(&read, &data, &format!("cycle {cycle}"));
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
fn exclusive(v: DeviceMemory) {
    let fx = Fixture::in_variant(v);
    fx.map(B, 4, Prot::RW);
    let data = pattern(4, |i| i as i32);
    fx.cpu_fill(B, &data);
    let frames: Vec<u64> = (0..4).map(|i| fx.cpu_pfn(B + i * P)).collect();
    let mut read = zeros(4 * P);
    for i in 0..4 {
        let va = B + i * P;
        fx.mirror.make_exclusive(va).unwrap();
        let pte = fx.mirror.entry(va).unwrap();
        assert!(pte.exclusive && pte.translation.writable);
        assert_eq!(pte.translation.pfn, frames[i as usize]);
        assert_eq!(fx.space.translate(va), None, "the CPU cannot reach it");
        assert_eq!(fx.mirror.access(va, true), Access::Hit);
        let page = &mut read[(i * P) as usize..((i + 1) * P) as usize];
        assert_eq!(fx.mirror.read_bytes(va, page), Access::Hit);
    }
    assert_bytes(&read, &data, "what the device read");
    assert!(fx.mirror.stats().skipped >= 4, "own Exclusive ranges");
    // ptr[i]++: the CPU takes the pages back, reading and writing them.
    assert_bytes(&fx.cpu_read(B, 4 * P), &data, "the CPU reads them back");
    let plus_one = pattern(4, |i| i as i32 + 1);
    fx.cpu_fill(B, &plus_one);
    assert_bytes(&fx.cpu_read(B, 4 * P), &plus_one, "and wrote them");
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
fn exclusive_mprotect(v: DeviceMemory) {
    let fx = Fixture::in_variant(v);
    fx.map(B, 4, Prot::RW);
    let data = pattern(4, |i| i as i32);
    fx.cpu_fill(B, &data);
    let mut read = zeros(4 * P);
    for i in 0..4 {
        let va = B + i * P;
        fx.mirror.make_exclusive(va).unwrap();
        let page = &mut read[(i * P) as usize..((i + 1) * P) as usize];
        assert_eq!(fx.mirror.read_bytes(va, page), Access::Hit);
    }
    assert_bytes(&read, &data, "what the device read");
    fx.space.mprotect(B, 4 * P, R).unwrap();
    assert!(fx.mirror.entries(B, B + 4 * P).is_empty());
    for i in 0..4 {
        let va = B + i * P;
        assert_eq!(fx.mirror.access(va, true), Access::Miss);
        // HMM_DMIRROR_WRITE after mprotect(PROT_READ): EPERM.
        assert_eq!(fx.mirror.fault(va, true), Err(FaultError::Denied));
        assert_eq!(fx.mirror.fault(va, true).unwrap_err().errno(), -1);
        assert_eq!(fx.mirror.make_exclusive(va), Err(FaultError::Unmapped));
    }
    fx.assert_coherent();
}

/// `hmm.exclusive_cow`: fork of exclusively held pages zaps the device, and
/// CPU writes in both processes then work on their own pages.
fn exclusive_cow(v: DeviceMemory) {
    let fx = Fixture::in_variant(v);
    fx.map(B, 4, Prot::RW);
    let data = pattern(4, |i| i as i32);
    fx.cpu_fill(B, &data);
    let frames: Vec<u64> = (0..4).map(|i| fx.cpu_pfn(B + i * P)).collect();
    for i in 0..4 {
        fx.mirror.make_exclusive(B + i * P).unwrap();
    }
    let child = fx.space.fork();
    assert!(fx.mirror.entries(B, B + 4 * P).is_empty(), "fork zapped");
    // Both processes run ptr[i]++ over the buffer, the parent first.
    let plus_one = pattern(4, |i| i as i32 + 1);
    for (who, space) in [("parent", &*fx.space), ("child", &child)] {
        let mut seen = zeros(4 * P);
        space.read_bytes(B, &mut seen).unwrap();
        assert_bytes(&seen, &data, who);
        space.write_bytes(B, &plus_one).unwrap();
        space.read_bytes(B, &mut seen).unwrap();
        assert_bytes(&seen, &plus_one, who);
    }
    for i in 0..4 {
        let va = B + i * P;
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

/// Every `TEST_F` above in both of test_hmm's `FIXTURE_VARIANT`s.
macro_rules! in_both_variants {
    ($($name:ident),* $(,)?) => {
        mod device_private {
            use mmun_secondary::device_mirror::DeviceMemory;
            $(#[test]
            fn $name() {
                super::$name(DeviceMemory::Private)
            })*
        }
        mod device_coherent {
            use mmun_secondary::device_mirror::DeviceMemory;
            $(#[test]
            fn $name() {
                super::$name(DeviceMemory::Coherent)
            })*
        }
    };
}

in_both_variants!(
    open_close,
    anon_read,
    anon_read_prot,
    anon_write,
    anon_write_prot,
    anon_write_child,
    anon_write_child_shared,
    anon_write_huge,
    file_read,
    file_write,
    migrate,
    migrate_sparse,
    migrate_fault,
    migrate_release,
    migrate_shared,
    migrate_mixed,
    migrate_multiple,
    snapshot,
    double_map,
    hmm_cow_in_device,
    migrate_anon_huge_empty,
    migrate_anon_huge_zero,
    migrate_anon_huge_free,
    migrate_anon_huge_fault,
    migrate_partial_unmap_fault,
    migrate_remap_fault,
    anon_teardown,
    anon_read_multiple,
    exclusive,
    exclusive_mprotect,
    exclusive_cow,
);

/// A fault that walked our own device-private page, and has not yet
/// programmed it when the CPU takes the page back to system memory, must
/// retry. The CPU's migration is our own `Migrate` range (skipped), and
/// the device's table holds no entry for `page_to_ram` to drop (the
/// mprotect zapped it), so only the generation, bumped all the same,
/// tells the fault. test_hmm has this race on Linux:
/// `dmirror_devmem_fault_alloc_and_copy` erases the page and bumps nothing
/// a fault in flight would see.
#[test]
fn a_fault_that_walked_its_own_page_retries_when_the_cpu_takes_it_back() {
    let fx = Fixture::in_variant(DeviceMemory::Private);
    fx.map(B, 1, Prot::RW);
    fx.cpu_write(B, 1);
    assert_eq!(fx.mirror.migrate_to_device(B, B + P), Ok(1));
    fx.space.mprotect(B, P, R).expect("mprotect");
    assert_eq!(fx.mirror.entry(B), None, "the mprotect zapped the device");
    assert!(fx.space.pte(B).is_device_private());
    let space = Arc::clone(&fx.space);
    let taken = std::sync::atomic::AtomicBool::new(false);
    fx.mirror.set_walk_hook(Some(Arc::new(move |page, _| {
        if !taken.swap(true, std::sync::atomic::Ordering::SeqCst) {
            space.access(page, false).expect("CPU read");
        }
    })));
    assert_eq!(fx.mirror.fault(B, false), Ok(()));
    fx.mirror.set_walk_hook(None);
    let now = fx.cpu_pfn(B);
    assert_eq!(fx.mirror.entry(B).map(|e| e.translation.pfn), Some(now));
    assert_eq!(fx.mirror.access(B, false), Access::Hit);
    fx.assert_coherent();
}
