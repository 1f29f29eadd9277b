//! The window every round maps: a THP-sized anonymous region, a region of
//! small anonymous pages and a shared memfd region, at the script window's
//! base so that trace lines are script offsets.

use std::sync::Arc;

use mmun_script::{Advice, MmapFlags, Op, Prot, WINDOW_BASE};
use mmun_softmmu::layout::{PAGE_SIZE, PMD_SIZE};
use mmun_softmmu::shmem::ShmemObject;
use mmun_softmmu::{AddressSpace, Errno, MapRequest, Memory};

use crate::rng::Rng;
use crate::script::off;

/// How far `mremap` moves a range before moving it back.
pub const AWAY: u64 = 0x80_0000;
/// Pages at the start of each region that accessors and mutators favour,
/// so that they collide often.
const HOT: u64 = 16;

/// What backs a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Private anonymous memory with `MADV_HUGEPAGE`.
    Thp,
    /// Private anonymous memory in small pages.
    Anon,
    /// A shared memfd mapping.
    Memfd,
}

/// One region of the window.
#[derive(Debug, Clone, Copy)]
pub struct Region {
    /// What backs it.
    pub kind: Kind,
    /// First address.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
}

impl Region {
    fn pages(&self) -> u64 {
        self.len / PAGE_SIZE
    }

    /// A page of the region, favouring the hot ones.
    fn pick_page(&self, rng: &mut Rng) -> u64 {
        let pages = if rng.chance(50) {
            HOT.min(self.pages())
        } else {
            self.pages()
        };
        self.start + rng.below(pages) * PAGE_SIZE
    }
}

/// What a mutator operation acts on: `[start, start + len)` inside
/// `region`.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// The region.
    pub region: Region,
    /// First address.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
}

/// The regions of a round, and the memfd object the shared one maps.
#[derive(Debug)]
pub struct Layout {
    regions: [Region; 3],
    memfd: Arc<ShmemObject>,
}

/// One operation a layout step performed, and how it ended.
pub type Done = (Op, Result<(), Errno>);

impl Layout {
    /// The window of a round whose frames come from `memory`.
    pub fn new(memory: &Arc<Memory>) -> Layout {
        let memfd_len = 64 * PAGE_SIZE;
        Layout {
            regions: [
                Region {
                    kind: Kind::Thp,
                    start: WINDOW_BASE,
                    len: PMD_SIZE,
                },
                Region {
                    kind: Kind::Anon,
                    start: WINDOW_BASE + PMD_SIZE,
                    len: PMD_SIZE / 2,
                },
                Region {
                    kind: Kind::Memfd,
                    start: WINDOW_BASE + PMD_SIZE + PMD_SIZE / 2,
                    len: memfd_len,
                },
            ],
            memfd: Arc::new(ShmemObject::new(Arc::clone(memory), memfd_len)),
        }
    }

    /// The whole window, moves included: `[start, end)`.
    pub fn span(&self) -> (u64, u64) {
        let last = self.regions[2];
        (WINDOW_BASE, last.start + last.len + AWAY)
    }

    /// A random page for an accessor.
    pub fn pick_page(&self, rng: &mut Rng) -> u64 {
        rng.pick(&self.regions).pick_page(rng)
    }

    /// The one page at `page`, as a target, if a region holds it.
    pub fn target_at(&self, page: u64) -> Option<Target> {
        let region = *self
            .regions
            .iter()
            .find(|r| r.start <= page && page < r.start + r.len)?;
        Some(Target {
            region,
            start: page,
            len: PAGE_SIZE,
        })
    }

    /// A random range for a mutator: mostly a few pages near the hot
    /// start of a region, sometimes the whole region.
    pub fn pick_target(&self, rng: &mut Rng) -> Target {
        let region = *rng.pick(&self.regions);
        if rng.chance(10) {
            return Target {
                region,
                start: region.start,
                len: region.len,
            };
        }
        let start = region.pick_page(rng);
        let room = (region.start + region.len - start) / PAGE_SIZE;
        let pages = 1 + rng.below(room.min(HOT));
        Target {
            region,
            start,
            len: pages * PAGE_SIZE,
        }
    }

    /// Maps every region afresh.
    pub fn map_all(&self, space: &AddressSpace) -> Vec<Done> {
        self.regions
            .iter()
            .flat_map(|r| self.map(space, r, r.start, r.len))
            .collect()
    }

    /// Maps `[start, start + len)` of `region` afresh, as the round
    /// started with it; the memfd region is always mapped whole (its
    /// mappings start at offset 0 of the object).
    pub fn map(&self, space: &AddressSpace, region: &Region, start: u64, len: u64) -> Vec<Done> {
        let memfd = region.kind == Kind::Memfd;
        let (start, len) = if memfd {
            (region.start, region.len)
        } else {
            (start, len)
        };
        let req = MapRequest {
            addr: start,
            len,
            prot: Prot::RW,
            shared: memfd,
            object: memfd.then(|| Arc::clone(&self.memfd)),
            fixed: true,
            ..MapRequest::default()
        };
        let op = Op::Mmap {
            off: off(start),
            len,
            prot: Prot::RW,
            flags: MmapFlags {
                shared: memfd,
                memfd,
                fixed: true,
                ..MmapFlags::default()
            },
        };
        let mut done = vec![(op, space.mmap(req).map(drop))];
        if region.kind == Kind::Thp {
            let advice = Advice::HugePage;
            let op = Op::Madvise {
                off: off(start),
                len,
                advice,
            };
            done.push((op, space.madvise(start, len, advice)));
        }
        done
    }
}
