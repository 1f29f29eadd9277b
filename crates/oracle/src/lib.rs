//! The kernel oracle: runs an address-space script on this machine's Linux
//! kernel and reports the MMU-notifier ranges the kernel produced.
//!
//! The method (see `shared/spec/kernel-semantics.md` §6): the calling process
//! opens `/dev/kvm` and creates a VM, which registers KVM's MMU notifier on
//! its mm. KVM's tracepoints `kvm_unmap_hva_range`, `kvm_age_hva` and
//! `kvm_test_age_hva` fire first thing in its `invalidate_range_start`,
//! `clear_young`/`clear_flush_young` and `test_young` callbacks, with the
//! ranges exactly as the core VM passed them. The run enables those events
//! for the calling thread only, brackets each step with `STEP`/`RC` markers
//! in the trace, carries out the steps on a fixed 4 GiB window at
//! [`WINDOW_BASE`](mmun_script::WINDOW_BASE), and turns the trace into a
//! [`Report`] — the same text the C oracle (`tools/kernel-oracle/oracle.c`)
//! prints.
//!
//! Runs need root, `/dev/kvm` and tracefs at `/sys/kernel/tracing`; see
//! [`probe`]. The trace buffer is global, so runs take an exclusive lock
//! file and never interleave, in this process or across processes.

#![deny(unsafe_code)]

pub mod attribute;
mod error;
mod exec;
mod live;
mod sys;
mod trace;
mod tracefs;

use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use mmun_script::{Outcome, Report, Step};

pub use error::{OracleError, TraceError, Unavailable};
pub use live::TreeTrace;
pub use trace::parse_trace;

/// How to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Mount tracefs at `/sys/kernel/tracing` if nothing is mounted there.
    /// Off by default: the oracle changes nothing else about the machine.
    pub mount_tracefs: bool,
    /// The file whose `flock` keeps runs from interleaving in the global
    /// trace buffer.
    pub lock_path: PathBuf,
}

impl Default for Options {
    fn default() -> Options {
        let dir = if Path::new("/run/lock").is_dir() {
            "/run/lock"
        } else {
            "/tmp"
        };
        Options {
            mount_tracefs: false,
            lock_path: Path::new(dir).join("mmun-oracle.lock"),
        }
    }
}

/// Checks, without changing anything, whether this machine can run the
/// oracle: root, 4 KiB pages, `/dev/kvm`, tracefs at `/sys/kernel/tracing`
/// with the three KVM notifier events and writable control files.
///
/// # Errors
///
/// [`Unavailable`], whose message says what is missing.
pub fn probe() -> Result<(), Unavailable> {
    probe_with(&Options::default())
}

/// [`probe`], but mounts tracefs first if [`Options::mount_tracefs`] says so
/// and it is not mounted.
///
/// # Errors
///
/// [`Unavailable`], whose message says what is missing.
pub fn probe_with(opts: &Options) -> Result<(), Unavailable> {
    let uid = rustix::process::geteuid();
    if !uid.is_root() {
        let caps = rustix::thread::capabilities(None)
            .map_or(rustix::thread::CapabilitySet::empty(), |c| c.effective);
        if !caps.contains(rustix::thread::CapabilitySet::DAC_OVERRIDE) {
            return Err(Unavailable::NotRoot { uid: uid.as_raw() });
        }
    }
    let page = rustix::param::page_size();
    if page != 4096 {
        return Err(Unavailable::PageSize(page));
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(Unavailable::Kvm)?;
    tracefs::check(opts.mount_tracefs)
}

/// Runs `steps` on this machine's kernel, in the calling thread, and returns
/// what the kernel's MMU notifier saw, step by step.
///
/// A step's syscall failing is not an error: it is the step's RC. Steps
/// that exist only in the software MMU are rejected before anything runs.
/// The steps must stay inside the 4 GiB window; the window must be free in this
/// process (nothing else maps there) and is unmapped when the run ends.
///
/// # Errors
///
/// [`OracleError`]: the machine cannot run the oracle, a step could not be
/// carried out, tracefs failed, or the trace lost entries. tracefs settings
/// are put back in every case.
pub fn run_script(steps: &[Step], opts: &Options) -> Result<Report, OracleError> {
    if let Some(step) = steps.iter().find(|s| s.op.is_softmmu_only()) {
        return Err(exec::unsupported(step));
    }
    probe_with(opts)?;
    let _lock = lock(&opts.lock_path)?;
    let mut window = sys::Window::claim().map_err(|e| match e {
        sys::ClaimError::Maps(source) => OracleError::Setup {
            what: "/proc/self/maps",
            source,
        },
        sys::ClaimError::Busy(mapping) => OracleError::WindowBusy { mapping },
    })?;
    let kvm = OpenOptions::new().read(true).write(true).open("/dev/kvm");
    let kvm = kvm.map_err(|source| OracleError::Setup {
        what: "/dev/kvm",
        source,
    })?;
    // The VM must live for the whole run: its notifier is what we observe.
    let _vm = sys::kvm_create_vm(kvm.as_fd()).map_err(|source| OracleError::Setup {
        what: "KVM_CREATE_VM",
        source,
    })?;
    let pipe = sys::TouchPipe::new().map_err(|source| OracleError::Setup {
        what: "pipe",
        source,
    })?;
    // Events come from the thread doing the work; filter on it, not on the
    // process id (they differ in a multi-threaded process).
    let tid = rustix::thread::gettid().as_raw_pid();

    let mut session = tracefs::Session::start(tid)?;
    let mut outcomes = Vec::with_capacity(steps.len());
    for step in steps {
        session.mark(&format!("STEP {} {}", step.number, step.text))?;
        let outcome = exec::run_step(&mut window, &pipe, step)?;
        session.mark(&outcome.to_string())?;
        outcomes.push(outcome);
    }
    session.mark("END")?;
    session.finish()?;

    let report = parse_trace(&tracefs::read_trace()?, Some(tid))?;
    check_markers(&report, steps, &outcomes)?;
    Ok(report)
}

/// Takes the run lock (blocking until other runs finish).
fn lock(path: &Path) -> Result<File, OracleError> {
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
    file.lock().map_err(err)?;
    Ok(file)
}

/// The trace must show exactly the steps that ran, with the RCs they had.
fn check_markers(report: &Report, steps: &[Step], outcomes: &[Outcome]) -> Result<(), TraceError> {
    if report.steps.len() != steps.len() {
        return Err(TraceError::Mismatch(format!(
            "{} steps ran, the trace shows {}",
            steps.len(),
            report.steps.len()
        )));
    }
    for ((seen, step), outcome) in report.steps.iter().zip(steps).zip(outcomes) {
        if seen.number != step.number || seen.text != step.text || seen.outcome != *outcome {
            return Err(TraceError::Mismatch(format!(
                "ran `STEP {} {}` ({outcome}), the trace shows `STEP {} {}` ({})",
                step.number, step.text, seen.number, seen.text, seen.outcome
            )));
        }
    }
    Ok(())
}
