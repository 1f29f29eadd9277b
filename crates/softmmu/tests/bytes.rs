//! Frames carry bytes: CPU loads and stores through an address space
//! (`read_bytes`/`write_bytes`, faulting as an access does), contents that
//! follow a page through copy-on-write, migration (system, device and
//! back), THP collapse and split, KSM merging only identical pages, and
//! zeros for every page never written or freed since.

mod notify_log;

use std::sync::Arc;

use mmun_core::Owner;
use mmun_softmmu::shmem::ShmemObject;
use mmun_softmmu::{AddressSpace, DevicePagemap, Errno, MapRequest, Pfn, Translation};
use mmun_softmmu::{Advice, Prot};
use notify_log::{map, new_space};

const B: u64 = 0x1000_0000_0000;
const P: u64 = 0x1000;
const M2: u64 = 0x20_0000;

/// `len` bytes that differ from page to page: `seed`, `seed + 1`, ...
fn bytes(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| seed.wrapping_add(i as u8)).collect()
}

fn read(space: &AddressSpace, addr: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0xAA; len];
    space.read_bytes(addr, &mut buf).unwrap();
    buf
}

/// Every page of `[addr, addr + pages)` written with its own pattern.
fn fill(space: &AddressSpace, addr: u64, pages: u64) {
    for i in 0..pages {
        space
            .write_bytes(addr + i * P, &bytes(i as u8, P as usize))
            .unwrap();
    }
}

fn assert_filled(space: &AddressSpace, addr: u64, pages: u64) {
    for i in 0..pages {
        let got = read(space, addr + i * P, P as usize);
        assert!(got == bytes(i as u8, P as usize), "page {i}");
    }
}

#[test]
fn untouched_memory_reads_zeros_and_stores_read_back_across_pages() {
    let space = new_space();
    map(&space, B, 4 * P, Prot::RW);
    assert_eq!(read(&space, B, 3 * P as usize), vec![0; 3 * P as usize]);
    let data = bytes(7, 2 * P as usize + 100);
    space.write_bytes(B + P - 50, &data).unwrap();
    assert_eq!(read(&space, B + P - 50, data.len()), data);
    assert_eq!(
        read(&space, B, (P - 50) as usize),
        vec![0; (P - 50) as usize]
    );
    assert_eq!(space.memory().pages_with_contents(), 4, "pages 0 to 3");
}

#[test]
fn loads_and_stores_fault_as_cpu_accesses_do() {
    let space = new_space();
    map(&space, B, 2 * P, Prot::NONE);
    let mut buf = [0; 4];
    assert_eq!(space.read_bytes(B, &mut buf), Err(Errno::Fault));
    assert_eq!(space.read_bytes(B + 4 * P, &mut buf), Err(Errno::Fault));
    space
        .mprotect(
            B,
            2 * P,
            Prot {
                read: true,
                write: false,
                exec: false,
            },
        )
        .unwrap();
    space.read_bytes(B, &mut buf).unwrap();
    assert_eq!(space.write_bytes(B, &[1]), Err(Errno::Fault));
    // A read maps the zero page; nothing is allocated for it.
    assert_eq!(space.memory().pages_with_contents(), 0);
}

#[test]
fn copy_on_write_gives_the_writer_a_copy_of_the_bytes() {
    let parent = new_space();
    map(&parent, B, 2 * P, Prot::RW);
    fill(&parent, B, 2);
    let child = parent.fork();
    assert_filled(&child, B, 2);
    child.write_bytes(B + 10, &[0xEE; 4]).unwrap();
    let mut expected = bytes(0, P as usize);
    expected[10..14].copy_from_slice(&[0xEE; 4]);
    assert_eq!(read(&child, B, P as usize), expected, "the rest was copied");
    assert_filled(&parent, B, 2);
    child.exit();
}

#[test]
fn a_private_file_mapping_copies_the_file_page_on_write() {
    let space = new_space();
    let object = Arc::new(ShmemObject::new(Arc::clone(space.memory()), P));
    let page = object.get_page(space.memory(), 0).unwrap();
    space.memory().write(page, 0, &[1, 2, 3]);
    space
        .mmap(MapRequest {
            addr: B,
            len: P,
            prot: Prot::RW,
            object: Some(Arc::clone(&object)),
            fixed: true,
            ..MapRequest::default()
        })
        .unwrap();
    space.write_bytes(B + 3, &[4]).unwrap();
    assert_eq!(read(&space, B, 4), vec![1, 2, 3, 4]);
    let mut file = [0; 4];
    space.memory().read(page, 0, &mut file);
    assert_eq!(file, [1, 2, 3, 0], "the file keeps its bytes");
}

#[test]
fn migration_moves_the_bytes() {
    let space = new_space();
    map(&space, B, 4 * P, Prot::RW);
    fill(&space, B, 4);
    let before = space.translate(B).unwrap().0;
    assert_eq!(space.migrate(B, B + 4 * P), 4);
    assert_ne!(space.translate(B).unwrap().0, before);
    assert_filled(&space, B, 4);
}

struct Quiet;

impl DevicePagemap for Quiet {
    fn page_to_ram(&self, _: u64, _: Pfn, _: Option<Translation>) {}
}

#[test]
fn device_migration_moves_the_bytes_both_ways() {
    for private in [false, true] {
        let space = new_space();
        map(&space, B, 4 * P, Prot::RW);
        fill(&space, B, 4);
        let owner = Owner::unique();
        let ops: Arc<dyn DevicePagemap> = Arc::new(Quiet);
        if private {
            space.memory().register_device_private(owner, &ops);
        }
        assert_eq!(space.migrate_device(B, B + 4 * P, owner), 4);
        let device_page = space.pte(B).pfn();
        let mut on_device = vec![0; P as usize];
        space.memory().read(device_page, 0, &mut on_device);
        assert_eq!(on_device, bytes(0, P as usize), "private {private}");
        // Page 0 comes back by a CPU touch (private) or a plain access
        // (coherent), the others by migration to system memory.
        assert_filled(&space, B, 1);
        let back = space.migrate_device_to_system(B, B + 4 * P, owner, |_, _| ());
        assert_eq!(back, Ok(if private { 3 } else { 4 }));
        assert_filled(&space, B, 4);
    }
}

#[test]
fn collapse_and_split_keep_the_bytes() {
    let space = new_space();
    map(&space, B, 2 * M2, Prot::RW);
    space.madvise(B, M2, Advice::NoHugePage).unwrap();
    fill(&space, B, 3);
    space.write_bytes(B + M2 - P, &[9; 8]).unwrap();
    space.madvise(B, M2, Advice::HugePage).unwrap();
    space.madvise(B, M2, Advice::Collapse).unwrap();
    assert!(space.pte(B).is_none(), "a huge PMD maps the block");
    assert_filled(&space, B, 3);
    assert_eq!(read(&space, B + M2 - P, 9), [9, 9, 9, 9, 9, 9, 9, 9, 0]);
    assert_eq!(read(&space, B + 3 * P, 4), vec![0; 4], "holes stay zeros");
    // mprotect of part of the huge page splits it; the bytes stay.
    space
        .mprotect(
            B,
            P,
            Prot {
                read: true,
                write: false,
                exec: false,
            },
        )
        .unwrap();
    assert!(!space.pte(B + P).is_none(), "split to PTEs");
    assert_filled(&space, B, 3);
}

#[test]
fn ksm_merges_only_pages_with_the_same_bytes() {
    let space = new_space();
    map(&space, B, 4 * P, Prot::RW);
    for (i, seed) in [1u8, 2, 1, 2].into_iter().enumerate() {
        space
            .write_bytes(B + i as u64 * P, &bytes(seed, P as usize))
            .unwrap();
    }
    // A page alone with its bytes is left alone.
    space.write_bytes(B + 3 * P, &[0xFF]).unwrap();
    assert_eq!(space.ksm_merge(B, B + 4 * P), 2);
    let pfn = |i: u64| space.translate(B + i * P).unwrap().0;
    assert_eq!(pfn(0), pfn(2), "identical pages share one KSM page");
    assert_ne!(pfn(1), pfn(3));
    assert_ne!(pfn(0), pfn(1));
    assert_eq!(read(&space, B + 2 * P, P as usize), bytes(1, P as usize));
    // A write to the KSM page copies it first.
    space.write_bytes(B + 2 * P, &[0]).unwrap();
    assert_eq!(read(&space, B, P as usize), bytes(1, P as usize));
}

#[test]
fn freed_pages_come_back_zeroed() {
    let space = new_space();
    map(&space, B, P, Prot::RW);
    space.write_bytes(B, &[5; 16]).unwrap();
    let pfn = space.translate(B).unwrap().0;
    space.munmap(B, P).unwrap();
    assert_eq!(space.memory().pages_with_contents(), 0);
    let mut buf = [0xAA; 16];
    space.memory().read(pfn, 0, &mut buf);
    assert_eq!(buf, [0; 16]);
    map(&space, B, P, Prot::RW);
    space.write_bytes(B + 100, &[1]).unwrap();
    assert_eq!(read(&space, B, 16), vec![0; 16]);
}

#[test]
fn migration_of_a_huge_page_moves_all_its_bytes() {
    let space = new_space();
    map(&space, B, 2 * M2, Prot::RW);
    space.madvise(B, M2, Advice::HugePage).unwrap();
    fill(&space, B, 2);
    space.write_bytes(B + M2 - 4, &[3; 4]).unwrap();
    let head = space.translate(B).unwrap().0;
    assert_eq!(space.memory().frame(head).order, 9, "THP-backed");
    assert_eq!(space.migrate(B, B + M2), 1);
    assert_ne!(space.translate(B).unwrap().0, head);
    assert_filled(&space, B, 2);
    assert_eq!(read(&space, B + M2 - 4, 4), vec![3; 4]);
}

/// A shared mapping of a 2 MiB shmem object whose pages 0 and 5 hold
/// `[1; 8]` and `[6; 8]`, collapsed into one large folio.
fn collapsed_shmem() -> (AddressSpace, Arc<ShmemObject>) {
    let space = new_space();
    let object = Arc::new(ShmemObject::new(Arc::clone(space.memory()), M2));
    for index in [0, 5] {
        let page = object.get_page(space.memory(), index).unwrap();
        space.memory().write(page, 0, &[index as u8 + 1; 8]);
        space.memory().put(page);
    }
    space
        .mmap(MapRequest {
            addr: B,
            len: M2,
            prot: Prot::RW,
            shared: true,
            object: Some(Arc::clone(&object)),
            fixed: true,
            ..MapRequest::default()
        })
        .unwrap();
    space.madvise(B, M2, Advice::Collapse).unwrap();
    (space, object)
}

#[test]
fn a_shmem_collapse_keeps_the_cached_bytes() {
    let (space, object) = collapsed_shmem();
    let head = object.find_page(0).unwrap();
    assert_eq!(space.memory().frame(head).order, 9, "one huge folio now");
    assert_eq!(read(&space, B, 9), [1, 1, 1, 1, 1, 1, 1, 1, 0]);
    assert_eq!(read(&space, B + 5 * P, 8), vec![6; 8]);
    assert_eq!(read(&space, B + 6 * P, 8), vec![0; 8]);
}

/// `MADV_REMOVE` of one page of a PMD-mapped shmem folio: the partial
/// unmap splits the PMD (for a file folio, clears it), so the hole reads
/// zeros, the rest keeps its bytes, and the folio, no longer whole in the
/// cache, is mapped back page by page. The PMD used to survive the punch,
/// and the hole read the old bytes through it.
#[test]
fn a_hole_punched_in_a_pmd_mapped_shmem_folio_reads_zeros() {
    let (space, _object) = collapsed_shmem();
    assert_eq!(read(&space, B + 5 * P, 8), vec![6; 8]);
    assert!(space.pte(B).is_none(), "mapped by the huge PMD");
    space.madvise(B + 5 * P, P, Advice::Remove).unwrap();
    assert_eq!(space.mapped_frame(B + 5 * P), None, "the PMD is gone");
    assert_eq!(
        read(&space, B + 5 * P, 8),
        vec![0; 8],
        "the hole reads zeros"
    );
    assert_eq!(read(&space, B, 8), vec![1; 8]);
    assert!(space.pte(B).is_present(), "mapped back by a PTE");
}
