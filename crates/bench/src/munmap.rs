//! `munmap` of 16 populated pages: the interposed libc call against the raw
//! system call, with no subscriber, under an interval notifier, and with
//! the userfaultfd net armed on the range. Each timed call is preceded by
//! an untimed `mmap(MAP_FIXED | MAP_POPULATE)` at a reserved address, so
//! every call unmaps the same populated pages and notifiers keep covering
//! them.

use mmun_core::{IntervalNotifier, IntervalNotifierOps, IntervalSub, Range, Seq};

use crate::measure::{Variant, interleaved};
use crate::row::{Row, Section, Skipped, Target};

const LEN: usize = 16 * 4096;
const GROUP: &str = "munmap of 16 populated pages";

/// A mirror that only bumps its sequence, as a real one does first.
struct Mirror;

impl IntervalNotifierOps for Mirror {
    fn invalidate(&self, sub: &IntervalSub, _range: &Range<'_>, cur_seq: Seq) -> bool {
        sub.set_seq(cur_seq);
        true
    }
}

/// 16 pages in the middle of a reservation three times as large: the
/// guards keep anything else (a new thread's stack) from being placed
/// where `populate` maps with `MAP_FIXED`.
fn reserve() -> Result<u64, String> {
    // SAFETY: a fresh PROT_NONE reservation; nothing else uses it.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            3 * LEN,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(format!("mmap: {}", std::io::Error::last_os_error()));
    }
    Ok(p as u64 + LEN as u64)
}

fn populate(at: u64) {
    // SAFETY: (re)maps the middle of our own reservation.
    let p = unsafe {
        libc::mmap(
            at as *mut libc::c_void,
            LEN,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_POPULATE,
            -1,
            0,
        )
    };
    assert_eq!(p as u64, at, "mmap(MAP_FIXED) of the bench range");
}

fn bare(at: u64) {
    // SAFETY: unmaps our own range with the raw system call.
    let r = unsafe { libc::syscall(libc::SYS_munmap, at, LEN) };
    assert_eq!(r, 0, "munmap");
}

fn hooked(at: u64) {
    // SAFETY: unmaps our own range through libc (patched).
    let r = unsafe { libc::munmap(at as *mut libc::c_void, LEN) };
    assert_eq!(r, 0, "munmap");
}

/// Bare at `unwatched` against hooked at `at`, interleaved.
fn compare(unwatched: u64, at: u64, iterations: usize) -> (f64, f64) {
    let (mut s1, mut r1) = (|| populate(unwatched), || bare(unwatched));
    let (mut s2, mut r2) = (|| populate(at), || hooked(at));
    let m = interleaved(
        &mut [
            Variant {
                name: "bare",
                setup: &mut s1,
                run: &mut r1,
                batch: 1,
            },
            Variant {
                name: "hooked",
                setup: &mut s2,
                run: &mut r2,
                batch: 1,
            },
        ],
        iterations,
    );
    (m[0], m[1])
}

fn row(ours: &str, (bare, hooked): (f64, f64), target: f64) -> Row {
    Row {
        group: GROUP,
        ours: ours.to_owned(),
        ours_ns: hooked,
        reference: "raw munmap, unwatched".to_owned(),
        reference_ns: bare,
        target: Target::RatioAtMost(target),
    }
}

/// The bench ranges, with the hooks installed in this process.
fn ranges() -> Result<(u64, u64), Section> {
    let skip = |reason: String| {
        Section::Skipped(Skipped {
            group: GROUP,
            reason,
        })
    };
    mmun_linux::install().map_err(|e| skip(format!("hooks not installed: {e}")))?;
    match (reserve(), reserve()) {
        (Ok(unwatched), Ok(at)) => Ok((unwatched, at)),
        _ => Err(skip("no address space for the bench ranges".into())),
    }
}

/// The hook's fast path: run it before anything in this process inserts a
/// notifier (the hooks then skip dispatch for good... until one is).
pub fn unsubscribed(iterations: usize) -> Section {
    let (unwatched, at) = match ranges() {
        Ok(r) => r,
        Err(skipped) => return skipped,
    };
    if mmun_linux::process::subscribed().is_some() {
        return Section::Skipped(Skipped {
            group: GROUP,
            reason: "a notifier was inserted before the no-subscriber row ran".into(),
        });
    }
    Section::Rows(vec![row(
        "hooked, no subscriber",
        compare(unwatched, at, iterations),
        1.05,
    )])
}

/// Under an interval notifier, then with the userfaultfd net armed too
/// (which starts the net in this process).
pub fn subscribed(iterations: usize) -> Vec<Section> {
    let (unwatched, at) = match ranges() {
        Ok(r) => r,
        Err(skipped) => return vec![skipped],
    };
    let mut rows = Vec::new();
    populate(at);
    let sub = IntervalNotifier::insert(mmun_linux::process_mm(), at, LEN as u64, Mirror);
    let Ok(sub) = sub else {
        return vec![Section::Skipped(Skipped {
            group: GROUP,
            reason: "the interval notifier could not be inserted".into(),
        })];
    };
    rows.push(row(
        "hooked, one interval notifier",
        compare(unwatched, at, iterations),
        1.5,
    ));
    drop(sub);
    populate(at); // mapped while the net's thread starts
    let mut sections = Vec::new();
    match mmun_linux::net::start_uffd() {
        Ok(_) => {
            let sub = IntervalNotifier::insert(mmun_linux::process_mm(), at, LEN as u64, Mirror);
            if sub.is_ok() {
                rows.push(row(
                    "hooked, interval notifier + uffd net armed",
                    compare(unwatched, at, iterations),
                    1.5,
                ));
            }
        }
        Err(e) => sections.push(Section::Skipped(Skipped {
            group: "munmap under the userfaultfd net",
            reason: e,
        })),
    }
    sections.insert(0, Section::Rows(rows));
    sections
}
