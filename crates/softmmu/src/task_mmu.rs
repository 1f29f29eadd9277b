//! `/proc/PID/clear_refs`.
//!
//! Kernel counterpart: `clear_refs_write` in `fs/proc/task_mmu.c`. Writing
//! 4 (soft-dirty) notifies `SoftDirty` over the whole address space,
//! `[0, u64::MAX)`, once, whatever is mapped. The recorded kernel has
//! `CONFIG_MEM_SOFT_DIRTY` off, so the walk changes no entry.

use mmun_core::Event;

use crate::address_space::AddressSpace;

impl AddressSpace {
    /// `echo 4 > /proc/PID/clear_refs`.
    pub fn clear_soft_dirty(&self) {
        self.write_op(|ctx| {
            let inv = ctx.start(Event::SoftDirty, 0, u64::MAX);
            inv.end();
        });
    }
}
