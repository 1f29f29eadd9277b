//! Recording subscribers for the software-MMU integration tests: a list
//! notifier with every v6.5 callback and an interval notifier that follows
//! the `set_seq` contract, both appending to one ordered log; a checker of
//! the pairing and nesting rules; and helpers to build address spaces.
#![allow(dead_code)]

use std::sync::Arc;

use mmun_core::{
    Event, IntervalNotifier, IntervalNotifierOps, IntervalSub, Mm, Notifier, NotifierOps, Owner,
    Range, Seq, StartFn,
};
use mmun_script::Prot;
use mmun_softmmu::{AddressSpace, Config, MapRequest, Memory};
use parking_lot::Mutex;

/// One callback, tagged with the subscriber that saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ev {
    /// List notifier `invalidate_range_start`.
    Start {
        who: &'static str,
        event: Event,
        start: u64,
        end: u64,
        blockable: bool,
        owner: Option<Owner>,
    },
    /// List notifier `invalidate_range_end`.
    End {
        who: &'static str,
        start: u64,
        end: u64,
    },
    /// List notifier `invalidate_range` (v6.5 secondary TLB flush).
    InvRange {
        who: &'static str,
        start: u64,
        end: u64,
    },
    /// List notifier `change_pte`.
    ChangePte {
        who: &'static str,
        addr: u64,
        pte: u64,
    },
    /// List notifier `release`.
    Release { who: &'static str },
    /// List notifier young callbacks.
    Young {
        who: &'static str,
        kind: &'static str,
        start: u64,
        end: u64,
    },
    /// Interval notifier `invalidate`.
    Interval {
        who: &'static str,
        event: Event,
        start: u64,
        end: u64,
        blockable: bool,
        owner: Option<Owner>,
    },
}

/// A shared, ordered log.
#[derive(Debug, Default, Clone)]
pub struct Log(Arc<Mutex<Vec<Ev>>>);

impl Log {
    pub fn push(&self, ev: Ev) {
        self.0.lock().push(ev);
    }
    pub fn take(&self) -> Vec<Ev> {
        std::mem::take(&mut *self.0.lock())
    }
}

/// The state of the recording list notifier.
#[derive(Debug)]
pub struct ListRec {
    pub who: &'static str,
    pub log: Log,
}

fn push_young(r: &ListRec, kind: &'static str, start: u64, end: u64) -> bool {
    r.log.push(Ev::Young {
        who: r.who,
        kind,
        start,
        end,
    });
    false
}

/// Every v6.5 callback, recording.
pub static LIST_OPS: NotifierOps<ListRec> = NotifierOps {
    release: Some(|r, _| r.log.push(Ev::Release { who: r.who })),
    clear_flush_young: Some(|r, _, s, e| push_young(r, "clear_flush_young", s, e)),
    clear_young: Some(|r, _, s, e| push_young(r, "clear_young", s, e)),
    test_young: Some(|r, _, a| push_young(r, "test_young", a, a)),
    change_pte: Some(|r, _, addr, pte| {
        r.log.push(Ev::ChangePte {
            who: r.who,
            addr,
            pte,
        })
    }),
    invalidate_range_start: Some(StartFn::Infallible(|r, range: &Range<'_>| {
        r.log.push(Ev::Start {
            who: r.who,
            event: range.event(),
            start: range.start(),
            end: range.end(),
            blockable: range.is_blockable(),
            owner: range.owner(),
        })
    })),
    invalidate_range_end: Some(|r, range| {
        r.log.push(Ev::End {
            who: r.who,
            start: range.start(),
            end: range.end(),
        })
    }),
    invalidate_range: Some(|r, _, start, end| {
        r.log.push(Ev::InvRange {
            who: r.who,
            start,
            end,
        })
    }),
    alloc_notifier: None,
    free_notifier: None,
};

/// Registers a recording list notifier on `mm`.
pub fn list_notifier(mm: &Arc<Mm>, who: &'static str, log: &Log) -> Notifier<ListRec> {
    Notifier::register(
        mm,
        &LIST_OPS,
        ListRec {
            who,
            log: log.clone(),
        },
    )
    .expect("a live address space accepts a notifier")
}

/// A recording interval subscriber.
#[derive(Debug)]
pub struct IntervalRec {
    pub who: &'static str,
    pub log: Log,
    pub lock: Mutex<()>,
}

impl IntervalNotifierOps for IntervalRec {
    fn invalidate(&self, sub: &IntervalSub, range: &Range<'_>, cur_seq: Seq) -> bool {
        let _driver = self.lock.lock();
        sub.set_seq(cur_seq);
        self.log.push(Ev::Interval {
            who: self.who,
            event: range.event(),
            start: range.start(),
            end: range.end(),
            blockable: range.is_blockable(),
            owner: range.owner(),
        });
        true
    }
}

/// Inserts a recording interval notifier over `[start, start + len)`.
pub fn interval_notifier(
    mm: &Arc<Mm>,
    who: &'static str,
    log: &Log,
    start: u64,
    len: u64,
) -> IntervalNotifier<IntervalRec> {
    IntervalNotifier::insert(
        mm,
        start,
        len,
        IntervalRec {
            who,
            log: log.clone(),
            lock: Mutex::new(()),
        },
    )
    .expect("a live address space accepts an interval notifier")
}

/// The list notifier's rules over one stream (only events of `who` are
/// looked at): every start has its end with the same range, ends close the
/// innermost open start (proper nesting), `invalidate_range` and
/// `change_pte` happen inside an open range that covers them (`change_pte`
/// only inside `Clear`/`Migrate`), and nothing is left open. Returns a
/// description of the first violation.
pub fn check_nesting(stream: &[Ev], who: &str) -> Result<(), String> {
    let mut open: Vec<(Event, u64, u64)> = Vec::new();
    for (i, ev) in stream.iter().enumerate() {
        match *ev {
            Ev::Start {
                who: w,
                event,
                start,
                end,
                ..
            } if w == who => {
                if end < start {
                    return Err(format!("#{i}: backwards range {ev:x?}"));
                }
                open.push((event, start, end));
            }
            Ev::End {
                who: w, start, end, ..
            } if w == who => match open.pop() {
                Some((_, s, e)) if (s, e) == (start, end) => {}
                other => {
                    return Err(format!(
                        "#{i}: end {start:#x}..{end:#x} closes {other:x?} (open: {open:x?})"
                    ));
                }
            },
            Ev::InvRange {
                who: w, start, end, ..
            } if w == who => {
                let inside = open.last().is_some_and(|&(_, s, e)| s <= start && end <= e);
                if !inside {
                    return Err(format!(
                        "#{i}: invalidate_range {start:#x}..{end:#x} outside the innermost open range (open: {open:x?})"
                    ));
                }
            }
            Ev::ChangePte { who: w, addr, .. } if w == who => {
                let inside = open.iter().any(|&(ev, s, e)| {
                    matches!(ev, Event::Clear | Event::Migrate) && s <= addr && addr < e
                });
                if !inside {
                    return Err(format!(
                        "#{i}: change_pte {addr:#x} outside an open Clear/Migrate (open: {open:x?})"
                    ));
                }
            }
            _ => {}
        }
    }
    if open.is_empty() {
        Ok(())
    } else {
        Err(format!("unended ranges: {open:x?}"))
    }
}

/// `PROT_READ`.
pub const R: Prot = Prot {
    read: true,
    write: false,
    exec: false,
};
/// `PROT_READ | PROT_WRITE`.
pub const RW: Prot = Prot::RW;
/// `PROT_NONE`.
pub const NONE: Prot = Prot::NONE;

/// A fresh address space on its own memory, with default tunables.
pub fn new_space() -> AddressSpace {
    AddressSpace::new(Arc::new(Memory::new()))
}

/// A fresh address space with `thp: always` or other tunables.
pub fn new_space_with(config: Config) -> AddressSpace {
    AddressSpace::with_config(Arc::new(Memory::new()), config)
}

/// `mmap(addr, len, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED)`.
pub fn map(space: &AddressSpace, addr: u64, len: u64, prot: Prot) {
    let got = space
        .mmap(MapRequest {
            addr,
            len,
            prot,
            fixed: true,
            ..MapRequest::default()
        })
        .expect("fixed anonymous mmap");
    assert_eq!(got, addr);
}

/// `mmap(addr, len, prot, MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED)`.
pub fn map_shared(space: &AddressSpace, addr: u64, len: u64, prot: Prot) {
    let got = space
        .mmap(MapRequest {
            addr,
            len,
            prot,
            shared: true,
            fixed: true,
            ..MapRequest::default()
        })
        .expect("fixed shared mmap");
    assert_eq!(got, addr);
}

/// Touches every page of `[addr, addr + len)`, reading or writing.
pub fn touch(space: &AddressSpace, addr: u64, len: u64, write: bool) {
    let mut a = addr;
    while a < addr + len {
        space
            .access(a, write)
            .unwrap_or_else(|e| panic!("touch {a:#x} write={write}: {e}"));
        a += 0x1000;
    }
}

/// A comparable picture of the VMAs.
pub fn vma_picture(space: &AddressSpace) -> Vec<String> {
    space
        .vmas()
        .iter()
        .map(|v| {
            format!(
                "{:#x}-{:#x} {:?} anon_vma={} file={:?}",
                v.start,
                v.end,
                v.flags,
                v.anon_vma.is_some(),
                v.file
            )
        })
        .collect()
}

/// One row of [`pte_picture`]: address, raw PTE, translation.
pub type PteRow = (u64, u64, Option<(u64, bool)>);

/// A comparable picture of the raw PTEs and translations of every page in
/// `[start, end)` that has any.
pub fn pte_picture(space: &AddressSpace, start: u64, end: u64) -> Vec<PteRow> {
    let mut out = Vec::new();
    let mut a = start;
    while a < end {
        let pte = space.pte(a);
        let tr = space.translate(a);
        if !pte.is_none() || tr.is_some() {
            out.push((a, pte.raw(), tr));
        }
        a += 0x1000;
    }
    out
}
