//! What can go wrong: the machine cannot run the oracle ([`Unavailable`]),
//! or a run failed ([`OracleError`]). Syscalls a script makes that fail are
//! neither: they are the step's RC in the report.

use std::io;
use std::path::PathBuf;

/// Why this machine cannot run the oracle; the message says what is
/// missing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Unavailable {
    /// Not root and without the capability to open root-only files.
    #[error("needs root (or CAP_DAC_OVERRIDE): running as uid {uid}")]
    NotRoot {
        /// The effective uid.
        uid: u32,
    },
    /// Scripts assume 4 KiB pages.
    #[error("needs 4 KiB pages; this machine has {0}-byte pages")]
    PageSize(usize),
    /// `/dev/kvm` cannot be opened.
    #[error("/dev/kvm: {0}")]
    Kvm(io::Error),
    /// Nothing (or something other than tracefs) at `/sys/kernel/tracing`.
    #[error("tracefs not mounted at /sys/kernel/tracing")]
    TracefsNotMounted,
    /// tracefs was not mounted, and mounting it failed.
    #[error("tracefs not mounted at /sys/kernel/tracing, and mounting it failed: {0}")]
    TracefsMount(io::Error),
    /// One of the three KVM MMU-notifier events is missing.
    #[error("tracefs has no event {0} (is the kvm module loaded?)")]
    NoEvent(&'static str),
    /// A tracefs control file is missing or not writable.
    #[error("{path}: {source}")]
    TracefsFile {
        /// The file.
        path: String,
        /// Why it cannot be written.
        source: io::Error,
    },
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OracleError {
    /// The machine cannot run the oracle.
    #[error("kernel oracle unavailable: {0}")]
    Unavailable(#[from] Unavailable),
    /// Taking the lock that keeps runs from interleaving in the global
    /// trace buffer failed.
    #[error("lock {}: {source}", path.display())]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// The script window is not free in this process.
    #[error(
        "script window at {:#x} is not free: {mapping}",
        mmun_script::WINDOW_BASE
    )]
    WindowBusy {
        /// The `/proc/self/maps` line of what is mapped there.
        mapping: String,
    },
    /// Setting up the run failed: opening `/dev/kvm`, `KVM_CREATE_VM`, the
    /// touch pipe, reading `/proc/self/maps`.
    #[error("{what}: {source}")]
    Setup {
        /// Which call.
        what: &'static str,
        /// What failed.
        source: io::Error,
    },
    /// Reading or writing a tracefs file failed.
    #[error("{path}: {source}")]
    Tracefs {
        /// The file.
        path: String,
        /// What failed.
        source: io::Error,
    },
    /// A step could not be carried out (as opposed to a syscall that
    /// failed, which is the step's RC).
    #[error("step {step}: {op}: {detail}")]
    Step {
        /// 1-based step number.
        step: usize,
        /// The operation or the call within it.
        op: &'static str,
        /// What went wrong.
        detail: String,
    },
    /// A step the kernel oracle cannot carry out (a software-MMU-only op);
    /// found before anything runs.
    #[error(
        "step {step}: `{text}` exists only in the software MMU; the kernel oracle cannot run it"
    )]
    Unsupported {
        /// 1-based step number.
        step: usize,
        /// The step's words.
        text: String,
    },
    /// The trace could not be turned into a report.
    #[error("trace: {0}")]
    Trace(#[from] TraceError),
}

/// Why the trace text did not give a report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TraceError {
    /// The ring buffer dropped entries (`entries-in-buffer` <
    /// `entries-written`).
    #[error(
        "the ring buffer overflowed: kept {kept} of {written} entries (enlarge buffer_size_kb)"
    )]
    Overflow {
        /// Entries still in the buffer.
        kept: u64,
        /// Entries written.
        written: u64,
    },
    /// A `[LOST n EVENTS]` line.
    #[error("the ring buffer lost events: `{0}`")]
    Lost(String),
    /// A line that is not a trace entry, or an entry of ours that does not
    /// parse.
    #[error("cannot parse `{line}`: {why}")]
    Line {
        /// The line.
        line: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A notifier call in the window outside any step.
    #[error("notifier call outside any step: `{0}`")]
    Stray(String),
    /// A step without its `RC` marker.
    #[error("step {0} has no RC marker")]
    MissingRc(usize),
    /// The markers do not match the steps that ran.
    #[error("markers do not match the steps run: {0}")]
    Mismatch(String),
}
