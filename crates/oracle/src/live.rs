//! Tracing a live process tree: the kernel's own notifier calls
//! (`kvm_unmap_hva_range`, in every process that carries a KVM VM), the
//! system calls each thread was in (`raw_syscalls`), and the marks the
//! processes write, in one buffer, streamed from `trace_pipe` while the
//! processes run (so that long runs do not overflow the ring buffer).
//!
//! The buffer is a tracefs *instance* of our own
//! (`instances/mmun-trace-PID`): it has its own events, pid filter,
//! options and `trace_marker`, so it neither disturbs nor waits for other
//! users of the global buffer (`mmun oracle` runs, other traces), and
//! removing it at the end puts nothing back because nothing global was
//! changed.

use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::OracleError;
use crate::tracefs;

/// The events a tree trace enables.
const TREE_EVENTS: [&str; 3] = [
    "kvm/kvm_unmap_hva_range",
    "raw_syscalls/sys_enter",
    "raw_syscalls/sys_exit",
];

/// A running trace of one process and its descendants, in a tracefs
/// instance removed on [`TreeTrace::finish`] or drop.
#[derive(Debug)]
pub struct TreeTrace {
    dir: PathBuf,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<io::Result<Vec<u8>>>>,
}

fn tracefs_err(path: &Path, source: io::Error) -> OracleError {
    OracleError::Tracefs {
        path: path.display().to_string(),
        source,
    }
}

fn write(path: &Path, value: &str) -> Result<(), OracleError> {
    let mut f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(|e| tracefs_err(path, e))?;
    f.write_all(value.as_bytes())
        .map_err(|e| tracefs_err(path, e))
}

impl TreeTrace {
    /// Starts tracing `pid` and every task it forks (call it before `pid`
    /// runs anything of interest: a child waiting for a go signal).
    ///
    /// # Errors
    ///
    /// [`OracleError`]: the machine cannot trace (see [`crate::probe`]),
    /// or tracefs failed.
    pub fn start(pid: i32, opts: &crate::Options) -> Result<TreeTrace, OracleError> {
        crate::probe_with(opts)?;
        let events = Path::new(tracefs::TRACEFS).join("events/raw_syscalls/sys_enter");
        if !events.exists() {
            return Err(crate::Unavailable::NoEvent("raw_syscalls/sys_enter").into());
        }
        let dir = instance_dir();
        std::fs::create_dir(&dir).map_err(|e| tracefs_err(&dir, e))?;
        let mut trace = TreeTrace {
            dir,
            stop: Arc::new(AtomicBool::new(false)),
            reader: None,
        };
        trace.configure(pid)?;
        let pipe_path = trace.dir.join("trace_pipe");
        let pipe = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&pipe_path)
            .map_err(|e| tracefs_err(&pipe_path, e))?;
        let flag = Arc::clone(&trace.stop);
        trace.reader = Some(
            std::thread::Builder::new()
                .name("mmun-trace-pipe".into())
                .spawn(move || drain(pipe, &flag))
                .map_err(|source| OracleError::Setup {
                    what: "trace_pipe reader thread",
                    source,
                })?,
        );
        Ok(trace)
    }

    fn configure(&mut self, pid: i32) -> Result<(), OracleError> {
        let d = &self.dir;
        write(&d.join("buffer_size_kb"), "16384")?;
        write(&d.join("options/record-tgid"), "1")?;
        write(&d.join("options/event-fork"), "1")?;
        write(&d.join("options/markers"), "1")?;
        write(&d.join("set_event_pid"), &pid.to_string())?;
        for event in TREE_EVENTS {
            write(&d.join(format!("events/{event}/enable")), "1")?;
        }
        write(&d.join("tracing_on"), "1")
    }

    /// The `trace_marker` of the instance this process's tree trace uses
    /// (known before [`TreeTrace::start`], so that the traced command's
    /// environment can name it): marks written there land in the trace,
    /// ordered with the kernel's events.
    pub fn marker_path() -> PathBuf {
        instance_dir().join("trace_marker")
    }

    /// Stops the events, drains the buffer, removes the instance, and
    /// returns the text of every line read.
    ///
    /// # Errors
    ///
    /// [`OracleError::Tracefs`] if tracefs could not be read or written.
    pub fn finish(mut self) -> Result<String, OracleError> {
        let disabled = write(&self.dir.join("tracing_on"), "0");
        self.stop.store(true, Ordering::Release);
        let read = self
            .reader
            .take()
            .expect("reader runs until finish")
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("trace_pipe reader panicked")));
        disabled?;
        let bytes = read.map_err(|e| tracefs_err(&self.dir.join("trace_pipe"), e))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

impl Drop for TreeTrace {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        // The reader closed trace_pipe; the instance can go.
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// One instance per tracing process.
fn instance_dir() -> PathBuf {
    Path::new(tracefs::TRACEFS).join(format!("instances/mmun-trace-{}", std::process::id()))
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
            // Two empty reads after tracing was turned off: drained.
            empty_after_stop += 1;
            if empty_after_stop >= 2 {
                return Ok(out);
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
