//! Physical memory: page frames with a reference count and a map count,
//! the shared zero page, and PMD-sized compound frames (THP folios).
//!
//! Kernel counterpart: `struct page`/`struct folio` bookkeeping
//! (`folio_get`/`folio_put`, `folio_add_*_rmap`/`folio_remove_rmap_*`).
//! One [`Memory`] is shared by every address space of a simulation, so a
//! fork's parent and child map the same frames, as in Linux.

use std::fmt;

use parking_lot::Mutex;

use crate::layout::HPAGE_PMD_NR;

/// A page frame number.
pub type Pfn = u64;

/// The zero page: mapped read-only for reads of untouched anonymous memory.
pub const ZERO_PFN: Pfn = 0;

/// What a frame holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// On a free list.
    Free,
    /// The shared zero page.
    Zero,
    /// Anonymous memory.
    Anon,
    /// A KSM page: anonymous memory merged across mappings, write-protected
    /// for good (a write always copies).
    Ksm,
    /// A page of a shared-memory object (shmem, memfd) at this index.
    File {
        /// The object's id.
        object: u64,
        /// The page index within the object.
        index: u64,
    },
}

/// One frame's bookkeeping.
#[derive(Debug, Clone, Copy)]
pub struct Frame {
    /// What it holds.
    pub kind: FrameKind,
    /// References (page tables, page cache, GUP pins); on the head of a
    /// compound frame only.
    pub refcount: u32,
    /// Page-table entries mapping this base page.
    pub mapcount: u32,
    /// PMD entries mapping the compound frame (head only).
    pub pmd_mapcount: u32,
    /// `PageAnonExclusive`: the only mm mapping this anonymous page may
    /// write to it without copying.
    pub anon_exclusive: bool,
    /// log2 of the pages in the compound frame (0 or 9), head only.
    pub order: u8,
    /// The head frame of a compound frame (itself for heads and base pages).
    pub head: Pfn,
    /// Bumped on every allocation and write: frame identity plus content
    /// version, for coherence checks of secondary MMUs.
    pub generation: u64,
    /// Set once per allocation and never changed by writes: with the pfn,
    /// it names one life of the frame (a freed and reallocated pfn gets a
    /// new serial), which is what a secondary translation must still match.
    pub serial: u64,
    /// The device holding the page through a device-exclusive entry, as
    /// `make_device_exclusive` last set it; meaningful only while such an
    /// entry maps the frame. Linux keeps no owner in the entry; the
    /// software MMU records it so that a coherence check can tell the
    /// device that owns the page from one using it stale.
    pub exclusive_owner: Option<mmun_core::Owner>,
    /// The device whose memory the frame is (`page_pgmap(page)->owner` of
    /// a `MEMORY_DEVICE_COHERENT` page): set by a migration to the device,
    /// cleared by every allocation. The CPU maps such a frame like any
    /// other; migrations to a device leave it alone.
    pub device: Option<mmun_core::Owner>,
    /// Which address spaces map the folio (head only): two tracked ids with
    /// their mapping counts, the rest counted together — the userspace form
    /// of the folio's `_mm_id` tracking, which decides whether a large
    /// folio is exclusive to one mm.
    pub mappers: [(u64, u32); 2],
    /// Mappings by address spaces beyond the two tracked.
    pub other_mappers: u32,
}

impl Frame {
    fn add_mapper(&mut self, mm: u64) {
        if let Some(slot) = self.mappers.iter_mut().find(|(id, n)| *id == mm && *n > 0) {
            slot.1 += 1;
        } else if let Some(slot) = self.mappers.iter_mut().find(|(_, n)| *n == 0) {
            *slot = (mm, 1);
        } else {
            self.other_mappers += 1;
        }
    }

    fn remove_mapper(&mut self, mm: u64) {
        if let Some(slot) = self.mappers.iter_mut().find(|(id, n)| *id == mm && *n > 0) {
            slot.1 -= 1;
        } else {
            self.other_mappers = self.other_mappers.saturating_sub(1);
        }
    }

    /// Whether only `mm` maps the folio (head frames).
    pub fn mapped_only_by(&self, mm: u64) -> bool {
        self.other_mappers == 0 && self.mappers.iter().all(|(id, n)| *n == 0 || *id == mm)
    }

    /// How many mappings of the folio exist (head frames).
    pub fn total_mappings(&self) -> u32 {
        self.mappers.iter().map(|(_, n)| n).sum::<u32>() + self.other_mappers
    }
}

impl Frame {
    pub(crate) const FREE: Frame = Frame {
        kind: FrameKind::Free,
        refcount: 0,
        mapcount: 0,
        pmd_mapcount: 0,
        anon_exclusive: false,
        order: 0,
        head: 0,
        generation: 0,
        serial: 0,
        exclusive_owner: None,
        device: None,
        mappers: [(0, 0); 2],
        other_mappers: 0,
    };
}

/// All page frames of a simulation.
pub struct Memory {
    inner: Mutex<Frames>,
    huge_zero: std::sync::OnceLock<Pfn>,
}

struct Frames {
    frames: Vec<Frame>,
    free_small: Vec<Pfn>,
    free_huge: Vec<Pfn>,
    next_generation: u64,
}

impl Memory {
    /// Physical memory with only the zero page allocated.
    pub fn new() -> Memory {
        let mut zero = Frame::FREE;
        zero.kind = FrameKind::Zero;
        zero.refcount = 1;
        Memory {
            inner: Mutex::new(Frames {
                frames: vec![zero],
                free_small: Vec::new(),
                free_huge: Vec::new(),
                next_generation: 1,
            }),
            huge_zero: std::sync::OnceLock::new(),
        }
    }

    /// The huge zero page (`mm_get_huge_zero_folio`), allocated on first use.
    pub fn huge_zero(&self) -> Pfn {
        *self
            .huge_zero
            .get_or_init(|| self.alloc_huge(FrameKind::Zero))
    }

    /// Allocates a base page holding `kind`, with one reference.
    pub fn alloc(&self, kind: FrameKind) -> Pfn {
        let mut f = self.inner.lock();
        let pfn = match f.free_small.pop() {
            Some(pfn) => pfn,
            None => f.grow(1),
        };
        f.init(pfn, kind, 0);
        pfn
    }

    /// Allocates a PMD-sized compound frame holding `kind`; returns its head.
    pub fn alloc_huge(&self, kind: FrameKind) -> Pfn {
        let mut f = self.inner.lock();
        let head = match f.free_huge.pop() {
            Some(pfn) => pfn,
            None => f.grow(HPAGE_PMD_NR),
        };
        f.init(head, kind, 9);
        head
    }

    /// A copy of a frame's bookkeeping.
    pub fn frame(&self, pfn: Pfn) -> Frame {
        self.inner.lock().frames[pfn as usize]
    }

    /// Runs `f` on a frame's bookkeeping under the memory lock.
    pub fn update<R>(&self, pfn: Pfn, f: impl FnOnce(&mut Frame) -> R) -> R {
        f(&mut self.inner.lock().frames[pfn as usize])
    }

    /// The head of the compound frame `pfn` belongs to.
    pub fn head(&self, pfn: Pfn) -> Pfn {
        self.inner.lock().frames[pfn as usize].head
    }

    /// Takes a reference on the frame's head (`folio_get`).
    pub fn get(&self, pfn: Pfn) {
        let mut f = self.inner.lock();
        let head = f.frames[pfn as usize].head;
        f.frames[head as usize].refcount += 1;
    }

    /// Drops a reference (`folio_put`); the last one frees the frame.
    pub fn put(&self, pfn: Pfn) {
        let mut f = self.inner.lock();
        let head = f.frames[pfn as usize].head;
        if head == ZERO_PFN {
            return;
        }
        let frame = &mut f.frames[head as usize];
        assert!(frame.refcount > 0, "folio_put() of free frame {head:#x}");
        frame.refcount -= 1;
        if frame.refcount == 0 {
            f.free(head);
        }
    }

    /// Records one more PTE mapping of the base page `pfn` by address
    /// space `mm`.
    pub fn map_pte(&self, pfn: Pfn, mm: u64) {
        if pfn != ZERO_PFN {
            let mut f = self.inner.lock();
            f.frames[pfn as usize].mapcount += 1;
            let head = f.frames[pfn as usize].head;
            f.frames[head as usize].add_mapper(mm);
        }
    }

    /// Records one PTE mapping fewer of the base page `pfn` by `mm`.
    pub fn unmap_pte(&self, pfn: Pfn, mm: u64) {
        if pfn != ZERO_PFN {
            let mut f = self.inner.lock();
            let frame = &mut f.frames[pfn as usize];
            assert!(frame.mapcount > 0, "unmap of unmapped frame {pfn:#x}");
            frame.mapcount -= 1;
            let head = frame.head;
            f.frames[head as usize].remove_mapper(mm);
        }
    }

    /// Records a PMD mapping of the compound frame headed by `head` by `mm`.
    pub fn map_pmd(&self, head: Pfn, mm: u64) {
        let mut f = self.inner.lock();
        let frame = &mut f.frames[head as usize];
        frame.pmd_mapcount += 1;
        frame.add_mapper(mm);
    }

    /// Records one PMD mapping fewer of the compound frame by `mm`.
    pub fn unmap_pmd(&self, head: Pfn, mm: u64) {
        let mut f = self.inner.lock();
        let frame = &mut f.frames[head as usize];
        assert!(
            frame.pmd_mapcount > 0,
            "PMD unmap of unmapped folio {head:#x}"
        );
        frame.pmd_mapcount -= 1;
        frame.remove_mapper(mm);
    }

    /// Marks a write to the frame: its content version changes.
    pub fn touch_write(&self, pfn: Pfn) {
        let mut f = self.inner.lock();
        let generation = f.next_generation;
        f.next_generation += 1;
        f.frames[pfn as usize].generation = generation;
    }

    /// How many frames are allocated (the zero page included).
    pub fn allocated(&self) -> usize {
        let f = self.inner.lock();
        f.frames
            .iter()
            .filter(|fr| fr.kind != FrameKind::Free)
            .count()
    }
}

impl Default for Memory {
    fn default() -> Self {
        Memory::new()
    }
}

impl fmt::Debug for Memory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Memory")
            .field("allocated", &self.allocated())
            .finish()
    }
}

impl Frames {
    fn grow(&mut self, pages: u64) -> Pfn {
        let first = self.frames.len() as Pfn;
        let first = if pages > 1 {
            // Compound frames start on a multiple of their size, as in Linux.
            let aligned = first.next_multiple_of(pages);
            for pad in first..aligned {
                self.frames.push(Frame::FREE);
                self.free_small.push(pad);
            }
            aligned
        } else {
            first
        };
        for _ in 0..pages {
            self.frames.push(Frame::FREE);
        }
        first
    }

    fn init(&mut self, head: Pfn, kind: FrameKind, order: u8) {
        let generation = self.next_generation;
        self.next_generation += 1;
        for pfn in head..head + (1 << order) {
            self.frames[pfn as usize] = Frame {
                kind,
                refcount: 0,
                mapcount: 0,
                pmd_mapcount: 0,
                anon_exclusive: kind == FrameKind::Anon,
                order: 0,
                head,
                generation,
                serial: generation,
                exclusive_owner: None,
                device: None,
                mappers: [(0, 0); 2],
                other_mappers: 0,
            };
        }
        // Only the head of a large folio carries PageAnonExclusive until a
        // split spreads it (see `huge_memory::remap_as_ptes`).
        for pfn in head + 1..head + (1 << order) {
            self.frames[pfn as usize].anon_exclusive = false;
        }
        let frame = &mut self.frames[head as usize];
        frame.refcount = 1;
        frame.order = order;
    }

    fn free(&mut self, head: Pfn) {
        let order = self.frames[head as usize].order;
        for pfn in head..head + (1 << order) {
            self.frames[pfn as usize] = Frame::FREE;
        }
        if order == 0 {
            self.free_small.push(head);
        } else {
            self.free_huge.push(head);
        }
    }
}
