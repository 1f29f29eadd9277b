//! The windows Linux's locking opens, and that a secondary MMU must survive:
//! `invalidate_range_start` runs before the page-table lock is taken, so
//!
//! * a walker (`hmm_range_fault`, GUP) can read the old entry after the
//!   secondaries were told and before the primary changes it — the reason
//!   `read_retry` and KVM's in-progress count exist;
//! * a fault runs while `MADV_DONTNEED` of another VMA is inside its
//!   callbacks (both hold the mmap lock for read only).
//!
//! Each test parks the operation inside a notifier callback and does the
//! other half from the test thread while it is parked. If the operation
//! held the lock the other half needs, the callback gives up after
//! [`PATIENCE`] and the test fails; nothing here measures speed.

mod notify_log;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::Duration;

use mmun_core::{Event, IntervalNotifier, IntervalNotifierOps, IntervalSub, Range, Seq};
use mmun_softmmu::{AddressSpace, Config, Memory, ThpMode, Translation};
use mmun_softmmu::{Advice, Prot};
use parking_lot::Mutex;

const B: u64 = 0x1000_0000_0000;
const P: u64 = 0x1000;
/// How long a parked callback waits for the other half: far longer than
/// the other half takes unless it is blocked.
const PATIENCE: Duration = Duration::from_secs(5);

/// What the parked callback got back from the test thread.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer<T> {
    Got(T),
    /// The other half did not answer in time: it was blocked.
    Blocked,
    /// A later callback, which does not park (the other half's own
    /// invalidations among them).
    NotParked,
}

/// An interval notifier whose first callback reports its range to the test
/// thread and waits for the test thread's answer before it returns.
struct Parking<T: Send + 'static> {
    patience: Duration,
    parked_once: AtomicBool,
    parked: Mutex<Sender<(Event, u64, u64)>>,
    answers: Mutex<Receiver<T>>,
    seen: Mutex<Vec<(Event, Answer<T>)>>,
}

impl<T: Send + 'static> IntervalNotifierOps for Parking<T> {
    fn invalidate(&self, sub: &IntervalSub, range: &Range<'_>, cur_seq: Seq) -> bool {
        sub.set_seq(cur_seq);
        if self.parked_once.swap(true, Ordering::SeqCst) {
            self.seen.lock().push((range.event(), Answer::NotParked));
            return true;
        }
        let _ = self
            .parked
            .lock()
            .send((range.event(), range.start(), range.end()));
        let answer = match self.answers.lock().recv_timeout(self.patience) {
            Ok(v) => Answer::Got(v),
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => Answer::Blocked,
        };
        self.seen.lock().push((range.event(), answer));
        true
    }
}

/// Runs `op` on its own thread with a parking notifier over
/// `[start, end)`; every time it parks, `other` runs on this thread and its
/// result is handed to the callback. Returns what each callback got.
fn while_parked<T: Send + Clone + 'static>(
    space: &Arc<AddressSpace>,
    start: u64,
    end: u64,
    op: impl FnOnce(&AddressSpace) + Send + 'static,
    other: impl FnMut(&AddressSpace) -> T,
) -> Vec<(Event, Answer<T>)> {
    while_parked_for(PATIENCE, space, start, end, op, other)
}

/// [`while_parked`] with the callback waiting at most `patience`.
fn while_parked_for<T: Send + Clone + 'static>(
    patience: Duration,
    space: &Arc<AddressSpace>,
    start: u64,
    end: u64,
    op: impl FnOnce(&AddressSpace) + Send + 'static,
    mut other: impl FnMut(&AddressSpace) -> T,
) -> Vec<(Event, Answer<T>)> {
    let (parked_tx, parked_rx) = channel();
    let (answer_tx, answer_rx) = channel();
    let sub = IntervalNotifier::insert(
        space.mm(),
        start,
        end - start,
        Parking {
            patience,
            parked_once: AtomicBool::new(false),
            parked: Mutex::new(parked_tx),
            answers: Mutex::new(answer_rx),
            seen: Mutex::new(Vec::new()),
        },
    )
    .expect("interval notifier");
    let runner = {
        let space = Arc::clone(space);
        std::thread::spawn(move || op(&space))
    };
    while !runner.is_finished() {
        if parked_rx.recv_timeout(Duration::from_millis(5)).is_ok() {
            let _ = answer_tx.send(other(space));
        }
    }
    runner.join().expect("the operation panicked");
    let seen = sub.ops().seen.lock().clone();
    sub.remove();
    seen
}

fn anon(space: &AddressSpace, addr: u64, pages: u64) {
    notify_log::map(space, addr, pages * P, Prot::RW);
    for page in 0..pages {
        space.access(addr + page * P, true).expect("write fault");
    }
}

fn fresh() -> Arc<AddressSpace> {
    Arc::new(AddressSpace::new(Arc::new(Memory::new())))
}

/// A huge page's size.
const M2: u64 = 0x20_0000;

/// An address space that backs every anonymous fault it can with a huge
/// page (`THP=always`, the huge zero page for reads).
fn fresh_thp() -> Arc<AddressSpace> {
    Arc::new(AddressSpace::with_config(
        Arc::new(Memory::new()),
        Config {
            thp: ThpMode::Always,
            thp_zero_page: true,
        },
    ))
}

/// One operation that changes the entry at `B`, and how the entry must
/// look afterwards compared with before.
struct Case {
    name: &'static str,
    op: fn(&AddressSpace),
    changed: fn(before: Translation, after: Option<Translation>) -> bool,
}

const CASES: &[Case] = &[
    Case {
        name: "munmap (mmap lock for write)",
        op: |s| s.munmap(B, 4 * P).expect("munmap"),
        changed: |_, after| after.is_none(),
    },
    Case {
        name: "MADV_DONTNEED (mmap lock for read)",
        op: |s| s.madvise(B, 4 * P, Advice::DontNeed).expect("madvise"),
        changed: |_, after| after.is_none(),
    },
    Case {
        name: "mprotect(PROT_READ)",
        op: |s| {
            s.mprotect(
                B,
                4 * P,
                Prot {
                    read: true,
                    ..Prot::NONE
                },
            )
            .expect("mprotect")
        },
        changed: |before, after| {
            after
                == Some(Translation {
                    writable: false,
                    ..before
                })
        },
    },
    Case {
        name: "migration (rmap lock only)",
        op: |s| assert_eq!(s.migrate(B, B + P), 1),
        changed: |before, after| after.is_some_and(|a| a.pfn != before.pfn),
    },
];

/// A walker that runs after an invalidation started and before the
/// primary changed the entry reads the old entry: the operation does not
/// hold the page-table lock across its callbacks. A secondary that
/// programs what such a walk returned without `read_retry` keeps a stale
/// translation (`mmun stress --inject program-before-retry`).
#[test]
fn a_walker_reads_the_old_entry_between_the_start_and_the_update() {
    for case in CASES {
        let space = fresh();
        anon(&space, B, 4);
        let before = space.translate_frame(B).expect("mapped");
        let seen = while_parked(&space, B, B + 4 * P, case.op, |s| s.translate_frame(B));
        let first = seen
            .first()
            .unwrap_or_else(|| panic!("{}: no callback", case.name));
        assert_eq!(
            first.1,
            Answer::Got(Some(before)),
            "{}: the walker inside the {:?} window must read the old entry",
            case.name,
            first.0
        );
        let after = space.translate_frame(B);
        assert!(
            (case.changed)(before, after),
            "{}: {before:?} -> {after:?}",
            case.name
        );
    }
}

/// What [`copy_on_write_fault_parked_beside`] leaves: the address space, the
/// fork child, the page they shared, and what the parked callbacks got.
type ParkedCopyOnWrite<T> = (
    Arc<AddressSpace>,
    AddressSpace,
    Translation,
    Vec<(Event, Answer<T>)>,
);

/// A page shared with a fork child, and the parent's write fault on it
/// parked in its `Clear` while `other` runs.
fn copy_on_write_fault_parked_beside<T: Send + Clone + 'static>(
    other: impl FnMut(&AddressSpace) -> T,
) -> ParkedCopyOnWrite<T> {
    let space = fresh();
    anon(&space, B, 1);
    let child = space.fork();
    let shared = space.translate_frame(B).expect("mapped");
    let seen = while_parked(
        &space,
        B,
        B + P,
        |s| s.access(B, true).expect("write fault"),
        other,
    );
    (space, child, shared, seen)
}

/// The copy-on-write fault's window: the walker sees the shared page while
/// the fault's `Clear` is under way, then the copy.
#[test]
fn a_walker_reads_the_shared_page_inside_the_copy_on_write_window() {
    let (space, child, shared, seen) = copy_on_write_fault_parked_beside(|s| s.translate_frame(B));
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].1, Answer::Got(Some(shared)));
    let copy = space.translate_frame(B).expect("mapped");
    assert!(copy.pfn != shared.pfn && copy.writable, "{copy:?}");
    drop(child);
}

/// A fault on one VMA completes while `MADV_DONTNEED` of another VMA is
/// inside its callback: both take the mmap lock for read, and the zap
/// holds no page-table lock across its start.
#[test]
fn a_fault_completes_while_dontneed_of_another_vma_is_in_its_callback() {
    let space = fresh();
    let other = B + 64 * P;
    anon(&space, B, 4);
    notify_log::map(&space, other, 4 * P, Prot::RW);
    assert_eq!(space.vmas().len(), 2, "two VMAs");
    let seen = while_parked(
        &space,
        B,
        B + 4 * P,
        |s| s.madvise(B, 4 * P, Advice::DontNeed).expect("madvise"),
        |s| s.access(other, true).map(|()| s.translate_frame(other)),
    );
    assert_eq!(seen.len(), 1, "{seen:?}");
    match &seen[0].1 {
        Answer::Got(Ok(Some(t))) => assert!(t.writable),
        got => panic!("the fault beside MADV_DONTNEED did not complete: {got:?}"),
    }
    assert_eq!(space.translate_frame(B), None);
}

/// The same beside `MADV_FREE`, on the same VMA: the fault fills an empty
/// entry of the range while the `Clear` is in progress, and then the
/// marking goes on over what is there (Linux likewise serializes the two
/// only by the page-table lock).
#[test]
fn a_fault_in_the_same_vma_completes_while_madv_free_is_in_its_callback() {
    let space = fresh();
    anon(&space, B, 2);
    notify_log::map(&space, B + 2 * P, 2 * P, Prot::RW);
    let seen = while_parked(
        &space,
        B,
        B + 4 * P,
        |s| s.madvise(B, 4 * P, Advice::Free).expect("madvise"),
        |s| {
            s.access(B + 3 * P, true)
                .map(|()| s.translate_frame(B + 3 * P))
        },
    );
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(
        matches!(seen[0].1, Answer::Got(Ok(Some(_)))),
        "the fault beside MADV_FREE did not complete: {:?}",
        seen[0].1
    );
}

/// Entries read before a start are read again after it: a copy-on-write
/// fault parked in its `Clear` while `MADV_DONTNEED` (beside it, under the
/// mmap lock for read) zaps the page finds the entry gone, drops its copy
/// and faults again, leaving the page the child still maps alone
/// (`pte_same` in `wp_page_copy`). Without the second look it would
/// release the parent's mapping twice and free the child's page.
#[test]
fn a_copy_on_write_fault_finds_its_entry_again_after_the_start() {
    let (space, child, shared, seen) =
        copy_on_write_fault_parked_beside(|s| s.madvise(B, P, Advice::DontNeed));
    // The fault's `Clear` (parked), the zap's (from the test thread), and
    // nothing more: the fault saw the entry gone and filled it afresh.
    // (`seen` is in the order the callbacks returned.)
    assert_eq!(
        seen,
        [
            (Event::Clear, Answer::NotParked),
            (Event::Clear, Answer::Got(Ok(())))
        ]
    );
    let frame = space.memory().frame(shared.pfn);
    assert_eq!(
        (frame.refcount, frame.mapcount),
        (1, 1),
        "the child's page: {frame:?}"
    );
    assert_eq!(
        child.translate_frame(B),
        Some(Translation {
            writable: false,
            ..shared
        })
    );
    let now = space.translate_frame(B).expect("faulted again");
    assert!(now.writable && now.pfn != shared.pfn, "{now:?}");
}

/// A walk under the mmap lock for read works from its own copy of the
/// VMA, which a fault beside it may change while the walk's lock is dropped
/// for a start: here `MADV_FREE` of part of an untouched THP-enabled VMA
/// parks in its `Clear` while a write fault gives the VMA its anon_vma and
/// a huge page; the free then splits that folio, finding its mappings
/// through the VMA as it is now (with the copy's missing anon_vma it found
/// none and split a folio still mapped by its PMD).
#[test]
fn madv_free_splits_a_huge_page_faulted_in_beside_it() {
    let space = fresh_thp();
    notify_log::map(&space, B, M2, Prot::RW);
    let seen = while_parked(
        &space,
        B,
        B + M2,
        |s| s.madvise(B, 4 * P, Advice::Free).expect("madvise"),
        |s| s.access(B + 8 * P, true),
    );
    // The free's `Clear` (parked while the fault ran), then the split's.
    assert_eq!(
        seen,
        [
            (Event::Clear, Answer::Got(Ok(()))),
            (Event::Clear, Answer::NotParked)
        ]
    );
    let head = space.translate_frame(B + 8 * P).expect("faulted").pfn - 8;
    let frame = space.memory().frame(head);
    assert_eq!(
        (frame.order, frame.pmd_mapcount),
        (0, 0),
        "split: {frame:?}"
    );
}

/// The lock order, checked by the core's lockdep in debug builds: a driver
/// may walk the primary (take the page-table lock) while holding the lock
/// its invalidation callback takes, because no start or end runs under the
/// page-table lock. Were one to (`page-table lock → start map`), the walk
/// would close the cycle `page-table lock → map → driver lock → page-table
/// lock` and lockdep would panic.
#[cfg(debug_assertions)]
#[test]
fn a_walk_under_the_driver_lock_its_callbacks_take_is_in_order() {
    use mmun_core::lockdep::{LockClass, Mutex as DriverMutex};
    static DRIVER: LockClass = LockClass::new("lock_windows driver->lock");
    struct Driver(Arc<DriverMutex<u64>>);
    impl IntervalNotifierOps for Driver {
        fn invalidate(&self, sub: &IntervalSub, _: &Range<'_>, cur_seq: Seq) -> bool {
            let mut zapped = self.0.lock();
            sub.set_seq(cur_seq);
            *zapped += 1;
            true
        }
    }
    let space = fresh();
    anon(&space, B, 2);
    let lock = Arc::new(DriverMutex::new(&DRIVER, 0));
    let sub = IntervalNotifier::insert(space.mm(), B, 2 * P, Driver(Arc::clone(&lock)))
        .expect("interval notifier");
    {
        let _held = lock.lock();
        assert!(space.translate_frame(B).is_some());
    }
    space.madvise(B, P, Advice::DontNeed).expect("madvise");
    space.mprotect(B, 2 * P, Prot::NONE).expect("mprotect");
    space.munmap(B, 2 * P).expect("munmap");
    assert_eq!(*lock.lock(), 3);
    sub.remove();
}

/// Device migration keeps out of a zap's window (it takes the mmap lock
/// for write here; test_hmm takes it for read): its map step hands the
/// device the new frames with no `read_retry`, so a migration that ran
/// while `MADV_DONTNEED` was inside its callback would hand the device
/// frames the zap then took away. What the map step handed over must be
/// what the primary maps once both are done. (The callback gives up
/// waiting after a second: the migration is meant to wait for it.)
#[test]
fn device_migration_does_not_run_inside_a_zaps_window() {
    let space = fresh();
    anon(&space, B, 4);
    let owner = mmun_core::Owner::unique();
    let handed = Arc::new(Mutex::new(Vec::new()));
    let seen = {
        let handed = Arc::clone(&handed);
        while_parked_for(
            Duration::from_secs(1),
            &space,
            B,
            B + 4 * P,
            |s| s.madvise(B, 4 * P, Advice::DontNeed).expect("madvise"),
            move |s| {
                let record = |va, t| handed.lock().push((va, t));
                s.migrate_device_and_map(B, B + 4 * P, owner, record)
            },
        )
    };
    assert!(!seen.is_empty(), "no callback");
    let handed = handed.lock().clone();
    assert!(!handed.is_empty(), "the migration mapped nothing");
    for (va, t) in handed {
        assert_eq!(
            space.translate_frame(va),
            t,
            "the device was handed {t:?} at {va:#x}; {seen:?}"
        );
    }
}

/// Reclaim finds its folios first and unmaps them one by one, each under
/// its own start: a huge PMD found before an earlier folio's start is read
/// again before its accessed bit is cleared, not written back from the
/// walk's copy (which would map again a huge page `MADV_DONTNEED` freed
/// meanwhile).
#[test]
fn reclaim_ages_the_huge_pmd_as_it_is_after_an_earlier_folios_start() {
    let space = fresh_thp();
    anon(&space, B, 1);
    space.madvise(B, P, Advice::Free).expect("MADV_FREE");
    notify_log::map(&space, B + M2, M2, Prot::RW);
    space.access(B + M2, true).expect("huge write fault");
    let seen = while_parked(
        &space,
        B,
        B + P,
        |s| assert_eq!(s.reclaim(B, B + 2 * M2), 1),
        |s| s.madvise(B + M2, M2, Advice::DontNeed),
    );
    assert_eq!(seen, [(Event::Clear, Answer::Got(Ok(())))]);
    assert_eq!(space.translate_frame(B + M2), None);
}

/// What [`BESIDE_A_SPLIT`] does beside the fault that splits a huge PMD.
struct Beside {
    space: Mutex<Option<Arc<AddressSpace>>>,
    /// The faulting thread: callbacks of the other thread's own
    /// invalidations do nothing.
    faulter: std::thread::ThreadId,
    /// How many of the faulter's callbacks ran (start, then end).
    steps: std::sync::atomic::AtomicU32,
}

impl Beside {
    fn run_beside(&self, what: impl FnOnce(&AddressSpace) + Send + 'static) {
        let space = Arc::clone(self.space.lock().as_ref().expect("armed"));
        std::thread::spawn(move || what(&space))
            .join()
            .expect("the operation beside the fault panicked");
    }
}

fn beside_start(b: &Beside, range: &Range<'_>) {
    if std::thread::current().id() == b.faulter
        && range.event() == Event::Clear
        && b.steps.fetch_add(1, Ordering::SeqCst) == 0
    {
        // Inside the split's start: the huge page goes (a zap under the
        // mmap lock for read, as the fault holds it).
        b.run_beside(|s| s.madvise(B, M2, Advice::DontNeed).expect("madvise"));
    }
}

fn beside_end(b: &Beside, range: &Range<'_>) {
    if std::thread::current().id() == b.faulter
        && range.event() == Event::Clear
        && b.steps.fetch_add(1, Ordering::SeqCst) == 1
    {
        // Inside the split's end: a fault beside this one fills the empty
        // PMD with a new huge page.
        b.run_beside(|s| s.access(B, true).expect("huge fault"));
    }
}

static BESIDE_A_SPLIT: mmun_core::NotifierOps<Beside> = mmun_core::NotifierOps {
    invalidate_range_start: Some(mmun_core::StartFn::Infallible(beside_start)),
    invalidate_range_end: Some(beside_end),
    ..mmun_core::NotifierOps::EMPTY
};

/// A write fault that splits a write-protected huge PMD drops the
/// page-table lock for the split's start and end; a zap and a huge fault
/// beside it can leave a new huge PMD where the split left nothing. The
/// fault must find the PMD again (`pte_offset_map_lock` fails on a huge
/// PMD and the fault starts over) rather than look for a PTE table there.
#[test]
fn a_fault_finds_the_pmd_again_after_a_huge_fault_beside_its_split() {
    let space = fresh_thp();
    notify_log::map(&space, B, M2, Prot::RW);
    space.access(B, true).expect("huge fault");
    let child = space.fork();
    let shared = space.translate_frame(B).expect("mapped");
    let notifier = mmun_core::Notifier::register(
        space.mm(),
        &BESIDE_A_SPLIT,
        Beside {
            space: Mutex::new(Some(Arc::clone(&space))),
            faulter: std::thread::current().id(),
            steps: std::sync::atomic::AtomicU32::new(0),
        },
    )
    .expect("notifier");
    space.access(B + P, true).expect("write fault");
    assert_eq!(
        notifier.steps.load(Ordering::SeqCst),
        2,
        "the split ran both windows"
    );
    notifier.space.lock().take();
    notifier.unregister();
    let now = space.translate_frame(B + P).expect("mapped");
    assert!(now.writable && now.pfn != shared.pfn + 1, "{now:?}");
    let head = space.memory().frame(now.pfn - 1);
    assert_eq!(
        (head.order, head.pmd_mapcount),
        (9, 1),
        "the huge page faulted beside: {head:?}"
    );
    assert_eq!(
        child.translate_frame(B),
        Some(Translation {
            writable: false,
            ..shared
        })
    );
}

/// `mprotect(PROT_READ)` changes the VMA before its `ProtectionVma` start,
/// which drops the page-table lock: a device holding a page exclusively may
/// write it until it is told, so what the primary grants it (its device
/// view, which the coherence oracle checks uses against) must change only
/// inside the range, with the entry, not with the VMA. Afterwards the
/// device may only read.
#[test]
fn an_exclusive_page_stays_writable_for_its_device_until_mprotect_tells_it() {
    let space = fresh();
    anon(&space, B, 2);
    let owner = mmun_core::Owner::unique();
    space
        .make_device_exclusive(B + P, owner)
        .expect("exclusive");
    let writable_for_device = move |s: &AddressSpace| {
        s.device_view(B + P, Some(owner))
            .map(|v| v.translation.writable)
    };
    let seen = while_parked(
        &space,
        B,
        B + 2 * P,
        |s| {
            s.mprotect(
                B,
                2 * P,
                Prot {
                    read: true,
                    ..Prot::NONE
                },
            )
            .expect("mprotect")
        },
        writable_for_device,
    );
    assert_eq!(
        seen,
        [(Event::ProtectionVma, Answer::Got(Some(true)))],
        "inside the start, before the update"
    );
    assert_eq!(writable_for_device(&space), Some(false), "after the update");
}

/// Reclaim decides from its walk that a page `MADV_FREE` cleaned may be
/// dropped, then starts its `Clear`, which drops the page-table lock; a
/// write in that window dirties the page again, and reclaim must find that
/// under the lock (`try_to_unmap_one` re-checks the dirty bit) and keep it.
#[test]
fn reclaim_keeps_a_lazily_freed_page_written_inside_its_window() {
    let space = fresh();
    anon(&space, B, 1);
    space.madvise(B, P, Advice::Free).expect("MADV_FREE");
    let page = space.translate_frame(B).expect("mapped");
    let seen = while_parked(
        &space,
        B,
        B + P,
        |s| assert_eq!(s.reclaim(B, B + P), 0, "nothing reclaimed"),
        |s| s.access(B, true),
    );
    assert_eq!(seen, [(Event::Clear, Answer::Got(Ok(())))]);
    assert_eq!(
        space.translate_frame(B),
        Some(page),
        "the page written after the walk is kept"
    );
}

/// A device's own migration changes the primary's entry and hands the
/// device the new frame in one hold of the PMD lock, so a device view —
/// the device's walk and its coherence check — never sees the new entry
/// before the device's table holds it: inside the map step a blocking
/// view waits and a trying one is refused; once the migration is done the
/// view is the frame the map step handed over.
#[test]
fn a_device_view_does_not_see_an_own_migration_before_its_map_step() {
    let space = fresh();
    anon(&space, B, 1);
    let old = space.translate_frame(B).expect("mapped");
    let owner = mmun_core::Owner::unique();
    let (tx, rx) = channel();
    let mut viewer = None;
    let mut handed = None;
    let moved = space
        .migrate_device_and_map(B, B + P, owner, |va, new| {
            handed = new;
            assert_eq!(
                space.try_device_view(va, Some(owner)),
                Err(mmun_softmmu::PageTableBusy),
                "a trying view read the entry inside the map step"
            );
            let space = Arc::clone(&space);
            let tx = tx.clone();
            viewer = Some(std::thread::spawn(move || {
                tx.send(space.device_view(va, Some(owner))).unwrap();
            }));
            assert_eq!(
                rx.recv_timeout(Duration::from_millis(200)),
                Err(RecvTimeoutError::Timeout),
                "a blocking view read the entry inside the map step"
            );
        })
        .expect("migration");
    assert_eq!(moved, 1);
    let view = rx
        .recv_timeout(PATIENCE)
        .expect("the view, after the migration");
    viewer.unwrap().join().unwrap();
    let handed = handed.expect("the map step got the new frame");
    assert_ne!(handed, old, "the page moved");
    assert_eq!(view.map(|v| v.translation), Some(handed));
}
