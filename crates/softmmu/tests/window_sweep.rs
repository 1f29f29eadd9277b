//! Every window, one at a time: an operation that drops the page-table
//! lock for its callbacks is parked in its n-th callback while another
//! thread does one thing to the same pages; afterwards every frame must be
//! free again once the address spaces exit (the frame bookkeeping also
//! panics at once on a map count going below zero). Where
//! `tests/lock_stress.rs` hopes to land in a window, this walks through all
//! of them for a set of operations over huge pages, split huge pages and
//! pages shared with a fork child. Nothing is timed: a parked operation
//! that never reaches its n-th callback is simply not parked.

mod notify_log;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mmun_core::{IntervalNotifier, IntervalNotifierOps, IntervalSub, Owner, Range, Seq};
use mmun_softmmu::shmem::ShmemObject;
use mmun_softmmu::{AddressSpace, Advice, Config, MapRequest, Memory, Prot, ThpMode};

const B: u64 = 0x3000_0000_0000;
const P: u64 = 0x1000;
const M2: u64 = 0x20_0000;
/// Two huge-page blocks.
const LEN: u64 = 2 * M2;
/// The memfd's size, in the second block.
const MEMFD: u64 = 32 * P;

/// Parks the `park_at`-th callback (counting from 1) until the test thread
/// says go.
struct ParkAt {
    park_at: usize,
    seen: AtomicUsize,
    parked: Mutex<Sender<()>>,
    go: Mutex<Receiver<()>>,
}

impl IntervalNotifierOps for ParkAt {
    fn invalidate(&self, sub: &IntervalSub, _range: &Range<'_>, cur_seq: Seq) -> bool {
        sub.set_seq(cur_seq);
        if self.seen.fetch_add(1, Ordering::SeqCst) + 1 == self.park_at {
            let _ = self.parked.lock().unwrap().send(());
            // Bounded: if the other half blocked on a lock this callback's
            // caller holds, the test fails on that half instead of hanging.
            let _ = self.go.lock().unwrap().recv_timeout(PATIENCE);
        }
        true
    }
}

/// How long a parked callback waits: the other half may need a lock the
/// parked operation holds (the mmap lock for write beside a fault), and
/// then runs once the callback gives up.
const PATIENCE: Duration = Duration::from_millis(300);

/// How the pages look before the parked operation.
#[derive(Debug, Clone, Copy)]
enum Setup {
    /// Both blocks written: huge pages.
    Huge,
    /// The first block's huge page mapped by PTEs (its PMD split).
    Split,
    /// Huge pages shared with a fork child.
    HugeForked,
    /// Split huge pages shared with a fork child.
    SplitForked,
    /// A huge page, then a memfd mapped shared and privately in the second
    /// block, its pages cached and mapped (the private half read only).
    Memfd,
    /// The same, shared with a fork child.
    MemfdForked,
}

/// The operation parked in its callback.
#[derive(Debug, Clone, Copy)]
enum Parked {
    Advise(Advice, u64, u64),
    Migrate(u64, u64),
    Reclaim(u64, u64),
    Fault(u64, bool),
    Ksm(u64, u64),
    Exclusive(u64),
    OomReap,
}

/// What the other thread does meanwhile.
#[derive(Debug, Clone, Copy)]
enum Beside {
    Fault(u64, bool),
    Advise(Advice, u64, u64),
    ZapThenRefault(u64),
    Migrate(u64, u64),
    Reclaim(u64, u64),
    ChildWrite(u64),
    ChildExit,
    ChildAdvise(Advice),
    Exclusive(u64),
    Ksm(u64, u64),
    /// Needs the mmap lock for write: runs beside operations that hold
    /// only the rmap lock, and after the others.
    UnmapAndMapAgain(u64, u64),
    Fork,
    OomReap,
}

fn run_parked(space: &AddressSpace, op: Parked) {
    let _ = match op {
        Parked::Advise(advice, at, len) => space.madvise(B + at, len, advice),
        Parked::Migrate(at, len) => {
            space.migrate(B + at, B + at + len);
            Ok(())
        }
        Parked::Reclaim(at, len) => {
            space.reclaim(B + at, B + at + len);
            Ok(())
        }
        Parked::Fault(at, write) => space.access(B + at, write),
        Parked::Ksm(at, len) => {
            space.ksm_merge(B + at, B + at + len);
            Ok(())
        }
        Parked::Exclusive(at) => space
            .make_device_exclusive(B + at, Owner::unique())
            .map(drop),
        Parked::OomReap => {
            space.oom_reap_once();
            Ok(())
        }
    };
}

fn run_beside(space: &AddressSpace, child: &Mutex<Option<AddressSpace>>, op: Beside) {
    let _ = match op {
        Beside::Fault(at, write) => space.access(B + at, write),
        Beside::Advise(advice, at, len) => space.madvise(B + at, len, advice),
        Beside::ZapThenRefault(at) => space
            .madvise(B + at, M2, Advice::DontNeed)
            .and_then(|()| space.access(B + at, true)),
        Beside::Migrate(at, len) => {
            space.migrate(B + at, B + at + len);
            Ok(())
        }
        Beside::Reclaim(at, len) => {
            space.reclaim(B + at, B + at + len);
            Ok(())
        }
        Beside::ChildWrite(at) => match &*child.lock().unwrap() {
            Some(child) => child.access(B + at, true),
            None => Ok(()),
        },
        Beside::ChildExit => {
            if let Some(child) = child.lock().unwrap().take() {
                child.exit();
            }
            Ok(())
        }
        Beside::Exclusive(at) => space
            .make_device_exclusive(B + at, Owner::unique())
            .map(drop),
        Beside::ChildAdvise(advice) => match &*child.lock().unwrap() {
            Some(child) => child.madvise(B, LEN, advice),
            None => Ok(()),
        },
        Beside::Ksm(at, len) => {
            space.ksm_merge(B + at, B + at + len);
            Ok(())
        }
        Beside::UnmapAndMapAgain(at, len) => {
            space.munmap(B + at, len).expect("munmap");
            notify_log::map(space, B + at, len, Prot::RW);
            Ok(())
        }
        Beside::OomReap => {
            space.oom_reap_once();
            Ok(())
        }
        Beside::Fork => {
            let forked = space.fork();
            if let Some(old) = child.lock().unwrap().replace(forked) {
                old.exit();
            }
            Ok(())
        }
    };
}

fn set_up(setup: Setup) -> (Arc<Memory>, Arc<AddressSpace>, Option<AddressSpace>, usize) {
    let memory = Arc::new(Memory::new());
    memory.huge_zero().expect("a free huge page");
    let baseline = memory.allocated();
    let space = Arc::new(AddressSpace::with_config(
        Arc::clone(&memory),
        Config {
            thp: ThpMode::Always,
            thp_zero_page: true,
        },
    ));
    notify_log::map(&space, B, M2, Prot::RW);
    space.access(B, true).expect("huge fault");
    if matches!(setup, Setup::Split | Setup::SplitForked) {
        // A protection change over part of the block splits its PMD; the
        // folio stays whole, mapped by PTEs.
        let ro = Prot {
            read: true,
            ..Prot::NONE
        };
        space.mprotect(B + 8 * P, P, ro).expect("mprotect");
        space.mprotect(B + 8 * P, P, Prot::RW).expect("mprotect");
    }
    if matches!(setup, Setup::Memfd | Setup::MemfdForked) {
        map_memfd(&memory, &space);
    } else {
        notify_log::map(&space, B + M2, M2, Prot::RW);
        space.access(B + M2, true).expect("huge fault");
    }
    let forked = matches!(
        setup,
        Setup::HugeForked | Setup::SplitForked | Setup::MemfdForked
    );
    let child = forked.then(|| space.fork());
    (memory, space, child, baseline)
}

/// The second block becomes a memfd of 32 pages mapped shared, then the
/// same pages mapped privately, all touched (shared ones written).
fn map_memfd(memory: &Arc<Memory>, space: &AddressSpace) {
    let object = Arc::new(ShmemObject::new(Arc::clone(memory), MEMFD));
    for (at, shared) in [(B + M2, true), (B + M2 + MEMFD, false)] {
        space
            .mmap(MapRequest {
                addr: at,
                len: MEMFD,
                prot: Prot::RW,
                shared,
                object: Some(Arc::clone(&object)),
                fixed: true,
                ..MapRequest::default()
            })
            .expect("memfd mmap");
        for page in (0..MEMFD).step_by(P as usize) {
            space.access(at + page, shared).expect("memfd fault");
        }
    }
}

/// One case: returns whether the operation reached its `park_at`-th
/// callback (false: there are no more windows to try for it).
fn one_case(setup: Setup, parked: Parked, park_at: usize, beside: Beside) -> bool {
    let (memory, space, child, baseline) = set_up(setup);
    let child = Arc::new(Mutex::new(child));
    let (parked_tx, parked_rx) = channel();
    let (go_tx, go_rx) = channel();
    let sub = IntervalNotifier::insert(
        space.mm(),
        B,
        LEN,
        ParkAt {
            park_at,
            seen: AtomicUsize::new(0),
            parked: Mutex::new(parked_tx),
            go: Mutex::new(go_rx),
        },
    )
    .expect("interval notifier");
    let runner = {
        let space = Arc::clone(&space);
        std::thread::spawn(move || run_parked(&space, parked))
    };
    let mut reached = false;
    while !runner.is_finished() {
        if parked_rx.recv_timeout(Duration::from_millis(2)).is_ok() {
            reached = true;
            run_beside(&space, &child, beside);
            let _ = go_tx.send(());
        }
    }
    runner.join().unwrap_or_else(|_| {
        panic!("{setup:?}: {parked:?} parked at {park_at} beside {beside:?} panicked")
    });
    sub.remove();
    if let Some(child) = child.lock().unwrap().take() {
        child.exit();
    }
    space.exit();
    assert_eq!(
        memory.allocated(),
        baseline,
        "{setup:?}: {parked:?} parked at callback {park_at} beside {beside:?}: frames left allocated"
    );
    reached
}

const PARKED: &[Parked] = &[
    Parked::Advise(Advice::PageOut, 4 * P, 8 * P),
    Parked::Advise(Advice::PageOut, 0, LEN),
    Parked::Advise(Advice::Cold, 4 * P, 8 * P),
    Parked::Advise(Advice::Free, 4 * P, 8 * P),
    Parked::Advise(Advice::Free, 0, LEN),
    Parked::Advise(Advice::DontNeed, 4 * P, 8 * P),
    Parked::Migrate(0, LEN),
    Parked::Reclaim(0, LEN),
    Parked::Fault(5 * P, true),
    Parked::Ksm(0, 16 * P),
    Parked::Exclusive(6 * P),
    Parked::Advise(Advice::PageOut, M2, 2 * MEMFD),
    Parked::Reclaim(M2, 2 * MEMFD),
    Parked::Fault(M2 + MEMFD + 3 * P, true),
    Parked::OomReap,
];

const BESIDE: &[Beside] = &[
    Beside::Fault(5 * P, true),
    Beside::Fault(M2 + 5 * P, true),
    Beside::Fault(7 * P, false),
    Beside::Advise(Advice::DontNeed, 4 * P, 2 * P),
    Beside::Advise(Advice::DontNeed, 0, M2),
    Beside::Advise(Advice::PageOut, 0, 8 * P),
    Beside::Advise(Advice::Free, 0, LEN),
    Beside::ZapThenRefault(0),
    Beside::Migrate(0, LEN),
    Beside::Reclaim(0, LEN),
    Beside::ChildWrite(5 * P),
    Beside::ChildExit,
    Beside::Exclusive(5 * P),
    Beside::ChildAdvise(Advice::PageOut),
    Beside::ChildAdvise(Advice::DontNeed),
    Beside::Ksm(0, 16 * P),
    Beside::UnmapAndMapAgain(4 * P, 4 * P),
    Beside::Fork,
    Beside::Fault(M2 + 3 * P, true),
    Beside::Fault(M2 + MEMFD + 3 * P, true),
    Beside::Advise(Advice::PageOut, M2, 2 * MEMFD),
    Beside::Advise(Advice::DontNeed, M2, 2 * MEMFD),
    Beside::Reclaim(M2, 2 * MEMFD),
    Beside::OomReap,
];

/// Whether `beside` can run while `parked` waits: an operation that needs
/// the mmap lock for write waits for one holding it for read (it is tried
/// beside the rmap walkers, which do not hold it).
fn can_run_beside(parked: Parked, beside: Beside) -> bool {
    let writer = matches!(beside, Beside::UnmapAndMapAgain(..) | Beside::Fork);
    let rmap_only = matches!(parked, Parked::Migrate(..) | Parked::Reclaim(..));
    !writer || rmap_only
}

/// Windows tried per operation at most (the operations here open fewer).
const MAX_WINDOWS: usize = 12;

#[test]
fn every_window_of_these_operations_keeps_the_frames_counted() {
    let setups = [
        Setup::Huge,
        Setup::Split,
        Setup::HugeForked,
        Setup::SplitForked,
        Setup::Memfd,
        Setup::MemfdForked,
    ];
    let mut cases = 0;
    for setup in setups {
        for &parked in PARKED {
            for &beside in BESIDE.iter().filter(|b| can_run_beside(parked, **b)) {
                for park_at in 1..=MAX_WINDOWS {
                    if !one_case(setup, parked, park_at, beside) {
                        break;
                    }
                    cases += 1;
                }
            }
        }
    }
    eprintln!("{cases} windows");
    assert!(cases > 1000, "only {cases} windows were reached");
}
