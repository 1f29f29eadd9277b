//! Virtual memory areas and the address-ordered set of them.
//!
//! Kernel counterpart: `struct vm_area_struct`, `vm_flags`, and the split
//! and merge rules of `mm/vma.c` (`__split_vma`, `vma_merge_*`,
//! `is_mergeable_vma`, `is_mergeable_anon_vma`).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::shmem::ShmemObject;

/// `vm_flags` bits the software MMU models.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct VmFlags(u32);

#[allow(missing_docs)]
impl VmFlags {
    pub const READ: VmFlags = VmFlags(1 << 0);
    pub const WRITE: VmFlags = VmFlags(1 << 1);
    pub const EXEC: VmFlags = VmFlags(1 << 2);
    pub const SHARED: VmFlags = VmFlags(1 << 3);
    pub const MAYREAD: VmFlags = VmFlags(1 << 4);
    pub const MAYWRITE: VmFlags = VmFlags(1 << 5);
    pub const MAYEXEC: VmFlags = VmFlags(1 << 6);
    pub const MAYSHARE: VmFlags = VmFlags(1 << 7);
    pub const LOCKED: VmFlags = VmFlags(1 << 8);
    pub const LOCKONFAULT: VmFlags = VmFlags(1 << 9);
    pub const HUGEPAGE: VmFlags = VmFlags(1 << 10);
    pub const NOHUGEPAGE: VmFlags = VmFlags(1 << 11);
    pub const DONTCOPY: VmFlags = VmFlags(1 << 12);
    pub const WIPEONFORK: VmFlags = VmFlags(1 << 13);
    pub const MERGEABLE: VmFlags = VmFlags(1 << 14);
    pub const SOFTDIRTY: VmFlags = VmFlags(1 << 15);
    pub const ACCOUNT: VmFlags = VmFlags(1 << 16);
    /// The protection bits.
    pub const ACCESS: VmFlags = VmFlags(0b111);
    pub const NONE: VmFlags = VmFlags(0);

    /// Whether every bit of `other` is set.
    #[inline]
    pub fn contains(self, other: VmFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether any bit of `other` is set.
    #[inline]
    pub fn intersects(self, other: VmFlags) -> bool {
        self.0 & other.0 != 0
    }

    /// With the bits of `other` set.
    #[inline]
    pub fn with(self, other: VmFlags) -> VmFlags {
        VmFlags(self.0 | other.0)
    }

    /// With the bits of `other` cleared.
    #[inline]
    pub fn without(self, other: VmFlags) -> VmFlags {
        VmFlags(self.0 & !other.0)
    }

    /// Whether the `VM_MAY*` bits permit the access bits in `access`.
    pub fn may_allow(self, access: VmFlags) -> bool {
        let may = (self.0 >> 4) & Self::ACCESS.0;
        access.0 & Self::ACCESS.0 & !may == 0
    }

    /// The raw bits.
    pub fn bits(self) -> u32 {
        self.0
    }
}

impl fmt::Debug for VmFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [&str; 17] = [
            "read",
            "write",
            "exec",
            "shared",
            "mayread",
            "maywrite",
            "mayexec",
            "mayshare",
            "locked",
            "lockonfault",
            "hugepage",
            "nohugepage",
            "dontcopy",
            "wipeonfork",
            "mergeable",
            "softdirty",
            "account",
        ];
        let set: Vec<&str> = NAMES
            .iter()
            .enumerate()
            .filter(|(i, _)| self.0 & (1 << i) != 0)
            .map(|(_, n)| *n)
            .collect();
        write!(f, "{}", set.join("|"))
    }
}

/// Identifies an `anon_vma`: the reverse-map root shared by VMAs whose
/// anonymous pages may be shared (a VMA and its split halves, a fork's
/// parent and child).
pub type AnonVmaId = u64;

/// A shared-memory backing: the object and the page offset of `start`.
#[derive(Clone)]
pub struct FileBacking {
    /// The shmem/memfd object.
    pub object: Arc<ShmemObject>,
    /// Page index within the object that `Vma::start` maps.
    pub pgoff: u64,
    /// Where the VMA sits among the object's mappings of the same page
    /// offset (see [`FileBacking::i_mmap_key`]).
    pub(crate) link: Link,
}

/// The place of a VMA in its object's `i_mmap` among VMAs of equal page
/// offset: Linux's interval tree puts a VMA inserted later after them
/// (`vma_interval_tree_insert`), and a fork's child right after its parent
/// (`vma_interval_tree_insert_after`). Every (re)insertion takes a new
/// sequence number; a child keeps its parent's and goes one level deeper.
/// (Two children of one parent sort oldest first here; Linux puts the
/// newer one first.)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Link {
    seq: u64,
    depth: u32,
}

impl Link {
    fn next() -> Link {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Link {
            seq: SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            depth: 0,
        }
    }
}

impl FileBacking {
    /// A backing of `object` from page `pgoff` on.
    pub fn new(object: Arc<ShmemObject>, pgoff: u64) -> FileBacking {
        FileBacking {
            object,
            pgoff,
            link: Link::default(),
        }
    }

    /// The order of `i_mmap` walks: by page offset, then by insertion.
    pub(crate) fn i_mmap_key(&self) -> (u64, Link) {
        (self.pgoff, self.link)
    }
}

impl fmt::Debug for FileBacking {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shmem#{}+{:#x}", self.object.id(), self.pgoff)
    }
}

/// A virtual memory area `[start, end)` (`struct vm_area_struct`).
#[derive(Clone, Debug)]
pub struct Vma {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// `vm_flags`.
    pub flags: VmFlags,
    /// `anon_vma`, created by the first anonymous page fault.
    pub anon_vma: Option<AnonVmaId>,
    /// The backing object of a shared or memfd mapping.
    pub file: Option<FileBacking>,
}

impl Vma {
    /// Whether the mapping is private and may become writable, so that
    /// writes copy (`is_cow_mapping`).
    pub fn is_cow(&self) -> bool {
        self.flags.contains(VmFlags::MAYWRITE) && !self.flags.contains(VmFlags::SHARED)
    }

    /// Whether it is anonymous memory (`vma_is_anonymous`): no backing
    /// object. Anonymous shared mappings are shmem-backed, so not anonymous.
    pub fn is_anonymous(&self) -> bool {
        self.file.is_none()
    }

    /// The length in bytes.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Whether the VMA is empty (never, for a VMA in a tree).
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    /// Whether `[start, end)` lies inside the VMA (`range_in_vma`).
    pub fn contains_range(&self, start: u64, end: u64) -> bool {
        self.start <= start && end <= self.end
    }

    /// The page index of `addr` in the backing object.
    pub fn pgoff_of(&self, addr: u64) -> u64 {
        let file = self.file.as_ref().expect("file-backed VMA");
        file.pgoff + ((addr - self.start) >> crate::layout::PAGE_SHIFT)
    }

    /// The part `[start, self.end)` of this VMA, with its file offset moved.
    fn tail_from(&self, at: u64) -> Vma {
        let mut tail = self.clone();
        tail.start = at;
        if let Some(file) = tail.file.as_mut() {
            file.pgoff += (at - self.start) >> crate::layout::PAGE_SHIFT;
        }
        tail
    }
}

/// A new place in `i_mmap` for a VMA being (re)inserted.
fn relink(vma: &mut Vma) {
    if let Some(file) = vma.file.as_mut() {
        file.link = Link::next();
    }
}

/// The VMAs of an address space, by start address (`mm->mm_mt`).
#[derive(Clone, Debug, Default)]
pub struct VmaTree {
    map: BTreeMap<u64, Vma>,
}

impl VmaTree {
    /// The first VMA that ends above `addr` (`find_vma`).
    pub fn find(&self, addr: u64) -> Option<&Vma> {
        if let Some((_, vma)) = self.map.range(..=addr).next_back()
            && vma.end > addr
        {
            return Some(vma);
        }
        self.map.range(addr..).next().map(|(_, v)| v)
    }

    /// The VMA containing `addr` (`vma_lookup`).
    pub fn lookup(&self, addr: u64) -> Option<&Vma> {
        self.map
            .range(..=addr)
            .next_back()
            .map(|(_, v)| v)
            .filter(|v| v.end > addr)
    }

    /// The VMA starting at `start`, mutably.
    pub fn get_mut(&mut self, start: u64) -> Option<&mut Vma> {
        self.map.get_mut(&start)
    }

    /// The VMA ending at or before `addr` with the highest end (`find_vma_prev`'s prev).
    pub fn prev(&self, addr: u64) -> Option<&Vma> {
        self.map
            .range(..addr)
            .next_back()
            .map(|(_, v)| v)
            .filter(|v| v.end <= addr)
    }

    /// The first VMA starting at or after `addr`.
    pub fn next_from(&self, addr: u64) -> Option<&Vma> {
        self.map.range(addr..).next().map(|(_, v)| v)
    }

    /// The VMAs intersecting `[start, end)`, in address order (cloned, so
    /// the caller may modify the tree while walking).
    pub fn overlapping(&self, start: u64, end: u64) -> Vec<Vma> {
        let first = self.find(start).map(|v| v.start).unwrap_or(u64::MAX);
        self.map
            .range(first..end.max(first))
            .map(|(_, v)| v.clone())
            .filter(|v| v.start < end && v.end > start)
            .collect()
    }

    /// Whether any VMA intersects `[start, end)`.
    pub fn any_in(&self, start: u64, end: u64) -> bool {
        self.find(start).is_some_and(|v| v.start < end)
    }

    /// Inserts a VMA; it must not overlap any other.
    pub fn insert(&mut self, mut vma: Vma) {
        relink(&mut vma);
        debug_assert!(!self.any_in(vma.start, vma.end), "overlapping VMA {vma:?}");
        self.map.insert(vma.start, vma);
    }

    /// Removes the VMA starting at `start`.
    pub fn remove(&mut self, start: u64) -> Option<Vma> {
        self.map.remove(&start)
    }

    /// Splits the VMA containing `at` into `[start, at)` and `[at, end)`
    /// (`__split_vma`); both keep the anon_vma. Does nothing if `at` is a
    /// boundary or outside every VMA.
    pub fn split_at(&mut self, at: u64) {
        let Some(vma) = self.lookup(at).cloned() else {
            return;
        };
        if vma.start == at {
            return;
        }
        // __split_vma: the new piece goes into i_mmap, then the old one is
        // taken out and put back.
        let mut tail = vma.tail_from(at);
        relink(&mut tail);
        let head = self.map.get_mut(&vma.start).expect("present");
        head.end = at;
        relink(head);
        self.map.insert(at, tail);
    }

    /// Inserts a fork's copy of a parent VMA: in `i_mmap` right after the
    /// parent's (`vma_interval_tree_insert_after`).
    pub(crate) fn insert_after_parent(&mut self, mut vma: Vma) {
        if let Some(file) = vma.file.as_mut() {
            file.link.depth += 1;
        }
        self.map.insert(vma.start, vma);
    }

    /// Every VMA in address order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &Vma> {
        self.map.values()
    }

    /// Number of VMAs.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there are no VMAs.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// The flags that must be equal for two VMAs to merge (soft-dirty is
/// ignored, as in `is_mergeable_vma`).
pub fn merge_key(flags: VmFlags) -> VmFlags {
    flags.without(VmFlags::SOFTDIRTY)
}

/// Whether `prev` (ending where `next` starts) and `next` could be one VMA:
/// equal flags, the same backing at contiguous offsets, and compatible
/// anon_vmas (`is_mergeable_vma` + `is_mergeable_anon_vma`, with the
/// "singular anon_vma chain" condition taken as true: the software MMU does
/// not fork-chain anon_vmas of one mm).
pub fn can_merge(prev: &Vma, next: &Vma) -> bool {
    if prev.end != next.start || merge_key(prev.flags) != merge_key(next.flags) {
        return false;
    }
    let anon_ok = match (prev.anon_vma, next.anon_vma) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    };
    let file_ok = match (&prev.file, &next.file) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            Arc::ptr_eq(&a.object, &b.object)
                && a.pgoff + (prev.len() >> crate::layout::PAGE_SHIFT) == b.pgoff
        }
        _ => false,
    };
    anon_ok && file_ok
}
