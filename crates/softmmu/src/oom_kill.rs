//! The OOM reaper: tearing down a dying process's memory without waiting
//! for anyone.
//!
//! Kernel counterpart: `__oom_reap_task_mm` (`mm/oom_kill.c`, 6.18: VMAs
//! from high to low). Each private or anonymous VMA is unmapped under a
//! non-blockable `Unmap` of the whole VMA; a subscriber that would have to
//! sleep refuses it, and that VMA is skipped with no end, to be retried.

use mmun_core::Event;

use crate::address_space::AddressSpace;
use crate::vma::{VmFlags, Vma};
use crate::zap::zap_vma_range;

/// `MAX_OOM_REAP_RETRIES`.
pub const MAX_OOM_REAP_RETRIES: usize = 10;

impl AddressSpace {
    /// One pass of the reaper over every VMA. Returns whether every
    /// reapable VMA was reaped (`false` if a subscriber refused one).
    pub fn oom_reap_once(&self) -> bool {
        self.read_op(|ctx| {
            let vmas: Vec<Vma> = ctx.st.vmas.iter().rev().cloned().collect();
            let mut all = true;
            for vma in vmas
                .iter()
                .filter(|v| v.is_anonymous() || !v.flags.contains(VmFlags::SHARED))
            {
                match ctx.start_nonblock(Event::Unmap, vma.start, vma.end) {
                    Ok(inv) => {
                        zap_vma_range(ctx, vma, vma.start, vma.end);
                        ctx.end(inv);
                    }
                    Err(_) => all = false,
                }
            }
            all
        })
    }

    /// The reaper's loop: up to [`MAX_OOM_REAP_RETRIES`] passes until every
    /// VMA is reaped. Returns whether it succeeded.
    pub fn oom_reap(&self) -> bool {
        (0..MAX_OOM_REAP_RETRIES).any(|_| self.oom_reap_once())
    }
}
