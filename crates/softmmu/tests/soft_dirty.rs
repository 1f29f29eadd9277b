//! `clear_refs` 4 with soft-dirty tracking (`CONFIG_MEM_SOFT_DIRTY=y`,
//! `clear_soft_dirty_tracking`) against the recorded kernel's
//! (`clear_soft_dirty`, the option off): the first write-protects every
//! present entry and the CPU's next write faults the write access back on
//! the same page; the second changes nothing.

use std::sync::Arc;

use mmun_core::Owner;
use mmun_softmmu::page_table::SwapKind;
use mmun_softmmu::shmem::ShmemObject;
use mmun_softmmu::{AddressSpace, MapRequest, Memory, Pfn};
use mmun_softmmu::{Advice, Prot};

const B: u64 = 0x1000_0000_0000;
const P: u64 = 0x1000;
const M2: u64 = 0x20_0000;
/// A THP-backed private region at `B`, a private region of small pages,
/// and a shared memfd region.
const THP: u64 = B;
const ANON: u64 = B + M2;
const SHARED: u64 = B + 2 * M2;

fn map(space: &AddressSpace, addr: u64, len: u64, object: Option<Arc<ShmemObject>>) {
    space
        .mmap(MapRequest {
            addr,
            len,
            prot: Prot::RW,
            shared: object.is_some(),
            object,
            noreplace: true,
            ..MapRequest::default()
        })
        .unwrap();
}

/// Every kind of entry, each written (so writable) but for a zero-page
/// entry at `ANON + P` and a device-exclusive entry at `ANON + 2 * P`.
fn populated() -> AddressSpace {
    let space = AddressSpace::new(Arc::new(Memory::new()));
    map(&space, THP, M2, None);
    space.madvise(THP, M2, Advice::HugePage).unwrap();
    map(&space, ANON, 4 * P, None);
    let memfd = Arc::new(ShmemObject::new(Arc::clone(space.memory()), 2 * P));
    map(&space, SHARED, 2 * P, Some(memfd));
    for page in [THP, ANON, ANON + 2 * P, ANON + 3 * P, SHARED, SHARED + P] {
        space.access(page, true).unwrap();
    }
    space.access(ANON + P, false).unwrap();
    assert!(space.pte(THP).is_none(), "PMD-mapped");
    space
        .make_device_exclusive(ANON + 2 * P, Owner::unique())
        .unwrap();
    space
}

/// The written pages, which map writable frames.
const WRITTEN: [u64; 5] = [THP, THP + M2 - P, ANON, ANON + 3 * P, SHARED + P];

fn frames(space: &AddressSpace, pages: &[u64]) -> Vec<(Pfn, bool)> {
    pages.iter().map(|&p| space.translate(p).unwrap()).collect()
}

#[test]
fn tracking_write_protects_every_present_entry_and_keeps_its_frame() {
    let space = populated();
    let before = frames(&space, &WRITTEN);
    assert!(before.iter().all(|&(_, w)| w), "written pages are writable");
    let zero = space.translate(ANON + P).unwrap();
    let exclusive = space.pte(ANON + 2 * P);

    space.clear_soft_dirty_tracking();

    for (page, (&(pfn, _), now)) in WRITTEN
        .iter()
        .zip(before.iter().zip(frames(&space, &WRITTEN)))
    {
        assert_eq!(now, (pfn, false), "{page:#x}: same frame, write-protected");
    }
    assert!(space.pte(THP).is_none(), "the huge PMD stays huge");
    assert_eq!(
        space.translate(ANON + P),
        Some(zero),
        "the zero page as it was"
    );
    let entry = space.pte(ANON + 2 * P);
    assert_eq!(entry.swap_kind(), Some(SwapKind::DeviceExclusive));
    assert_eq!(entry, exclusive, "a swap-type entry only loses the bit");
}

#[test]
fn after_tracking_a_cpu_write_faults_write_access_back_on_the_same_page() {
    let space = populated();
    let before = frames(&space, &WRITTEN);
    space.clear_soft_dirty_tracking();
    for &page in &WRITTEN {
        space.access(page, true).unwrap();
    }
    // Exclusive anonymous pages (the huge one too) are reused, the shared
    // page is written in place: no copy.
    let after = frames(&space, &WRITTEN);
    let expected: Vec<_> = before.iter().map(|&(pfn, _)| (pfn, true)).collect();
    assert_eq!(after, expected);
    assert!(space.pte(THP).is_none(), "the huge PMD is reused whole");
}

#[test]
fn the_recorded_kernels_clear_refs_changes_no_entry() {
    let space = populated();
    let before = frames(&space, &WRITTEN);
    let exclusive = space.pte(ANON + 2 * P);
    space.clear_soft_dirty();
    assert_eq!(frames(&space, &WRITTEN), before);
    assert_eq!(space.pte(ANON + 2 * P), exclusive);
}

#[test]
fn tracking_leaves_holes_and_inaccessible_entries_inaccessible() {
    let space = populated();
    space.mprotect(ANON + 3 * P, P, Prot::NONE).unwrap();
    space.clear_soft_dirty_tracking();
    assert_eq!(space.translate(ANON + 3 * P), None, "PROT_NONE stays so");
    let (_, writable) = space.mapped_frame(ANON + 3 * P).unwrap();
    assert!(!writable);
    assert!(space.pte(SHARED - P).is_none(), "nothing appears in a hole");
}
