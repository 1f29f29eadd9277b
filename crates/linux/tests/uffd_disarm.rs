//! A hooked unmap of a range the userfaultfd net watches takes the range
//! off the net first: the change is reported once, synchronously, by the
//! hook (no late duplicate from the net, no UNMAP event at all), and a
//! call that fails leaves the range watched, so a later raw unmap still
//! reaches the notifier late. Skips (with a message) where userfaultfd is
//! unavailable.

mod common;

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mmun_core::{Event, IntervalNotifier, IntervalNotifierOps, IntervalSub, Range, Seq};

/// Tests in this file share the one net of the process: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

#[derive(Default)]
struct Counts {
    late_unmaps: AtomicU64,
    sync_unmaps: AtomicU64,
}

impl IntervalNotifierOps for Counts {
    fn invalidate(&self, sub: &IntervalSub, range: &Range<'_>, cur_seq: Seq) -> bool {
        sub.set_seq(cur_seq);
        if range.event() == Event::Unmap {
            if range.is_late() {
                self.late_unmaps.fetch_add(1, Ordering::SeqCst);
            } else {
                self.sync_unmaps.fetch_add(1, Ordering::SeqCst);
            }
        }
        true
    }
}

const LEN: usize = 16 * 4096;

fn net() -> Option<&'static mmun_linux::uffd::UffdNet> {
    mmun_linux::install().expect("libc patched");
    match mmun_linux::net::start_uffd() {
        Ok(net) => Some(net),
        Err(e) => {
            eprintln!("SKIPPED: userfaultfd unavailable: {e}");
            None
        }
    }
}

fn populated() -> u64 {
    common::anon(LEN / common::PAGE, 0) as u64
}

fn armed_over(net: &mmun_linux::uffd::UffdNet, p: u64) -> bool {
    net.armed_ranges()
        .iter()
        .any(|&(s, e)| s < p + LEN as u64 && e > p)
}

/// Waits up to `max` for `count` to reach `want`; its final value.
fn settle(count: &AtomicU64, want: u64, max: Duration) -> u64 {
    let deadline = Instant::now() + max;
    while count.load(Ordering::SeqCst) < want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    count.load(Ordering::SeqCst)
}

#[test]
fn a_hooked_munmap_of_a_watched_range_is_reported_once_and_raises_no_event() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(net) = net() else { return };
    let p = populated();
    let sub = IntervalNotifier::insert(mmun_linux::process_mm(), p, LEN as u64, Counts::default())
        .unwrap();
    assert!(armed_over(net, p), "the interval armed the net");
    let unmaps_before = net.stats().unmaps;

    // SAFETY: unmaps our own mapping through (patched) libc.
    assert_eq!(unsafe { libc::munmap(p as *mut _, LEN) }, 0);

    assert_eq!(
        sub.ops().sync_unmaps.load(Ordering::SeqCst),
        1,
        "the hook reported it"
    );
    assert!(
        !armed_over(net, p),
        "the hook took the range off the net's book"
    );
    // Give a (wrong) UNMAP event ample time to arrive.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        sub.ops().late_unmaps.load(Ordering::SeqCst),
        0,
        "no second, late report of the same unmap"
    );
    assert_eq!(
        net.stats().unmaps,
        unmaps_before,
        "the kernel queued no UNMAP event"
    );
}

#[test]
fn a_failed_hooked_munmap_leaves_the_range_watched() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(net) = net() else { return };
    let p = populated();
    let sub = IntervalNotifier::insert(mmun_linux::process_mm(), p, LEN as u64, Counts::default())
        .unwrap();

    // An unaligned address: the hook widens it to the watched pages and
    // disarms them, the kernel refuses with EINVAL, nothing is unmapped.
    // SAFETY: the call fails without touching memory.
    assert_eq!(unsafe { libc::munmap((p + 1) as *mut _, LEN) }, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EINVAL)
    );
    assert!(
        armed_over(net, p),
        "the failed call put the range back on the net"
    );

    // So a raw unmap no hook sees still reaches the notifier, late.
    // SAFETY: unmaps our own mapping behind libc's back.
    assert_eq!(unsafe { libc::syscall(libc::SYS_munmap, p, LEN) }, 0);
    assert_eq!(
        settle(&sub.ops().late_unmaps, 1, Duration::from_secs(5)),
        1,
        "the net reported the raw unmap"
    );
}
