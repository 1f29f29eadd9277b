//! The hmm.rst driver lock as a type (`mmun_core::driver_lock`): a fault
//! that raced an invalidation never commits a stale translation, the
//! invalidate side always `set_seq`s under the lock, a non-blockable range
//! is refused while the lock is busy. The test-only broken variants show
//! each check can fail.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::thread;

use mmun_core::driver_lock::{DriverLock, InvalidateGuard, Retry};
use mmun_core::lockdep::LockClass;
use mmun_core::notify::PAGE_SIZE;
use mmun_core::{Event, IntervalNotifier, IntervalNotifierOps, IntervalSub, Invalidation, Mm};
use mmun_core::{Range, Seq};

static MIRROR_LOCK: LockClass = LockClass::new("driver_lock-test->mirror");

/// How the invalidate callback takes the driver lock.
type LockForInvalidate = for<'a> fn(
    &'a DriverLock<Option<u64>>,
    &IntervalSub,
    &Range<'_>,
    Seq,
) -> Option<InvalidateGuard<'a, Option<u64>>>;

fn correct<'a>(
    lock: &'a DriverLock<Option<u64>>,
    sub: &IntervalSub,
    range: &Range<'_>,
    cur_seq: Seq,
) -> Option<InvalidateGuard<'a, Option<u64>>> {
    lock.lock_for_invalidate(sub, range, cur_seq)
}

fn without_set_seq<'a>(
    lock: &'a DriverLock<Option<u64>>,
    _sub: &IntervalSub,
    range: &Range<'_>,
    _cur_seq: Seq,
) -> Option<InvalidateGuard<'a, Option<u64>>> {
    lock.lock_for_invalidate_without_set_seq(range)
}

/// A device mirroring one primary PTE (`None`: not mapped).
struct Mirror {
    pte: DriverLock<Option<u64>>,
    lock_for_invalidate: LockForInvalidate,
}

impl IntervalNotifierOps for Mirror {
    fn invalidate(&self, sub: &IntervalSub, range: &Range<'_>, cur_seq: Seq) -> bool {
        let Some(mut pte) = (self.lock_for_invalidate)(&self.pte, sub, range, cur_seq) else {
            return false;
        };
        *pte = None;
        true
    }
}

struct Setup {
    mm: Arc<Mm>,
    sub: IntervalNotifier<Mirror>,
    /// The primary PTE: a frame number, changed only inside invalidations.
    primary: AtomicU64,
}

fn setup(lock_for_invalidate: LockForInvalidate) -> Setup {
    let mm = Mm::new();
    let mirror = Mirror {
        pte: DriverLock::new(&MIRROR_LOCK, None),
        lock_for_invalidate,
    };
    let sub = IntervalNotifier::insert(&mm, 0, PAGE_SIZE, mirror).unwrap();
    Setup {
        mm,
        sub,
        primary: AtomicU64::new(1),
    }
}

impl Setup {
    /// The primary PTE changes to `frame` inside an invalidation.
    fn change_primary(&self, frame: u64) {
        let lock = self.mm.mmap_read();
        let inv = Invalidation::start(Range::new(&lock, Event::Clear, 0, PAGE_SIZE));
        self.primary.store(frame, SeqCst);
        inv.end();
    }

    /// One fault attempt whose walk is followed by `between` before the
    /// driver lock is taken; whether it committed.
    fn fault_once(&self, between: impl FnOnce()) -> Result<(), Retry> {
        let seq = self.sub.read_begin();
        let walked = self.primary.load(SeqCst);
        between();
        let mut pte = self.sub.ops().pte.lock_if_current(&self.sub, seq)?;
        *pte = Some(walked);
        Ok(())
    }

    /// Whether the mirror holds a frame the primary no longer maps.
    fn is_stale(&self) -> bool {
        let pte = self.sub.ops().pte.lock();
        pte.is_some_and(|frame| frame != self.primary.load(SeqCst))
    }
}

#[test]
fn a_fault_whose_walk_raced_an_invalidation_is_told_to_retry() {
    let s = setup(correct);
    assert_eq!(s.fault_once(|| s.change_primary(2)), Err(Retry));
    assert!(!s.is_stale());
    assert_eq!(*s.sub.ops().pte.lock(), None);
    // The next attempt walks the new frame and commits it.
    assert_eq!(s.fault_once(|| {}), Ok(()));
    assert_eq!(*s.sub.ops().pte.lock(), Some(2));
}

#[test]
fn without_set_seq_the_same_fault_commits_a_stale_translation() {
    // The check above can fail: the broken invalidate side lets the walk
    // that raced the change through, and the mirror keeps the old frame.
    let s = setup(without_set_seq);
    assert_eq!(s.fault_once(|| s.change_primary(2)), Ok(()));
    assert!(
        s.is_stale(),
        "the old frame 1 is mirrored, the primary has 2"
    );
}

#[test]
fn a_fault_that_committed_before_the_invalidation_is_zapped_by_it() {
    let s = setup(correct);
    assert_eq!(s.fault_once(|| {}), Ok(()));
    assert_eq!(*s.sub.ops().pte.lock(), Some(1));
    s.change_primary(2);
    assert_eq!(*s.sub.ops().pte.lock(), None);
}

#[test]
fn lock_for_invalidate_sets_the_callbacks_seq_on_the_interval() {
    let s = setup(correct);
    let before = s.sub.read_begin();
    s.change_primary(2);
    let after = s.sub.read_begin();
    assert_ne!(before, after);
    // The interval's seq is the callback's cur_seq: odd, and what
    // read_begin returns once the epoch closed.
    assert!(after.is_odd());
    assert!(s.sub.read_retry(before));
    assert!(!s.sub.read_retry(after));
}

#[test]
fn a_non_blockable_invalidation_is_refused_while_the_driver_lock_is_held() {
    let s = Arc::new(setup(correct));
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let holder = thread::spawn({
        let s = Arc::clone(&s);
        move || {
            let seq = s.sub.read_begin();
            let guard = s.sub.ops().pte.lock_if_current(&s.sub, seq).unwrap();
            held_tx.send(()).unwrap();
            release_rx.recv().unwrap();
            drop(guard);
        }
    });
    held_rx.recv().unwrap();
    let before = s.sub.read_begin();
    {
        let lock = s.mm.mmap_read();
        let range = Range::new(&lock, Event::Unmap, 0, PAGE_SIZE);
        assert!(Invalidation::start_nonblock(range).is_err());
    }
    // Refused before set_seq: the fault holding the lock is still current.
    assert!(!s.sub.read_retry(before));
    release_tx.send(()).unwrap();
    holder.join().unwrap();
    let lock = s.mm.mmap_read();
    let range = Range::new(&lock, Event::Unmap, 0, PAGE_SIZE);
    Invalidation::start_nonblock(range).unwrap().end();
    assert!(s.sub.read_retry(before));
}

#[test]
fn try_lock_fails_while_the_lock_is_held() {
    let lock = DriverLock::new(&MIRROR_LOCK, 0u32);
    let guard = lock.lock();
    assert!(lock.try_lock().is_none());
    drop(guard);
    *lock.try_lock().unwrap() += 1;
    assert_eq!(*lock.lock(), 1);
    assert_eq!(lock.class().name(), "driver_lock-test->mirror");
}

/// Faulting threads against a thread that keeps changing the primary:
/// under the driver lock the mirror never holds a frame the primary no
/// longer maps (the zap happens before the change, under the same lock,
/// and no fault that walked before the change may commit after it).
#[test]
fn threads_faulting_through_the_driver_lock_never_mirror_a_stale_frame() {
    let s = Arc::new(setup(correct));
    let stop = Arc::new(AtomicBool::new(false));
    let faulters: Vec<_> = (0..2)
        .map(|_| {
            let (s, stop) = (Arc::clone(&s), Arc::clone(&stop));
            thread::spawn(move || {
                let (mut commits, mut retries) = (0u64, 0u64);
                while !stop.load(SeqCst) {
                    match s.fault_once(thread::yield_now) {
                        Ok(()) => commits += 1,
                        Err(Retry) => retries += 1,
                    }
                    assert!(!s.is_stale(), "a stale frame was committed");
                }
                (commits, retries)
            })
        })
        .collect();
    for frame in 2..3_000 {
        s.change_primary(frame);
        assert!(
            !s.is_stale(),
            "a stale frame survived the change to {frame}"
        );
    }
    stop.store(true, SeqCst);
    let (commits, retries) = faulters
        .into_iter()
        .map(|t| t.join().unwrap())
        .fold((0, 0), |(c, r), (c2, r2)| (c + c2, r + r2));
    assert!(commits > 0, "no fault ever committed");
    eprintln!("{commits} commits, {retries} retries");
}
