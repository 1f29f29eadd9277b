//! What the software-MMU integration tests share: the workspace's
//! recording subscribers (`mmun-testkit`: a list notifier with every v6.5
//! callback and an interval notifier that follows the `set_seq` contract,
//! both appending to one ordered log); a checker of
//! the pairing and nesting rules; and helpers to build address spaces.
#![allow(dead_code)]

use std::sync::Arc;

use mmun_core::{Event, IntervalNotifier, Mm, Notifier};
use mmun_softmmu::Prot;
use mmun_softmmu::{AddressSpace, Config, MapRequest, Memory};
pub use mmun_testkit::{Call as Ev, ListRec, Recorder};

/// The shared log of the workspace's recorders (`mmun-testkit`), read
/// without the interval seqs: these tests compare whole streams, and the
/// seq values are the core's business (its own tests check them).
#[derive(Debug, Default, Clone)]
pub struct Log(mmun_testkit::Log);

impl Log {
    pub fn take(&self) -> Vec<Ev> {
        self.0.take_without_seqs()
    }
}

/// Registers a recording list notifier (every v6.5 callback) on `mm`.
pub fn list_notifier(mm: &Arc<Mm>, who: &'static str, log: &Log) -> Notifier<ListRec> {
    Notifier::register(mm, &mmun_testkit::FULL, ListRec::new(who, &log.0))
        .expect("a live address space accepts a notifier")
}

/// Inserts a recording interval notifier over `[start, start + len)`.
pub fn interval_notifier(
    mm: &Arc<Mm>,
    who: &'static str,
    log: &Log,
    start: u64,
    len: u64,
) -> IntervalNotifier<Recorder> {
    IntervalNotifier::insert(mm, start, len, Recorder::new(who, &log.0))
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
            Ev::InvalidateRange {
                who: w, start, end, ..
            } if w == who => {
                let inside = open.last().is_some_and(|&(_, s, e)| s <= start && end <= e);
                if !inside {
                    return Err(format!(
                        "#{i}: invalidate_range {start:#x}..{end:#x} outside the innermost open range (open: {open:x?})"
                    ));
                }
            }
            Ev::ChangePte {
                who: w,
                address: addr,
                ..
            } if w == who => {
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

/// Runs `work` on a thread of its own and waits for it at most
/// `patience`, for tests that check some work does not wait for a lock
/// another operation holds: panics, naming `what`, if it does not finish.
pub fn completes<R: Send + 'static>(
    space: &Arc<AddressSpace>,
    patience: std::time::Duration,
    what: &str,
    work: impl FnOnce(&AddressSpace) -> R + Send + 'static,
) -> R {
    let (tx, rx) = std::sync::mpsc::channel();
    let space = Arc::clone(space);
    std::thread::spawn(move || {
        let _ = tx.send(work(&space));
    });
    rx.recv_timeout(patience)
        .unwrap_or_else(|_| panic!("{what} did not complete: it waited for a lock it needs not"))
}
