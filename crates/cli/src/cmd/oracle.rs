//! `mmun oracle SCRIPT`: the same report, from the real kernel.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use std::process::ExitCode;

use mmun_oracle::Options;

/// Arguments of `mmun oracle`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The script; `-` for stdin.
    script: PathBuf,
    /// Mount tracefs at /sys/kernel/tracing if it is not mounted.
    #[arg(long)]
    mount_tracefs: bool,
}

/// Exit code when the kernel oracle cannot run here (not an error of the
/// script): 77, the "skipped" code of automake-style test drivers.
pub(crate) const UNAVAILABLE: u8 = 77;

pub(crate) fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let steps = super::load_script(&args.script)?;
    let opts = Options {
        mount_tracefs: args.mount_tracefs,
        ..Options::default()
    };
    if let Err(why) = mmun_oracle::probe_with(&opts) {
        eprintln!("mmun oracle: skipped: {why}");
        return Ok(ExitCode::from(UNAVAILABLE));
    }
    let report = mmun_oracle::run_script(&steps, &opts)?;
    let mut out = std::io::stdout().lock();
    write!(out, "{report}")
        .and_then(|()| out.flush())
        .context("writing stdout")?;
    Ok(ExitCode::SUCCESS)
}
