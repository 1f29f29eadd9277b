//! The device: its identity, its page table behind the device lock, and
//! the `invalidate` callback (`dmirror_interval_invalidate`).

use std::sync::Arc;

use mmun_core::{Event, IntervalNotifierOps, IntervalSub, Owner, Range, Seq};
use mmun_softmmu::Translation;
use parking_lot::{Mutex, MutexGuard};

use super::table::{Counts, DevicePte, Table, add, bump};
use crate::bug::Bug;

/// The state shared by the mirror and its interval notifiers.
#[derive(Debug)]
pub(super) struct Device {
    /// The `pgmap_owner` of its migrations and exclusive conversions.
    pub(super) owner: Owner,
    /// The injected bug, if any.
    pub(super) bug: Option<Bug>,
    /// The device lock and the page table it guards.
    pub(super) table: Mutex<Table>,
    pub(super) counts: Counts,
}

impl Device {
    pub(super) fn new(owner: Owner, bug: Option<Bug>) -> Device {
        Device {
            owner,
            bug,
            table: Mutex::new(Table::default()),
            counts: Counts::default(),
        }
    }

    /// `dmirror_interval_invalidate`. `set_seq` records the callback's
    /// `cur_seq` on the interval; it is the only use of the interval here.
    fn invalidate(&self, range: &Range<'_>, set_seq: impl FnOnce()) -> bool {
        bump(&self.counts.invalidations);
        if self.skips(range) {
            // Our own migration maps the new pages itself, and our own
            // exclusive conversion is what we asked for: zapping would only
            // tear down what we are installing (or livelock, §3.6).
            bump(&self.counts.skipped);
            return true;
        }
        if !range.is_blockable() && self.bug == Some(Bug::IgnoreNonBlocking) {
            return true;
        }
        let Some(mut table) = self.lock_for(range) else {
            // Sleeping is not allowed here: refuse, the core aborts the
            // whole invalidation with EAGAIN and the caller retries later.
            bump(&self.counts.refused);
            return false;
        };
        if self.bug != Some(Bug::NoSetSeq) {
            set_seq();
        }
        let zapped = match range.event() {
            Event::Release => table.release(),
            _ => table.zap(range.start(), range.end()),
        };
        add(&self.counts.zapped, zapped);
        true
    }

    /// The HMM owner rule: a `Migrate` or `Exclusive` range started by
    /// this device is its own doing.
    fn skips(&self, range: &Range<'_>) -> bool {
        let kind = matches!(range.event(), Event::Migrate | Event::Exclusive);
        kind && (self.bug == Some(Bug::SkipForeignOwner) || range.owner() == Some(self.owner))
    }

    /// The device lock: waited for if the range may block, tried otherwise.
    fn lock_for(&self, range: &Range<'_>) -> Option<MutexGuard<'_, Table>> {
        if range.is_blockable() {
            Some(self.table.lock())
        } else {
            self.table.try_lock()
        }
    }

    /// `dmirror_migrate_finalize_and_map` for one page: called by the
    /// primary with its page-table lock held, after our own (skipped)
    /// `Migrate` range, so the table never holds the old frame once the
    /// new one is visible.
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

/// The interval notifier's ops: a handle on the device.
#[derive(Debug)]
pub(super) struct MirrorOps(pub(super) Arc<Device>);

impl IntervalNotifierOps for MirrorOps {
    fn invalidate(&self, sub: &IntervalSub, range: &Range<'_>, cur_seq: Seq) -> bool {
        self.0.invalidate(range, || sub.set_seq(cur_seq))
    }
}
