//! The recording list notifier and its ops tables.

use mmun_core::{Mm, NotifierOps, Range, StartFn, WouldBlock};

use crate::calls::{Call, Log, start_call};

/// The state of a recording list notifier.
#[derive(Debug)]
pub struct ListRec {
    /// The name its calls carry.
    pub who: &'static str,
    /// Where its calls go.
    pub log: Log,
    /// What its young callbacks answer.
    pub young: bool,
}

impl ListRec {
    /// A recorder whose young callbacks answer `false`.
    pub fn new(who: &'static str, log: &Log) -> ListRec {
        ListRec {
            who,
            log: log.clone(),
            young: false,
        }
    }
    /// A recorder whose young callbacks answer `true`.
    pub fn young(who: &'static str, log: &Log) -> ListRec {
        ListRec {
            young: true,
            ..ListRec::new(who, log)
        }
    }
}

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
