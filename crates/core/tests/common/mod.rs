//! Recording subscribers shared by the integration tests.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::Mutex;

use mmun_core::{Event, IntervalNotifierOps, IntervalSub, Owner, Range, Seq};

/// One observed callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Start {
        who: &'static str,
        event: Event,
        start: u64,
        end: u64,
        blockable: bool,
        owner: Option<Owner>,
    },
    End {
        who: &'static str,
        start: u64,
        end: u64,
    },
    Invalidate {
        who: &'static str,
        event: Event,
        start: u64,
        end: u64,
        seq: u64,
        blockable: bool,
    },
    InvalidateRange {
        who: &'static str,
        start: u64,
        end: u64,
    },
    Release {
        who: &'static str,
    },
    ClearFlushYoung {
        who: &'static str,
        start: u64,
        end: u64,
    },
    ClearYoung {
        who: &'static str,
        start: u64,
        end: u64,
    },
    TestYoung {
        who: &'static str,
        address: u64,
    },
    ChangePte {
        who: &'static str,
        address: u64,
        pte: u64,
    },
    Free {
        who: &'static str,
    },
}

/// A shared, ordered log of calls across several subscribers.
#[derive(Debug, Default, Clone)]
pub struct Log(Arc<Mutex<Vec<Call>>>);

impl Log {
    pub fn push(&self, call: Call) {
        self.0.lock().unwrap().push(call);
    }
    pub fn take(&self) -> Vec<Call> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

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

/// An interval subscriber that records and follows the set_seq contract.
pub struct Recorder {
    pub who: &'static str,
    pub log: Log,
    /// Whether to refuse non-blockable ranges.
    pub refuse_nonblock: bool,
    pub lock: Mutex<()>,
}

impl Recorder {
    pub fn new(who: &'static str, log: &Log) -> Recorder {
        Recorder {
            who,
            log: log.clone(),
            refuse_nonblock: false,
            lock: Mutex::new(()),
        }
    }
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
        let _g = self.lock.lock().unwrap();
        sub.set_seq(cur_seq);
        self.log.push(Call::Invalidate {
            who: self.who,
            event: range.event(),
            start: range.start(),
            end: range.end(),
            seq: cur_seq.get(),
            blockable: range.is_blockable(),
        });
        true
    }
}

/// The state of a recording list notifier.
pub struct ListRec {
    pub who: &'static str,
    pub log: Log,
    pub young: bool,
}

impl ListRec {
    pub fn new(who: &'static str, log: &Log) -> ListRec {
        ListRec {
            who,
            log: log.clone(),
            young: false,
        }
    }
    pub fn young(who: &'static str, log: &Log) -> ListRec {
        ListRec {
            young: true,
            ..ListRec::new(who, log)
        }
    }
}

use mmun_core::{Mm, NotifierOps, StartFn, WouldBlock};

fn rec_start(r: &ListRec, range: &Range<'_>) {
    r.log.push(start_call(r.who, range));
}
fn rec_end(r: &ListRec, range: &Range<'_>) {
    r.log.push(Call::End {
        who: r.who,
        start: range.start(),
        end: range.end(),
    });
}
fn rec_invalidate_range(r: &ListRec, _mm: &Mm, start: u64, end: u64) {
    r.log.push(Call::InvalidateRange {
        who: r.who,
        start,
        end,
    });
}
fn rec_release(r: &ListRec, _mm: &Mm) {
    r.log.push(Call::Release { who: r.who });
}
fn rec_cfy(r: &ListRec, _mm: &Mm, start: u64, end: u64) -> bool {
    r.log.push(Call::ClearFlushYoung {
        who: r.who,
        start,
        end,
    });
    r.young
}
fn rec_cy(r: &ListRec, _mm: &Mm, start: u64, end: u64) -> bool {
    r.log.push(Call::ClearYoung {
        who: r.who,
        start,
        end,
    });
    r.young
}
fn rec_ty(r: &ListRec, _mm: &Mm, address: u64) -> bool {
    r.log.push(Call::TestYoung {
        who: r.who,
        address,
    });
    r.young
}
fn rec_change_pte(r: &ListRec, _mm: &Mm, address: u64, pte: u64) {
    r.log.push(Call::ChangePte {
        who: r.who,
        address,
        pte,
    });
}
fn rec_fallible_start(r: &ListRec, range: &Range<'_>) -> Result<(), WouldBlock> {
    r.log.push(start_call(r.who, range));
    if range.is_blockable() {
        Ok(())
    } else {
        Err(WouldBlock)
    }
}
fn rec_free(r: &ListRec) {
    r.log.push(Call::Free { who: r.who });
}

/// Every v6.5 callback, recording.
pub static FULL: NotifierOps<ListRec> = NotifierOps {
    release: Some(rec_release),
    clear_flush_young: Some(rec_cfy),
    clear_young: Some(rec_cy),
    test_young: Some(rec_ty),
    change_pte: Some(rec_change_pte),
    invalidate_range_start: Some(StartFn::Infallible(rec_start)),
    invalidate_range_end: Some(rec_end),
    invalidate_range: Some(rec_invalidate_range),
    alloc_notifier: None,
    free_notifier: Some(rec_free),
};

/// A start that refuses non-blockable ranges, and (by the rule) no end.
pub static FALLIBLE: NotifierOps<ListRec> = NotifierOps {
    invalidate_range_start: Some(StartFn::Fallible(rec_fallible_start)),
    release: Some(rec_release),
    ..NotifierOps::EMPTY
};

/// Only young callbacks.
pub static YOUNG_ONLY: NotifierOps<ListRec> = NotifierOps {
    clear_flush_young: Some(rec_cfy),
    clear_young: Some(rec_cy),
    test_young: Some(rec_ty),
    ..NotifierOps::EMPTY
};

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

/// Runs `f` on a thread and fails the test if it does not finish in time
/// (turns a hang into a failure).
pub fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(secs))
        .expect("operation hung (did not finish in time)")
}
