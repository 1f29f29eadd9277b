//! Device-exclusive entries meeting fork and mprotect, as Linux 6.18
//! handles them: fork makes the parent's entry present again and copies it
//! copy-on-write (`copy_nonpresent_pte` → `try_restore_exclusive_pte`); a
//! CPU access rebuilds the entry from the VMA's protection as it is then
//! (`restore_exclusive_pte` with `can_change_pte_writable`).

use std::sync::Arc;

use mmun_core::Owner;
use mmun_softmmu::Prot;
use mmun_softmmu::page_table::SwapKind;
use mmun_softmmu::{AddressSpace, MapRequest, Memory};

const B: u64 = 0x1000_0000_0000;
const P: u64 = 0x1000;

fn space_with_exclusive_page() -> (AddressSpace, u64) {
    let space = AddressSpace::new(Arc::new(Memory::new()));
    space
        .mmap(MapRequest {
            addr: B,
            len: 2 * P,
            prot: Prot::RW,
            noreplace: true,
            ..MapRequest::default()
        })
        .unwrap();
    space.access(B, true).unwrap();
    space.access(B + P, true).unwrap();
    let pfn = space.make_device_exclusive(B + P, Owner::unique()).unwrap();
    assert_eq!(
        space.pte(B + P).swap_kind(),
        Some(SwapKind::DeviceExclusive)
    );
    (space, pfn)
}

#[test]
fn fork_restores_the_exclusive_entry_and_shares_the_page_copy_on_write() {
    let (parent, pfn) = space_with_exclusive_page();
    let child = parent.fork();
    assert_eq!(
        parent.translate(B + P),
        Some((pfn, false)),
        "the parent's entry is present again, write-protected for COW"
    );
    assert_eq!(
        child.translate(B + P),
        Some((pfn, false)),
        "the child maps the same page"
    );
    assert_eq!(parent.memory().frame(pfn).mapcount, 2);
    // A write in either copies; the other keeps the page.
    child.access(B + P, true).unwrap();
    let (copy, writable) = child.translate(B + P).unwrap();
    assert!(copy != pfn && writable);
    parent.access(B + P, true).unwrap();
    assert_eq!(
        parent.translate(B + P),
        Some((pfn, true)),
        "now exclusive again: reused"
    );
    child.exit();
}

#[test]
fn a_cpu_access_after_mprotect_read_restores_the_entry_read_only() {
    let (space, pfn) = space_with_exclusive_page();
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
    space.access(B + P, false).unwrap();
    assert_eq!(space.translate(B + P), Some((pfn, false)));
    assert!(space.access(B + P, true).is_err(), "the VMA is read-only");
    // Made writable again, the page is still exclusive to us: mprotect may
    // make the entry writable without a fault.
    space.mprotect(B, 2 * P, Prot::RW).unwrap();
    assert_eq!(space.translate(B + P), Some((pfn, true)));
}

/// A zapped device-exclusive entry gives its page back: the reference the
/// entry held is dropped and the page freed (a writable entry's write bit
/// used to read as "special" and leak it).
#[test]
fn munmap_of_a_writable_exclusive_entry_frees_the_page() {
    let (space, pfn) = space_with_exclusive_page();
    assert!(space.pte(B + P).swap_was_writable());
    space.munmap(B + P, P).unwrap();
    assert_eq!(
        space.memory().frame(pfn).kind,
        mmun_softmmu::frame::FrameKind::Free
    );
}
