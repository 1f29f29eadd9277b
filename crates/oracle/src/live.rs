//! Tracing a live process tree: the kernel's own notifier calls
//! (`kvm_unmap_hva_range`, in every process that carries a KVM VM), the
//! system calls each thread was in (`raw_syscalls`), and the markers the
//! processes write, in one buffer, streamed from `trace_pipe` while the
//! processes run (so that long runs do not overflow the ring buffer).

use std::fs::OpenOptions;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::OracleError;
use crate::tracefs::{self, Session};

/// The events a tree trace enables.
const TREE_EVENTS: [&str; 3] = [
    "kvm/kvm_unmap_hva_range",
    "raw_syscalls/sys_enter",
    "raw_syscalls/sys_exit",
];

/// A running trace of one process and its descendants. Settings are put
/// back on [`TreeTrace::finish`] or drop.
#[derive(Debug)]
pub struct TreeTrace {
    session: Session,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<io::Result<Vec<u8>>>>,
    _lock: std::fs::File,
}

impl TreeTrace {
    /// Starts tracing `pid` and what it forks (call it before `pid` runs
    /// anything of interest: a child waiting for a go signal). Takes the
    /// oracle's run lock (the buffer is global).
    ///
    /// # Errors
    ///
    /// [`OracleError`]: the machine cannot trace (see [`crate::probe`]),
    /// or tracefs failed.
    pub fn start(
        pid: i32,
        opts: &crate::Options,
        lock_wait: Duration,
    ) -> Result<TreeTrace, OracleError> {
        crate::probe_with(opts)?;
        for event in &TREE_EVENTS[1..] {
            let enable = format!("{}/events/{event}/enable", tracefs::TRACEFS);
            if !std::path::Path::new(&enable).exists() {
                return Err(crate::Unavailable::NoEvent("raw_syscalls/sys_enter").into());
            }
        }
        let lock = lock_within(&opts.lock_path, lock_wait)?;
        let session = Session::start_tree(pid, &TREE_EVENTS)?;
        let pipe = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(format!("{}/trace_pipe", tracefs::TRACEFS))
            .map_err(|source| OracleError::Tracefs {
                path: format!("{}/trace_pipe", tracefs::TRACEFS),
                source,
            })?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let reader = std::thread::Builder::new()
            .name("mmun-trace-pipe".into())
            .spawn(move || drain(pipe, &flag))
            .map_err(|source| OracleError::Setup {
                what: "trace_pipe reader thread",
                source,
            })?;
        Ok(TreeTrace {
            session,
            stop,
            reader: Some(reader),
            _lock: lock,
        })
    }

    /// Stops the events, drains the buffer, restores tracefs, and returns
    /// the text of every line read.
    ///
    /// # Errors
    ///
    /// [`OracleError::Tracefs`] if tracefs could not be read or restored.
    pub fn finish(mut self) -> Result<String, OracleError> {
        let disabled = self.session.disable(&TREE_EVENTS);
        self.stop.store(true, Ordering::Release);
        let read = self
            .reader
            .take()
            .expect("reader runs until finish")
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("trace_pipe reader panicked")));
        disabled?;
        let bytes = read.map_err(|source| OracleError::Tracefs {
            path: format!("{}/trace_pipe", tracefs::TRACEFS),
            source,
        })?;
        self.session.restore_now()?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

impl Drop for TreeTrace {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// Takes the run lock, waiting at most `wait`.
fn lock_within(path: &std::path::Path, wait: Duration) -> Result<std::fs::File, OracleError> {
    let err = |source| OracleError::Lock {
        path: path.to_path_buf(),
        source,
    };
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(err)?;
    let deadline = std::time::Instant::now() + wait;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(OracleError::Busy {
                    path: path.to_path_buf(),
                    waited: wait,
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(err(e)),
        }
    }
}

/// Reads `trace_pipe` until told to stop and then until it is empty.
fn drain(mut pipe: std::fs::File, stop: &AtomicBool) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut empty_after_stop = 0;
    loop {
        match pipe.read(&mut buf) {
            Ok(n) if n > 0 => {
                out.extend_from_slice(&buf[..n]);
                continue;
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        if stop.load(Ordering::Acquire) {
            // Two empty reads after the events were disabled: drained.
            empty_after_stop += 1;
            if empty_after_stop >= 2 {
                return Ok(out);
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
