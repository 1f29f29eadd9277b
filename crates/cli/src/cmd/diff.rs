//! `mmun diff SCRIPT`: the software MMU against Linux, step by step.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use mmun_oracle::Options;
use mmun_replay::replay_report;
use mmun_script::Report;

/// Arguments of `mmun diff`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The script; `-` for stdin.
    script: PathBuf,
    /// Compare against this recorded report instead of running the kernel.
    #[arg(long, value_name = "REPORT")]
    against: Option<PathBuf>,
    /// Mount tracefs at /sys/kernel/tracing if needed (kernel runs only).
    #[arg(long)]
    mount_tracefs: bool,
}

pub(crate) fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let steps = super::load_script(&args.script)?;
    let linux = match &args.against {
        Some(path) => {
            let text = super::read_input(path)?;
            Report::parse(&text)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("{}", path.display()))?
        }
        None => {
            let opts = Options {
                mount_tracefs: args.mount_tracefs,
                ..Options::default()
            };
            if let Err(why) = mmun_oracle::probe_with(&opts) {
                eprintln!(
                    "mmun diff: skipped: {why} (use --against REPORT to compare with a recording)"
                );
                return Ok(ExitCode::from(super::oracle::UNAVAILABLE));
            }
            mmun_oracle::run_script(&steps, &opts)?
        }
    };
    let softmmu = replay_report(&steps).with_context(|| format!("{}", args.script.display()))?;
    let mut out = std::io::stdout().lock();
    let code = compare(&mut out, &linux, &softmmu, steps.len()).context("writing stdout")?;
    out.flush().context("writing stdout")?;
    Ok(code)
}

/// Prints the verdict: identical, the first step that differs, or a length
/// mismatch.
fn compare(
    out: &mut impl Write,
    linux: &Report,
    softmmu: &Report,
    script_steps: usize,
) -> std::io::Result<ExitCode> {
    let first = linux
        .steps
        .iter()
        .zip(&softmmu.steps)
        .position(|(l, s)| l != s);
    let same = softmmu.steps.len().min(linux.steps.len());
    match first {
        Some(i) => {
            writeln!(out, "first divergence at step {} of {script_steps}:", i + 1)?;
            write!(
                out,
                "--- linux\n{}--- softmmu\n{}",
                linux.steps[i], softmmu.steps[i]
            )?;
            Ok(ExitCode::FAILURE)
        }
        None if linux.steps.len() != softmmu.steps.len() => {
            writeln!(
                out,
                "the reports agree on {same} steps but differ in length ({} vs {})",
                linux.steps.len(),
                softmmu.steps.len()
            )?;
            Ok(ExitCode::FAILURE)
        }
        None => {
            writeln!(out, "identical: {same} steps")?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
