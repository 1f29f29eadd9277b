//! The stub the traced command starts as: waits until `mmun trace` has set
//! up the kernel trace for its pid, then execs the command with the
//! preload library (the stub itself runs without it).

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::Context;

/// The environment variable carrying the preload path to the stub, which
/// moves it to `LD_PRELOAD` for the command only.
pub(crate) const ENV_EXEC_PRELOAD: &str = "MMUN_TRACE_EXEC_PRELOAD";

/// Arguments of the hidden `mmun __trace-exec`.
#[derive(Debug, clap::Args)]
pub(crate) struct ExecArgs {
    /// The FIFO to wait on.
    #[arg(long)]
    go: PathBuf,
    /// The command.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<OsString>,
}

pub(crate) fn run_exec(args: &ExecArgs) -> anyhow::Result<ExitCode> {
    // If `mmun trace` dies before releasing us, do not wait forever.
    let parent = rustix::process::getppid();
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
        .context("prctl(PR_SET_PDEATHSIG)")?;
    if rustix::process::getppid() != parent {
        return Ok(ExitCode::from(125));
    }
    let mut go =
        std::fs::File::open(&args.go).with_context(|| format!("opening {}", args.go.display()))?;
    let mut byte = [0u8; 1];
    let n = go.read(&mut byte).context("waiting for mmun trace")?;
    if n == 0 || byte[0] != b'g' {
        // `mmun trace` gave up (the kernel trace could not start).
        return Ok(ExitCode::from(125));
    }
    drop(go);
    rustix::process::set_parent_process_death_signal(None).context("prctl(PR_SET_PDEATHSIG)")?;
    let mut cmd = Command::new(&args.command[0]);
    cmd.args(&args.command[1..]);
    if let Some(preload) = std::env::var_os(ENV_EXEC_PRELOAD) {
        let mut value = preload;
        if let Some(old) = std::env::var_os("LD_PRELOAD").filter(|o| !o.is_empty()) {
            value.push(":");
            value.push(old);
        }
        cmd.env("LD_PRELOAD", value).env_remove(ENV_EXEC_PRELOAD);
        // UCX's libucm initialises before a preloaded library and would
        // patch libc's entries first (its "bistro" mode), which the hooks
        // refuse to patch over; in "reloc" mode it hooks through the GOT
        // and both see every call (mmun_linux::patch::foreign). A mode the
        // user chose is kept.
        if std::env::var_os("UCX_MEM_MMAP_HOOK_MODE").is_none() {
            cmd.env("UCX_MEM_MMAP_HOOK_MODE", "reloc");
        }
    }
    let err = cmd.exec();
    eprintln!(
        "mmun trace: cannot run {}: {err}",
        Path::new(&args.command[0]).display()
    );
    Ok(ExitCode::from(127))
}

/// The FIFO the stub waits on; removed when dropped.
#[derive(Debug)]
pub(crate) struct GoFifo {
    path: PathBuf,
}

impl GoFifo {
    pub(crate) fn create() -> anyhow::Result<GoFifo> {
        let dir = std::env::temp_dir();
        let nanos = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic).tv_nsec;
        let path = dir.join(format!("mmun-trace-go-{}-{nanos}", std::process::id()));
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &path,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
            0,
        )
        .with_context(|| format!("creating {}", path.display()))?;
        Ok(GoFifo { path })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Lets the stub exec the command.
    pub(crate) fn release(&self) -> anyhow::Result<()> {
        self.send(b"g")
    }

    /// Tells the stub to give up.
    pub(crate) fn cancel(&self) {
        let _ = self.send(b"x");
    }

    fn send(&self, byte: &[u8]) -> anyhow::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.path)
            .with_context(|| format!("opening {}", self.path.display()))?;
        f.write_all(byte).context("releasing the command")
    }
}

impl Drop for GoFifo {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
