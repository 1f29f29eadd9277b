//! Split page-table locks: each PTE table has its own lock, and faults,
//! zaps and walks work on a table under that lock alone (the PMD lock is
//! dropped once the table is found), as Linux's `pte_offset_map_lock`
//! does. So an operation stalled inside one table stalls only that table.
//!
//! Each test stalls an operation inside table T1 (the test thread holds
//! T1's lock with [`AddressSpace::hold_page_table`], so the operation
//! finds T1 and then waits for its lock) and checks that work in table T2
//! completes meanwhile. If the stalled operation kept the PMD lock while
//! it waited, that work would wait too and the test would fail after
//! [`PATIENCE`]; nothing here measures speed.

mod notify_log;

use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use mmun_core::{Event, IntervalNotifier, IntervalNotifierOps, IntervalSub, Range, Seq};
use mmun_softmmu::page_table::PageTableHold;
use mmun_softmmu::{AddressSpace, Advice, Memory, Prot};
use parking_lot::Mutex;

/// Two 2 MiB blocks apart, so that each VMA has its own PTE table.
const T1: u64 = 0x1000_0000_0000;
const T2: u64 = 0x1000_0040_0000;
const P: u64 = 0x1000;
/// How long the test waits for work that must not be blocked: far longer
/// than it takes unless it is.
const PATIENCE: Duration = Duration::from_secs(10);
/// How long the stalled operation gets to reach T1's lock after its start.
const SETTLE: Duration = Duration::from_millis(100);

/// An address space with two VMAs of 16 pages, one per PTE table, the
/// first four pages of each written.
fn two_tables() -> Arc<AddressSpace> {
    let space = Arc::new(AddressSpace::new(Arc::new(Memory::new())));
    for base in [T1, T2] {
        notify_log::map(&space, base, 16 * P, Prot::RW);
        for page in 0..4 {
            space.access(base + page * P, true).expect("write fault");
        }
    }
    assert_eq!(space.vmas().len(), 2, "two VMAs");
    space
}

/// An interval notifier over T1 that reports each invalidation (event and
/// start) to the test.
struct StartSignal(Mutex<Sender<(Event, u64)>>);

impl IntervalNotifierOps for StartSignal {
    fn invalidate(&self, sub: &IntervalSub, range: &Range<'_>, cur_seq: Seq) -> bool {
        sub.set_seq(cur_seq);
        let _ = self.0.lock().send((range.event(), range.start()));
        true
    }
}

fn signal_starts(space: &AddressSpace) -> (IntervalNotifier<StartSignal>, Receiver<(Event, u64)>) {
    let (tx, rx) = channel();
    let ops = StartSignal(Mutex::new(tx));
    let notifier = IntervalNotifier::insert(space.mm(), T1, 4 * P, ops).expect("insert");
    (notifier, rx)
}

/// Runs `op` on its own thread.
fn spawn<R: Send + 'static>(
    space: &Arc<AddressSpace>,
    op: impl FnOnce(&AddressSpace) -> R + Send + 'static,
) -> JoinHandle<R> {
    let space = Arc::clone(space);
    thread::spawn(move || op(&space))
}

/// `MADV_DONTNEED` of T1, stalled inside its zap of T1.
struct StalledZap {
    zap: JoinHandle<()>,
    hold: PageTableHold,
    /// Kept until the zap ends: removing an interval notifier waits for
    /// the end of the invalidation it is in.
    notifier: IntervalNotifier<StartSignal>,
}

impl StalledZap {
    fn start(space: &Arc<AddressSpace>) -> StalledZap {
        let (notifier, starts) = signal_starts(space);
        let hold = space.hold_page_table(T1).expect("T1 has a PTE table");
        let zap = spawn(space, |s| {
            s.madvise(T1, 4 * P, Advice::DontNeed).expect("madvise")
        });
        assert_eq!(starts.recv_timeout(PATIENCE), Ok((Event::Clear, T1)));
        // The zap goes on from its start to T1's table, and waits there.
        thread::sleep(SETTLE);
        assert!(
            !zap.is_finished(),
            "the zap went on with T1's lock held elsewhere"
        );
        StalledZap {
            zap,
            hold,
            notifier,
        }
    }

    /// Lets the zap finish.
    fn release(self) {
        drop(self.hold);
        self.zap.join().expect("the zap panicked");
        self.notifier.remove();
    }
}

#[test]
fn a_fault_in_another_table_completes_while_a_zap_is_stalled_in_its_table() {
    let space = two_tables();
    let stalled = StalledZap::start(&space);
    let fresh = T2 + 8 * P;
    let t = notify_log::completes(&space, PATIENCE, "a fault in T2", move |s| {
        s.access(fresh, true).map(|()| s.translate_frame(fresh))
    });
    assert!(matches!(t, Ok(Some(t)) if t.writable), "{t:?}");
    stalled.release();
    assert_eq!(
        space.translate_frame(T1),
        None,
        "the zap finished once T1 was free"
    );
}

#[test]
fn a_zap_of_another_table_completes_while_a_zap_is_stalled_in_its_table() {
    let space = two_tables();
    let stalled = StalledZap::start(&space);
    let after = notify_log::completes(&space, PATIENCE, "MADV_DONTNEED of T2", |s| {
        s.madvise(T2, 4 * P, Advice::DontNeed).expect("madvise");
        s.translate_frame(T2)
    });
    assert_eq!(after, None);
    stalled.release();
}

#[test]
fn walkers_of_another_table_complete_while_a_zap_is_stalled_in_its_table() {
    let space = two_tables();
    let before = space.translate_frame(T1).expect("T1 mapped");
    let stalled = StalledZap::start(&space);
    let seen = notify_log::completes(&space, PATIENCE, "walks of T2", |s| {
        (s.translate_frame(T2), s.try_device_view(T2, None))
    });
    assert!(seen.0.is_some_and(|t| t.writable), "{seen:?}");
    assert!(matches!(seen.1, Ok(Some(_))), "{seen:?}");
    // A walker that would wait for T1 gives up when asked to try.
    assert_eq!(
        space.try_device_view(T1, None),
        Err(mmun_softmmu::PageTableBusy)
    );
    stalled.release();
    assert_ne!(space.translate_frame(T1), Some(before));
}

/// A fault stalled at the PTE level of T1 does not hold the PMD lock
/// either: a fault in T2 completes while it waits.
#[test]
fn a_fault_in_another_table_completes_while_a_fault_is_stalled_in_its_table() {
    let space = two_tables();
    let (hold, stalled) = stall_in_t1(&space, "the fault", |s| s.access(T1 + 8 * P, true));
    a_fault_in_t2_completes(&space, false);
    drop(hold);
    stalled
        .join()
        .expect("the fault panicked")
        .expect("write fault");
    assert!(
        space
            .translate_frame(T1 + 8 * P)
            .is_some_and(|t| t.writable)
    );
}

/// A walk (`translate_frame`: a secondary MMU's view of the primary)
/// stalled at T1's PTE lock holds no PMD lock, as Linux's walkers hold
/// none: a fault in T2 completes while it waits, and the walk then reads
/// T1's entry as it is once the lock is free.
#[test]
fn a_fault_in_another_table_completes_while_a_walk_is_stalled_in_its_table() {
    let space = two_tables();
    let mapped = space
        .translate_frame(T1)
        .expect("T1's first page is written");
    let (hold, translate) = stall_in_t1(&space, "a walk", |s| s.translate_frame(T1));
    a_fault_in_t2_completes(&space, true);
    drop(hold);
    assert_eq!(translate.join().expect("the walk panicked"), Some(mapped));
}

/// A device view (`device_view`), unlike `translate_frame`, keeps the PMD
/// lock while it waits for a PTE lock: a device's own migration changes
/// the primary's entry and the device's table in one hold of the PMD lock
/// (`tests/lock_windows.rs`), and a view that dropped it could wake up
/// between the two and report the new entry to a coherence check of the
/// old table (`mmun stress` saw such false stale uses, about 1 run in 30).
/// So while the view waits in T1, a fault in T2, which needs the PMD lock,
/// waits too.
#[test]
fn a_device_view_waits_for_a_pte_lock_with_the_pmd_lock_held() {
    let space = two_tables();
    let (hold, view) = stall_in_t1(&space, "a device view", |s| s.device_view(T1, None));
    let fault = spawn(&space, |s| s.access(T2 + 8 * P, true));
    thread::sleep(SETTLE);
    assert!(
        !fault.is_finished(),
        "a fault took the PMD lock while a device view waited in T1"
    );
    drop(hold);
    assert!(view.join().expect("the view panicked").is_some());
    fault.join().expect("the fault panicked").expect("fault");
}

/// Holds T1's lock and starts `op`, which must then wait for it (`what`
/// names it in the failure).
fn stall_in_t1<R: Send + 'static>(
    space: &Arc<AddressSpace>,
    what: &str,
    op: impl FnOnce(&AddressSpace) -> R + Send + 'static,
) -> (PageTableHold, JoinHandle<R>) {
    let hold = space.hold_page_table(T1).expect("T1 has a PTE table");
    let stalled = spawn(space, op);
    thread::sleep(SETTLE);
    assert!(
        !stalled.is_finished(),
        "{what} went on with T1's lock held elsewhere"
    );
    (hold, stalled)
}

/// A fault in T2 (for writing if `write`) completes within [`PATIENCE`].
fn a_fault_in_t2_completes(space: &Arc<AddressSpace>, write: bool) {
    let t = notify_log::completes(space, PATIENCE, "a fault in T2", move |s| {
        s.access(T2 + 8 * P, write)
            .map(|()| s.translate_frame(T2 + 8 * P))
    });
    assert!(matches!(t, Ok(Some(_))), "{t:?}");
}
