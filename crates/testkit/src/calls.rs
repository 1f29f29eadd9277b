//! The recorded callbacks and the log they go to.

use std::sync::Arc;

use mmun_core::{Event, Owner, Range};
use parking_lot::Mutex;

/// One observed callback, tagged with the subscriber (`who`) that saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// List notifier `invalidate_range_start`.
    Start {
        /// The subscriber.
        who: &'static str,
        /// The range's event.
        event: Event,
        /// The range's start.
        start: u64,
        /// The range's end (exclusive).
        end: u64,
        /// Whether the callback may sleep.
        blockable: bool,
        /// The range's owner.
        owner: Option<Owner>,
    },
    /// List notifier `invalidate_range_end`.
    End {
        /// The subscriber.
        who: &'static str,
        /// The range's start.
        start: u64,
        /// The range's end (exclusive).
        end: u64,
    },
    /// Interval notifier `invalidate`.
    Invalidate {
        /// The subscriber.
        who: &'static str,
        /// The range's event.
        event: Event,
        /// The range's start.
        start: u64,
        /// The range's end (exclusive).
        end: u64,
        /// The `cur_seq` the callback got (0 in logs taken with
        /// [`Log::take_without_seqs`]).
        seq: u64,
        /// Whether the callback may sleep.
        blockable: bool,
        /// The range's owner.
        owner: Option<Owner>,
    },
    /// List notifier `invalidate_range` (the v6.5 secondary TLB flush).
    InvalidateRange {
        /// The subscriber.
        who: &'static str,
        /// The range's start.
        start: u64,
        /// The range's end (exclusive).
        end: u64,
    },
    /// List notifier `release`.
    Release {
        /// The subscriber.
        who: &'static str,
    },
    /// List notifier `clear_flush_young`.
    ClearFlushYoung {
        /// The subscriber.
        who: &'static str,
        /// The range's start.
        start: u64,
        /// The range's end (exclusive).
        end: u64,
    },
    /// List notifier `clear_young`.
    ClearYoung {
        /// The subscriber.
        who: &'static str,
        /// The range's start.
        start: u64,
        /// The range's end (exclusive).
        end: u64,
    },
    /// List notifier `test_young`.
    TestYoung {
        /// The subscriber.
        who: &'static str,
        /// The address asked about.
        address: u64,
    },
    /// List notifier `change_pte`.
    ChangePte {
        /// The subscriber.
        who: &'static str,
        /// The address.
        address: u64,
        /// The new PTE.
        pte: u64,
    },
    /// `free_notifier` (after the last put).
    Free {
        /// The subscriber.
        who: &'static str,
    },
}

/// A shared, ordered log of calls across several subscribers.
#[derive(Debug, Default, Clone)]
pub struct Log(Arc<Mutex<Vec<Call>>>);

impl Log {
    /// Appends a call.
    pub fn push(&self, call: Call) {
        self.0.lock().push(call);
    }

    /// Everything logged so far, emptying the log.
    pub fn take(&self) -> Vec<Call> {
        std::mem::take(&mut *self.0.lock())
    }

    /// The same with every interval `seq` set to 0, for comparing whole
    /// streams where the values do not matter.
    pub fn take_without_seqs(&self) -> Vec<Call> {
        let mut calls = self.take();
        for call in &mut calls {
            if let Call::Invalidate { seq, .. } = call {
                *seq = 0;
            }
        }
        calls
    }

    /// How many calls are logged.
    pub fn len(&self) -> usize {
        self.0.lock().len()
    }

    /// Whether nothing is logged.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The [`Call::Start`] of `who` for `range`.
pub fn start_call(who: &'static str, range: &Range<'_>) -> Call {
    Call::Start {
        who,
        event: range.event(),
        start: range.start(),
        end: range.end(),
        blockable: range.is_blockable(),
        owner: range.owner(),
    }
}

/// Who saw `call`.
pub fn who_of(call: &Call) -> &'static str {
    match call {
        Call::Start { who, .. }
        | Call::End { who, .. }
        | Call::Invalidate { who, .. }
        | Call::InvalidateRange { who, .. }
        | Call::Release { who }
        | Call::ClearFlushYoung { who, .. }
        | Call::ClearYoung { who, .. }
        | Call::TestYoung { who, .. }
        | Call::ChangePte { who, .. }
        | Call::Free { who } => who,
    }
}
