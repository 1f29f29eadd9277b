//! `/proc/PID/clear_refs`.
//!
//! Kernel counterpart: `clear_refs_write` in `fs/proc/task_mmu.c`. Writing
//! 4 (soft-dirty) notifies `SoftDirty` over the whole address space,
//! `[0, u64::MAX)`, once, whatever is mapped, and walks every VMA inside
//! that range. The recorded kernel has `CONFIG_MEM_SOFT_DIRTY` off, so its
//! walk changes no entry: that is [`AddressSpace::clear_soft_dirty`], what
//! replays use. [`AddressSpace::clear_soft_dirty_tracking`] is the same
//! write on a kernel built with it on, where the walk write-protects every
//! present entry (`clear_soft_dirty`, `clear_soft_dirty_pmd`), so that a
//! secondary that ignores `SoftDirty` keeps write access the CPU lost.
//!
//! What that mode leaves out, because nothing in the software MMU reads
//! it: the `VM_SOFTDIRTY` VMA flag and its effect on `vm_page_prot`
//! (write-notify of shared mappings) and on `can_change_pte_writable`
//! (an `mprotect` to read-write then leaves a clean exclusive page
//! write-protected), and the soft-dirty bit `pte_mkdirty` sets on writes.
//! Entries of pinned pages are not skipped (`pte_is_pinned`): the software
//! MMU has no GUP pins.

use mmun_core::{Event, HeldMmLock};

use crate::address_space::{AddressSpace, Ctx};
use crate::layout::{PMD_SIZE, block_end};
use crate::page_table::{PmdEntry, Pte};

impl AddressSpace {
    /// `echo 4 > /proc/PID/clear_refs` as the recorded kernel does it
    /// (`CONFIG_MEM_SOFT_DIRTY` off): the `SoftDirty` range and nothing
    /// else.
    pub fn clear_soft_dirty(&self) {
        self.write_op(|ctx| {
            let inv = ctx.start(Event::SoftDirty, 0, u64::MAX);
            ctx.end(inv);
        });
    }

    /// `echo 4 > /proc/PID/clear_refs` on a kernel with
    /// `CONFIG_MEM_SOFT_DIRTY=y`: inside the same `SoftDirty` range, every
    /// present entry of every VMA (huge PMDs included, the zero page and
    /// `PROT_NONE` entries too) is write-protected and loses its
    /// soft-dirty bit; swap-type entries (migration, device-exclusive)
    /// only lose the bit. The next CPU write takes a write fault (which
    /// reuses an exclusive anonymous page in place). See the module docs
    /// for what this mode does not model.
    pub fn clear_soft_dirty_tracking(&self) {
        self.write_op(|ctx| {
            let inv = ctx.start(Event::SoftDirty, 0, u64::MAX);
            let spans: Vec<(u64, u64)> = ctx.st.vmas.iter().map(|v| (v.start, v.end)).collect();
            for (start, end) in spans {
                clear_soft_dirty_span(ctx, start, end);
            }
            ctx.end(inv);
        });
    }
}

/// `clear_refs_pte_range` for soft-dirty over `[start, end)`, one VMA's
/// span: huge PMDs whole (a huge PMD never straddles a VMA), PTEs one by
/// one. The caller's `SoftDirty` range covers it all; no entry changes
/// frame, so nothing else is notified.
fn clear_soft_dirty_span<L: HeldMmLock>(ctx: &mut Ctx<'_, L>, start: u64, end: u64) {
    let mut addr = start;
    while addr < end {
        let next = block_end(addr, end, PMD_SIZE);
        if let Some(PmdEntry::Huge(huge)) = ctx.st.pt.pmd_mut(addr) {
            *huge = clear_soft_dirty_entry(*huge);
        } else {
            ctx.st.pt.for_each_pte_mut(addr, next, |_, pte| {
                *pte = clear_soft_dirty_entry(*pte);
            });
        }
        addr = next;
    }
}

/// `clear_soft_dirty` (and `clear_soft_dirty_pmd`) for one entry.
fn clear_soft_dirty_entry(entry: Pte) -> Pte {
    if entry.is_present() {
        entry.with_write(false).with_soft_dirty(false)
    } else if entry.swap_kind().is_some() {
        entry.with_soft_dirty(false)
    } else {
        entry
    }
}
