//! Physical memory: page frames with a reference count and a map count,
//! the shared zero page, PMD-sized compound frames (THP folios), and the
//! bytes the frames hold (4 KiB per frame ever written, allocated on the
//! first write; every other frame reads as zeros, and a freed frame is
//! zeroed).
//!
//! Kernel counterpart: `struct page`/`struct folio` bookkeeping
//! (`folio_get`/`folio_put`, `folio_add_*_rmap`/`folio_remove_rmap_*`).
//! One [`Memory`] is shared by every address space of a simulation, so a
//! fork's parent and child map the same frames, as in Linux.

use std::fmt;

use parking_lot::Mutex;

use std::collections::HashMap;

use crate::layout::{HPAGE_PMD_NR, PAGE_SIZE};

/// The bytes of one base page.
type Page = [u8; PAGE_SIZE as usize];

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
    /// `MADV_FREE` made the anonymous page lazily freeable (its folio lost
    /// `PG_swapbacked`): reclaim may drop it if it is still clean.
    pub lazyfree: bool,
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
        lazyfree: false,
    };
}

/// The RAM a [`Memory`] has unless told otherwise: 1 GiB.
pub const DEFAULT_MEMORY_BYTES: u64 = 1 << 30;

/// All page frames of a simulation: a machine with finite RAM. An
/// allocation that finds no free frame fails, as the page allocator does
/// once reclaim and the OOM killer cannot help; the callers turn that into
/// what Linux returns (`VM_FAULT_OOM`, a THP fallback, `-ENOMEM`).
pub struct Memory {
    inner: Mutex<Frames>,
    huge_zero: std::sync::OnceLock<Pfn>,
    /// The devices whose memory is device-private, and their ops.
    pagemaps: crate::device_private::Pagemaps,
}

/// Locking: everything below is under `Memory::inner`; the vector never
/// holds more than `limit` frames, so the bookkeeping is as finite as the
/// RAM it models.
struct Frames {
    frames: Vec<Frame>,
    /// The contents of the frames ever written, by pfn: 4 KiB each,
    /// allocated on the first write and dropped when the frame is freed.
    /// A frame without one reads as zeros (the zero page never has one).
    contents: HashMap<Pfn, Box<Page>>,
    /// The machine's RAM in frames (the zero page included).
    limit: u64,
    free_small: Vec<Pfn>,
    free_huge: Vec<Pfn>,
    next_generation: u64,
}

impl Memory {
    /// Physical memory of [`DEFAULT_MEMORY_BYTES`] with only the zero page
    /// allocated.
    pub fn new() -> Memory {
        Memory::with_bytes(DEFAULT_MEMORY_BYTES)
    }

    /// Physical memory of `bytes` (rounded down to whole pages; at least
    /// the zero page).
    pub fn with_bytes(bytes: u64) -> Memory {
        let limit = (bytes / crate::layout::PAGE_SIZE).max(1);
        let mut zero = Frame::FREE;
        zero.kind = FrameKind::Zero;
        zero.refcount = 1;
        Memory {
            inner: Mutex::new(Frames {
                frames: vec![zero],
                contents: HashMap::new(),
                limit,
                free_small: Vec::new(),
                free_huge: Vec::new(),
                next_generation: 1,
            }),
            huge_zero: std::sync::OnceLock::new(),
            pagemaps: crate::device_private::Pagemaps::default(),
        }
    }

    /// Makes `owner`'s memory device-private (`MEMORY_DEVICE_PRIVATE`):
    /// migrations to it leave device-private entries the CPU cannot
    /// reach, and a CPU touch calls `ops` (held weakly: the driver owns
    /// it) as it migrates the page back. Owners never registered are
    /// device-coherent. Register before the first migration to the device;
    /// every driver instance on the device registers (each is told).
    pub fn register_device_private(
        &self,
        owner: mmun_core::Owner,
        ops: &std::sync::Arc<dyn crate::device_private::DevicePagemap>,
    ) {
        self.pagemaps.register(owner, ops);
    }

    /// Whether `owner`'s memory is device-private.
    pub fn is_device_private(&self, owner: mmun_core::Owner) -> bool {
        self.pagemaps.is_private(owner)
    }

    /// The ops of a device-private owner's live driver instances.
    pub(crate) fn pagemap(
        &self,
        owner: mmun_core::Owner,
    ) -> Vec<std::sync::Arc<dyn crate::device_private::DevicePagemap>> {
        self.pagemaps.ops(owner)
    }

    /// The huge zero page (`mm_get_huge_zero_folio`), allocated on first
    /// use; `None` while memory is too short for it (the caller falls back
    /// to small pages, and a later call tries again).
    pub fn huge_zero(&self) -> Option<Pfn> {
        if let Some(pfn) = self.huge_zero.get() {
            return Some(*pfn);
        }
        let pfn = self.alloc_huge(FrameKind::Zero)?;
        if self.huge_zero.set(pfn).is_err() {
            self.put(pfn); // another thread won the race
        }
        self.huge_zero.get().copied()
    }

    /// The machine's RAM in bytes.
    pub fn total_bytes(&self) -> u64 {
        self.inner.lock().limit * crate::layout::PAGE_SIZE
    }

    /// Allocates a base page holding `kind`, with one reference; `None`
    /// when every frame is in use.
    pub fn alloc(&self, kind: FrameKind) -> Option<Pfn> {
        let mut f = self.inner.lock();
        let pfn = match f.free_small.pop() {
            Some(pfn) => pfn,
            None => f.grow(1).or_else(|| f.break_up_free_huge())?,
        };
        f.init(pfn, kind, 0);
        Some(pfn)
    }

    /// Allocates a PMD-sized compound frame holding `kind`; returns its
    /// head, or `None` when no naturally aligned block of free frames is
    /// left (Linux's THP allocation failing after compaction).
    pub fn alloc_huge(&self, kind: FrameKind) -> Option<Pfn> {
        let mut f = self.inner.lock();
        let head = match f.free_huge.pop() {
            Some(pfn) => pfn,
            None => f.grow(HPAGE_PMD_NR).or_else(|| f.compact_free_small())?,
        };
        f.init(head, kind, 9);
        Some(head)
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
        self.inner.lock().put(pfn);
    }

    /// For each `(pfn, mapped)` of `pages`: one PTE mapping fewer by `mm`
    /// if `mapped` ([`Memory::unmap_pte`]), then a reference fewer
    /// ([`Memory::put`]), all in one hold of the memory lock. For a zap of
    /// a PTE table, which Linux batches the same way (`tlb_remove_page`,
    /// then one `free_pages_and_swap_cache` for the batch).
    pub fn unmap_and_put(&self, mm: u64, pages: &[(Pfn, bool)]) {
        if pages.is_empty() {
            return;
        }
        let mut f = self.inner.lock();
        for &(pfn, mapped) in pages {
            if mapped {
                f.unmap_pte(pfn, mm);
            }
            f.put(pfn);
        }
    }

    /// Records one more PTE mapping of the base page `pfn` by address
    /// space `mm`.
    pub fn map_pte(&self, pfn: Pfn, mm: u64) {
        self.inner.lock().map_pte(pfn, mm);
    }

    /// Fork's copy of a PTE mapping `pfn` into `mm`: a reference on the
    /// folio, a PTE mapping by `mm`, and the page no longer
    /// `PageAnonExclusive` (`folio_try_dup_anon_rmap_pte`), in one hold of
    /// the memory lock.
    pub fn dup_pte(&self, pfn: Pfn, mm: u64) {
        let mut f = self.inner.lock();
        f.map_pte(pfn, mm);
        let head = f.frames[pfn as usize].head;
        f.frames[head as usize].refcount += 1;
        f.frames[pfn as usize].anon_exclusive = false;
    }

    /// Records one PTE mapping fewer of the base page `pfn` by `mm`.
    pub fn unmap_pte(&self, pfn: Pfn, mm: u64) {
        self.inner.lock().unmap_pte(pfn, mm);
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

    /// `folio_try_get`, as GUP-fast pins a page: a reference on the folio
    /// `pfn` belongs to, if the frame is still in the life `serial` names
    /// and not being freed. The folio's head is found under the same hold
    /// of the lock that takes the reference, so a split beside this cannot
    /// leave the reference on a page other than the one [`Memory::put`]
    /// later drops it from.
    pub fn try_get(&self, pfn: Pfn, serial: u64) -> bool {
        let mut f = self.inner.lock();
        let head = f.frames[pfn as usize].head;
        let frame = &mut f.frames[head as usize];
        let alive = frame.kind != FrameKind::Free && frame.serial == serial && frame.refcount > 0;
        if alive {
            frame.refcount += 1;
        }
        alive
    }

    /// `__folio_split` to order 0 of the large folio headed by `head`, if
    /// its references can be frozen (`folio_ref_freeze`): every reference
    /// is one of its mappings, all by `mm` through PTEs, or the page
    /// cache's (`cached`: one per page). Each page then becomes a folio of
    /// its own holding one reference per mapping, and one for the page
    /// cache if `cached`; pages nothing holds any more are freed. Returns
    /// false, changing nothing, if the folio is not large any more, is
    /// mapped by a PMD or by another address space, or something else
    /// holds a reference: a pin ([`Memory::try_get`]) taken beside the
    /// caller's own checks lands before this lock is taken, and is seen
    /// here, or after, on the page it names.
    pub fn split_folio(&self, head: Pfn, mm: u64, cached: bool) -> bool {
        let mut f = self.inner.lock();
        let folio = f.frames[head as usize];
        let cache_refs = if cached { HPAGE_PMD_NR as u32 } else { 0 };
        let frozen = folio.order != 0
            && folio.head == head
            && folio.pmd_mapcount == 0
            && folio.mapped_only_by(mm)
            && folio.refcount == folio.total_mappings() + cache_refs;
        if !frozen {
            return false;
        }
        for pfn in head..head + (1 << folio.order) {
            let frame = &mut f.frames[pfn as usize];
            frame.order = 0;
            frame.head = pfn;
            frame.refcount = frame.mapcount + u32::from(cached);
            frame.mappers = [(mm, frame.mapcount), (0, 0)];
            frame.other_mappers = 0;
            if frame.refcount == 0 {
                f.free(pfn);
            }
        }
        true
    }

    /// Marks a write to the frame: its content version changes.
    pub fn touch_write(&self, pfn: Pfn) {
        self.inner.lock().bump_generation(pfn);
    }

    /// Copies `buf.len()` bytes from offset `offset` of frame `pfn`; a
    /// frame never written reads as zeros.
    ///
    /// # Panics
    ///
    /// If the bytes cross the end of the page.
    pub fn read(&self, pfn: Pfn, offset: usize, buf: &mut [u8]) {
        let end = offset + buf.len();
        assert!(end <= PAGE_SIZE as usize, "read past the page");
        match self.inner.lock().contents.get(&pfn) {
            Some(page) => buf.copy_from_slice(&page[offset..end]),
            None => buf.fill(0),
        }
    }

    /// Writes `bytes` at offset `offset` of frame `pfn` (its content
    /// version changes, as with [`Memory::touch_write`]). Returns false,
    /// writing nothing, for a free frame or the zero page: only a stale
    /// translation (a secondary MMU's bug, which its coherence check
    /// reports) can reach those, and the model keeps freed frames zeroed
    /// and the zero page zero.
    ///
    /// # Panics
    ///
    /// If the bytes cross the end of the page.
    pub fn write(&self, pfn: Pfn, offset: usize, bytes: &[u8]) -> bool {
        let end = offset + bytes.len();
        assert!(end <= PAGE_SIZE as usize, "write past the page");
        let mut f = self.inner.lock();
        if matches!(
            f.frames[pfn as usize].kind,
            FrameKind::Free | FrameKind::Zero
        ) {
            return false;
        }
        let page = f
            .contents
            .entry(pfn)
            .or_insert_with(|| Box::new([0; PAGE_SIZE as usize]));
        page[offset..end].copy_from_slice(bytes);
        f.bump_generation(pfn);
        true
    }

    /// `copy_highpage`: frame `to` gets the contents of frame `from` (a
    /// frame never written copies as zeros, allocating nothing).
    pub fn copy_page(&self, from: Pfn, to: Pfn) {
        let mut f = self.inner.lock();
        if f.contents.is_empty() {
            // Nothing was ever written: both read as zeros already.
            return;
        }
        match f.contents.get(&from).cloned() {
            Some(page) => {
                f.contents.insert(to, page);
            }
            None => {
                f.contents.remove(&to);
            }
        }
    }

    /// Whether two frames hold the same bytes (`pages_identical`, as KSM
    /// compares them).
    pub fn same_contents(&self, a: Pfn, b: Pfn) -> bool {
        let f = self.inner.lock();
        let zeros = |p: &Page| p.iter().all(|&byte| byte == 0);
        match (f.contents.get(&a), f.contents.get(&b)) {
            (Some(x), Some(y)) => x == y,
            (Some(x), None) | (None, Some(x)) => zeros(x),
            (None, None) => true,
        }
    }

    /// How many frames hold contents of their own (every other frame reads
    /// as zeros): what the byte contents cost, in pages.
    pub fn pages_with_contents(&self) -> usize {
        self.inner.lock().contents.len()
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
    fn bump_generation(&mut self, pfn: Pfn) {
        let generation = self.next_generation;
        self.next_generation += 1;
        self.frames[pfn as usize].generation = generation;
    }

    /// Takes `pages` never-used frames (aligned to `pages` when more than
    /// one), or `None` if the machine has no more.
    fn grow(&mut self, pages: u64) -> Option<Pfn> {
        let first = self.frames.len() as Pfn;
        if first.next_multiple_of(pages) + pages > self.limit {
            return None;
        }
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
        Some(first)
    }

    /// A free compound block given up as base pages: returns one, the rest
    /// go to the small free list.
    fn break_up_free_huge(&mut self) -> Option<Pfn> {
        let head = self.free_huge.pop()?;
        self.free_small.extend(head + 1..head + HPAGE_PMD_NR);
        Some(head)
    }

    /// Compaction, at its simplest: a naturally aligned run of free base
    /// pages taken off the small free list to become a compound block.
    /// Scans every frame, so it runs only once the machine is full.
    fn compact_free_small(&mut self) -> Option<Pfn> {
        let n = HPAGE_PMD_NR as usize;
        let head = self
            .frames
            .chunks_exact(n)
            .position(|block| block.iter().all(|f| f.kind == FrameKind::Free))?;
        let head = (head * n) as Pfn;
        self.free_small
            .retain(|pfn| !(head..head + HPAGE_PMD_NR).contains(pfn));
        Some(head)
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
                lazyfree: false,
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

    fn put(&mut self, pfn: Pfn) {
        let head = self.frames[pfn as usize].head;
        if head == ZERO_PFN {
            return;
        }
        let frame = &mut self.frames[head as usize];
        assert!(frame.refcount > 0, "folio_put() of free frame {head:#x}");
        frame.refcount -= 1;
        if frame.refcount == 0 {
            self.free(head);
        }
    }

    /// The zero page is never counted (`unmap_pte` likewise).
    fn map_pte(&mut self, pfn: Pfn, mm: u64) {
        if pfn == ZERO_PFN {
            return;
        }
        let head = self.frames[pfn as usize].head;
        assert!(
            self.frames[head as usize].refcount > 0,
            "map of free frame {pfn:#x}"
        );
        self.frames[pfn as usize].mapcount += 1;
        self.frames[head as usize].add_mapper(mm);
    }

    fn unmap_pte(&mut self, pfn: Pfn, mm: u64) {
        if pfn == ZERO_PFN {
            return;
        }
        let frame = &mut self.frames[pfn as usize];
        assert!(frame.mapcount > 0, "unmap of unmapped frame {pfn:#x}");
        frame.mapcount -= 1;
        let head = frame.head;
        self.frames[head as usize].remove_mapper(mm);
    }

    fn free(&mut self, head: Pfn) {
        let order = self.frames[head as usize].order;
        for pfn in head..head + (1 << order) {
            let frame = &self.frames[pfn as usize];
            assert!(
                frame.mapcount == 0 && frame.pmd_mapcount == 0,
                "frame {pfn:#x} freed while mapped ({} PTE, {} PMD mappings)",
                frame.mapcount,
                frame.pmd_mapcount
            );
            self.frames[pfn as usize] = Frame::FREE;
        }
        if !self.contents.is_empty() {
            // Freed pages are zeroed: the next owner reads zeros.
            for pfn in head..head + (1 << order) {
                self.contents.remove(&pfn);
            }
        }
        if order == 0 {
            self.free_small.push(head);
        } else {
            self.free_huge.push(head);
        }
    }
}
