//! The recording interval notifier.

use mmun_core::driver_lock::DriverLock;
use mmun_core::lockdep::LockClass;
use mmun_core::{IntervalNotifierOps, IntervalSub, Range, Seq};

use crate::calls::{Call, Log};

static RECORDER_LOCK: LockClass = LockClass::new("testkit recorder->lock");

/// An interval subscriber that records every `invalidate` and follows the
/// `set_seq` contract (under its driver lock).
#[derive(Debug)]
pub struct Recorder {
    /// The name its calls carry.
    pub who: &'static str,
    /// Where its calls go.
    pub log: Log,
    /// Whether it refuses every non-blockable range.
    pub refuse_nonblock: bool,
    /// Its driver lock (it guards nothing but the protocol).
    pub lock: DriverLock<()>,
}

impl Recorder {
    /// A recorder that accepts every range.
    pub fn new(who: &'static str, log: &Log) -> Recorder {
        Recorder {
            who,
            log: log.clone(),
            refuse_nonblock: false,
            lock: DriverLock::new(&RECORDER_LOCK, ()),
        }
    }

    /// A recorder that refuses non-blockable ranges.
    pub fn refusing(who: &'static str, log: &Log) -> Recorder {
        Recorder {
            refuse_nonblock: true,
            ..Recorder::new(who, log)
        }
    }
}

impl IntervalNotifierOps for Recorder {
    fn invalidate(&self, sub: &IntervalSub, range: &Range<'_>, cur_seq: Seq) -> bool {
        if self.refuse_nonblock && !range.is_blockable() {
            return false;
        }
        let Some(_locked) = self.lock.lock_for_invalidate(sub, range, cur_seq) else {
            return false;
        };
        self.log.push(Call::Invalidate {
            who: self.who,
            event: range.event(),
            start: range.start(),
            end: range.end(),
            seq: cur_seq.get(),
            blockable: range.is_blockable(),
            owner: range.owner(),
        });
        true
    }
}
