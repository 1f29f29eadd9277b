//! The shadow MMU's injectable bugs (`mmun stress --inject`), each a
//! [`Protocol`] replacing one KVM step.

use std::sync::Arc;

use mmun_core::{NotifierOps, Range};

use super::callbacks::{Inner, OPS_WITHOUT_END};
use super::protocol::Protocol;
use super::table::Table;
use crate::bug::Bug;

/// The broken steps for `bug`, if it is one of the shadow MMU's.
pub(super) fn protocol(bug: Option<Bug>) -> Option<&'static dyn Protocol> {
    Some(match bug? {
        Bug::NoSeqBump => &NoSeqBump,
        Bug::IgnoreInProgress => &IgnoreInProgress,
        Bug::MissingRangeEnd => &MissingRangeEnd,
        _ => return None,
    })
}

/// [`Bug::NoSeqBump`]: the end lowers the in-progress count but forgets
/// `mmu_invalidate_seq++`.
#[derive(Debug)]
struct NoSeqBump;

impl Protocol for NoSeqBump {
    fn invalidate_range_end(&self, inner: &Inner, _: &Range<'_>) {
        let mut table = inner.lock();
        inner.finish(&mut table);
    }
}

/// [`Bug::IgnoreInProgress`]: a fault checks the sequence only.
#[derive(Debug)]
struct IgnoreInProgress;

impl Protocol for IgnoreInProgress {
    fn fault_is_stale(&self, inner: &Inner, table: &Table, _: u64, mmu_seq: u64) -> bool {
        inner.seq_locked(table) != mmu_seq
    }
}

/// [`Bug::MissingRangeEnd`]: no `invalidate_range_end`; the start does
/// the begin and the end at once, so the count is back to zero before the
/// primary has changed anything.
#[derive(Debug)]
struct MissingRangeEnd;

impl Protocol for MissingRangeEnd {
    fn invalidate_range_start(&self, inner: &Inner, range: &Range<'_>) {
        let mut table = inner.lock();
        table.begin(range.start(), range.end());
        inner.bump_seq(&mut table);
        inner.finish(&mut table);
        inner.zap(&mut table, range);
    }

    fn ops(&self) -> &'static NotifierOps<Arc<Inner>> {
        &OPS_WITHOUT_END
    }
}
