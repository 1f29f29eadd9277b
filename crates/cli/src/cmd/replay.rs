//! `mmun replay SCRIPT`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use mmun_softmmu::replay::Replayer;

/// Arguments of `mmun replay`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The script (see the address-space script format); `-` for stdin.
    script: PathBuf,
    /// Also print every notifier callback: event, range, flags, owner,
    /// starts and ends, young calls.
    #[arg(long)]
    events: bool,
}

pub(crate) fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let text = super::read_input(&args.script)?;
    let steps =
        mmun_script::parse_script(&text).with_context(|| format!("{}", args.script.display()))?;
    let replayer = Replayer::new();
    let mut out = std::io::stdout().lock();
    for step in &steps {
        let trace = replayer.step(step);
        write!(out, "{}", trace.report)?;
        if args.events {
            for call in &trace.callbacks {
                writeln!(out, "    | {call}")?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
