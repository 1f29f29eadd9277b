//! Shared memory objects: anonymous `MAP_SHARED` mappings and memfds.
//!
//! Kernel counterpart: `mm/shmem.c` — a page cache indexed by page offset,
//! whose pages every mapping of the object shares.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use crate::address_space::Shared;
use crate::frame::{FrameKind, Memory, Pfn};

/// A shmem object: its size and its page cache.
pub struct ShmemObject {
    id: u64,
    size: u64,
    pages: Mutex<BTreeMap<u64, Pfn>>,
    /// The address spaces that mapped the object, in the order they did
    /// (the userspace `i_mmap`: the VMAs themselves stay in each address
    /// space's tree and are found there). Dead ones are dropped as found.
    mappers: Mutex<Vec<Weak<Shared>>>,
    /// Where the cached pages live; the cache's references are dropped
    /// when the object goes (the inode is evicted).
    memory: Arc<Memory>,
}

impl ShmemObject {
    /// A new, empty object of `size` bytes whose pages come from `memory`.
    pub fn new(memory: Arc<Memory>, size: u64) -> ShmemObject {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        ShmemObject {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            size,
            pages: Mutex::new(BTreeMap::new()),
            mappers: Mutex::new(Vec::new()),
            memory,
        }
    }

    /// A process-unique id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The memory its pages come from.
    pub fn memory(&self) -> &Arc<Memory> {
        &self.memory
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The page at `index`, allocated (zero-filled) on first use; the
    /// returned frame carries a reference for the caller's new mapping.
    /// `None` if it is not cached and memory is full.
    pub fn get_page(&self, memory: &Memory, index: u64) -> Option<Pfn> {
        let mut pages = self.pages.lock();
        let pfn = match pages.get(&index) {
            Some(pfn) => *pfn,
            None => {
                let kind = FrameKind::File {
                    object: self.id,
                    index,
                };
                *pages.entry(index).or_insert(memory.alloc(kind)?)
            }
        };
        memory.get(pfn);
        Some(pfn)
    }

    /// The page at `index` if it is in the cache. Without a reference: the
    /// page may leave the cache (a hole punched, a collapse) and be freed
    /// at once, so only a caller that just wants to know may use this;
    /// one that maps or reads the page takes [`ShmemObject::find_get_page`].
    pub fn find_page(&self, index: u64) -> Option<Pfn> {
        self.pages.lock().get(&index).copied()
    }

    /// The page at `index` if it is in the cache, with a reference taken
    /// in the same hold of the cache's lock (`filemap_get_folio`: the
    /// lookup and `folio_try_get` together), so that it cannot be freed
    /// under the caller, who puts the reference or hands it to a mapping.
    pub fn find_get_page(&self, memory: &Memory, index: u64) -> Option<Pfn> {
        let pages = self.pages.lock();
        let pfn = *pages.get(&index)?;
        memory.get(pfn);
        Some(pfn)
    }

    /// Records that `space` maps the object (`vma_link_file`); a space
    /// already on the list is not added twice.
    pub(crate) fn add_mapper(&self, space: Weak<Shared>) {
        let mut mappers = self.mappers.lock();
        mappers.retain(|m| m.strong_count() > 0);
        if !mappers.iter().any(|m| m.ptr_eq(&space)) {
            mappers.push(space);
        }
    }

    /// The live address spaces that mapped the object, oldest first.
    pub(crate) fn mappers(&self) -> Vec<Arc<Shared>> {
        self.mappers
            .lock()
            .iter()
            .filter_map(Weak::upgrade)
            .collect()
    }

    /// Replaces the cached page at `index` by `pfn` (whose reference the
    /// cache takes over); returns the page it held, whose cache reference
    /// the caller puts.
    pub(crate) fn replace_page(&self, index: u64, pfn: Pfn) -> Option<Pfn> {
        self.pages.lock().insert(index, pfn)
    }

    /// Whether the cache holds the large folio headed by `head` whole from
    /// `first` on (every page at its index): a hole punched in it since
    /// the collapse leaves it to be mapped by PTEs, page by page.
    pub(crate) fn holds_whole_folio(&self, first: u64, head: Pfn) -> bool {
        let pages = self.pages.lock();
        (0..crate::layout::HPAGE_PMD_NR).all(|i| pages.get(&(first + i)) == Some(&(head + i)))
    }

    /// Drops the pages `[first, last]` from the cache (hole punch); returns
    /// them so the caller can put the cache's references.
    pub fn punch(&self, first: u64, last: u64) -> Vec<Pfn> {
        let mut pages = self.pages.lock();
        let keys: Vec<u64> = pages.range(first..=last).map(|(k, _)| *k).collect();
        keys.into_iter().filter_map(|k| pages.remove(&k)).collect()
    }
}

impl Drop for ShmemObject {
    fn drop(&mut self) {
        for (_, pfn) in std::mem::take(&mut *self.pages.lock()) {
            self.memory.put(pfn);
        }
    }
}

impl fmt::Debug for ShmemObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShmemObject")
            .field("id", &self.id)
            .field("size", &self.size)
            .field("pages", &self.pages.lock().len())
            .finish()
    }
}
