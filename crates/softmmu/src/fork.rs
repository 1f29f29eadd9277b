//! `fork`: the child's copy of the address space.
//!
//! Kernel counterpart: `dup_mmap` (`mm/mmap.c`) and `copy_page_range`
//! (`mm/memory.c`). A VMA is copied entry by entry only if it has an
//! anon_vma (`vma_needs_copy`); a copy-on-write VMA is then write-protected
//! in the parent under one `ProtectionPage` over the whole VMA. The child
//! starts with no notifiers.

use mmun_core::{Event, HeldMmLock};

use crate::address_space::{AddressSpace, Ctx};
use crate::fault::new_anon_vma;
use crate::layout::{PAGE_SIZE, PMD_SIZE, block_end};
use crate::page_table::{PageTable, PmdEntry, Pte, SwapKind};
use crate::vma::{VmFlags, Vma};

impl AddressSpace {
    /// `fork(2)`: a new address space sharing every frame copy-on-write.
    pub fn fork(&self) -> AddressSpace {
        let child =
            AddressSpace::with_config(std::sync::Arc::clone(self.memory()), self.config().clone());
        self.write_op(|ctx| {
            let vmas: Vec<Vma> = ctx.st.vmas.iter().cloned().collect();
            let mut child_state = child.state_for_fork();
            child_state.max_map_count = ctx.st.max_map_count;
            for vma in vmas.iter().filter(|v| !v.flags.contains(VmFlags::DONTCOPY)) {
                let mut copy = vma.clone();
                copy.anon_vma = vma.anon_vma.map(|_| new_anon_vma());
                let wipe = vma.flags.contains(VmFlags::WIPEONFORK);
                if wipe {
                    copy.anon_vma = None;
                }
                if let Some(file) = &copy.file {
                    // dup_mmap links the child's VMA into the file's i_mmap.
                    file.object.add_mapper(child.downgrade());
                }
                child_state.vmas.insert_after_parent(copy);
                if !wipe && vma.anon_vma.is_some() {
                    copy_page_range(ctx, vma, &mut child_state.pt, child.id());
                }
            }
        });
        child
    }
}

/// `copy_page_range`: every entry of `vma` is shared with the child; for a
/// copy-on-write VMA both sides lose write access, under a `ProtectionPage`
/// of the whole VMA on the parent.
fn copy_page_range<L: HeldMmLock>(
    ctx: &mut Ctx<'_, L>,
    vma: &Vma,
    child: &mut PageTable,
    child_id: u64,
) {
    let cow = vma.is_cow();
    let inv = cow.then(|| ctx.start(Event::ProtectionPage, vma.start, vma.end));
    let mut addr = vma.start;
    while addr < vma.end {
        let next = block_end(addr, vma.end, PMD_SIZE);
        if let Some(PmdEntry::Huge(huge)) = ctx.st.pt.pmd(addr) {
            let huge = *huge;
            let shared = share_huge(ctx, huge, cow, child_id);
            ctx.st.pt.set_pmd(addr, PmdEntry::Huge(shared));
            child.set_pmd(addr, PmdEntry::Huge(shared));
            addr = next;
            continue;
        }
        copy_ptes(ctx, vma, addr, next, child, child_id);
        addr = next;
    }
    if let Some(inv) = inv {
        ctx.end(inv);
    }
}

/// `copy_nonpresent_pte` for device-exclusive entries: the parent's entry
/// is made present again (`try_restore_exclusive_pte`, under the fork's
/// `ProtectionPage` range and no range of its own), then copied as any
/// present entry, so the device loses the page and both processes map it
/// copy-on-write.
fn restore_exclusive_entries<L: HeldMmLock>(ctx: &mut Ctx<'_, L>, vma: &Vma, start: u64, end: u64) {
    let mut exclusive = Vec::new();
    ctx.st.pt.for_each_pte_mut(start, end, |a, pte| {
        if pte.swap_kind() == Some(crate::page_table::SwapKind::DeviceExclusive) {
            exclusive.push((a, *pte));
        }
    });
    for (addr, entry) in exclusive {
        let restored = crate::fault::restore_exclusive_pte(ctx, vma, entry);
        ctx.mem.map_pte(entry.pfn(), ctx.id);
        *ctx.st.pt.pte_alloc(addr) = restored;
    }
}

/// `copy_nonpresent_pte` for a device-private entry: both processes map
/// the device page (one more reference and mapping, no longer
/// exclusive); in a COW mapping a writable entry becomes readable in the
/// parent too, so that either side's write faults it back and copies.
/// Inside the fork's `ProtectionPage` range, with no range of its own.
fn copy_device_private(mem: &crate::frame::Memory, pte: &mut Pte, cow: bool, child_id: u64) -> Pte {
    mem.get(pte.pfn());
    mem.map_pte(pte.pfn(), child_id);
    mem.update(pte.pfn(), |f| f.anon_exclusive = false);
    if cow && pte.swap_was_writable() {
        *pte = Pte::swap(SwapKind::DevicePrivate, pte.pfn(), false);
    }
    *pte
}

fn share_huge<L: HeldMmLock>(ctx: &Ctx<'_, L>, huge: Pte, cow: bool, child_id: u64) -> Pte {
    if !huge.is_special() {
        ctx.mem.get(huge.pfn());
        ctx.mem.map_pmd(huge.pfn(), child_id);
        ctx.mem.update(huge.pfn(), |f| f.anon_exclusive = false);
    }
    if cow { huge.with_write(false) } else { huge }
}

fn copy_ptes<L: HeldMmLock>(
    ctx: &mut Ctx<'_, L>,
    vma: &Vma,
    start: u64,
    end: u64,
    child: &mut PageTable,
    child_id: u64,
) {
    let cow = vma.is_cow();
    restore_exclusive_entries(ctx, vma, start, end);
    let mem = ctx.mem;
    let mut copied: Vec<(u64, Pte)> = Vec::new();
    ctx.st.pt.for_each_pte_mut(start, end, |a, pte| {
        if pte.is_device_private() {
            copied.push((a, copy_device_private(mem, pte, cow, child_id)));
            return;
        }
        if !pte.is_present() {
            return;
        }
        if !pte.is_special() {
            mem.dup_pte(pte.pfn(), child_id);
        }
        if cow {
            *pte = pte.with_write(false);
        }
        copied.push((a, *pte));
    });
    for (a, pte) in copied {
        *child.pte_alloc(a) = pte;
    }
    let _ = PAGE_SIZE;
}
