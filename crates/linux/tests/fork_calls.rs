//! Address-space copies that run no atfork handler: `_Fork()` and
//! `clone()` without `CLONE_VM` write-protect the parent's private pages
//! (`ProtectionPage`, synchronous, once), and their children start with no
//! notifiers and the signal mask they had before the call. `clone()` with
//! `CLONE_VM` copies nothing and reports nothing. `fork()` is reported
//! once, not once by its atfork handlers and again at `_Fork`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use mmun_core::{Event, IntervalNotifier, IntervalNotifierOps, IntervalSub, Range, Seq};

unsafe extern "C" {
    /// glibc 2.34+: fork without the atfork handlers.
    fn _Fork() -> libc::pid_t;
}

/// One copy at a time: the counts are per notifier, but a fork while
/// another test's hook holds signals would muddle the mask checks.
static SERIAL: Mutex<()> = Mutex::new(());

#[derive(Default)]
struct Protections {
    sync: AtomicU64,
    late: AtomicU64,
}

impl IntervalNotifierOps for Protections {
    fn invalidate(&self, sub: &IntervalSub, range: &Range<'_>, cur_seq: Seq) -> bool {
        sub.set_seq(cur_seq);
        if range.event() == Event::ProtectionPage {
            let count = if range.is_late() {
                &self.late
            } else {
                &self.sync
            };
            count.fetch_add(1, Ordering::SeqCst);
        }
        true
    }
}

/// A written private page under a notifier.
fn watched_page() -> (u64, IntervalNotifier<Protections>) {
    mmun_linux::install().expect("libc patched");
    // SAFETY: a fresh private page, written once so that it holds an
    // anonymous page fork must write-protect.
    let p = unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        *(p as *mut u8) = 1;
        p as u64
    };
    let sub = IntervalNotifier::insert(mmun_linux::process_mm(), p, 4096, Protections::default())
        .unwrap();
    (p, sub)
}

/// Exit codes of the children's checks.
const OK: i32 = 0;
const INHERITED_NOTIFIERS: i32 = 2;
const WRONG_MASK: i32 = 3;

/// What a copy's child checks: no notifiers of the parent, the mask it had
/// before the call.
fn child_verdict(mask_before: u64) -> i32 {
    if mmun_linux::process::subscribed().is_some() {
        return INHERITED_NOTIFIERS;
    }
    if mmun_linux::signals::current_mask() != mask_before {
        return WRONG_MASK;
    }
    OK
}

fn exit_code(pid: libc::pid_t) -> i32 {
    assert!(
        pid > 0,
        "the copy failed: {}",
        std::io::Error::last_os_error()
    );
    let mut status = 0;
    // SAFETY: waits for our own child.
    let r = unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
    assert_eq!(r, pid);
    assert!(libc::WIFEXITED(status), "child status {status:#x}");
    libc::WEXITSTATUS(status)
}

/// The child found its state clean, and the parent's notifier saw one
/// synchronous `ProtectionPage` (before the copy) and nothing late.
fn assert_one_copy(pid: libc::pid_t, sub: &IntervalNotifier<Protections>) {
    assert_eq!(
        exit_code(pid),
        OK,
        "the child's state (2: notifiers, 3: mask)"
    );
    assert_eq!(
        sub.ops().sync.load(Ordering::SeqCst),
        1,
        "one ProtectionPage, before the copy"
    );
    assert_eq!(sub.ops().late.load(Ordering::SeqCst), 0);
}

#[test]
fn a_direct_fork_call_protects_the_parent_once_and_frees_the_child() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (_page, sub) = watched_page();
    let mask = mmun_linux::signals::current_mask();
    // SAFETY: the child only checks its state and leaves with _exit.
    let pid = unsafe { _Fork() };
    if pid == 0 {
        // SAFETY: ends the child without running the parent's exit work.
        unsafe { libc::_exit(child_verdict(mask)) };
    }
    assert_one_copy(pid, &sub);
}

#[test]
fn fork_is_reported_once_not_again_at_its_inner_fork_call() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (_page, sub) = watched_page();
    let mask = mmun_linux::signals::current_mask();
    // SAFETY: the child only checks its state and leaves with _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: as above.
        unsafe { libc::_exit(child_verdict(mask)) };
    }
    assert_one_copy(pid, &sub);
}

/// The parent's mask, for the clone child (same memory at the copy).
static MASK_BEFORE: AtomicU64 = AtomicU64::new(0);

extern "C" fn clone_child_checks(_arg: *mut libc::c_void) -> libc::c_int {
    child_verdict(MASK_BEFORE.load(Ordering::SeqCst))
}

extern "C" fn shared_child(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` points at the parent's counter; with CLONE_VM the
    // child writes the parent's memory.
    unsafe { (*arg.cast::<AtomicU64>()).store(42, Ordering::SeqCst) };
    OK
}

/// A child stack (leaked: the child may outlive nothing, but it is small).
fn stack_top() -> *mut libc::c_void {
    let stack: &'static mut [u8] = Box::leak(vec![0u8; 256 * 1024].into_boxed_slice());
    // SAFETY: one past the end of the leaked buffer; glibc aligns it down.
    unsafe { stack.as_mut_ptr().add(stack.len()).cast() }
}

#[test]
fn clone_without_clone_vm_protects_the_parent_and_frees_the_child() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (_page, sub) = watched_page();
    MASK_BEFORE.store(mmun_linux::signals::current_mask(), Ordering::SeqCst);
    // SAFETY: the child runs `clone_child_checks` on its own stack in its
    // own copy of memory and exits with its result.
    let pid = unsafe {
        libc::clone(
            clone_child_checks,
            stack_top(),
            libc::SIGCHLD,
            std::ptr::null_mut(),
        )
    };
    assert_one_copy(pid, &sub);
}

#[test]
fn clone_with_clone_vm_copies_nothing_and_reports_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (_page, sub) = watched_page();
    let shared = AtomicU64::new(0);
    // SAFETY: the child shares our memory, writes `shared`, and exits;
    // CLONE_VFORK keeps us (and `shared`) waiting until it has.
    let pid = unsafe {
        libc::clone(
            shared_child,
            stack_top(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (&raw const shared).cast_mut().cast(),
        )
    };
    assert_eq!(exit_code(pid), OK);
    assert_eq!(
        shared.load(Ordering::SeqCst),
        42,
        "the child ran in our memory"
    );
    assert_eq!(
        sub.ops().sync.load(Ordering::SeqCst),
        0,
        "no copy, no write-protect"
    );
    assert!(
        mmun_linux::process::subscribed().is_some(),
        "the parent keeps its notifiers"
    );
}
