//! The fork policy: a child may not use the parent's cache (every `get`
//! is `Forked`), dropping it there touches neither the parent's address
//! space nor its ring, and the parent's cache goes on working.

mod common;

use std::os::fd::AsFd;

use common::{PAGE, PatternFile, cache_or_skip, expected};
use mmun_uring::{UringConfig, UringError};

/// Exit codes of the child.
const CHILD_OK: i32 = 0;
const CHILD_USED_PARENTS_CACHE: i32 = 3;
const CHILD_PANICKED: i32 = 4;

#[test]
fn a_fork_child_cannot_use_the_cache_and_dropping_it_there_touches_nothing() {
    let test = "a_fork_child_cannot_use_the_cache";
    let Some(cache) = cache_or_skip(test, UringConfig::default()) else {
        return;
    };
    let file = PatternFile::new("fork", 1 << 16);
    let mut buf = vec![0u8; 2 * PAGE];
    let read = cache.read_fixed(file.file.as_fd(), 0, &mut buf);
    assert_eq!(read.unwrap(), buf.len());

    // SAFETY: the child only calls the cache's fork check, drops the cache
    // (which leaks in the child) and `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        // A panic must not unwind into the test harness, whose other
        // threads do not exist here (the child would exit 0).
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let code = match cache.get(buf.as_ptr() as u64, 1) {
                Err(UringError::Forked) => CHILD_OK,
                _ => CHILD_USED_PARENTS_CACHE,
            };
            // Touching the parent's Mm here (removing notifiers) would wait
            // for invalidations the parent's forking thread left open.
            drop(cache);
            code
        }))
        .unwrap_or(CHILD_PANICKED);
        // SAFETY: ends the child without running the parent's exit handlers.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "child status {status:#x}");
    assert_eq!(
        libc::WEXITSTATUS(status),
        CHILD_OK,
        "{CHILD_USED_PARENTS_CACHE}: the child used the parent's cache; {CHILD_PANICKED}: it panicked"
    );

    // The parent's cache goes on working (fork's own invalidation of the
    // parent's writable memory may have dropped the registration: it is
    // made again).
    buf.fill(0);
    let read = cache.read_fixed(file.file.as_fd(), 4096, &mut buf);
    assert_eq!(read.unwrap(), buf.len());
    let mut landed = buf.iter().enumerate();
    assert!(landed.all(|(i, &b)| b == expected(4096 + i as u64)));
}
