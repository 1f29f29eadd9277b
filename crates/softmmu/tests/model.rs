//! Random operation sequences on a small window (4 MiB: two PMD blocks, so
//! THP faults, splits, collapses and moves happen), with a parent and up to
//! two forked children alive at once, checking invariants after every
//! step:
//!
//! * VMAs sorted, non-overlapping, non-empty, page-aligned, in the window;
//! * every page-table entry lies inside a VMA and is writable only if the
//!   VMA is;
//! * frame bookkeeping: for every allocated frame, its map count equals the
//!   number of PTEs mapping it (walked over every live address space), its
//!   PMD map count the number of huge PMDs, its reference count is at least
//!   the number of mappings (exactly, for anonymous memory); no entry maps a
//!   free frame;
//! * every notifier start has its end, properly nested, with
//!   `invalidate_range`/`change_pte` inside (a recording list notifier on
//!   every address space), and no core WARN;
//! * after every address space exited, only the zero pages are left (the
//!   page cache of shared memory included: it goes with the last mapping).
//!
//! A second property test checks isolation (copy-on-write exclusivity,
//! `PROT_NONE` PTEs) with THP always on; it fails on the split bugs the
//! deterministic tests at the end pin down.

mod notify_log;

use std::collections::HashMap;
use std::sync::Arc;

use mmun_core::Notifier;
use mmun_softmmu::frame::{FrameKind, Pfn};
use mmun_softmmu::{AddressSpace, Config, MapRequest, Memory, MremapFlags, ThpMode, VmFlags};
use mmun_softmmu::{Advice, Prot};
use notify_log::*;
use proptest::prelude::*;

const B: u64 = 0x1000_0000_0000;
const P: u64 = 0x1000;
const M2: u64 = 0x20_0000;
/// Pages in the window.
const PAGES: u64 = 1024;
const END: u64 = B + PAGES * P;

#[derive(Debug, Clone)]
enum Op {
    Mmap {
        page: u64,
        pages: u64,
        prot: Prot,
        shared: bool,
        populate: bool,
        fixed: bool,
    },
    Munmap {
        who: usize,
        page: u64,
        pages: u64,
    },
    Mprotect {
        who: usize,
        page: u64,
        pages: u64,
        prot: Prot,
    },
    Madvise {
        who: usize,
        page: u64,
        pages: u64,
        advice: Advice,
    },
    Mremap {
        page: u64,
        old: u64,
        new: u64,
        to: Option<u64>,
        dont_unmap: bool,
    },
    Touch {
        who: usize,
        page: u64,
        pages: u64,
        write: bool,
    },
    /// Touches the `index`-th VMA (modulo their number) from `frac`/16 of
    /// its length on.
    TouchVma {
        who: usize,
        index: usize,
        frac: u64,
        pages: u64,
        write: bool,
    },
    Mlock {
        page: u64,
        pages: u64,
        lock: bool,
    },
    Fork {
        keep: bool,
    },
    ExitChild {
        which: usize,
    },
    SoftDirty,
}

/// A page span in the window: small anywhere, or PMD-scale around the PMD
/// boundaries; `small` weighs the small ones.
fn span(small: u32) -> impl Strategy<Value = (u64, u64)> {
    prop_oneof![
        small => (0u64..PAGES, 1u64..24),
        2 => (0u64..2, 1u64..3).prop_map(|(k, n)| (k * 512, n * 512)),
        2 => (0u64..2, 1u64..3, 0u64..8, 0u64..8).prop_map(|(k, n, a, b)| (k * 512 + a, n * 512 - b)),
    ]
    .prop_map(|(page, pages)| (page, pages.clamp(1, PAGES - page)))
}

/// Where a touch starts: anywhere, or at or around a PMD boundary.
fn touch_page() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..PAGES,
        prop::sample::select(vec![0u64, 1, 300, 511, 512, 513, 900]),
    ]
}

fn prot() -> impl Strategy<Value = Prot> {
    prop_oneof![
        4 => Just(Prot::RW),
        2 => Just(R),
        1 => Just(Prot::NONE),
    ]
}

fn advice() -> impl Strategy<Value = Advice> {
    prop::sample::select(vec![
        Advice::DontNeed,
        Advice::DontNeedLocked,
        Advice::Free,
        Advice::Remove,
        Advice::Cold,
        Advice::PageOut,
        Advice::WillNeed,
        Advice::PopulateRead,
        Advice::PopulateWrite,
        Advice::HugePage,
        Advice::HugePage,
        Advice::NoHugePage,
        Advice::Collapse,
        Advice::DontFork,
        Advice::DoFork,
        Advice::WipeOnFork,
        Advice::KeepOnFork,
    ])
}

/// An operation; `small` weighs small spans against PMD-scale ones.
fn op(small: u32) -> impl Strategy<Value = Op> {
    let who = 0usize..3;
    prop_oneof![
        6 => (span(small), prot(), any::<bool>(), prop::bool::weighted(0.1), any::<bool>()).prop_map(
            |((page, pages), prot, shared, populate, fixed)| Op::Mmap {
                page,
                pages,
                prot,
                shared: shared && pages < 64,
                populate,
                fixed,
            }
        ),
        3 => (who.clone(), span(small)).prop_map(|(who, (page, pages))| Op::Munmap { who, page, pages }),
        3 => (who.clone(), span(small), prot())
            .prop_map(|(who, (page, pages), prot)| Op::Mprotect { who, page, pages, prot }),
        4 => (who.clone(), span(small), advice())
            .prop_map(|(who, (page, pages), advice)| Op::Madvise { who, page, pages, advice }),
        2 => (span(small), 1u64..600, prop::option::of(0u64..PAGES), any::<bool>()).prop_map(
            |((page, old), new, to, dont_unmap)| {
                let new = new.min(PAGES - page);
                Op::Mremap {
                    page,
                    old,
                    new,
                    to: to.map(|t| t.min(PAGES - old.max(new))),
                    dont_unmap,
                }
            }
        ),
        8 => (who.clone(), 0usize..8, 0u64..16, 1u64..40, any::<bool>()).prop_map(
            |(who, index, frac, pages, write)| Op::TouchVma { who, index, frac, pages, write }
        ),
        3 => (who, touch_page(), 1u64..24, any::<bool>()).prop_map(|(who, page, pages, write)| Op::Touch {
            who,
            page,
            pages: pages.min(PAGES - page),
            write,
        }),
        1 => (span(small), any::<bool>()).prop_map(|((page, pages), lock)| Op::Mlock { page, pages, lock }),
        1 => any::<bool>().prop_map(|keep| Op::Fork { keep }),
        1 => (0usize..2).prop_map(|which| Op::ExitChild { which }),
        1 => Just(Op::SoftDirty),
    ]
}

/// A live address space with its recording notifier.
struct Proc {
    space: AddressSpace,
    log: Log,
    _notifier: Notifier<ListRec>,
}

impl Proc {
    fn new(space: AddressSpace) -> Proc {
        let log = Log::default();
        let notifier = list_notifier(space.mm(), "L", &log);
        Proc {
            space,
            log,
            _notifier: notifier,
        }
    }
}

struct World {
    memory: Arc<Memory>,
    procs: Vec<Proc>,
    /// Whether shared memory was ever mapped (its page cache outlives exit:
    /// see `exit_frees_the_page_cache_of_shared_memory`).
    shared_used: bool,
}

fn addr(page: u64) -> u64 {
    B + page * P
}

impl World {
    fn new(thp_always: bool) -> World {
        let memory = Arc::new(Memory::new());
        let config = Config {
            thp: if thp_always {
                ThpMode::Always
            } else {
                ThpMode::Madvise
            },
            thp_zero_page: true,
        };
        let parent = AddressSpace::with_config(Arc::clone(&memory), config);
        World {
            memory,
            procs: vec![Proc::new(parent)],
            shared_used: false,
        }
    }

    fn target(&self, who: usize) -> &AddressSpace {
        &self.procs[who % self.procs.len()].space
    }

    fn apply(&mut self, op: &Op) {
        let parent = &self.procs[0].space;
        match *op {
            Op::Mmap {
                page,
                pages,
                prot,
                shared,
                populate,
                fixed,
            } => {
                self.shared_used |= shared;
                let _ = parent.mmap(MapRequest {
                    addr: addr(page),
                    len: pages * P,
                    prot,
                    shared,
                    populate,
                    fixed,
                    noreplace: !fixed,
                    ..MapRequest::default()
                });
            }
            Op::Munmap { who, page, pages } => {
                let _ = self.target(who).munmap(addr(page), pages * P);
            }
            Op::Mprotect {
                who,
                page,
                pages,
                prot,
            } => {
                let _ = self.target(who).mprotect(addr(page), pages * P, prot);
            }
            Op::Madvise {
                who,
                page,
                pages,
                advice,
            } => {
                let _ = self.target(who).madvise(addr(page), pages * P, advice);
            }
            Op::Mremap {
                page,
                old,
                new,
                to,
                dont_unmap,
            } => {
                let flags = MremapFlags {
                    may_move: to.is_some(),
                    dont_unmap: dont_unmap && to.is_some(),
                    fixed: to.map(addr),
                };
                let new = if flags.dont_unmap { old } else { new };
                let _ = parent.mremap(addr(page), old * P, new * P, flags);
            }
            Op::Touch {
                who,
                page,
                pages,
                write,
            } => {
                let space = self.target(who);
                for p in page..page + pages {
                    if space.access(addr(p), write).is_err() {
                        break;
                    }
                }
            }
            Op::TouchVma {
                who,
                index,
                frac,
                pages,
                write,
            } => {
                let space = self.target(who);
                let vmas = space.vmas();
                if let Some(v) = vmas.get(index % vmas.len().max(1)) {
                    let n = (v.end - v.start) / P;
                    let first = v.start + (n * frac / 16) * P;
                    for a in (first..v.end).step_by(P as usize).take(pages as usize) {
                        if space.access(a, write).is_err() {
                            break;
                        }
                    }
                }
            }
            Op::Mlock { page, pages, lock } => {
                let _ = if lock {
                    parent.mlock(addr(page), pages * P)
                } else {
                    parent.munlock(addr(page), pages * P)
                };
            }
            Op::Fork { keep } => {
                let child = parent.fork();
                if keep && self.procs.len() < 3 {
                    self.procs.push(Proc::new(child));
                } else {
                    child.exit();
                }
            }
            Op::ExitChild { which } => {
                if self.procs.len() > 1 {
                    let i = 1 + which % (self.procs.len() - 1);
                    let proc = self.procs.remove(i);
                    proc.space.exit();
                }
            }
            Op::SoftDirty => parent.clear_soft_dirty(),
        }
    }

    /// Every invariant; a description of the first broken one.
    fn check(&self) -> Result<(), String> {
        let mut pte_maps: HashMap<Pfn, u32> = HashMap::new();
        let mut pmd_maps: HashMap<Pfn, u32> = HashMap::new();
        for (i, proc) in self.procs.iter().enumerate() {
            let space = &proc.space;
            check_nesting(&proc.log.take(), "L").map_err(|e| format!("proc {i}: {e}"))?;
            let warnings = space.mm().warnings();
            if !warnings.is_empty() {
                return Err(format!("proc {i}: core WARNs {warnings:?}"));
            }
            let vmas = space.vmas();
            let mut prev_end = B;
            for v in &vmas {
                if v.start < prev_end || v.start >= v.end || v.end > END {
                    return Err(format!("proc {i}: VMA {v:x?} after {prev_end:#x}"));
                }
                if v.start % P != 0 || v.end % P != 0 {
                    return Err(format!("proc {i}: unaligned VMA {v:x?}"));
                }
                prev_end = v.end;
            }
            let vma_at = |a: u64| vmas.iter().find(|v| v.start <= a && a < v.end);
            let mut block = B;
            while block < END {
                let head = space.mapped_frame(block);
                if let Some((pfn, write)) = head
                    && space.pte(block).is_none()
                {
                    // A huge PMD: the whole block in one VMA.
                    let vma = vma_at(block).filter(|v| v.start <= block && block + M2 <= v.end);
                    let Some(vma) = vma else {
                        return Err(format!("proc {i}: huge PMD at {block:#x} outside one VMA"));
                    };
                    if write && !vma.flags.contains(VmFlags::WRITE) {
                        return Err(format!(
                            "proc {i}: writable huge PMD at {block:#x} in {vma:?}"
                        ));
                    }
                    *pmd_maps.entry(pfn).or_default() += 1;
                    block += M2;
                    continue;
                }
                for a in (block..block + M2).step_by(P as usize) {
                    let pte = space.pte(a);
                    if pte.is_none() {
                        continue;
                    }
                    let Some(vma) = vma_at(a) else {
                        return Err(format!(
                            "proc {i}: entry {pte:?} at {a:#x} outside every VMA"
                        ));
                    };
                    if !pte.is_present() {
                        return Err(format!(
                            "proc {i}: unexpected non-present entry {pte:?} at {a:#x}"
                        ));
                    }
                    let writable = pte.is_write() && !pte.is_protnone();
                    if writable && !vma.flags.contains(VmFlags::WRITE) {
                        return Err(format!("proc {i}: writable PTE at {a:#x} in {vma:?}"));
                    }
                    if !pte.is_special() && pte.pfn() != 0 {
                        *pte_maps.entry(pte.pfn()).or_default() += 1;
                    }
                }
                block += M2;
            }
        }
        check_frames(&self.memory, &pte_maps, &pmd_maps, false, false)
    }

    fn exit_all(&mut self) -> Result<(), String> {
        for proc in self.procs.drain(..).rev() {
            proc.space.exit();
            let log = proc.log.take();
            check_nesting(&log, "L")?;
            if log != vec![Ev::Release { who: "L" }] {
                return Err(format!("exit stream {log:x?}"));
            }
            if !proc.space.vmas().is_empty() {
                return Err("VMAs left after exit".into());
            }
        }
        check_frames(&self.memory, &HashMap::new(), &HashMap::new(), true, false)
    }
}

/// Checks every allocated frame against the mapping counts walked from the
/// page tables. `after_exit`: nothing maps anything any more, and only the
/// zero pages may be left — except, with `tolerate_page_cache`, page-cache
/// pages (the shmem leak that `exit_frees_the_page_cache_of_shared_memory`
/// shows).
fn check_frames(
    memory: &Memory,
    pte_maps: &HashMap<Pfn, u32>,
    pmd_maps: &HashMap<Pfn, u32>,
    after_exit: bool,
    tolerate_page_cache: bool,
) -> Result<(), String> {
    for (&pfn, &n) in pte_maps.iter().chain(pmd_maps.iter()) {
        if memory.frame(pfn).kind == FrameKind::Free {
            return Err(format!("{n} entries map the free frame {pfn:#x}"));
        }
    }
    let allocated = memory.allocated();
    let mut seen = 0;
    let mut pfn: Pfn = 0;
    while seen < allocated {
        let frame = memory.frame(pfn);
        if frame.kind == FrameKind::Free {
            pfn += 1;
            continue;
        }
        seen += 1;
        let zero = frame.kind == FrameKind::Zero;
        let ptes = pte_maps.get(&pfn).copied().unwrap_or(0);
        let pmds = pmd_maps.get(&pfn).copied().unwrap_or(0);
        if !zero && frame.mapcount != ptes {
            return Err(format!("frame {pfn:#x} {frame:?}: mapcount != {ptes} PTEs"));
        }
        if frame.head != pfn {
            if frame.refcount != 0 || frame.pmd_mapcount != 0 || pmds != 0 {
                return Err(format!("tail frame {pfn:#x} {frame:?} has head state"));
            }
            if memory.frame(frame.head).kind != frame.kind {
                return Err(format!(
                    "tail frame {pfn:#x} {frame:?} differs from its head"
                ));
            }
            pfn += 1;
            continue;
        }
        if zero {
            pfn += 1;
            continue;
        }
        if frame.pmd_mapcount != pmds {
            return Err(format!(
                "frame {pfn:#x} {frame:?}: pmd_mapcount != {pmds} PMDs"
            ));
        }
        let pages = 1u64 << frame.order;
        let mappings: u32 = frame.pmd_mapcount
            + (pfn..pfn + pages)
                .map(|p| memory.frame(p).mapcount)
                .sum::<u32>();
        match frame.kind {
            FrameKind::Anon if frame.refcount != mappings => {
                return Err(format!(
                    "anonymous folio {pfn:#x} {frame:?}: refcount != {mappings} mappings"
                ));
            }
            FrameKind::File { .. }
                if frame.refcount < mappings || frame.refcount > mappings + 1 =>
            {
                return Err(format!(
                    "file folio {pfn:#x} {frame:?}: refcount not {mappings} mappings (+1 page cache)"
                ));
            }
            FrameKind::File { .. } if tolerate_page_cache => {}
            FrameKind::Anon | FrameKind::File { .. } if after_exit => {
                return Err(format!("frame {pfn:#x} {frame:?} left after every exit"));
            }
            _ => {}
        }
        pfn += 1;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, max_shrink_iters: 2000, .. ProptestConfig::default() })]

    #[test]
    fn random_operation_sequences_keep_every_invariant(
        thp_always in any::<bool>(),
        ops in prop::collection::vec(op(3), 1..60),
    ) {
        let mut world = World::new(thp_always);
        for (i, op) in ops.iter().enumerate() {
            world.apply(op);
            if let Err(e) = world.check() {
                prop_assert!(false, "after step {} ({:?}): {}", i, op, e);
            }
        }
        if let Err(e) = world.exit_all() {
            prop_assert!(false, "after exit: {}", e);
        }
    }
}

/// Isolation, checked after every step of random sequences with forked
/// children alive and THP always on:
///
/// * copy-on-write: a PTE or huge PMD that is writable in a private VMA
///   maps an anonymous page that no other entry maps (otherwise a write
///   through it would be seen by another process);
/// * `PROT_NONE`: every PTE of a VMA without access is `protnone`.
fn check_isolation(world: &World) -> Result<(), String> {
    let mut mappers: HashMap<Pfn, u32> = HashMap::new();
    let mut writable: Vec<(usize, u64, Pfn)> = Vec::new();
    for (i, proc) in world.procs.iter().enumerate() {
        let space = &proc.space;
        let vmas = space.vmas();
        for v in vmas.iter() {
            for a in (v.start..v.end).step_by(P as usize) {
                let pte = space.pte(a);
                if pte.is_present() && !v.flags.intersects(VmFlags::ACCESS) && !pte.is_protnone() {
                    return Err(format!(
                        "proc {i}: accessible PTE {pte:?} at {a:#x} in {v:?}"
                    ));
                }
                let Some((pfn, write)) = space.mapped_frame(a) else {
                    continue;
                };
                let frame = world.memory.frame(pfn);
                if frame.kind != FrameKind::Anon {
                    continue;
                }
                *mappers.entry(pfn).or_default() += 1;
                if write && !v.flags.contains(VmFlags::SHARED) {
                    writable.push((i, a, pfn));
                }
            }
        }
    }
    for (i, a, pfn) in writable {
        let n = mappers[&pfn];
        if n > 1 {
            return Err(format!(
                "proc {i} can write at {a:#x} to frame {pfn:#x}, which {n} entries map"
            ));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        max_shrink_iters: 2000,
        failure_persistence: None,
        .. ProptestConfig::default()
    })]

    #[test]
    fn random_sequences_keep_private_pages_and_prot_none_isolated(
        ops in prop::collection::vec(op(0), 1..60),
    ) {
        let mut world = World::new(true);
        for (i, op) in ops.iter().enumerate() {
            world.apply(op);
            if let Err(e) = check_isolation(&world) {
                prop_assert!(false, "after step {} ({:?}): {}", i, op, e);
            }
        }
        let _ = world.exit_all();
    }
}

/// `exit_mmap` drops the last reference to an anonymous shared mapping's
/// shmem inode, whose eviction (`shmem_evict_inode` → truncate) frees its
/// page cache. After every process that mapped it exited, no frame but the
/// zero pages may remain.
#[test]
fn exit_frees_the_page_cache_of_shared_memory() {
    let memory = Arc::new(Memory::new());
    let space = AddressSpace::new(Arc::clone(&memory));
    map_shared(&space, B, 4 * P, RW);
    touch(&space, B, 4 * P, true);
    map(&space, B + 8 * P, 4 * P, RW);
    touch(&space, B + 8 * P, 4 * P, true);
    space.exit();
    let left = check_frames(&memory, &HashMap::new(), &HashMap::new(), true, false);
    assert_eq!(left, Ok(()), "frames left after exit");
}

/// The same through munmap: the last unmap of an anonymous shared mapping
/// frees its pages.
#[test]
fn munmap_of_the_last_mapping_frees_shared_memory() {
    let memory = Arc::new(Memory::new());
    let space = AddressSpace::new(Arc::clone(&memory));
    let baseline = memory.allocated();
    map_shared(&space, B, 4 * P, RW);
    touch(&space, B, 4 * P, true);
    space.munmap(B, 4 * P).unwrap();
    let left = memory.allocated() - baseline;
    space.exit();
    assert_eq!(
        left, 0,
        "page-cache frames of an unreachable object stay allocated"
    );
}

fn thp_always() -> AddressSpace {
    new_space_with(Config {
        thp: ThpMode::Always,
        thp_zero_page: true,
    })
}

/// `__split_huge_pmd_locked` builds the PTEs from `vma->vm_page_prot`: the
/// PTEs of a split `PROT_NONE` huge PMD (a THP or the huge zero page) stay
/// inaccessible.
#[test]
fn splitting_a_prot_none_huge_pmd_keeps_its_ptes_inaccessible() {
    for write in [true, false] {
        let space = thp_always();
        map(&space, B, M2, RW);
        touch(&space, B, P, write);
        assert!(
            space.pte(B).is_none() && space.translate(B).is_some(),
            "huge"
        );
        space.mprotect(B, M2, Prot::NONE).unwrap();
        space.munmap(B + M2 - P, P).unwrap();
        for a in [B, B + P, B + M2 - 2 * P] {
            let pte = space.pte(a);
            assert!(
                pte.is_protnone(),
                "write={write}: PTE {pte:?} at {a:#x} of a PROT_NONE VMA is accessible after the split"
            );
        }
        space.exit();
    }
}

/// `__split_huge_pmd_locked` carries `pmd_dirty` over to every PTE (and
/// the folio). A written THP made read-only and then split keeps its
/// dirty PTEs, so reclaim (no swap) can never drop the written data as if
/// it were clean `MADV_FREE` memory.
#[test]
fn splitting_a_written_huge_pmd_keeps_it_dirty() {
    let space = thp_always();
    map(&space, B, M2, RW);
    touch(&space, B, P, true);
    space.mprotect(B, M2, R).unwrap();
    space.munmap(B + M2 - P, P).unwrap();
    let dirty = space.pte(B + P).is_dirty();
    space.reclaim(B, B + M2);
    space.reclaim(B, B + M2);
    let kept = space.translate(B + P).is_some();
    space.exit();
    assert!(dirty, "the split lost the dirty bit");
    assert!(kept, "reclaim dropped written anonymous memory");
}
