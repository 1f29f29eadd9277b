//! fork, exit and the userfaultfd seam: the parent gets `ProtectionPage`
//! per private writable VMA around the fork, the child a fresh `Mm` with no
//! notifiers and no uffd state, exit releases exactly once. Scenarios that
//! end the process run in a child process (this binary, re-run on the
//! same test with a role variable set).

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::{PAGE, anon, recorder};
use mmun_core::{
    Event, IntervalNotifier, IntervalNotifierOps, IntervalSub, Mm, Notifier, NotifierOps, Range,
    Seq,
};
use mmun_linux::net::{self, NetOps};

static WATCHED: Mutex<Vec<(char, u64, u64)>> = Mutex::new(Vec::new());
static FORGOTTEN: AtomicUsize = AtomicUsize::new(0);

fn fake_net() {
    net::connect(NetOps {
        watch: |s, e| {
            WATCHED
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(('w', s, e))
        },
        unwatch: |s, e| {
            WATCHED
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(('u', s, e))
        },
        rearm: |s, e| {
            WATCHED
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(('r', s, e))
        },
        forget_in_child: || {
            FORGOTTEN.fetch_add(1, Ordering::SeqCst);
        },
    });
}

struct Quiet;
impl IntervalNotifierOps for Quiet {
    fn invalidate(&self, sub: &IntervalSub, _range: &Range<'_>, cur_seq: Seq) -> bool {
        sub.set_seq(cur_seq);
        true
    }
}

static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn interval_ranges_reach_the_net_and_map_fixed_rearms() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    mmun_linux::install().expect("libc patched");
    fake_net();
    let p = anon(4, 0) as u64;
    let len = 4 * PAGE as u64;
    WATCHED.lock().unwrap_or_else(|e| e.into_inner()).clear();
    let sub = IntervalNotifier::insert(mmun_linux::process_mm(), p, len, Quiet).unwrap();
    // SAFETY: replaces our own mapping.
    unsafe {
        libc::mmap(
            p as *mut _,
            len as usize,
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
            -1,
            0,
        );
    }
    drop(sub);
    let log: Vec<_> = WATCHED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .copied()
        .filter(|&(_, s, _)| s == p)
        .collect();
    assert_eq!(
        log,
        [('w', p, p + len), ('r', p, p + len), ('u', p, p + len)]
    );
    // SAFETY: ours.
    unsafe { libc::munmap(p as *mut _, len as usize) };
}

#[test]
fn fork_protects_the_parent_and_gives_the_child_a_fresh_mm() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    mmun_linux::install().expect("libc patched");
    fake_net();
    let rec = recorder();
    let parent_mm = Arc::clone(mmun_linux::process_mm());
    let p = anon(16, 1) as u64;
    // Written, then made read-only: it holds anonymous pages, so Linux's
    // fork write-protects it too (`copy_page_range` of a COW mapping with
    // an anon_vma; checked with `mmun trace --verify-with-kernel`).
    let ro = anon(4, 1) as u64;
    // SAFETY: our mapping.
    unsafe { libc::mprotect(ro as *mut _, 4 * PAGE, libc::PROT_READ) };
    // Read-only and never written: nothing for fork to protect.
    // SAFETY: a fresh anonymous mapping.
    let clean = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4 * PAGE,
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    } as u64;
    let lo = p.min(ro).min(clean);
    rec.watch(lo, p.max(ro).max(clean) + 16 * PAGE as u64);
    let forgotten_before = FORGOTTEN.load(Ordering::SeqCst);
    // SAFETY: the child only checks state and _exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let fresh = mmun_linux::process_mm();
        let code = if Arc::ptr_eq(fresh, &parent_mm) {
            10
        } else if fresh.has_notifiers() {
            11
        } else if FORGOTTEN.load(Ordering::SeqCst) != forgotten_before + 1 {
            12
        } else {
            // A munmap in the child reaches no notifier of the parent's.
            let n = rec.take().len();
            // SAFETY: the child's copy of the mapping.
            unsafe { libc::munmap(p as *mut _, 16 * PAGE) };
            if !rec.take().is_empty() || n == 0 {
                13
            } else {
                0
            }
        };
        // SAFETY: ends the child without running the parent's atexit handlers.
        unsafe { libc::_exit(code) };
    }
    assert!(pid > 0);
    let seen = rec.take();
    let mut status = 0;
    // SAFETY: waits for our child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(libc::WIFEXITED(status));
    assert_eq!(
        libc::WEXITSTATUS(status),
        0,
        "child: 10 same Mm, 11 has notifiers, 12 uffd not forgotten, 13 saw parent notifiers"
    );
    // Other threads of the harness may mprotect or unmap nearby meanwhile.
    let fork_only = |start: bool| -> Vec<_> {
        seen.iter()
            .filter(|s| s.start_phase == start && s.event == Event::ProtectionPage)
            .map(|s| (s.event, s.start, s.end))
            .collect()
    };
    let (starts, ends) = (fork_only(true), fork_only(false));
    assert!(
        starts.iter().any(|&(e, s, end)| e == Event::ProtectionPage
            && s <= p
            && end >= p + 16 * PAGE as u64),
        "no PROTECTION_PAGE start over the private writable buffer: {seen:#x?}"
    );
    assert!(
        starts
            .iter()
            .any(|&(_, s, end)| s <= ro && end >= ro + 4 * PAGE as u64),
        "the written, now read-only mapping is write-protected: {seen:#x?}"
    );
    assert!(
        !starts.iter().any(|&(_, s, end)| s <= clean && end > clean),
        "the never-written read-only mapping is not write-protected: {seen:#x?}"
    );
    assert_eq!(starts, ends, "every start has its end, in the parent");
    // SAFETY: ours.
    unsafe {
        libc::munmap(p as *mut _, 16 * PAGE);
        libc::munmap(ro as *mut _, 4 * PAGE);
        libc::munmap(clean as *mut _, 4 * PAGE);
    }
}

fn raw_write(s: &[u8]) {
    // SAFETY: writes our bytes to stdout.
    unsafe { libc::write(1, s.as_ptr().cast(), s.len()) };
}

static RELEASE_OPS: NotifierOps<()> = NotifierOps {
    release: Some(|_, _| raw_write(b"<release>")),
    ..NotifierOps::EMPTY
};

struct FinalUnmap;
impl IntervalNotifierOps for FinalUnmap {
    fn invalidate(&self, sub: &IntervalSub, range: &Range<'_>, cur_seq: Seq) -> bool {
        sub.set_seq(cur_seq);
        if range.start() == 0 && range.end() == u64::MAX && !range.mm().is_live() {
            match range.event() {
                Event::Release => raw_write(b"<itree-release>"),
                Event::Unmap => raw_write(b"<final-unmap>"),
                _ => raw_write(b"<other>"),
            }
        }
        true
    }
}

/// The child's part of `exit_releases_once`: subscribes, then lets the
/// test harness return from `main` and exit the process normally.
fn child_exits_normally() {
    mmun_linux::install().expect("libc patched");
    let mm: &Arc<Mm> = mmun_linux::process_mm();
    let list = Notifier::register(mm, &RELEASE_OPS, ()).unwrap();
    let p = anon(1, 0) as u64;
    let interval = IntervalNotifier::insert(mm, p, PAGE as u64, FinalUnmap).unwrap();
    std::mem::forget(list);
    std::mem::forget(interval);
    raw_write(b"<main-returns>");
}

/// Set in the child process that `exit_releases_once` re-runs itself as.
const CHILD_ROLE: &str = "MMUN_LIFECYCLE_EXIT_CHILD";

#[test]
fn exit_releases_once() {
    if std::env::var_os(CHILD_ROLE).is_some() {
        child_exits_normally();
        return;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "exit_releases_once",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ROLE, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.matches("<release>").count(), 1, "{stdout}");
    let main = stdout.find("<main-returns>").expect("the child ran");
    let release = stdout.find("<release>").unwrap();
    let itree = stdout
        .find("<itree-release>")
        .expect("interval notifiers see RELEASE");
    let unmap = stdout
        .find("<final-unmap>")
        .expect("interval notifiers see exit_mmap's unmap");
    assert!(
        main < itree && itree < release && release < unmap,
        "{stdout}"
    );
    assert_eq!(stdout.matches("<final-unmap>").count(), 1, "{stdout}");
}

#[test]
fn release_now_twice_releases_once() {
    // On a private Mm: the process one must stay live for the other tests.
    let mm = Mm::new();
    let n = Notifier::register(&mm, &COUNT_OPS, AtomicUsize::new(0)).unwrap();
    assert!(mm.exit());
    assert!(!mm.exit());
    assert_eq!(n.load(Ordering::SeqCst), 1);
}

static COUNT_OPS: NotifierOps<AtomicUsize> = NotifierOps {
    release: Some(|c, _| {
        c.fetch_add(1, Ordering::SeqCst);
    }),
    ..NotifierOps::EMPTY
};
