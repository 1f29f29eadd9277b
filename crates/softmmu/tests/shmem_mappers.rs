//! A hole punched in shared memory (`MADV_REMOVE`) reaches every VMA that
//! maps the pages, in every address space (a fork's child included), each
//! with its own `Clear` over its part of the hole, in the file's `i_mmap`
//! order — as `shmem_fallocate` → `unmap_mapping_range` does in 6.18. The
//! same-process part of this is recorded from Linux in
//! `kernel-traces/recorded/remove-every-mapping`; a child cannot be
//! observed by the kernel oracle (its child exits at once), so its part is
//! checked here.

mod notify_log;

use mmun_core::Event;
use mmun_softmmu::MremapFlags;
use mmun_softmmu::{Advice, Prot};
use notify_log::*;

const B: u64 = 0x1000_0000_0000;
const D: u64 = 0x1000_4000_0000;
const P: u64 = 0x1000;

fn clear(who: &'static str, s: u64, e: u64) -> Vec<Ev> {
    vec![
        Ev::Start {
            who,
            event: Event::Clear,
            start: s,
            end: e,
            blockable: true,
            owner: None,
        },
        Ev::InvalidateRange {
            who,
            start: s,
            end: e,
        },
        Ev::End {
            who,
            start: s,
            end: e,
        },
    ]
}

#[test]
fn madv_remove_reaches_every_mapping_in_every_address_space() {
    let parent = new_space();
    map_shared(&parent, B, 16 * P, Prot::RW);
    touch(&parent, B, 16 * P, true);
    let child = parent.fork();
    touch(&child, B, 16 * P, false);
    // A second mapping of pages 2..9 in the child (mremap, old length 0).
    let dup = MremapFlags {
        may_move: true,
        fixed: Some(D),
        ..MremapFlags::default()
    };
    assert_eq!(child.mremap(B + 2 * P, 0, 8 * P, dup), Ok(D));
    touch(&child, D, 8 * P, false);
    let log = Log::default();
    let _p = list_notifier(parent.mm(), "P", &log);
    let _c = list_notifier(child.mm(), "C", &log);

    parent.madvise(B + 4 * P, 8 * P, Advice::Remove).unwrap();

    // i_mmap order: the parent's VMA, the child's copy right after it
    // (same page offset), then the duplicate (page offset 2).
    let want = [
        clear("P", B + 4 * P, B + 12 * P),
        clear("C", B + 4 * P, B + 12 * P),
        clear("C", D + 2 * P, D + 8 * P),
    ]
    .concat();
    assert_eq!(log.take(), want);
    for (space, name) in [(&parent, "parent"), (&child, "child")] {
        for page in 0..16 {
            let mapped = space.mapped_frame(B + page * P).is_some();
            assert_eq!(mapped, !(4..12).contains(&page), "{name} page {page}");
        }
    }
    for page in 0..8 {
        let mapped = child.mapped_frame(D + page * P).is_some();
        assert_eq!(mapped, page < 2, "duplicate page {page}");
    }
    // The punched pages are gone: a new fault finds a fresh zero page
    // cache entry, the same one in both processes.
    touch(&child, B + 4 * P, P, false);
    touch(&parent, B + 4 * P, P, false);
    assert_eq!(
        parent.mapped_frame(B + 4 * P).map(|(pfn, _)| pfn),
        child.mapped_frame(B + 4 * P).map(|(pfn, _)| pfn)
    );

    // A child that is gone is no longer reached (its notifier, still
    // registered on its mm, hears nothing).
    drop(child);
    log.take();
    parent.madvise(B, P, Advice::Remove).unwrap();
    assert_eq!(log.take(), clear("P", B, B + P));
}

#[test]
fn a_duplicate_of_private_memory_is_refused() {
    let space = new_space();
    map(&space, B, 4 * P, Prot::RW);
    let dup = MremapFlags {
        may_move: true,
        fixed: Some(D),
        ..MremapFlags::default()
    };
    assert_eq!(
        space.mremap(B, 0, 4 * P, dup),
        Err(mmun_softmmu::Errno::Inval)
    );
}

/// `MADV_COLD` over part of a PTE-mapped THP whose other half was unmapped
/// splits it: one `Clear` of the folio's extent in the VMA, and the pages
/// no longer mapped are freed (the folio held them until then).
#[test]
fn cold_over_part_of_a_large_folio_splits_it_and_frees_its_unmapped_pages() {
    const M2: u64 = 0x20_0000;
    let space = new_space();
    map(&space, B, M2, Prot::RW);
    space.madvise(B, M2, Advice::HugePage).unwrap();
    touch(&space, B, P, true);
    space.munmap(B + M2 / 2, M2 / 2).unwrap();
    let before = space.memory().allocated();
    let log = Log::default();
    let _l = list_notifier(space.mm(), "L", &log);

    space.madvise(B, P, Advice::Cold).unwrap();

    assert_eq!(log.take(), clear("L", B, B + M2 / 2));
    assert_eq!(
        space.memory().allocated(),
        before - 256,
        "the unmapped half is freed"
    );
    let (pfn, _) = space.mapped_frame(B + P).unwrap();
    assert_eq!(
        space.memory().frame(pfn).order,
        0,
        "every page is a folio of its own"
    );
    // Split once: a second call finds small folios only.
    space.madvise(B, P, Advice::Cold).unwrap();
    assert_eq!(log.take(), vec![]);
}

/// Two address spaces punching holes in the same shared memory at once,
/// each also faulting it back in and changing its protection: the walk
/// over the other's mappings takes one address space's locks at a time,
/// so neither waits for the other while holding its own (an ABBA deadlock
/// would hang here; the watchdog turns that into a failure).
#[test]
fn concurrent_hole_punches_from_both_sides_of_a_fork_finish() {
    use std::sync::{Arc, mpsc};
    use std::time::Duration;
    let parent = Arc::new(new_space());
    map_shared(&parent, B, 16 * P, Prot::RW);
    let child = Arc::new(parent.fork());
    let (done, finished) = mpsc::channel();
    for (space, offset) in [(parent, 0), (child, 8 * P)] {
        let done = done.clone();
        // Not joined: a deadlocked thread must not keep the test waiting.
        std::thread::spawn(move || {
            for round in 0..2_000u64 {
                touch(&space, B, 16 * P, round % 2 == 0);
                space.madvise(B + offset, 8 * P, Advice::Remove).unwrap();
                space.mprotect(B + offset, P, Prot::NONE).unwrap();
                space.mprotect(B + offset, P, Prot::RW).unwrap();
            }
            done.send(()).unwrap();
        });
    }
    for _ in 0..2 {
        finished
            .recv_timeout(Duration::from_secs(120))
            .expect("both sides finish (no deadlock)");
    }
}
