//! The kernel's `WARN_ON`s, as values.
//!
//! Survivable misuse in `mm/mmu_notifier.c` is met with a `WARN` and the
//! code carries on. Here each such condition is a [`Warning`], recorded on
//! the address space (see [`Mm::warnings`](crate::Mm::warnings)) so tests can
//! assert it, and logged to stderr the first time it happens on that mm.

use std::fmt;

/// A condition Linux `WARN`s about, and then survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Warning {
    /// An interval notifier returned `false` for a blockable range.
    IntervalRefusedBlockable,
    /// A list notifier's `invalidate_range_start` failed for a blockable range.
    StartFailedBlockable,
    /// A list notifier's start failed although it has an
    /// `invalidate_range_end` (caught at registration; kept for fidelity).
    FailingStartHasEnd,
    /// An interval notifier refused the exit-time `Release` invalidation.
    IntervalRefusedRelease,
    /// `put` on a subscription whose user count is already 0.
    PutWithoutUsers,
    /// An interval notifier was inserted while the mm was idle but the
    /// sequence was odd: the seq invariant was broken.
    OddSeqWhileIdle,
    /// `remove` found an interval notifier missing from the tree while no
    /// invalidation was running.
    RemoveNotInTree,
    /// `change_pte` delivered without an enclosing `Clear`/`Migrate`
    /// start on this thread covering the address.
    ChangePteNotNested,
}

impl Warning {
    /// What the kernel would have printed.
    pub fn message(self) -> &'static str {
        match self {
            Warning::IntervalRefusedBlockable => {
                "interval notifier invalidate() returned false for a blockable range"
            }
            Warning::StartFailedBlockable => "invalidate_range_start failed for a blockable range",
            Warning::FailingStartHasEnd => {
                "a notifier whose invalidate_range_start failed implements invalidate_range_end"
            }
            Warning::IntervalRefusedRelease => {
                "interval notifier invalidate() returned false for the exit-time RELEASE"
            }
            Warning::PutWithoutUsers => "mmu_notifier_put() on a subscription with no users",
            Warning::OddSeqWhileIdle => "invalidate_seq is odd while no invalidation is active",
            Warning::RemoveNotInTree => {
                "mmu_interval_notifier_remove() of a notifier that is not in the tree"
            }
            Warning::ChangePteNotNested => {
                "change_pte outside an invalidate_range_start/end (CLEAR or MIGRATE) covering it"
            }
        }
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}
