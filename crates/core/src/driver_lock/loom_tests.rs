//! loom models of the driver lock: a fault whose walk raced an
//! invalidation never leaves a stale translation, in every interleaving
//! (bounded preemption), and without `set_seq` loom finds one.

use loom::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use loom::thread;

use super::{DriverLock, InvalidateGuard, Retry};
use crate::lockdep::LockClass;
use crate::notify::PAGE_SIZE;
use crate::sync::Arc;
use crate::{Event, IntervalNotifier, IntervalNotifierOps, IntervalSub, Invalidation, Mm};
use crate::{Range, Seq};

static MIRROR_LOCK: LockClass = LockClass::new("loom-mirror");

type LockForInvalidate = for<'a> fn(
    &'a DriverLock<Option<usize>>,
    &IntervalSub,
    &Range<'_>,
    Seq,
) -> Option<InvalidateGuard<'a, Option<usize>>>;

struct Mirror {
    pte: DriverLock<Option<usize>>,
    lock_for_invalidate: LockForInvalidate,
}

struct MirrorOps(Arc<Mirror>);

impl IntervalNotifierOps for MirrorOps {
    fn invalidate(&self, sub: &IntervalSub, range: &Range<'_>, cur_seq: Seq) -> bool {
        let mirror = &self.0;
        let Some(mut pte) = (mirror.lock_for_invalidate)(&mirror.pte, sub, range, cur_seq) else {
            return false;
        };
        *pte = None;
        true
    }
}

/// Changes the primary PTE to `value` inside an invalidation of its page.
fn change_primary(mm: &Mm, primary: &AtomicUsize, value: usize) {
    let lock = mm.mmap_read();
    let inv = Invalidation::start(Range::new(&lock, Event::Clear, 0, PAGE_SIZE));
    primary.store(value, Relaxed);
    inv.end();
}

/// Thread A faults with `lock_if_current` (at most two attempts); a writer
/// thread and the main thread each change the primary PTE inside an
/// invalidation (they may share one epoch). At the end the mirror is empty
/// or holds the final primary PTE.
fn model(lock_for_invalidate: LockForInvalidate) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(2);
    }
    let executions = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&executions);
    builder.check(move || {
        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mm = Mm::new();
        let mirror = Arc::new(Mirror {
            pte: DriverLock::new(&MIRROR_LOCK, None),
            lock_for_invalidate,
        });
        // Relaxed: only the protocol may order it.
        let primary = Arc::new(AtomicUsize::new(1));
        let sub = Arc::new(
            IntervalNotifier::insert(&mm, 0, PAGE_SIZE, MirrorOps(mirror.clone())).unwrap(),
        );

        let fault = thread::spawn({
            let (sub, mirror, primary) = (sub.clone(), mirror.clone(), primary.clone());
            move || {
                for _ in 0..2 {
                    let seq = sub.read_begin();
                    let walked = primary.load(Relaxed);
                    match mirror.pte.lock_if_current(&sub, seq) {
                        Ok(mut pte) => {
                            *pte = Some(walked);
                            return;
                        }
                        Err(Retry) => continue,
                    }
                }
            }
        });

        let writer = thread::spawn({
            let (mm, primary) = (mm.clone(), primary.clone());
            move || change_primary(&mm, &primary, 2)
        });
        change_primary(&mm, &primary, 3);
        fault.join().unwrap();
        writer.join().unwrap();
        let mirrored = *mirror.pte.lock();
        assert!(
            mirrored.is_none() || mirrored == Some(primary.load(Relaxed)),
            "stale translation: mirror {mirrored:?}, primary {}",
            primary.load(Relaxed)
        );
    });
    let executions = executions.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("loom model of the driver lock: {executions} executions");
}

#[test]
fn a_fault_through_the_driver_lock_never_commits_a_stale_translation() {
    model(|lock, sub, range, cur_seq| lock.lock_for_invalidate(sub, range, cur_seq));
}

#[test]
#[should_panic(expected = "stale translation")]
fn without_set_seq_loom_finds_the_stale_translation() {
    model(|lock, _sub, range, _cur_seq| lock.lock_for_invalidate_without_set_seq(range));
}
