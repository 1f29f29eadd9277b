//! What the integration tests share: the recording subscribers of
//! `mmun-testkit`, and a watchdog.
#![allow(dead_code)]

#[allow(unused_imports)] // not every test file uses the recorders
pub use mmun_testkit::*;

/// Runs `f` on a thread and fails the test if it does not finish in time
/// (turns a hang into a failure).
pub fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(secs))
        .expect("operation hung (did not finish in time)")
}
