//! The reentrancy rule: a callback that itself unmaps (or frees a large
//! block) does not deadlock; its change is delivered after the outer
//! invalidation ends, as a late start+end.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};

use common::{PAGE, anon, recorder};
use mmun_core::{Event, Notifier, NotifierOps, StartFn};

/// The address the callback unmaps when it sees an invalidation of
/// `TRIGGER`; 0 once done.
static TRIGGER: AtomicU64 = AtomicU64::new(0);
static VICTIM: AtomicU64 = AtomicU64::new(0);

static UNMAPPER: NotifierOps<()> = NotifierOps {
    invalidate_range_start: Some(StartFn::Infallible(|_, range| {
        let trigger = TRIGGER.load(Ordering::SeqCst);
        if trigger != 0 && range.overlaps(trigger, trigger + 1) {
            TRIGGER.store(0, Ordering::SeqCst);
            let victim = VICTIM.load(Ordering::SeqCst);
            // SAFETY: the test's own victim mapping.
            unsafe { libc::munmap(victim as *mut _, 4 * PAGE) };
            // A large free() inside a callback: glibc's munmap, deferred too.
            drop(vec![0u8; 4 << 20]);
        }
    })),
    ..NotifierOps::EMPTY
};

#[test]
fn a_callback_that_unmaps_gets_its_change_late_without_deadlock() {
    mmun_linux::install().expect("libc patched");
    let _unmapper = Notifier::register(mmun_linux::process_mm(), &UNMAPPER, ()).unwrap();
    let rec = recorder();
    let outer = anon(4, 1) as u64;
    let victim = anon(4, 2) as u64;
    VICTIM.store(victim, Ordering::SeqCst);
    TRIGGER.store(outer, Ordering::SeqCst);
    rec.watch(outer.min(victim), outer.max(victim) + 4 * PAGE as u64);
    // SAFETY: ours.
    assert_eq!(unsafe { libc::munmap(outer as *mut _, 4 * PAGE) }, 0);
    let seen = rec.take();
    let summary: Vec<_> = seen
        .iter()
        // Other threads may reuse the freed addresses meanwhile (a new
        // thread's stack guard is an mprotect): only our two unmaps count.
        .filter(|s| (s.start == outer || s.start == victim) && s.event == Event::Unmap)
        .map(|s| (s.start_phase, s.start, s.late))
        .collect();
    assert_eq!(
        summary,
        [
            (true, outer, false),
            (false, outer, false),
            (true, victim, true),
            (false, victim, true),
        ],
        "outer start/end, then the callback's unmap late: {seen:#x?}"
    );
    let victim_start = seen.iter().find(|s| s.start == victim).unwrap();
    assert_eq!(victim_start.event, Event::Unmap);
    assert_eq!(
        victim_start.perms, *b"----",
        "a late start comes after the change"
    );
    assert_eq!(mmun_linux::thread::merged(), 0);
}
