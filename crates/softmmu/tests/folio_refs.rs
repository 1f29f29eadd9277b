//! A large folio's references against its split, as `folio_ref_freeze`
//! and `folio_try_get` keep them in Linux: a pin taken without the
//! page-table lock (GUP-fast, the registration cache's) either keeps the
//! folio from splitting or lands, whole, on the page it names.

use mmun_softmmu::Memory;
use mmun_softmmu::frame::FrameKind;

const MM: u64 = 7;

/// A folio as a PMD split leaves it: every page mapped once by `MM`
/// through a PTE, one reference per mapping.
fn pte_mapped_folio(memory: &Memory) -> (u64, u64) {
    let head = memory.alloc_huge(FrameKind::Anon).expect("a huge page");
    for pfn in head..head + 512 {
        memory.map_pte(pfn, MM);
    }
    memory.update(head, |f| f.refcount = 512);
    (head, memory.frame(head).serial)
}

#[test]
fn a_pinned_folio_is_not_split() {
    let memory = Memory::new();
    let (head, serial) = pte_mapped_folio(&memory);
    assert!(memory.try_get(head + 3, serial), "pinned");
    assert!(
        !memory.split_folio(head, MM, false),
        "the pin is a reference no mapping accounts for"
    );
    assert_eq!(memory.frame(head).order, 9, "still one folio");
    memory.put(head + 3);
    assert!(memory.split_folio(head, MM, false), "unpinned, it splits");
    assert_eq!(memory.frame(head + 3).refcount, 1);
}

#[test]
fn a_pin_after_the_split_holds_the_page_it_names() {
    let memory = Memory::new();
    let (head, serial) = pte_mapped_folio(&memory);
    assert!(memory.split_folio(head, MM, false));
    assert!(memory.try_get(head + 3, serial));
    assert_eq!(
        (memory.frame(head + 3).refcount, memory.frame(head).refcount),
        (2, 1),
        "the pin is on the page, not on the old head"
    );
    // Its mapping goes; the pin keeps the page.
    memory.unmap_pte(head + 3, MM);
    memory.put(head + 3);
    assert_eq!(memory.frame(head + 3).kind, FrameKind::Anon);
    memory.put(head + 3);
    assert_eq!(memory.frame(head + 3).kind, FrameKind::Free);
}

#[test]
fn a_folio_of_another_life_is_not_pinned() {
    let memory = Memory::new();
    let (head, serial) = pte_mapped_folio(&memory);
    assert!(!memory.try_get(head + 3, serial + 1));
    assert_eq!(memory.frame(head).refcount, 512);
}
