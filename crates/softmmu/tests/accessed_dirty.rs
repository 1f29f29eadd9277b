//! A CPU access sets the accessed bit, and a write the dirty bit, even on
//! an entry already mapped with the permission it needs, as the CPU's page
//! walk does: aging and reclaim read them. These tests fail if an access
//! to a mapped page leaves the bits alone (a shortcut that skipped the
//! fault for a present entry would).

mod notify_log;

use mmun_softmmu::{AddressSpace, Advice, Prot};

const A: u64 = 0x1000_0000_0000;
const P: u64 = 0x1000;

/// One written anonymous page at `A` (two pages mapped, so that a
/// one-page VMA never merges away).
fn written_page() -> AddressSpace {
    let space = AddressSpace::new(std::sync::Arc::new(mmun_softmmu::Memory::new()));
    notify_log::map(&space, A, 2 * P, Prot::RW);
    space.access(A, true).expect("write fault");
    space
}

#[test]
fn an_access_after_aging_sets_the_accessed_bit_again() {
    let space = written_page();
    assert_eq!(space.age(A, A + P), 1, "the write left the page young");
    assert!(!space.test_young(A), "aging cleared the accessed bit");
    space.access(A, false).expect("read");
    assert!(space.test_young(A), "the read set the accessed bit");
}

#[test]
fn a_write_after_madv_free_dirties_the_page_and_reclaim_keeps_it() {
    let space = written_page();
    space.madvise(A, P, Advice::Free).expect("MADV_FREE");
    // A read first, so that the entry is young but still clean: only the
    // write can make it dirty.
    space.access(A, false).expect("read");
    space.access(A, true).expect("write");
    assert_eq!(space.reclaim(A, A + P), 0, "referenced: kept, made old");
    assert_eq!(space.reclaim(A, A + P), 0, "dirty: a lazy-free page kept");
    assert!(space.translate(A).is_some());
}

#[test]
fn a_lazy_free_page_only_read_is_reclaimed() {
    // The control of the test above: without the write, the same steps
    // discard the page.
    let space = written_page();
    space.madvise(A, P, Advice::Free).expect("MADV_FREE");
    space.access(A, false).expect("read");
    assert_eq!(space.reclaim(A, A + P), 0, "referenced: kept, made old");
    assert_eq!(space.reclaim(A, A + P), 1, "clean and old: discarded");
    assert!(space.translate(A).is_none());
}
