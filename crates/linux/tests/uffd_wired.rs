//! The userfaultfd net wired to the process `Mm`: an interval notifier's
//! range is watched, and a raw `syscall(SYS_munmap)` that no hook sees
//! reaches the notifier late, marked `LATE`. Skips (with a message) where
//! userfaultfd is unavailable.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mmun_core::{Event, IntervalNotifier, IntervalNotifierOps, IntervalSub, Range, Seq};

#[derive(Default)]
struct Late {
    late_unmaps: AtomicU64,
    sync: AtomicU64,
}

impl IntervalNotifierOps for Late {
    fn invalidate(&self, sub: &IntervalSub, range: &Range<'_>, cur_seq: Seq) -> bool {
        sub.set_seq(cur_seq);
        if range.is_late() && range.event() == Event::Unmap {
            self.late_unmaps.fetch_add(1, Ordering::SeqCst);
        } else if !range.is_late() {
            self.sync.fetch_add(1, Ordering::SeqCst);
        }
        true
    }
}

#[test]
fn a_raw_munmap_reaches_an_interval_notifier_through_the_net() {
    mmun_linux::install().expect("libc patched");
    let net = match mmun_linux::net::start_uffd() {
        Ok(net) => net,
        Err(e) => {
            eprintln!("SKIPPED: userfaultfd unavailable: {e}");
            return;
        }
    };
    let len = 16 * 4096;
    let p = common::anon(len / common::PAGE, 0) as u64;
    let sub =
        IntervalNotifier::insert(mmun_linux::process_mm(), p, len as u64, Late::default()).unwrap();
    assert!(
        net.armed_ranges()
            .iter()
            .any(|&(s, e)| s <= p && e >= p + len as u64),
        "inserting the interval armed the net: {:x?}",
        net.armed_ranges()
    );
    // SAFETY: unmaps our mapping behind libc's back (no hook sees it).
    assert_eq!(unsafe { libc::syscall(libc::SYS_munmap, p, len) }, 0);
    assert_eq!(
        sub.ops().sync.load(Ordering::SeqCst),
        0,
        "no hook saw the raw call"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while sub.ops().late_unmaps.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(
        sub.ops().late_unmaps.load(Ordering::SeqCst),
        1,
        "the net delivered the unmap late"
    );
    drop(sub);
    assert!(
        !net.armed_ranges()
            .iter()
            .any(|&(s, e)| s < p + len as u64 && e > p),
        "removing the interval unwatched it"
    );
}
