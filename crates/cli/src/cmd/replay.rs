//! `mmun replay SCRIPT`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use std::sync::Arc;

use anyhow::Context;
use mmun_replay::{Replayer, StepTrace};
use mmun_softmmu::Memory;

/// Arguments of `mmun replay`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The script (see the address-space script format); `-` for stdin.
    script: PathBuf,
    /// Also print every notifier callback: event, range, flags, owner,
    /// starts and ends, young calls.
    #[arg(long)]
    events: bool,
    #[command(flatten)]
    machine: super::MachineArgs,
}

pub(crate) fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let text = super::read_input(&args.script)?;
    let steps =
        mmun_script::parse_script(&text).with_context(|| format!("{}", args.script.display()))?;
    mmun_script::check_window(&steps)?;
    let memory = Memory::with_bytes(args.machine.memory.bytes());
    let replayer = Replayer::with_memory(Arc::new(memory));
    replayer.set_max_map_count(args.machine.max_map_count);
    let mut out = std::io::stdout().lock();
    for step in &steps {
        let trace = match replayer.step(step) {
            Ok(trace) => trace,
            Err(e) => {
                out.flush().context("writing stdout")?;
                return Err(anyhow::Error::new(e).context(format!("{}", args.script.display())));
            }
        };
        print_step(&mut out, &trace, args.events).context("writing stdout")?;
    }
    out.flush().context("writing stdout")?;
    Ok(ExitCode::SUCCESS)
}

fn print_step(out: &mut impl Write, trace: &StepTrace, events: bool) -> std::io::Result<()> {
    write!(out, "{}", trace.report)?;
    if events {
        for call in &trace.callbacks {
            writeln!(out, "    | {call}")?;
        }
    }
    Ok(())
}
