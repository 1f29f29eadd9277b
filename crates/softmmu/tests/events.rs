//! The whole callback stream of every core-VM operation (spec §2): which
//! event, which range, blockable, owner, how starts and ends pair and nest,
//! where `invalidate_range` and `change_pte` fall, and the order of the
//! ranges relative to each other.
//!
//! Every case runs with a recording list notifier ("L") and an interval
//! notifier over the whole address space ("I") on one log. The table gives
//! the list notifier's stream; the interval notifier must see each start
//! just before the list notifier does (the tree is walked first), with the
//! same event, range, flags and owner.

mod notify_log;

use std::sync::Arc;

use mmun_core::Event;
use mmun_softmmu::Advice;
use mmun_softmmu::shmem::ShmemObject;
use mmun_softmmu::{AddressSpace, Errno, MapRequest, MremapFlags};
use notify_log::*;

/// Far from anything the kernel would choose; PGD-, PUD- and PMD-aligned.
const B: u64 = 0x1000_0000_0000;
const P: u64 = 0x1000;
const M2: u64 = 0x20_0000;
const G1: u64 = 0x4000_0000;

// --- expected-stream builders (list notifier "L") ---

fn start(event: Event, s: u64, e: u64) -> Ev {
    Ev::Start {
        who: "L",
        event,
        start: s,
        end: e,
        blockable: true,
        owner: None,
    }
}

fn end(s: u64, e: u64) -> Ev {
    Ev::End {
        who: "L",
        start: s,
        end: e,
    }
}

fn inv_range(s: u64, e: u64) -> Ev {
    Ev::InvalidateRange {
        who: "L",
        start: s,
        end: e,
    }
}

/// start … `invalidate_range_end` (v6.5: `invalidate_range`, then end).
fn bracket(event: Event, s: u64, e: u64) -> Vec<Ev> {
    vec![start(event, s, e), inv_range(s, e), end(s, e)]
}

/// start, what happens inside, `invalidate_range_only_end`.
fn only_end(event: Event, s: u64, e: u64, inside: Vec<Ev>) -> Vec<Ev> {
    let mut v = vec![start(event, s, e)];
    v.extend(inside);
    v.push(end(s, e));
    v
}

/// A `wp_page_copy` of the page at `addr`, v6.5 API: CLEAR of the page,
/// `ptep_clear_flush_notify` (`invalidate_range` of the page),
/// `set_pte_at_notify` (`change_pte` with the new PTE), `only_end`.
fn cow(space: &AddressSpace, addr: u64) -> Vec<Ev> {
    only_end(
        Event::Clear,
        addr,
        addr + P,
        vec![
            inv_range(addr, addr + P),
            Ev::ChangePte {
                who: "L",
                address: addr,
                pte: space.pte(addr).raw(),
            },
        ],
    )
}

/// `__split_huge_pmd` of the PMD around `addr`: CLEAR of the 2 MiB, the
/// secondary TLB flushed inside, `only_end`.
fn split(addr: u64) -> Vec<Ev> {
    let h = addr & !(M2 - 1);
    only_end(Event::Clear, h, h + M2, vec![inv_range(h, h + M2)])
}

fn cat(parts: Vec<Vec<Ev>>) -> Vec<Ev> {
    parts.into_iter().flatten().collect()
}

/// What the log must hold for a list-notifier stream: every start preceded
/// by the interval notifier's `invalidate` of the same range.
fn with_interval(list: &[Ev]) -> Vec<Ev> {
    let mut out = Vec::new();
    for ev in list {
        if let Ev::Start {
            event,
            start,
            end,
            blockable,
            owner,
            ..
        } = *ev
        {
            out.push(Ev::Invalidate {
                who: "I",
                event,
                start,
                end,
                seq: 0,
                blockable,
                owner,
            });
        }
        out.push(ev.clone());
    }
    out
}

// --- setups ---

/// `[B, B + 4 MiB)` with `MADV_HUGEPAGE`, a huge page written at `B`.
fn thp(space: &AddressSpace) {
    map(space, B, 2 * M2, RW);
    space.madvise(B, 2 * M2, Advice::HugePage).unwrap();
    touch(space, B, P, true);
    assert!(
        space.pte(B).is_none() && space.translate(B).is_some(),
        "huge"
    );
}

fn map4_touched(space: &AddressSpace) {
    map(space, B, 4 * P, RW);
    touch(space, B, 4 * P, true);
}

struct Case {
    name: &'static str,
    /// Prepares the address space; returns processes to keep alive.
    setup: fn(&AddressSpace) -> Vec<AddressSpace>,
    /// The operation under test.
    op: fn(&AddressSpace),
    /// The list notifier's stream, computed after the op.
    expect: fn(&AddressSpace) -> Vec<Ev>,
}

fn none(_: &AddressSpace) -> Vec<AddressSpace> {
    Vec::new()
}

fn cases() -> Vec<Case> {
    vec![
        // ---- munmap (§2.1) ----
        Case {
            name: "munmap: one UNMAP of the whole page-aligned request, holes included",
            setup: |s| {
                map(s, B, 2 * P, RW);
                map(s, B + 4 * P, 2 * P, RW);
                touch(s, B, 2 * P, true);
                touch(s, B + 4 * P, 2 * P, true);
                vec![]
            },
            op: |s| s.munmap(B, 8 * P).unwrap(),
            expect: |_| bracket(Event::Unmap, B, B + 8 * P),
        },
        Case {
            name: "munmap: the length is rounded up to a page",
            setup: |s| {
                map4_touched(s);
                vec![]
            },
            op: |s| s.munmap(B + P, P + 1).unwrap(),
            expect: |_| bracket(Event::Unmap, B + P, B + 3 * P),
        },
        Case {
            name: "munmap: a VMA without page tables is still notified",
            setup: |s| {
                map(s, B, 4 * P, RW);
                vec![]
            },
            op: |s| s.munmap(B, 4 * P).unwrap(),
            expect: |_| bracket(Event::Unmap, B, B + 4 * P),
        },
        Case {
            name: "munmap: no VMA in the range, no notification",
            setup: |s| {
                map(s, B, P, RW);
                touch(s, B, P, true);
                vec![]
            },
            op: |s| s.munmap(B + 16 * P, 4 * P).unwrap(),
            expect: |_| vec![],
        },
        Case {
            name: "munmap: a whole huge PMD is zapped without a split",
            setup: |s| {
                thp(s);
                vec![]
            },
            op: |s| s.munmap(B, M2).unwrap(),
            expect: |_| bracket(Event::Unmap, B, B + M2),
        },
        Case {
            name: "munmap: part of a huge PMD splits it (CLEAR of the PMD) before the UNMAP",
            setup: |s| {
                thp(s);
                vec![]
            },
            op: |s| s.munmap(B + P, P).unwrap(),
            expect: |_| cat(vec![split(B), bracket(Event::Unmap, B + P, B + 2 * P)]),
        },
        // ---- MAP_FIXED (§2.1) ----
        Case {
            name: "MAP_FIXED over a mapping: UNMAP of the new range",
            setup: |s| {
                map4_touched(s);
                vec![]
            },
            op: |s| map(s, B + P, 2 * P, RW),
            expect: |_| bracket(Event::Unmap, B + P, B + 3 * P),
        },
        Case {
            name: "MAP_FIXED over nothing: no notification",
            setup: |s| {
                map4_touched(s);
                vec![]
            },
            op: |s| map(s, B + 16 * P, 2 * P, RW),
            expect: |_| vec![],
        },
        // ---- mprotect (§2.3) ----
        Case {
            name: "mprotect without any page table: no notification",
            setup: |s| {
                map(s, B, 4 * P, RW);
                vec![]
            },
            op: |s| s.mprotect(B, 4 * P, R).unwrap(),
            expect: |_| vec![],
        },
        Case {
            name: "mprotect: PROTECTION_VMA over the piece",
            setup: |s| {
                map4_touched(s);
                vec![]
            },
            op: |s| s.mprotect(B + P, 2 * P, R).unwrap(),
            expect: |_| bracket(Event::ProtectionVma, B + P, B + 3 * P),
        },
        Case {
            name: "mprotect (6.18): an untouched VMA whose PUD entry is populated is notified",
            setup: |s| {
                map(s, B, 4 * P, RW);
                map(s, B + 0x10_0000, P, RW);
                touch(s, B + 0x10_0000, P, true);
                vec![]
            },
            op: |s| s.mprotect(B, 4 * P, R).unwrap(),
            expect: |_| bracket(Event::ProtectionVma, B, B + 4 * P),
        },
        Case {
            name: "mprotect (6.18): an untouched VMA whose PUD entry is empty is not notified",
            setup: |s| {
                map(s, B, 4 * P, RW);
                map(s, B + G1, P, RW);
                touch(s, B + G1, P, true);
                vec![]
            },
            op: |s| s.mprotect(B, 4 * P, R).unwrap(),
            expect: |_| vec![],
        },
        Case {
            name: "mprotect: one PROTECTION_VMA per VMA",
            setup: |s| {
                map(s, B, 2 * P, RW);
                map(s, B + 2 * P, 2 * P, R);
                touch(s, B, 2 * P, true);
                touch(s, B + 2 * P, 2 * P, false);
                vec![]
            },
            op: |s| s.mprotect(B, 4 * P, NONE).unwrap(),
            expect: |_| {
                cat(vec![
                    bracket(Event::ProtectionVma, B, B + 2 * P),
                    bracket(Event::ProtectionVma, B + 2 * P, B + 4 * P),
                ])
            },
        },
        Case {
            name: "mprotect to the protection the VMA has: no notification",
            setup: |s| {
                map4_touched(s);
                vec![]
            },
            op: |s| s.mprotect(B, 4 * P, RW).unwrap(),
            expect: |_| vec![],
        },
        Case {
            name: "mprotect of part of a huge PMD: its split (CLEAR) comes before PROTECTION_VMA",
            setup: |s| {
                thp(s);
                vec![]
            },
            op: |s| s.mprotect(B + P, P, R).unwrap(),
            expect: |_| {
                cat(vec![
                    split(B),
                    bracket(Event::ProtectionVma, B + P, B + 2 * P),
                ])
            },
        },
        Case {
            name: "mprotect of a whole huge PMD: no split",
            setup: |s| {
                thp(s);
                vec![]
            },
            op: |s| s.mprotect(B, M2, R).unwrap(),
            expect: |_| bracket(Event::ProtectionVma, B, B + M2),
        },
        // ---- madvise (§2.4) ----
        Case {
            name: "MADV_DONTNEED: one CLEAR per VMA piece",
            setup: |s| {
                map(s, B, 2 * P, RW);
                map(s, B + 2 * P, 2 * P, R);
                touch(s, B, 2 * P, true);
                touch(s, B + 2 * P, 2 * P, false);
                vec![]
            },
            op: |s| s.madvise(B + P, 2 * P, Advice::DontNeed).unwrap(),
            expect: |_| {
                cat(vec![
                    bracket(Event::Clear, B + P, B + 2 * P),
                    bracket(Event::Clear, B + 2 * P, B + 3 * P),
                ])
            },
        },
        Case {
            name: "MADV_DONTNEED of untouched memory is still notified",
            setup: |s| {
                map(s, B, 4 * P, RW);
                vec![]
            },
            op: |s| s.madvise(B, 4 * P, Advice::DontNeed).unwrap(),
            expect: |_| bracket(Event::Clear, B, B + 4 * P),
        },
        Case {
            name: "MADV_DONTNEED across a hole: both pieces, then ENOMEM",
            setup: |s| {
                map(s, B, P, RW);
                map(s, B + 2 * P, P, RW);
                touch(s, B, P, true);
                touch(s, B + 2 * P, P, true);
                vec![]
            },
            op: |s| assert_eq!(s.madvise(B, 3 * P, Advice::DontNeed), Err(Errno::NoMem)),
            expect: |_| {
                cat(vec![
                    bracket(Event::Clear, B, B + P),
                    bracket(Event::Clear, B + 2 * P, B + 3 * P),
                ])
            },
        },
        Case {
            name: "MADV_FREE: CLEAR over the piece",
            setup: |s| {
                map4_touched(s);
                vec![]
            },
            op: |s| s.madvise(B + P, 2 * P, Advice::Free).unwrap(),
            expect: |_| bracket(Event::Clear, B + P, B + 3 * P),
        },
        Case {
            name: "MADV_DONTNEED of part of a huge PMD: the split's CLEAR nests inside",
            setup: |s| {
                thp(s);
                vec![]
            },
            op: |s| s.madvise(B + P, P, Advice::DontNeed).unwrap(),
            expect: |_| {
                cat(vec![
                    vec![start(Event::Clear, B + P, B + 2 * P)],
                    split(B),
                    vec![inv_range(B + P, B + 2 * P), end(B + P, B + 2 * P)],
                ])
            },
        },
        Case {
            name: "MADV_REMOVE: CLEAR on every VMA mapping the punched pages, over its overlap",
            setup: |s| {
                let object = Arc::new(ShmemObject::new(Arc::clone(s.memory()), 4 * P));
                for at in [B, B + 16 * P, B + 32 * P] {
                    s.mmap(MapRequest {
                        addr: at,
                        len: 4 * P,
                        prot: RW,
                        shared: true,
                        object: Some(Arc::clone(&object)),
                        fixed: true,
                        ..MapRequest::default()
                    })
                    .unwrap();
                    touch(s, at, 4 * P, true);
                }
                // The third mapping keeps only page 0: no overlap.
                s.munmap(B + 33 * P, 3 * P).unwrap();
                vec![]
            },
            op: |s| {
                s.madvise(B + P, 2 * P, Advice::Remove).unwrap();
                for a in [B + P, B + 2 * P, B + 17 * P, B + 18 * P] {
                    assert_eq!(s.translate(a), None, "{a:#x} still mapped");
                }
                assert!(s.translate(B + 32 * P).is_some());
            },
            expect: |_| {
                cat(vec![
                    bracket(Event::Clear, B + P, B + 3 * P),
                    bracket(Event::Clear, B + 17 * P, B + 19 * P),
                ])
            },
        },
        Case {
            name: "MADV_REMOVE: a private mapping of the file is notified but keeps its COW copies",
            setup: |s| {
                let object = Arc::new(ShmemObject::new(Arc::clone(s.memory()), 4 * P));
                for (at, shared) in [(B, true), (B + 16 * P, false)] {
                    s.mmap(MapRequest {
                        addr: at,
                        len: 4 * P,
                        prot: RW,
                        shared,
                        object: Some(Arc::clone(&object)),
                        fixed: true,
                        ..MapRequest::default()
                    })
                    .unwrap();
                    touch(s, at, 4 * P, true);
                }
                vec![]
            },
            op: |s| {
                let private = s.translate(B + 17 * P);
                s.madvise(B + P, 2 * P, Advice::Remove).unwrap();
                assert_eq!(s.translate(B + 17 * P), private, "COW copy kept");
                assert_eq!(s.translate(B + P), None);
            },
            expect: |_| {
                cat(vec![
                    bracket(Event::Clear, B + P, B + 3 * P),
                    bracket(Event::Clear, B + 17 * P, B + 19 * P),
                ])
            },
        },
        // ---- mremap (§2.1, §2.2) ----
        Case {
            name: "mremap shrink: UNMAP of the tail",
            setup: |s| {
                map4_touched(s);
                vec![]
            },
            op: |s| {
                let flags = MremapFlags::default();
                assert_eq!(s.mremap(B, 4 * P, 2 * P, flags), Ok(B));
            },
            expect: |_| bracket(Event::Unmap, B + 2 * P, B + 4 * P),
        },
        Case {
            name: "mremap grow in place: no notification",
            setup: |s| {
                map(s, B, 2 * P, RW);
                touch(s, B, 2 * P, true);
                vec![]
            },
            op: |s| {
                let flags = MremapFlags::default();
                assert_eq!(s.mremap(B, 2 * P, 4 * P, flags), Ok(B));
            },
            expect: |_| vec![],
        },
        Case {
            name: "mremap move: UNMAP of the source while the tables move, again when it is unmapped",
            setup: |s| {
                map(s, B, 2 * P, RW);
                touch(s, B, 2 * P, true);
                vec![]
            },
            op: |s| {
                let before = s.translate(B);
                let flags = MremapFlags {
                    fixed: Some(B + 0x10_0000),
                    ..MremapFlags::default()
                };
                assert_eq!(s.mremap(B, 2 * P, 2 * P, flags), Ok(B + 0x10_0000));
                assert_eq!(s.translate(B + 0x10_0000), before);
                assert_eq!(s.translate(B), None);
            },
            expect: |_| {
                cat(vec![
                    bracket(Event::Unmap, B, B + 2 * P),
                    bracket(Event::Unmap, B, B + 2 * P),
                ])
            },
        },
        Case {
            name: "mremap MREMAP_DONTUNMAP: UNMAP of the source once; the source VMA stays, empty",
            setup: |s| {
                map(s, B, 2 * P, RW);
                touch(s, B, 2 * P, true);
                vec![]
            },
            op: |s| {
                let before = s.translate(B);
                let flags = MremapFlags {
                    may_move: true,
                    dont_unmap: true,
                    fixed: Some(B + 0x10_0000),
                };
                assert_eq!(s.mremap(B, 2 * P, 2 * P, flags), Ok(B + 0x10_0000));
                assert_eq!(s.translate(B + 0x10_0000), before);
                assert_eq!(s.translate(B), None);
                assert!(s.vmas().iter().any(|v| v.start == B && v.end == B + 2 * P));
            },
            expect: |_| bracket(Event::Unmap, B, B + 2 * P),
        },
        Case {
            name: "mremap grow that must move: two UNMAPs of the source",
            setup: |s| {
                map(s, B, 2 * P, RW);
                map(s, B + 2 * P, P, R);
                touch(s, B, 2 * P, true);
                vec![]
            },
            op: |s| {
                let flags = MremapFlags {
                    may_move: true,
                    ..MremapFlags::default()
                };
                let to = s.mremap(B, 2 * P, 4 * P, flags).unwrap();
                assert_ne!(to, B);
            },
            expect: |_| {
                cat(vec![
                    bracket(Event::Unmap, B, B + 2 * P),
                    bracket(Event::Unmap, B, B + 2 * P),
                ])
            },
        },
        Case {
            name: "mremap move (6.18 try_realign_addr): the first UNMAP starts at the PMD boundary",
            setup: |s| {
                map(s, B + P, M2, RW);
                touch(s, B + P, P, true);
                vec![]
            },
            op: |s| {
                let flags = MremapFlags {
                    fixed: Some(B + 0x1000_0000 + P),
                    ..MremapFlags::default()
                };
                s.mremap(B + P, M2, M2, flags).unwrap();
            },
            expect: |_| {
                cat(vec![
                    bracket(Event::Unmap, B, B + P + M2),
                    bracket(Event::Unmap, B + P, B + P + M2),
                ])
            },
        },
        // ---- fork (§2.5) ----
        Case {
            name: "fork: PROTECTION_PAGE per COW VMA with an anon_vma; none for shared, \
                   untouched, read-faulted, DONTFORK and WIPEONFORK VMAs",
            setup: |s| {
                // 1: written private memory.
                map(s, B, 2 * P, RW);
                touch(s, B, 2 * P, true);
                // 2: untouched private memory (no anon_vma).
                map(s, B + 16 * P, 2 * P, RW);
                // 3: written shared memory.
                map_shared(s, B + 32 * P, 2 * P, RW);
                touch(s, B + 32 * P, 2 * P, true);
                // 4: DONTFORK.
                map(s, B + 48 * P, 2 * P, RW);
                touch(s, B + 48 * P, 2 * P, true);
                s.madvise(B + 48 * P, 2 * P, Advice::DontFork).unwrap();
                // 5: WIPEONFORK.
                map(s, B + 64 * P, 2 * P, RW);
                touch(s, B + 64 * P, 2 * P, true);
                s.madvise(B + 64 * P, 2 * P, Advice::WipeOnFork).unwrap();
                // 6: only read (zero page, no anon_vma).
                map(s, B + 80 * P, 2 * P, RW);
                touch(s, B + 80 * P, 2 * P, false);
                // 7: written, then made read-only: still a COW mapping (VM_MAYWRITE).
                map(s, B + 96 * P, 2 * P, RW);
                touch(s, B + 96 * P, 2 * P, true);
                s.mprotect(B + 96 * P, 2 * P, R).unwrap();
                vec![]
            },
            op: |s| {
                let child = s.fork();
                // The child: no DONTFORK VMA, an empty WIPEONFORK VMA, the
                // private pages shared read-only with the parent.
                assert!(!child.vmas().iter().any(|v| v.start == B + 48 * P));
                assert!(child.vmas().iter().any(|v| v.start == B + 64 * P));
                assert_eq!(child.translate(B + 64 * P), None);
                let parent_page = s.translate(B).unwrap();
                assert_eq!(child.translate(B), Some((parent_page.0, false)));
                assert!(!parent_page.1, "the parent's PTE is write-protected");
                child.exit();
            },
            expect: |_| {
                cat(vec![
                    bracket(Event::ProtectionPage, B, B + 2 * P),
                    bracket(Event::ProtectionPage, B + 96 * P, B + 98 * P),
                ])
            },
        },
        Case {
            name: "fork of a huge page: PROTECTION_PAGE of the VMA, no split",
            setup: |s| {
                thp(s);
                vec![]
            },
            op: |s| s.fork().exit(),
            expect: |_| bracket(Event::ProtectionPage, B, B + 2 * M2),
        },
        // ---- COW (§2.6) ----
        Case {
            name: "write to the zero page: CLEAR of the page, invalidate_range, change_pte, only_end",
            setup: |s| {
                map(s, B, 2 * P, RW);
                touch(s, B, 2 * P, false);
                vec![]
            },
            op: |s| s.access(B + P + 0x10, true).unwrap(),
            expect: |s| cow(s, B + P),
        },
        Case {
            name: "COW write while the forked child is alive: CLEAR with change_pte of the new PTE",
            setup: |s| {
                map(s, B, 2 * P, RW);
                touch(s, B, 2 * P, true);
                vec![s.fork()]
            },
            op: |s| s.access(B + P, true).unwrap(),
            expect: |s| cow(s, B + P),
        },
        Case {
            name: "write after the forked child exited: the page is reused, no notification",
            setup: |s| {
                map(s, B, 2 * P, RW);
                touch(s, B, 2 * P, true);
                s.fork().exit();
                vec![]
            },
            op: |s| {
                let before = s.translate(B + P).unwrap();
                s.access(B + P, true).unwrap();
                assert_eq!(s.translate(B + P), Some((before.0, true)));
            },
            expect: |_| vec![],
        },
        Case {
            name: "first write to an empty PTE: no notification",
            setup: |s| {
                map(s, B, 2 * P, RW);
                vec![]
            },
            op: |s| s.access(B, true).unwrap(),
            expect: |_| vec![],
        },
        Case {
            name: "write after mprotect R then RW on an exclusive page: upgrade, no notification",
            setup: |s| {
                map(s, B, 2 * P, RW);
                touch(s, B, 2 * P, true);
                s.mprotect(B, 2 * P, R).unwrap();
                s.mprotect(B, 2 * P, RW).unwrap();
                vec![]
            },
            op: |s| s.access(B, true).unwrap(),
            expect: |_| vec![],
        },
        // ---- THP (§2.6, §2.10) ----
        Case {
            name: "write to the huge zero page: CLEAR of the 2 MiB (6.18 do_huge_zero_wp_pmd)",
            setup: |s| {
                map(s, B, M2, RW);
                s.madvise(B, M2, Advice::HugePage).unwrap();
                touch(s, B, P, false);
                vec![]
            },
            op: |s| {
                s.access(B + 5 * P, true).unwrap();
                assert!(
                    s.pte(B).is_none() && s.translate(B).unwrap().1,
                    "a writable huge page"
                );
            },
            expect: |_| only_end(Event::Clear, B, B + M2, vec![inv_range(B, B + M2)]),
        },
        Case {
            name: "first write in a THP VMA maps a huge page without notification",
            setup: |s| {
                map(s, B, M2, RW);
                s.madvise(B, M2, Advice::HugePage).unwrap();
                vec![]
            },
            op: |s| s.access(B + 5 * P, true).unwrap(),
            expect: |_| vec![],
        },
        Case {
            name: "MADV_COLLAPSE: CLEAR of the 2 MiB around the PMD switch only",
            setup: |s| {
                map(s, B, M2, RW);
                touch(s, B, 8 * P, true);
                vec![]
            },
            op: |s| {
                s.madvise(B, M2, Advice::Collapse).unwrap();
                let head = s.translate(B).unwrap().0;
                assert_eq!(s.translate(B + 7 * P).unwrap().0, head + 7);
                assert_eq!(s.translate(B + M2 - P).unwrap().0, head + 511);
                assert!(s.pte(B).is_none(), "PMD-mapped");
            },
            expect: |_| bracket(Event::Clear, B, B + M2),
        },
        // ---- soft-dirty (§2.11) ----
        Case {
            name: "clear_refs 4: one SOFT_DIRTY over [0, u64::MAX)",
            setup: |s| {
                map4_touched(s);
                vec![]
            },
            op: |s| s.clear_soft_dirty(),
            expect: |_| bracket(Event::SoftDirty, 0, u64::MAX),
        },
        Case {
            name: "clear_refs 4 with nothing mapped: still one SOFT_DIRTY",
            setup: none,
            op: |s| s.clear_soft_dirty(),
            expect: |_| bracket(Event::SoftDirty, 0, u64::MAX),
        },
        Case {
            name: "clear_refs 4 with soft-dirty tracking: the same one SOFT_DIRTY, entries write-protected",
            setup: |s| {
                thp(s);
                map(s, B + 4 * M2, P, RW);
                touch(s, B + 4 * M2, P, true);
                vec![]
            },
            op: |s| {
                s.clear_soft_dirty_tracking();
                let writable = |at| s.translate(at).map(|t| t.1);
                assert_eq!(writable(B), Some(false), "huge PMD");
                assert_eq!(writable(B + 4 * M2), Some(false), "PTE");
            },
            expect: |_| bracket(Event::SoftDirty, 0, u64::MAX),
        },
        // ---- mlock ----
        Case {
            name: "mlock populates empty PTEs without notification",
            setup: |s| {
                map(s, B, 4 * P, RW);
                vec![]
            },
            op: |s| {
                s.mlock(B, 4 * P).unwrap();
                assert!(s.translate(B + 3 * P).is_some_and(|(_, w)| w));
            },
            expect: |_| vec![],
        },
        Case {
            name: "mlock of written memory, then munlock: no notification",
            setup: |s| {
                map4_touched(s);
                vec![]
            },
            op: |s| {
                s.mlock(B + P, 2 * P).unwrap();
                s.munlock(B, 4 * P).unwrap();
            },
            expect: |_| vec![],
        },
        Case {
            name: "mlock of zero-page-mapped private memory breaks COW (write faults): CLEAR per page",
            setup: |s| {
                map(s, B, 2 * P, RW);
                touch(s, B, 2 * P, false);
                vec![]
            },
            op: |s| s.mlock(B, 2 * P).unwrap(),
            expect: |s| cat(vec![cow(s, B), cow(s, B + P)]),
        },
    ]
}

/// Runs one case; returns what went wrong, if anything.
fn run(case: &Case) -> Result<(), String> {
    let space = new_space();
    let log = Log::default();
    let _list = list_notifier(space.mm(), "L", &log);
    let _interval = interval_notifier(space.mm(), "I", &log, 0, u64::MAX);
    let keep = (case.setup)(&space);
    log.take();
    (case.op)(&space);
    let got = log.take();
    let list_stream = (case.expect)(&space);
    let want = with_interval(&list_stream);
    check_nesting(&got, "L")?;
    if got != want {
        return Err(format!("want {want:#x?}\n got {got:#x?}"));
    }
    let warnings = space.mm().warnings();
    if !warnings.is_empty() {
        return Err(format!("core WARNs: {warnings:?}"));
    }
    for child in keep {
        child.exit();
    }
    Ok(())
}

#[test]
fn every_core_vm_operation_notifies_as_linux_does() {
    let cases = cases();
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|case| {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(case)))
                .unwrap_or_else(|_| Err("panicked".to_string()));
            result.err().map(|e| format!("\n=== {}\n{e}", case.name))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:{}",
        failures.len(),
        cases.len(),
        failures.concat()
    );
}

/// §2.14 / §1.7: exit releases interval notifiers (RELEASE over the whole
/// address space) before list notifiers (`release`, and they are unlinked),
/// then unmaps everything under one UNMAP `[0, u64::MAX)` that only the
/// interval notifiers see. Every frame is freed.
#[test]
fn exit_releases_interval_then_list_notifiers_then_unmaps_for_intervals_only() {
    let space = new_space();
    let log = Log::default();
    let _list = list_notifier(space.mm(), "L", &log);
    let _interval = interval_notifier(space.mm(), "I", &log, B, G1);
    map(&space, B, 4 * P, RW);
    touch(&space, B, 4 * P, true);
    thp_at(&space, B + M2);
    log.take();
    space.exit();
    let interval = |event| Ev::Invalidate {
        who: "I",
        event,
        start: 0,
        end: u64::MAX,
        seq: 0,
        blockable: true,
        owner: None,
    };
    assert_eq!(
        log.take(),
        vec![
            interval(Event::Release),
            Ev::Release { who: "L" },
            interval(Event::Unmap)
        ]
    );
    assert!(space.vmas().is_empty());
    assert_eq!(space.translate(B), None);
    assert_eq!(space.translate(B + M2), None);
    // Exit again: nothing.
    space.exit();
    assert_eq!(log.take(), vec![]);
}

fn thp_at(space: &AddressSpace, at: u64) {
    map(space, at, M2, RW);
    space.madvise(at, M2, Advice::HugePage).unwrap();
    touch(space, at, P, true);
}

/// `exit_mmap` calls `unmap_vmas` (the UNMAP `[0, ULONG_MAX)`) only when
/// the address space has a VMA: with none it goes straight to `destroy`.
/// So an interval notifier of a process without mappings sees RELEASE and
/// nothing else.
#[test]
fn exit_without_any_vma_sends_no_unmap() {
    let space = new_space();
    let log = Log::default();
    let _interval = interval_notifier(space.mm(), "I", &log, B, G1);
    space.exit();
    let got = log.take();
    assert_eq!(
        got,
        vec![Ev::Invalidate {
            who: "I",
            event: Event::Release,
            start: 0,
            end: u64::MAX,
            seq: 0,
            blockable: true,
            owner: None,
        }],
        "Linux's exit_mmap skips unmap_vmas when there is no VMA"
    );
}

/// §2.2 / mm/mremap.c: `MREMAP_DONTUNMAP` always moves (`vrm_implies_new_addr`:
/// FIXED or DONTUNMAP go through `mremap_to`, which picks a new address
/// when FIXED is absent). The source VMA stays, empty; the pages move;
/// the source gets one UNMAP.
#[test]
fn mremap_dontunmap_without_fixed_moves_the_pages() {
    let space = new_space();
    let log = Log::default();
    let _list = list_notifier(space.mm(), "L", &log);
    map(&space, B, 2 * P, RW);
    touch(&space, B, 2 * P, true);
    let page = space.translate(B);
    log.take();
    let flags = MremapFlags {
        may_move: true,
        dont_unmap: true,
        fixed: None,
    };
    let to = space.mremap(B, 2 * P, 2 * P, flags).unwrap();
    let got = log.take();
    assert_ne!(to, B, "MREMAP_DONTUNMAP must move the mapping");
    assert_eq!(space.translate(to), page);
    assert_eq!(space.translate(B), None);
    assert_eq!(got, bracket(Event::Unmap, B, B + 2 * P));
}

/// §2.6 + PageAnonExclusive: after fork, a PMD-mapped THP is shared with
/// the child (only the head's exclusive flag is tracked for a PMD
/// mapping). A parent write to a tail page splits the PMD and must copy the
/// page (CLEAR of the split PMD, then `wp_page_copy`'s CLEAR of the page),
/// never make the shared page writable in the parent.
#[test]
fn cow_of_a_thp_tail_page_after_fork_copies_it() {
    let space = new_space();
    let log = Log::default();
    let _list = list_notifier(space.mm(), "L", &log);
    thp(&space);
    let child = space.fork();
    let shared = child.translate(B + P).unwrap().0;
    log.take();
    space.access(B + P, true).unwrap();
    let got = log.take();
    let parent_now = space.translate(B + P).unwrap();
    let child_now = child.translate(B + P).unwrap();
    let expect = cat(vec![split(B), cow(&space, B + P)]);
    child.exit();
    space.exit();
    assert_eq!(
        child_now,
        (shared, false),
        "the child's view must not change"
    );
    assert_ne!(
        parent_now.0, shared,
        "the parent writes to the page it shares with the child"
    );
    assert_eq!(got, expect);
}
