//! Linux's errno for bad requests, and what is left behind: where Linux
//! fails before touching anything, the VMAs and the PTEs must be exactly as
//! before and no notifier may have been called; where it fails part way
//! (a hole after some VMAs), the pieces before the failure are done.

mod notify_log;

use mmun_core::Notifier;
use mmun_softmmu::Advice;
use mmun_softmmu::layout::TASK_SIZE;
use mmun_softmmu::{AddressSpace, Errno, MapRequest, MremapFlags, SysResult, VmFlags};
use notify_log::*;

const B: u64 = 0x1000_0000_0000;
const P: u64 = 0x1000;
/// The last page of the 64-bit address space.
const LAST_PAGE: u64 = !(P - 1);

/// An address space with three VMAs and a recording notifier:
/// `[B, B+4P)` private rw written, `[B+8P, B+12P)` private r read (zero
/// page), `[B+16P, B+20P)` shared rw written.
struct Fixture {
    space: AddressSpace,
    log: Log,
    _list: Notifier<ListRec>,
}

fn fixture() -> Fixture {
    let space = new_space();
    map(&space, B, 4 * P, RW);
    touch(&space, B, 4 * P, true);
    map(&space, B + 8 * P, 4 * P, R);
    touch(&space, B + 8 * P, 4 * P, false);
    map_shared(&space, B + 16 * P, 4 * P, RW);
    touch(&space, B + 16 * P, 4 * P, true);
    let log = Log::default();
    let list = list_notifier(space.mm(), "L", &log);
    Fixture {
        space,
        log,
        _list: list,
    }
}

type Snapshot = (Vec<String>, Vec<PteRow>);

fn snapshot(space: &AddressSpace) -> Snapshot {
    (vma_picture(space), pte_picture(space, B, B + 64 * P))
}

impl Fixture {
    /// Runs `op`, checks it fails with `errno`, changes nothing and calls
    /// no notifier.
    #[track_caller]
    fn rejects<T: std::fmt::Debug>(
        &self,
        what: &str,
        errno: Errno,
        op: impl FnOnce(&AddressSpace) -> SysResult<T>,
    ) {
        let before = snapshot(&self.space);
        let got = op(&self.space);
        assert_eq!(got.as_ref().err(), Some(&errno), "{what}: got {got:?}");
        assert_eq!(
            snapshot(&self.space),
            before,
            "{what}: the address space changed"
        );
        assert_eq!(self.log.take(), vec![], "{what}: notifiers were called");
    }

    /// Runs `op`, checks it succeeds, changes nothing and calls no notifier.
    #[track_caller]
    fn no_op<T: std::fmt::Debug>(
        &self,
        what: &str,
        op: impl FnOnce(&AddressSpace) -> SysResult<T>,
    ) {
        let before = snapshot(&self.space);
        let got = op(&self.space);
        assert!(got.is_ok(), "{what}: got {got:?}");
        assert_eq!(
            snapshot(&self.space),
            before,
            "{what}: the address space changed"
        );
        assert_eq!(self.log.take(), vec![], "{what}: notifiers were called");
    }

    fn flags_at(&self, addr: u64) -> VmFlags {
        self.space
            .vmas()
            .iter()
            .find(|v| v.start <= addr && addr < v.end)
            .map(|v| v.flags)
            .expect("a VMA")
    }
}

#[test]
fn munmap_rejects_malformed_ranges_with_einval() {
    let f = fixture();
    let cases = [
        ("unaligned start", B + 1, P),
        ("zero length", B, 0),
        ("end past TASK_SIZE", TASK_SIZE - P, 2 * P),
        ("start at TASK_SIZE", TASK_SIZE, P),
        ("start past TASK_SIZE", LAST_PAGE, P),
        ("length overflows", B, u64::MAX),
        ("length rounds up past the top", B, u64::MAX - P + 2),
    ];
    for (what, addr, len) in cases {
        f.rejects(what, Errno::Inval, |s| s.munmap(addr, len));
    }
    f.no_op("a hole", |s| s.munmap(B + 32 * P, 4 * P));
    f.no_op("the last page of user space, unmapped", |s| {
        s.munmap(TASK_SIZE - P, P)
    });
}

#[test]
fn mmap_rejects_bad_requests() {
    let f = fixture();
    let req = |addr, len| MapRequest {
        addr,
        len,
        prot: RW,
        fixed: true,
        ..MapRequest::default()
    };
    f.rejects("zero length", Errno::Inval, |s| s.mmap(req(B + 32 * P, 0)));
    f.rejects("unaligned MAP_FIXED", Errno::Inval, |s| {
        s.mmap(req(B + 32 * P + 1, P))
    });
    f.rejects("length rounds up to 0", Errno::NoMem, |s| {
        s.mmap(req(B + 32 * P, u64::MAX))
    });
    f.rejects("MAP_FIXED past TASK_SIZE", Errno::NoMem, |s| {
        s.mmap(req(TASK_SIZE - P, 2 * P))
    });
    f.rejects("MAP_FIXED wrapping", Errno::NoMem, |s| {
        s.mmap(req(LAST_PAGE, 2 * P))
    });
    for (what, addr, len) in [
        ("NOREPLACE over a whole VMA", B, 4 * P),
        ("NOREPLACE over the end of a VMA", B + 3 * P, 2 * P),
        ("NOREPLACE over the start of a VMA", B + 7 * P, 2 * P),
        ("NOREPLACE spanning VMAs and holes", B + 2 * P, 16 * P),
    ] {
        f.rejects(what, Errno::Exist, |s| {
            s.mmap(MapRequest {
                addr,
                len,
                prot: RW,
                noreplace: true,
                ..MapRequest::default()
            })
        });
    }
    // NOREPLACE into a hole between VMAs works.
    let got = f.space.mmap(MapRequest {
        addr: B + 4 * P,
        len: 4 * P,
        prot: RW,
        noreplace: true,
        ..MapRequest::default()
    });
    assert_eq!(got, Ok(B + 4 * P));
    assert_eq!(f.log.take(), vec![]);
}

/// `do_mmap`: `MAP_FIXED_NOREPLACE` sets `MAP_FIXED` and then still fails
/// with `EEXIST` over an existing mapping, whether or not the caller also
/// passed `MAP_FIXED`.
#[test]
fn mmap_fixed_with_noreplace_is_still_eexist() {
    let f = fixture();
    f.rejects(
        "MAP_FIXED | MAP_FIXED_NOREPLACE over a VMA",
        Errno::Exist,
        |s| {
            s.mmap(MapRequest {
                addr: B,
                len: 4 * P,
                prot: RW,
                fixed: true,
                noreplace: true,
                ..MapRequest::default()
            })
        },
    );
}

/// `__get_unmapped_area` checks `addr > TASK_SIZE - len` (ENOMEM) before
/// `offset_in_page(addr)` (EINVAL).
#[test]
fn mmap_fixed_past_task_size_is_enomem_even_when_unaligned() {
    let f = fixture();
    f.rejects("unaligned MAP_FIXED past TASK_SIZE", Errno::NoMem, |s| {
        s.mmap(MapRequest {
            addr: TASK_SIZE - P + 1,
            len: 2 * P,
            prot: RW,
            fixed: true,
            ..MapRequest::default()
        })
    });
}

#[test]
fn mprotect_errors() {
    let f = fixture();
    f.rejects("unaligned", Errno::Inval, |s| s.mprotect(B + 1, P, R));
    f.no_op("zero length, even unmapped", |s| {
        s.mprotect(B + 40 * P, 0, R)
    });
    f.rejects("length overflows", Errno::NoMem, |s| {
        s.mprotect(B, u64::MAX, R)
    });
    f.rejects("end wraps", Errno::NoMem, |s| {
        s.mprotect(LAST_PAGE, 2 * P, R)
    });
    f.rejects("nothing mapped", Errno::NoMem, |s| {
        s.mprotect(B + 40 * P, 4 * P, R)
    });
    f.rejects("a hole at the start", Errno::NoMem, |s| {
        s.mprotect(B + 4 * P, 8 * P, R)
    });
}

/// `do_mprotect_pkey`: the VMAs before a hole are changed (and notified),
/// then the hole ends the call with `ENOMEM`; what follows is untouched.
#[test]
fn mprotect_changes_the_pieces_before_a_hole_then_fails_with_enomem() {
    let f = fixture();
    let tail = pte_picture(&f.space, B + 8 * P, B + 12 * P);
    assert_eq!(f.space.mprotect(B + 2 * P, 10 * P, NONE), Err(Errno::NoMem));
    assert!(!f.flags_at(B + 2 * P).intersects(VmFlags::ACCESS));
    assert!(
        f.flags_at(B).contains(VmFlags::WRITE),
        "before the range: unchanged"
    );
    assert!(
        f.flags_at(B + 8 * P).contains(VmFlags::READ),
        "after the hole: unchanged"
    );
    assert!(f.space.pte(B + 2 * P).is_protnone());
    assert_eq!(pte_picture(&f.space, B + 8 * P, B + 12 * P), tail);
    let starts: Vec<_> = f
        .log
        .take()
        .into_iter()
        .filter(|e| matches!(e, Ev::Start { .. }))
        .collect();
    assert_eq!(
        starts,
        vec![Ev::Start {
            who: "L",
            event: mmun_core::Event::ProtectionVma,
            start: B + 2 * P,
            end: B + 4 * P,
            blockable: true,
            owner: None
        }]
    );
}

#[test]
fn madvise_argument_errors() {
    let f = fixture();
    f.rejects("unaligned", Errno::Inval, |s| {
        s.madvise(B + 1, P, Advice::DontNeed)
    });
    f.no_op("zero length, even unmapped", |s| {
        s.madvise(B + 40 * P, 0, Advice::DontNeed)
    });
    f.rejects("length rounds up past the top", Errno::Inval, |s| {
        s.madvise(B, u64::MAX, Advice::DontNeed)
    });
    f.rejects("end wraps", Errno::Inval, |s| {
        s.madvise(LAST_PAGE, 2 * P, Advice::DontNeed)
    });
    f.rejects("nothing mapped", Errno::NoMem, |s| {
        s.madvise(B + 40 * P, 4 * P, Advice::DontNeed)
    });
    f.rejects("MADV_FREE of shared memory", Errno::Inval, |s| {
        s.madvise(B + 16 * P, 4 * P, Advice::Free)
    });
    f.rejects("MADV_REMOVE of private memory", Errno::Inval, |s| {
        s.madvise(B, 4 * P, Advice::Remove)
    });
    f.rejects("MADV_WIPEONFORK of shared memory", Errno::Inval, |s| {
        s.madvise(B + 16 * P, 4 * P, Advice::WipeOnFork)
    });
}

#[test]
fn madvise_on_locked_vmas() {
    let f = fixture();
    f.space.mlock(B, 4 * P).unwrap();
    f.space.mlock(B + 16 * P, 4 * P).unwrap();
    f.log.take();
    for advice in [Advice::DontNeed, Advice::Cold, Advice::PageOut] {
        f.rejects(advice.name(), Errno::Inval, |s| s.madvise(B, 4 * P, advice));
    }
    f.rejects("MADV_REMOVE", Errno::Inval, |s| {
        s.madvise(B + 16 * P, 4 * P, Advice::Remove)
    });
    // MADV_DONTNEED_LOCKED exists for this.
    f.space.madvise(B, 4 * P, Advice::DontNeedLocked).unwrap();
    assert_eq!(f.space.translate(B), None);
}

/// `madvise_dontneed_free_valid_vma` forbids `VM_LOCKED` for `MADV_FREE`
/// as for `MADV_DONTNEED` (only `MADV_DONTNEED_LOCKED` is exempt): EINVAL,
/// nothing marked, no CLEAR.
#[test]
fn madvise_free_on_a_locked_vma_is_einval() {
    let f = fixture();
    f.space.mlock(B, 4 * P).unwrap();
    f.log.take();
    f.rejects("MADV_FREE on a locked VMA", Errno::Inval, |s| {
        s.madvise(B, 4 * P, Advice::Free)
    });
}

/// `madvise_walk_vmas`: an error of a VMA ends the walk; the VMAs before it
/// were done, the ones after are not.
#[test]
fn madvise_stops_at_the_first_failing_vma() {
    let f = fixture();
    f.space.mlock(B + 8 * P, 4 * P).unwrap();
    f.log.take();
    let after = pte_picture(&f.space, B + 8 * P, B + 20 * P);
    assert_eq!(
        f.space.madvise(B, 20 * P, Advice::DontNeed),
        Err(Errno::Inval)
    );
    assert_eq!(
        f.space.translate(B),
        None,
        "the VMA before the locked one was zapped"
    );
    assert_eq!(pte_picture(&f.space, B + 8 * P, B + 20 * P), after);
    let ranges: Vec<_> = f
        .log
        .take()
        .into_iter()
        .filter_map(|e| match e {
            Ev::Start { start, end, .. } => Some((start, end)),
            _ => None,
        })
        .collect();
    assert_eq!(ranges, vec![(B, B + 4 * P)]);
}

#[test]
fn mremap_argument_errors() {
    let f = fixture();
    let plain = MremapFlags::default();
    let fixed = |to| MremapFlags {
        fixed: Some(to),
        ..MremapFlags::default()
    };
    let dont_unmap = MremapFlags {
        may_move: true,
        dont_unmap: true,
        fixed: Some(B + 40 * P),
    };
    f.rejects("unaligned address", Errno::Inval, |s| {
        s.mremap(B + 1, P, 2 * P, plain)
    });
    f.rejects("zero new length", Errno::Inval, |s| {
        s.mremap(B, 4 * P, 0, plain)
    });
    f.rejects("zero old length of private memory", Errno::Inval, |s| {
        s.mremap(B, 0, 2 * P, fixed(B + 40 * P))
    });
    f.rejects("DONTUNMAP without MAYMOVE", Errno::Inval, |s| {
        s.mremap(
            B,
            4 * P,
            4 * P,
            MremapFlags {
                dont_unmap: true,
                ..MremapFlags::default()
            },
        )
    });
    f.rejects("DONTUNMAP resizing", Errno::Inval, |s| {
        s.mremap(B, 4 * P, 2 * P, dont_unmap)
    });
    f.rejects("unaligned new address", Errno::Inval, |s| {
        s.mremap(B, 4 * P, 4 * P, fixed(B + 40 * P + 1))
    });
    f.rejects("new range overlapping the old one", Errno::Inval, |s| {
        s.mremap(B, 4 * P, 4 * P, fixed(B + 2 * P))
    });
    f.rejects("new range past TASK_SIZE", Errno::Inval, |s| {
        s.mremap(B, 4 * P, 4 * P, fixed(TASK_SIZE - 2 * P))
    });
    f.rejects("nothing mapped at the address", Errno::Fault, |s| {
        s.mremap(B + 40 * P, P, 2 * P, plain)
    });
    f.rejects("old range beyond its VMA", Errno::Fault, |s| {
        s.mremap(B, 6 * P, 8 * P, plain)
    });
    f.rejects(
        "growth that does not fit in place without MAYMOVE",
        Errno::NoMem,
        |s| s.mremap(B, 4 * P, 12 * P, plain),
    );
}

#[test]
fn faults_where_the_cpu_would_segfault_are_efault_and_change_nothing() {
    let f = fixture();
    f.space.mprotect(B + 3 * P, P, NONE).unwrap();
    f.log.take();
    f.rejects("read of unmapped memory", Errno::Fault, |s| {
        s.access(B + 5 * P, false)
    });
    f.rejects("write of unmapped memory", Errno::Fault, |s| {
        s.access(B + 40 * P, true)
    });
    f.rejects("write to a read-only mapping", Errno::Fault, |s| {
        s.access(B + 8 * P, true)
    });
    f.rejects("read of PROT_NONE", Errno::Fault, |s| {
        s.access(B + 3 * P, false)
    });
    f.rejects("write of PROT_NONE", Errno::Fault, |s| {
        s.access(B + 3 * P, true)
    });
    f.rejects("past TASK_SIZE", Errno::Fault, |s| {
        s.access(TASK_SIZE, false)
    });
    f.rejects("the last address", Errno::Fault, |s| {
        s.access(u64::MAX, true)
    });
}

#[test]
fn mlock_errors() {
    let f = fixture();
    f.rejects("nothing mapped", Errno::NoMem, |s| s.mlock(B + 40 * P, P));
    f.rejects("a hole at the start", Errno::NoMem, |s| {
        s.mlock(B + 4 * P, 8 * P)
    });
    f.rejects("munlock of a hole", Errno::NoMem, |s| {
        s.munlock(B + 40 * P, P)
    });
    f.rejects("length overflows", Errno::NoMem, |s| s.mlock(B, u64::MAX));
}

/// `apply_vma_lock_flags`: the VMAs before a hole are locked, then the call
/// fails with `ENOMEM` before populating anything.
#[test]
fn mlock_locks_the_vmas_before_a_hole_then_fails_without_populating() {
    let space = new_space();
    map(&space, B, 4 * P, RW);
    map(&space, B + 8 * P, 4 * P, RW);
    let log = Log::default();
    let _list = list_notifier(space.mm(), "L", &log);
    assert_eq!(space.mlock(B, 12 * P), Err(Errno::NoMem));
    let vmas = space.vmas();
    assert!(vmas[0].flags.contains(VmFlags::LOCKED));
    assert!(!vmas[1].flags.contains(VmFlags::LOCKED));
    assert_eq!(space.translate(B), None, "nothing populated");
    assert_eq!(log.take(), vec![]);
}

/// `mlock` of `PROT_NONE`: the VMA is locked, populating it fails (GUP
/// `EFAULT`), and mlock reports `ENOMEM`.
#[test]
fn mlock_of_prot_none_locks_but_fails_with_enomem() {
    let space = new_space();
    map(&space, B, 4 * P, NONE);
    assert_eq!(space.mlock(B, 4 * P), Err(Errno::NoMem));
    assert!(space.vmas()[0].flags.contains(VmFlags::LOCKED));
    assert_eq!(space.translate(B), None);
}
