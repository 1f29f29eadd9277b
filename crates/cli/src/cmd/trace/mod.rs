//! `mmun trace [--json] [--verify-with-kernel] -- CMD ARGS...`: runs CMD
//! (and what it forks and execs) with the preload library, prints every
//! invalidation delivered as it happens, then a summary by event and
//! source; with `--verify-with-kernel`, checks every invalidation the
//! kernel itself made against what was delivered.
//!
//! How the pieces meet: `mmun trace` creates a pipe and names it in
//! `MMUN_TRACE_FD` (`FD:INODE`); the preload library's `trace_sink` writes
//! one 48-byte record per delivered start/end into it. The command first
//! runs as a stub (`mmun __trace-exec`) that waits on a FIFO until tracing
//! is set up for its pid, then execs CMD with `LD_PRELOAD`, so that the
//! kernel trace starts before CMD's first instruction.

mod exec;
mod output;

use std::ffi::OsString;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mmun_linux::TraceRecord;
use mmun_linux::trace_sink::{self, RECORD_SIZE};

pub(crate) use exec::{ExecArgs, run_exec};
use output::Printer;

/// Arguments of `mmun trace`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// JSON lines (one object per record, then the summary) instead of text.
    #[arg(long)]
    json: bool,
    /// Also record the kernel's own MMU notifier in every traced process
    /// (a KVM VM each; root, /dev/kvm and tracefs needed, exit 77 without)
    /// and classify each kernel invalidation: covered, late, invisible (a
    /// fault) or missed. Exits 1 on any missed one.
    #[arg(long)]
    verify_with_kernel: bool,
    /// Mount tracefs at /sys/kernel/tracing if it is not mounted.
    #[arg(long)]
    mount_tracefs: bool,
    /// Where the trace goes (default: standard error, so that the
    /// program's own output stays on standard output).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// With --verify-with-kernel: also write the raw kernel trace (tracefs
    /// text) to this file.
    #[arg(long, value_name = "FILE")]
    kernel_trace: Option<PathBuf>,
    /// Only the summary, not every record.
    #[arg(short, long)]
    quiet: bool,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<OsString>,
}

/// The exit code of `--verify-with-kernel` where the kernel side cannot run.
const UNAVAILABLE: u8 = super::oracle::UNAVAILABLE;

/// How long to wait for the pipe's last writers after CMD exits (a
/// daemonised grandchild may keep it open).
const LINGER: Duration = Duration::from_secs(2);

pub(crate) fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let program = resolve(&args.command[0])?;
    let preload = find_preload()?;
    let opts = mmun_oracle::Options {
        mount_tracefs: args.mount_tracefs,
        ..mmun_oracle::Options::default()
    };
    if args.verify_with_kernel
        && let Err(why) = mmun_oracle::probe_with(&opts)
    {
        eprintln!("mmun trace: skipped: --verify-with-kernel: {why}");
        return Ok(ExitCode::from(UNAVAILABLE));
    }
    let mut printer = Printer::new(args.output.as_deref(), args.json, args.quiet)?;

    let (records, writer) = record_pipe()?;
    let ino = rustix::fs::fstat(&writer)
        .context("fstat of the record pipe")?
        .st_ino;
    let go = exec::GoFifo::create()?;
    let mut stub = Command::new(std::env::current_exe().context("locating the mmun binary")?);
    stub.arg("__trace-exec")
        .arg("--go")
        .arg(go.path())
        .arg("--")
        .arg(&program)
        .args(&args.command[1..])
        .env(trace_sink::ENV_FD, format!("{}:{ino}", writer.as_raw_fd()))
        .env_remove(trace_sink::ENV_MARKER)
        .env_remove(trace_sink::ENV_KVM);
    if let Some(preload) = &preload {
        stub.env(exec::ENV_EXEC_PRELOAD, preload);
    }
    if args.verify_with_kernel {
        stub.env(
            trace_sink::ENV_MARKER,
            mmun_oracle::TreeTrace::marker_path(),
        )
        .env(trace_sink::ENV_KVM, "1");
    }
    let mut child = stub
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    drop(writer); // the children hold the write end now; EOF when they are all gone
    let pid = child.id() as i32;

    let kernel = if args.verify_with_kernel {
        match mmun_oracle::TreeTrace::start(pid, &opts) {
            Ok(t) => Some(t),
            Err(e) => {
                go.cancel();
                let _ = child.wait();
                return Err(e).context("starting the kernel trace");
            }
        }
    } else {
        None
    };
    printer.started(pid);
    go.release()?;

    let (tx, rx) = mpsc::channel::<Msg>();
    let reader_tx = tx.clone();
    std::thread::spawn(move || read_records(records, &reader_tx));
    std::thread::spawn(move || {
        let _ = tx.send(Msg::Exited(child.wait()));
    });
    let status = pump(&rx, &mut printer)?;
    printer.summary()?;

    let mut code = exit_code(status);
    if let Some(kernel) = kernel {
        let text = kernel.finish().context("reading the kernel trace")?;
        if let Some(path) = &args.kernel_trace {
            std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
        }
        let attribution =
            mmun_oracle::attribute::attribute(&text).context("attributing the kernel trace")?;
        let missed = printer.verdict(&attribution)?;
        if missed > 0 {
            code = 1;
        }
    }
    printer.flush()?;
    Ok(ExitCode::from(code))
}

/// What the helper threads tell the main loop.
enum Msg {
    Record(TraceRecord),
    Bad(String),
    Eof,
    Exited(std::io::Result<ExitStatus>),
}

/// Prints records as they come until CMD exited and the pipe is closed
/// (or [`LINGER`] passed after the exit).
fn pump(rx: &mpsc::Receiver<Msg>, printer: &mut Printer) -> anyhow::Result<ExitStatus> {
    let mut status = None;
    let mut eof = false;
    let mut deadline: Option<Instant> = None;
    loop {
        if let (Some(status), true) = (&status, eof) {
            return Ok(*status);
        }
        let msg = match deadline {
            None => rx.recv().ok(),
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(m) => Some(m),
                    Err(_) => {
                        printer.note("the record pipe is still open (a process outlived the command); stopped reading")?;
                        return Ok(status.expect("deadline set after exit"));
                    }
                }
            }
        };
        match msg {
            Some(Msg::Record(r)) => printer.record(&r)?,
            Some(Msg::Bad(why)) => printer.note(&why)?,
            Some(Msg::Eof) | None => eof = true,
            Some(Msg::Exited(s)) => {
                status = Some(s.context("waiting for the command")?);
                deadline = Some(Instant::now() + LINGER);
            }
        }
    }
}

fn read_records(mut pipe: std::fs::File, tx: &mpsc::Sender<Msg>) {
    let mut buf = [0u8; RECORD_SIZE];
    loop {
        match pipe.read_exact(&mut buf) {
            Ok(()) => {
                let msg = match trace_sink::decode(&buf) {
                    Ok(r) => Msg::Record(r),
                    Err(e) => Msg::Bad(e.to_string()),
                };
                if tx.send(msg).is_err() {
                    return;
                }
            }
            Err(_) => {
                let _ = tx.send(Msg::Eof);
                return;
            }
        }
    }
}

/// The command's own exit status, as a shell reports it.
fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(sig)) => 128u8.wrapping_add(sig as u8),
        _ => 1,
    }
}

/// The record pipe: the read end stays here (close-on-exec), the write end
/// is inherited by the command and everything it starts.
fn record_pipe() -> anyhow::Result<(std::fs::File, OwnedFd)> {
    let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .context("creating the record pipe")?;
    rustix::io::fcntl_setfd(&write, rustix::io::FdFlags::empty())
        .context("making the record pipe inheritable")?;
    Ok((std::fs::File::from(read), write))
}

/// CMD as a path: as given if it has a slash, else found in `PATH`.
fn resolve(cmd: &OsString) -> anyhow::Result<PathBuf> {
    let path = Path::new(cmd);
    let executable =
        |p: &Path| rustix::fs::access(p, rustix::fs::Access::EXEC_OK).is_ok() && p.is_file();
    if path.as_os_str().as_encoded_bytes().contains(&b'/') {
        if executable(path) {
            return Ok(path.to_path_buf());
        }
        bail!("{}: no such executable file", path.display());
    }
    let search = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&search)
        .map(|dir| dir.join(path))
        .find(|p| executable(p))
        .with_context(|| format!("{}: command not found", path.display()))
}

/// The preload library: `MMUN_PRELOAD` (`none` for programs that link
/// mmun-linux themselves), else `libmmun_preload.so` (installed layout) or
/// `libmmun.so` (cargo's build; the same library) next to this binary.
fn find_preload() -> anyhow::Result<Option<PathBuf>> {
    if let Some(p) = std::env::var_os("MMUN_PRELOAD") {
        if p == "none" {
            return Ok(None);
        }
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("MMUN_PRELOAD={}: no such file", p.display());
        }
        return Ok(Some(std::path::absolute(&p)?));
    }
    let exe = std::env::current_exe().context("locating the mmun binary")?;
    let candidates = ["libmmun_preload.so", "libmmun.so"].map(|name| exe.with_file_name(name));
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Ok(Some(found.clone()));
    }
    bail!(
        "{} not found: build it (`cargo build --release -p mmun-capi`) or set MMUN_PRELOAD",
        candidates[1].display()
    )
}
