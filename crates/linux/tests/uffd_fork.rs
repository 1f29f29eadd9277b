//! A fork child inherits neither registrations nor the handler thread:
//! `forget_in_child` drops the parent's context without locking, and the
//! child's first `watch` starts a context of its own. Alone in its binary
//! (it forks).

mod uffd_support;

use mmun_linux::uffd::{LateChange, Watch};
use uffd_support::*;

/// Child exit codes: 0 = all checks passed; others name the failed check.
fn child(net: &mmun_linux::uffd::UffdNet, a: u64, len: u64) -> i32 {
    net.forget_in_child();
    if net.is_running() || net.handler_tid().is_some() {
        return 10;
    }
    if !net.armed_ranges().is_empty() {
        return 11;
    }
    // The parent's watched range, the child's copy: not registered here (no
    // EVENT_FORK), so this must neither hang nor be delivered anywhere.
    if raw_munmap(a, len) != 0 {
        return 12;
    }
    // The child's own watch starts its own context against its own mm.
    let b = map(8);
    match net.watch(b, b + 8 * PAGE) {
        Ok(Watch::Armed) => {}
        _ => return 13,
    }
    if !net.is_running() {
        return 14;
    }
    if raw_munmap(b, 8 * PAGE) != 0 {
        return 15;
    }
    if !wait_for(LateChange::Unmap {
        start: b,
        end: b + 8 * PAGE,
    }) {
        return 16;
    }
    if delivered().contains(&LateChange::Unmap {
        start: a,
        end: a + len,
    }) {
        return 17;
    }
    0
}

#[test]
fn a_fork_child_starts_with_nothing_and_its_own_context() {
    let Some(net) = net_or_skip("a_fork_child_starts_with_nothing_and_its_own_context") else {
        return;
    };
    let a = map(16);
    let len = 16 * PAGE;
    assert_eq!(net.watch(a, a + len).unwrap(), Watch::Armed);
    // SAFETY: the child runs only `child` and then `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let code = child(&net, a, len);
        // SAFETY: leave without running the parent's destructors/harness.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "child died: status {status:#x}");
    assert_eq!(
        libc::WEXITSTATUS(status),
        0,
        "child check failed (see the codes in `child`)"
    );
    // The child's munmap of its copy did not reach the parent.
    assert!(delivered_in(a, a + len).is_empty());
    // The parent's context is untouched by the child.
    assert!(net.is_running());
    assert_eq!(raw_munmap(a, len), 0);
    assert!(wait_for(LateChange::Unmap {
        start: a,
        end: a + len
    }));
}
