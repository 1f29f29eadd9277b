//! `vm.max_map_count`: where Linux 6.18 checks it (measured on this
//! machine's 6.18 kernel with a C program that fragments a mapping, and in
//! the oracle run the issue reports): `do_mmap` refuses when the count is
//! already *over* the limit, `split_vma` (mprotect, madvise, mlock) before
//! each split when it is *at* it, and munmap only when cutting the middle
//! out of one VMA (three pieces) at the limit.

use std::sync::Arc;

use mmun_replay::{ORACLE_OWN_VMAS, Replayer};
use mmun_script::{Outcome, parse_script};
use mmun_softmmu::{AddressSpace, Errno, MapRequest, Memory};

const B: u64 = 0x1000_0000_0000;
const P: u64 = 0x1000;

fn map(space: &AddressSpace, addr: u64, pages: u64) -> Result<u64, Errno> {
    space.mmap(MapRequest {
        addr,
        len: pages * P,
        prot: mmun_softmmu::Prot::RW,
        noreplace: true,
        ..MapRequest::default()
    })
}

fn count(space: &AddressSpace) -> usize {
    space.vmas().len()
}

#[test]
fn fragmenting_a_mapping_fails_at_the_step_linux_fails_at() {
    // mmap 256 MiB, then mprotect every other page: each step splits off
    // two VMAs. On Linux 6.18, in `mmun oracle`'s process (36 VMAs of its
    // own), step 32,749 is the first to return -ENOMEM.
    let mut script = String::from("mmap 0 0x10000000 rw\n");
    for i in 0..32_760u64 {
        script.push_str(&format!("mprotect {:#x} 0x1000 r\n", 2 * i * P));
    }
    let replayer = Replayer::new();
    let mut first_failure = None;
    for step in parse_script(&script).unwrap() {
        let outcome = replayer.step(&step).unwrap().report.outcome;
        if outcome != Outcome::Rc(0) {
            assert_eq!(outcome, Outcome::Rc(-12));
            first_failure.get_or_insert(step.number);
        }
    }
    assert_eq!(first_failure, Some(32_749));
    // The first split of the failing step stays, as in Linux.
    assert_eq!(
        replayer.space().vmas().len() + ORACLE_OWN_VMAS,
        65_530,
        "the address space stops exactly at the limit"
    );
}

#[test]
fn mmap_refuses_only_over_the_limit_and_splits_at_it() {
    let space = AddressSpace::new(Arc::new(Memory::new()));
    space.set_max_map_count(4);
    for i in 0..5 {
        // Separate mappings (a gap between them), so nothing merges.
        map(&space, B + 2 * i * P, 1).unwrap();
    }
    assert_eq!(count(&space), 5, "do_mmap lets the count reach max + 1");
    assert_eq!(map(&space, B + 20 * P, 1), Err(Errno::NoMem));
    space.munmap(B, P).unwrap();
    space.munmap(B + 2 * P, P).unwrap();
    assert_eq!(count(&space), 3);
    // At 3 of 4: a three-way mprotect split does the first split (3 -> 4)
    // and refuses the second.
    map(&space, B + 40 * P, 3).unwrap();
    assert_eq!(count(&space), 4);
    let before = count(&space);
    assert_eq!(
        space.mprotect(B + 41 * P, P, mmun_softmmu::Prot::NONE),
        Err(Errno::NoMem)
    );
    assert_eq!(
        count(&space),
        before,
        "already at the limit: no split at all"
    );
    space.munmap(B + 4 * P, P).unwrap();
    assert_eq!(
        space.mprotect(B + 41 * P, P, mmun_softmmu::Prot::NONE),
        Err(Errno::NoMem)
    );
    assert_eq!(count(&space), 4, "the first split stays");
}

#[test]
fn munmap_refuses_only_a_three_way_split_at_the_limit() {
    let space = AddressSpace::new(Arc::new(Memory::new()));
    map(&space, B, 8).unwrap();
    map(&space, B + 10 * P, 1).unwrap();
    space.set_max_map_count(2);
    assert_eq!(space.munmap(B + 2 * P, P), Err(Errno::NoMem), "middle");
    assert_eq!(count(&space), 2);
    space.munmap(B, P).unwrap(); // the front: one piece stays
    space.munmap(B + 7 * P, P).unwrap(); // the back
    assert_eq!(count(&space), 2);
    // A fork's child has the same limit.
    let child = space.fork();
    assert_eq!(child.max_map_count(), 2);
    child.exit();
}

#[test]
fn mremap_keeps_room_for_the_splits_of_a_move() {
    use mmun_softmmu::MremapFlags;
    let space = AddressSpace::new(Arc::new(Memory::new()));
    map(&space, B, 1).unwrap();
    map(&space, B + P, 1).unwrap(); // merges: one VMA of two pages
    map(&space, B + 4 * P, 1).unwrap();
    let n = count(&space);
    // A move (the neighbour blocks growing in place) needs map_count <
    // max - 3 (prep_move_vma).
    space.set_max_map_count(n + 3);
    let grow = MremapFlags {
        may_move: true,
        ..MremapFlags::default()
    };
    assert_eq!(
        space.mremap(B + 4 * P, P, 8 * P, MremapFlags::default()),
        Ok(B + 4 * P),
        "in place needs no room"
    );
    assert_eq!(space.mremap(B, 2 * P, 16 * P, grow), Err(Errno::NoMem));
    space.set_max_map_count(n + 4);
    assert!(space.mremap(B, 2 * P, 16 * P, grow).is_ok());
    // MREMAP_FIXED needs map_count + 2 < max - 3 before anything else.
    let n = count(&space);
    space.set_max_map_count(n + 5);
    let fixed = MremapFlags {
        may_move: true,
        fixed: Some(B + 64 * P),
        ..MremapFlags::default()
    };
    assert_eq!(space.mremap(B + 4 * P, P, P, fixed), Err(Errno::NoMem));
    space.set_max_map_count(n + 6);
    assert_eq!(space.mremap(B + 4 * P, P, P, fixed), Ok(B + 64 * P));
}
