//! Device-exclusive access: a device takes a page away from the CPU until
//! the CPU touches it again.
//!
//! Kernel counterpart: `make_device_exclusive` (`mm/rmap.c`, 6.15+ single
//! page form). GUP with write intent first (which may fault or copy), then
//! an `Exclusive` range with the device's owner over the page while its
//! PTE becomes a device-exclusive entry. The CPU's next access restores it
//! under a `Clear` without owner (`remove_device_exclusive_entry`, 6.18;
//! v6.5 used `Exclusive` there).

use mmun_core::{Event, Owner};

use crate::address_space::AddressSpace;
use crate::error::{Errno, SysResult};
use crate::fault;
use crate::frame::Pfn;
use crate::layout::{PAGE_SIZE, align_down};
use crate::page_table::{Pte, SwapKind};
use crate::vma::VmFlags;

impl AddressSpace {
    /// `make_device_exclusive(mm, addr, owner)`: returns the frame the
    /// device now owns.
    ///
    /// # Errors
    ///
    /// `EFAULT` if the page cannot be written; `EINVAL` for non-anonymous
    /// or huge mappings.
    pub fn make_device_exclusive(&self, addr: u64, owner: Owner) -> SysResult<Pfn> {
        let addr = align_down(addr, PAGE_SIZE);
        self.read_op(|ctx| {
            let vma = ctx.st.vmas.lookup(addr).cloned().ok_or(Errno::Fault)?;
            if !vma.flags.contains(VmFlags::WRITE)
                || !vma.is_anonymous()
                || vma.flags.contains(VmFlags::SHARED)
            {
                return Err(Errno::Inval);
            }
            loop {
                fault::fault_in_vma(ctx, &vma, addr, true)?;
                let pte = ctx.st.pt.pte(addr);
                if !pte.is_present() || pte.is_special() {
                    return Err(Errno::Inval);
                }
                let inv = ctx.start_owner(Event::Exclusive, addr, addr + PAGE_SIZE, Some(owner));
                // The PTE lock is taken again after the start: the entry
                // the fault made must still be there (a fault or a zap
                // beside this one may have changed it), else fault again.
                // Checked and replaced in one hold.
                let (mem, id) = (ctx.mem, ctx.id);
                let taken = ctx.st.pt.pte_mut(addr).is_some_and(|mut slot| {
                    if *slot != pte {
                        return false;
                    }
                    inv.ptep_clear_flush_notify(addr, || ());
                    *slot = Pte::swap(SwapKind::DeviceExclusive, pte.pfn(), pte.is_write());
                    mem.unmap_pte(pte.pfn(), id);
                    mem.update(pte.pfn(), |f| f.exclusive_owner = Some(owner));
                    true
                });
                ctx.end(inv);
                if taken {
                    break Ok(pte.pfn());
                }
            }
        })
    }
}
