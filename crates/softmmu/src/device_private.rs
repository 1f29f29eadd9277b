//! Device-private memory (`MEMORY_DEVICE_PRIVATE`): the device pages the
//! CPU cannot address, and the driver's page-map ops a CPU fault calls.
//!
//! Kernel counterpart: `struct dev_pagemap` and its `migrate_to_ram` op
//! (`include/linux/memremap.h`), called by `do_swap_page` on a
//! device-private entry (`mm/memory.c`), and the driver side of it in
//! `lib/test_hmm.c` (`dmirror_devmem_fault`).
//!
//! A device's memory mode is chosen when the device registers: an owner
//! registered here is private, any other owner's pages are coherent (the
//! CPU maps them as ordinary entries). A migration to a private device
//! leaves device-private entries behind ([`SwapKind::DevicePrivate`]);
//! a CPU touch of one migrates the page back to system memory under a
//! `Migrate` range carrying the owner (test_hmm's `migrate_vma_setup` with
//! `MIGRATE_VMA_SELECT_DEVICE_PRIVATE`), and the driver is told through
//! [`DevicePagemap::page_to_ram`] so that it can drop its translation (its
//! own `Migrate` range is skipped).
//!
//! [`SwapKind::DevicePrivate`]: crate::page_table::SwapKind::DevicePrivate

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use mmun_core::{HeldMmLock, Owner};
use parking_lot::Mutex;

use crate::Translation;
use crate::address_space::Ctx;
use crate::error::{Errno, SysResult};
use crate::frame::Pfn;
use crate::page_table::Pte;
use crate::vma::Vma;

/// The driver's side of `dev_pagemap_ops::migrate_to_ram`.
pub trait DevicePagemap: Send + Sync {
    /// `dmirror_devmem_fault_alloc_and_copy` for one page: the device page
    /// `old` mapped at `va` left device memory because the CPU touched it;
    /// `new` is what the address space maps there now (`None`: nothing
    /// the device may use). Called with the page-table lock held, like an
    /// invalidation callback: it may take the driver lock but must not
    /// call into the address space.
    fn page_to_ram(&self, va: u64, old: Pfn, new: Option<Translation>);
}

/// The registered device-private owners, each with the ops of every
/// driver instance using its memory (test_hmm opens several mirrors on one
/// device; a page knows its own through `zone_device_data`, here each
/// instance checks whether it holds the page). Locking: `inner` is a leaf
/// lock, released before any op is called.
#[derive(Default)]
pub(crate) struct Pagemaps {
    inner: Mutex<HashMap<Owner, Vec<Weak<dyn DevicePagemap>>>>,
}

impl Pagemaps {
    pub(crate) fn register(&self, owner: Owner, ops: &Arc<dyn DevicePagemap>) {
        let mut inner = self.inner.lock();
        let instances = inner.entry(owner).or_default();
        instances.retain(|w| w.strong_count() > 0);
        instances.push(Arc::downgrade(ops));
    }

    pub(crate) fn is_private(&self, owner: Owner) -> bool {
        self.inner.lock().contains_key(&owner)
    }

    /// The ops of the owner's live driver instances. The memory stays
    /// private after they are gone: its pages still migrate back on a
    /// touch.
    pub(crate) fn ops(&self, owner: Owner) -> Vec<Arc<dyn DevicePagemap>> {
        let inner = self.inner.lock();
        let instances = inner.get(&owner).map(Vec::as_slice).unwrap_or_default();
        instances.iter().filter_map(Weak::upgrade).collect()
    }
}

/// `do_swap_page` on a device-private entry: the owner's `migrate_to_ram`
/// moves the page at `addr` back to system memory (a fresh page mapped in
/// its place, writable as the entry was). The caller retries the fault.
///
/// After a fork, parent and child both map the device page; Linux's
/// migration unmaps it from every mapper through the rmap and maps one
/// new page in all of them. The software MMU has no anonymous rmap across
/// address spaces: the faulting one gets its own copy and the other keeps
/// the device page (both entries are read-only after the fork, so no one
/// can tell the copies apart by content).
///
/// # Errors
///
/// `ENOMEM` when no system page can be had (the entry stays).
pub(crate) fn migrate_to_ram<L: HeldMmLock>(
    ctx: &mut Ctx<'_, L>,
    vma: &Vma,
    addr: u64,
    entry: Pte,
) -> SysResult {
    let old = entry.pfn();
    let owner = ctx
        .mem
        .frame(old)
        .device
        .expect("a device-private entry names a device page");
    let ops = ctx.mem.pagemap(owner);
    let tell = |va: u64, new: Option<Translation>| {
        for instance in &ops {
            instance.page_to_ram(va, old, new);
        }
    };
    crate::migrate_device::migrate_page_to_system(ctx, vma, addr, owner, tell);
    if ctx.st.pt.pte(addr).is_device_private() {
        return Err(Errno::NoMem);
    }
    Ok(())
}
