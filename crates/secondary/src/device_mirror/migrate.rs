//! test_hmm's migration commands: `HMM_DMIRROR_MIGRATE_TO_DEV`
//! (`dmirror_migrate_to_device`) and `HMM_DMIRROR_MIGRATE_TO_SYS`
//! (`dmirror_migrate_to_system`), over the software MMU's
//! `migrate_vma_*`. With device-coherent memory the CPU keeps mapping the
//! device's pages; with device-private memory it maps them by
//! device-private entries, and a CPU touch brings a page back through the
//! device's `DevicePagemap::page_to_ram` (in `device.rs`).

use mmun_softmmu::layout::{PAGE_SIZE, align_down};

use super::DeviceMirror;
use crate::secondary::FaultError;

impl DeviceMirror {
    /// `HMM_DMIRROR_MIGRATE_TO_DEV`: the private anonymous pages of
    /// `[start, end)` (empty and zero-page entries included) move to this
    /// device's memory under `Migrate` ranges with its owner, which it
    /// skips; the device table gets every new frame while the primary still
    /// holds its page-table lock (`finalize_and_map` before
    /// `migrate_vma_finalize`). Then, as test_hmm reads the range back,
    /// every page must be in the device's table. Returns how many are
    /// (test_hmm's `cpages`).
    ///
    /// # Errors
    ///
    /// [`FaultError::Invalid`] if a page has no VMA or an unreadable one
    /// (earlier chunks stay migrated); [`FaultError::NotFound`] if a page
    /// did not reach the device (shared memory, another device's page);
    /// [`FaultError::Released`] after exit.
    pub fn migrate_to_device(&self, start: u64, end: u64) -> Result<usize, FaultError> {
        let (start, end) = page_range(start, end)?;
        // Every page the device will hold must be covered by a subscription
        // before the migration, or later invalidations would miss it.
        self.subscribe(start, end)?;
        let device = &self.device;
        let migrated = self
            .space
            .migrate_device_and_map(start, end, device.owner, |va, new| {
                device.finalize_and_map(va, new);
            });
        migrated.map_err(|_| FaultError::Invalid)?;
        self.read_back(start, end)
    }

    /// `HMM_DMIRROR_MIGRATE_TO_SYS`: the pages of `[start, end)` in this
    /// device's memory move back to system memory (under `Migrate` ranges
    /// with its owner) and leave its table. Returns how many moved.
    ///
    /// # Errors
    ///
    /// As [`DeviceMirror::migrate_to_device`], without `NotFound`.
    pub fn migrate_to_system(&self, start: u64, end: u64) -> Result<usize, FaultError> {
        let (start, end) = page_range(start, end)?;
        if self.is_released() {
            return Err(FaultError::Released);
        }
        let device = &self.device;
        self.space
            .migrate_device_to_system(start, end, device.owner, |va, _| device.evict(va))
            .map_err(|_| FaultError::Invalid)
    }

    /// `dmirror_do_read` after a migration: every page of the range must
    /// be in the table; returns how many there are.
    fn read_back(&self, start: u64, end: u64) -> Result<usize, FaultError> {
        let table = self.device.table.lock();
        if table.released {
            return Err(FaultError::Released);
        }
        let present = table.ptes.range(start..end).count();
        let pages = ((end - start) / PAGE_SIZE) as usize;
        if present == pages {
            Ok(present)
        } else {
            Err(FaultError::NotFound)
        }
    }
}

/// `[start, end)` rounded out to pages; `Invalid` if it wraps.
fn page_range(start: u64, end: u64) -> Result<(u64, u64), FaultError> {
    let start = align_down(start, PAGE_SIZE);
    let end = end
        .checked_next_multiple_of(PAGE_SIZE)
        .filter(|&end| end >= start)
        .ok_or(FaultError::Invalid)?;
    Ok((start, end))
}
