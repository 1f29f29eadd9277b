//! The shmem page cache's lookups: a page found with its reference
//! (`find_get_page`, what the faults map and copy from) outlives a hole
//! punched under it; one found without (`find_page`) does not. `mmun
//! stress` found a fault-around that took its reference only after the
//! lookup mapping a page a hole punch had freed meanwhile.

use std::sync::Arc;

use mmun_softmmu::Memory;
use mmun_softmmu::frame::FrameKind;
use mmun_softmmu::shmem::ShmemObject;

const P: u64 = 0x1000;

/// An object of four pages with page 1 cached (the cache's own reference
/// only).
fn cached_page() -> (Arc<Memory>, ShmemObject, mmun_softmmu::Pfn) {
    let memory = Arc::new(Memory::new());
    let object = ShmemObject::new(Arc::clone(&memory), 4 * P);
    let pfn = object.get_page(&memory, 1).expect("a page");
    memory.put(pfn);
    (memory, object, pfn)
}

fn punch_all(memory: &Memory, object: &ShmemObject) {
    for gone in object.punch(0, 3) {
        memory.put(gone);
    }
}

#[test]
fn a_page_found_with_its_reference_outlives_a_hole_punched_under_it() {
    let (memory, object, pfn) = cached_page();
    let found = object.find_get_page(&memory, 1);
    assert_eq!(found, Some(pfn));
    punch_all(&memory, &object);
    assert_ne!(
        memory.frame(pfn).kind,
        FrameKind::Free,
        "freed under its finder"
    );
    assert_eq!(
        object.find_get_page(&memory, 1),
        None,
        "the hole is punched"
    );
    memory.put(pfn);
    assert_eq!(memory.frame(pfn).kind, FrameKind::Free);
}

#[test]
fn a_page_found_without_a_reference_is_freed_by_the_punch() {
    // The control: what a lookup without its reference would have met.
    let (memory, object, pfn) = cached_page();
    assert_eq!(object.find_page(1), Some(pfn));
    punch_all(&memory, &object);
    assert_eq!(memory.frame(pfn).kind, FrameKind::Free);
}
