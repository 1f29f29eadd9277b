//! test_hmm's `HMM_DMIRROR_SNAPSHOT` (`dmirror_snapshot`): what the
//! primary maps, page by page, read without faulting anything in, in a
//! `read_begin`/`read_retry` loop so that no page is reported from a table
//! an invalidation was changing.

use std::ops::BitOr;

use mmun_softmmu::frame::ZERO_PFN;
use mmun_softmmu::layout::PAGE_SIZE;
use mmun_softmmu::{VmFlags, Vma};

use super::{DeviceMirror, MAX_FAULT_ATTEMPTS};
use crate::secondary::FaultError;

/// One page of a snapshot: test_hmm's `HMM_DMIRROR_PROT_*` byte (same
/// values as its UAPI header, so results compare with the C test's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotProt(u8);

impl SnapshotProt {
    /// No VMA, or one the device may not read.
    pub const ERROR: SnapshotProt = SnapshotProt(0xFF);
    /// Nothing mapped (not faulted in, or a non-present entry).
    pub const NONE: SnapshotProt = SnapshotProt(0x00);
    /// Mapped read-only.
    pub const READ: SnapshotProt = SnapshotProt(0x01);
    /// Mapped writable.
    pub const WRITE: SnapshotProt = SnapshotProt(0x02);
    /// Mapped by a huge PMD.
    pub const PMD: SnapshotProt = SnapshotProt(0x04);
    /// The shared zero page.
    pub const ZERO: SnapshotProt = SnapshotProt(0x10);
    /// In this device's private memory (its own device-private entry).
    pub const DEV_PRIVATE_LOCAL: SnapshotProt = SnapshotProt(0x20);
    /// In another device's private memory. test_hmm's snapshot never
    /// reports it: `hmm_range_fault` does not look into another owner's
    /// device-private entry without faulting, so such a page is `NONE`.
    pub const DEV_PRIVATE_REMOTE: SnapshotProt = SnapshotProt(0x30);
    /// In this device's (coherent) memory.
    pub const DEV_COHERENT_LOCAL: SnapshotProt = SnapshotProt(0x40);
    /// In another device's (coherent) memory.
    pub const DEV_COHERENT_REMOTE: SnapshotProt = SnapshotProt(0x50);

    /// The byte.
    pub fn bits(self) -> u8 {
        self.0
    }
}

impl BitOr for SnapshotProt {
    type Output = SnapshotProt;

    fn bitor(self, other: SnapshotProt) -> SnapshotProt {
        SnapshotProt(self.0 | other.0)
    }
}

impl DeviceMirror {
    /// `HMM_DMIRROR_SNAPSHOT` of `[start, end)`: one [`SnapshotProt`] per
    /// page, without faulting (test_hmm's `hmm_range_fault` with no fault
    /// flags).
    ///
    /// # Errors
    ///
    /// [`FaultError::Released`] after exit; [`FaultError::Busy`] if every
    /// attempt at a page collided with an invalidation.
    pub fn snapshot(&self, start: u64, end: u64) -> Result<Vec<SnapshotProt>, FaultError> {
        let first = start - start % PAGE_SIZE;
        (first..end)
            .step_by(PAGE_SIZE as usize)
            .map(|page| self.snapshot_page(page))
            .collect()
    }

    fn snapshot_page(&self, page: u64) -> Result<SnapshotProt, FaultError> {
        for _ in 0..MAX_FAULT_ATTEMPTS {
            let sub = self.subscription(page)?;
            let seq = sub.read_begin();
            let prot = self.prot_of(page);
            if !sub.read_retry(seq) {
                return Ok(prot);
            }
        }
        Err(FaultError::Busy)
    }

    /// `dmirror_mkentry` for what the primary maps at `page` now.
    fn prot_of(&self, page: u64) -> SnapshotProt {
        let vmas = self.space.vmas();
        let readable = |v: &&Vma| v.flags.contains(VmFlags::READ);
        let vma = vmas.iter().find(|v| v.start <= page && page < v.end);
        if vma.filter(readable).is_none() {
            return SnapshotProt::ERROR;
        }
        if let Some(own) = self.own_device_private(page) {
            let access = if own.writable {
                SnapshotProt::WRITE
            } else {
                SnapshotProt::READ
            };
            return access | SnapshotProt::DEV_PRIVATE_LOCAL;
        }
        let Some((pfn, writable)) = self.space.translate(page) else {
            return SnapshotProt::NONE;
        };
        let mut prot = if writable {
            SnapshotProt::WRITE
        } else {
            SnapshotProt::READ
        };
        if pfn == ZERO_PFN {
            prot = prot | SnapshotProt::ZERO;
        }
        // `translate` follows huge entries, `pte` does not.
        if self.space.pte(page).is_none() {
            prot = prot | SnapshotProt::PMD;
        }
        match self.space.memory().frame(pfn).device {
            Some(owner) if owner == self.device.owner => prot | SnapshotProt::DEV_COHERENT_LOCAL,
            Some(_) => prot | SnapshotProt::DEV_COHERENT_REMOTE,
            None => prot,
        }
    }
}
