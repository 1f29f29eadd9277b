//! The device: its identity, its page table behind the device lock, and
//! the two steps of the hmm.rst protocol as test_hmm writes them — the
//! `invalidate` callback (`dmirror_interval_invalidate`) and the fault's
//! commit (the end of `dmirror_range_fault`).

use std::sync::Arc;

use mmun_core::driver_lock::DriverLock;
use mmun_core::lockdep::LockClass;
use mmun_core::{Event, IntervalNotifierOps, IntervalSub, Owner, Range, Seq};
use mmun_softmmu::Translation;

use super::protocol::Protocol;
use super::table::{Counts, DevicePte, Table, add, bump};
use crate::bug::Bug;
use crate::secondary::FaultError;

/// test_hmm's `dmirror->mutex`, one class for every device.
static DEVICE_LOCK: LockClass = LockClass::new("dmirror->mutex");

/// The state shared by the mirror and its interval notifiers.
#[derive(Debug)]
pub(super) struct Device {
    /// The `pgmap_owner` of its migrations and exclusive conversions.
    pub(super) owner: Owner,
    /// The injected bug, if any (reported by `DeviceMirror::bug`).
    pub(super) bug: Option<Bug>,
    /// The steps the notifier and the fault take: [`Textbook`](super::protocol::Textbook)
    /// unless a bug is injected.
    protocol: &'static dyn Protocol,
    /// The device lock and the page table it guards.
    pub(super) table: DriverLock<Table>,
    pub(super) counts: Counts,
}

impl Device {
    pub(super) fn new(owner: Owner, bug: Option<Bug>) -> Device {
        Device {
            owner,
            bug,
            protocol: super::protocol::for_bug(bug),
            table: DriverLock::new(&DEVICE_LOCK, Table::default()),
            counts: Counts::default(),
        }
    }

    /// The protocol in force (for the fault path's commit).
    pub(super) fn protocol(&self) -> &'static dyn Protocol {
        self.protocol
    }

    /// `dmirror_interval_invalidate`.
    pub(super) fn invalidate(&self, sub: &IntervalSub, range: &Range<'_>, cur_seq: Seq) -> bool {
        if self.is_own_migration(range) {
            // Our own migration maps the new pages itself, and our own
            // exclusive conversion is what we asked for: zapping would only
            // tear down what we are installing (or livelock, §3.6).
            bump(&self.counts.skipped);
            return true;
        }
        let Some(mut table) = self.table.lock_for_invalidate(sub, range, cur_seq) else {
            // Sleeping is not allowed here: refuse, the core aborts the
            // whole invalidation with EAGAIN and the caller retries later.
            bump(&self.counts.refused);
            return false;
        };
        self.zap(&mut table, range);
        true
    }

    /// The end of `dmirror_range_fault`: programs `pte` at `page` under the
    /// device lock unless an invalidation (or our own remapping) ran since
    /// `seq` and `generation` were read; returns whether it stands.
    pub(super) fn commit(
        &self,
        sub: &IntervalSub,
        seq: Seq,
        generation: u64,
        page: u64,
        pte: DevicePte,
    ) -> Result<bool, FaultError> {
        let Ok(mut table) = self.table.lock_if_current(sub, seq) else {
            return Ok(false);
        };
        if table.released {
            return Err(FaultError::Released);
        }
        if table.generation != generation {
            return Ok(false);
        }
        table.ptes.insert(page, pte);
        Ok(true)
    }

    /// The HMM owner rule: a `Migrate` or `Exclusive` range started by
    /// this device is its own doing.
    pub(super) fn is_own_migration(&self, range: &Range<'_>) -> bool {
        is_migration(range) && range.owner() == Some(self.owner)
    }

    /// `dmirror_do_update`: drops the device PTEs the range covers (all of
    /// them, for good, on `Release`).
    pub(super) fn zap(&self, table: &mut Table, range: &Range<'_>) {
        let zapped = match range.event() {
            Event::Release => table.release(),
            _ => table.zap(range.start(), range.end()),
        };
        add(&self.counts.zapped, zapped);
    }

    /// `dmirror_migrate_finalize_and_map` for one page: called by the
    /// primary with its page-table lock held, after our own (skipped)
    /// `Migrate` range, so the table never holds the old frame once the
    /// new one is visible. The device changes its table outside the
    /// protocol here, so it bumps the generation for faults in flight.
    pub(super) fn finalize_and_map(&self, va: u64, new: Option<Translation>) {
        let mut table = self.table.lock();
        if table.released {
            return;
        }
        table.generation += 1;
        match new {
            Some(translation) => {
                let pte = DevicePte {
                    translation,
                    exclusive: false,
                };
                table.ptes.insert(va, pte);
                bump(&self.counts.migrated);
            }
            None => {
                table.ptes.remove(&va);
            }
        }
    }
}

impl Device {
    /// `dmirror_devmem_fault_alloc_and_copy`'s erase for one page leaving
    /// the device's memory (our own `Migrate` range was skipped): called
    /// with the primary's page-table lock held. Bumps the generation for
    /// faults in flight.
    pub(super) fn evict(&self, va: u64) {
        let mut table = self.table.lock();
        table.generation += 1;
        table.ptes.remove(&va);
    }
}

impl mmun_softmmu::DevicePagemap for Device {
    /// `dmirror_devmem_fault_alloc_and_copy`'s erase: the CPU touched a
    /// page of our private memory and it moved to system memory (under
    /// our own `Migrate` range, which we skipped). Drops our translation
    /// of it, unless the migration failed and the page is still ours.
    ///
    /// Bumps the generation even when the table holds no entry for it: a
    /// fault in flight may have walked the device page (`hmm_range_fault`
    /// reports our own pages without faulting them) and would otherwise
    /// program it after this, seeing neither a sequence change (the range
    /// was ours, skipped) nor a generation change. test_hmm has this race
    /// on Linux.
    fn page_to_ram(&self, va: u64, old: mmun_softmmu::Pfn, new: Option<Translation>) {
        if new.is_some_and(|t| t.pfn == old) {
            return;
        }
        let mut table = self.table.lock();
        table.generation += 1;
        if table
            .ptes
            .get(&va)
            .is_some_and(|p| p.translation.pfn == old)
        {
            table.ptes.remove(&va);
        }
    }
}

/// A `Migrate` or `Exclusive` range, whoever started it.
pub(super) fn is_migration(range: &Range<'_>) -> bool {
    matches!(range.event(), Event::Migrate | Event::Exclusive)
}

/// The interval notifier's ops: a handle on the device.
#[derive(Debug)]
pub(super) struct MirrorOps(pub(super) Arc<Device>);

impl IntervalNotifierOps for MirrorOps {
    fn invalidate(&self, sub: &IntervalSub, range: &Range<'_>, cur_seq: Seq) -> bool {
        let device = &*self.0;
        bump(&device.counts.invalidations);
        device.protocol.invalidate(device, sub, range, cur_seq)
    }
}
