//! `mmun stress`: threads fault and access through the reference
//! secondaries while others change the address space under them.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::ValueEnum;
use clap::builder::PossibleValue;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mmun_secondary::Bug;
use mmun_stress::{Progress, StressConfig, StressReport};

/// Accessor entries of the trace printed to the terminal (the
/// `--trace-out` file has them all).
const TAIL: usize = 24;

/// Arguments of `mmun stress`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Run for this many seconds (default 10 unless --ops is given).
    #[arg(long, value_name = "N")]
    seconds: Option<f64>,
    /// Stop after about this many operations (of every kind).
    #[arg(long, value_name = "N")]
    ops: Option<u64>,
    /// Seeds every thread's choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Threads accessing and faulting through the secondaries.
    #[arg(long, default_value_t = 2, value_name = "N")]
    accessors: usize,
    /// Threads changing the address space.
    #[arg(long, default_value_t = 1, value_name = "N")]
    mutators: usize,
    /// Run the secondary that carries BUG deliberately broken and stop at
    /// the first violation (which proves the oracle can fail).
    #[arg(long, value_name = "BUG")]
    inject: Option<BugArg>,
    /// Mutator operations per round (each round ends with exit).
    #[arg(long, default_value_t = 100, value_name = "N")]
    round_ops: u64,
    /// Recent operations each thread keeps for the trace.
    #[arg(long, default_value_t = 512, value_name = "N")]
    window: usize,
    /// Write the violations and the whole trace to this file.
    #[arg(long, value_name = "PATH")]
    trace_out: Option<PathBuf>,
    /// Abort when a thread makes no progress for this many seconds.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    stall: u64,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

/// A [`Bug`] as a command-line value, so that `--help` lists them all.
#[derive(Debug, Clone, Copy)]
struct BugArg(Bug);

const BUGS: [BugArg; Bug::ALL.len()] = {
    let mut out = [BugArg(Bug::ALL[0]); Bug::ALL.len()];
    let mut i = 0;
    while i < out.len() {
        out[i] = BugArg(Bug::ALL[i]);
        i += 1;
    }
    out
};

impl ValueEnum for BugArg {
    fn value_variants<'a>() -> &'a [Self] {
        &BUGS
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(self.0.name()).help(self.0.describe()))
    }
}

pub(crate) fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let config = StressConfig {
        seconds: args.seconds,
        ops: args.ops,
        seed: args.seed,
        accessors: args.accessors,
        mutators: args.mutators,
        inject: args.inject.map(|b| b.0),
        round_ops: args.round_ops,
        window: args.window,
        stall: Duration::from_secs(args.stall),
        ..StressConfig::default()
    };
    config.validate()?;
    let interrupted = interrupt_on_ctrl_c()?;
    let bar = progress_bar(args.quiet);
    let report = mmun_stress::run_until(&config, interrupted, |p| show(&bar, p))?;
    bar.finish_and_clear();
    let mut out = std::io::stdout().lock();
    let interrupted = interrupted.load(Ordering::Relaxed);
    let code = print_report(&mut out, &report, interrupted, args.trace_out.as_deref())?;
    out.flush().context("writing stdout")?;
    Ok(code)
}

/// Exit status after Ctrl-C: 128 + SIGINT, as a shell reports it.
const INTERRUPTED: u8 = 130;

/// A flag the first Ctrl-C sets (the run then stops and reports what it
/// measured); a second one exits at once.
fn interrupt_on_ctrl_c() -> anyhow::Result<&'static AtomicBool> {
    static INTERRUPTED_FLAG: AtomicBool = AtomicBool::new(false);
    ctrlc::set_handler(|| {
        if INTERRUPTED_FLAG.swap(true, Ordering::Relaxed) {
            std::process::exit(i32::from(INTERRUPTED));
        }
    })
    .context("installing the Ctrl-C handler")?;
    Ok(&INTERRUPTED_FLAG)
}

fn print_report(
    out: &mut impl Write,
    report: &StressReport,
    interrupted: bool,
    trace_out: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let stdout = |r: std::io::Result<()>| r.context("writing stdout");
    if interrupted {
        stdout(writeln!(out, "# interrupted: what ran until Ctrl-C"))?;
    }
    stdout(write!(out, "{report}"))?;
    if !report.is_clean() {
        stdout(writeln!(out))?;
        stdout(write!(out, "{}", report.violation_report(Some(TAIL))))?;
        if let Some(path) = trace_out {
            write_trace(path, report)?;
            stdout(writeln!(out, "# full trace written to {}", path.display()))?;
        }
    }
    Ok(match (interrupted, report.is_clean()) {
        (true, _) => ExitCode::from(INTERRUPTED),
        (false, true) => ExitCode::SUCCESS,
        (false, false) => ExitCode::from(1),
    })
}

fn write_trace(path: &Path, report: &StressReport) -> anyhow::Result<()> {
    std::fs::write(path, report.violation_report(None))
        .with_context(|| format!("writing {}", path.display()))
}

fn progress_bar(quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(1000), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template("{elapsed:>4} [{bar:30}] {wide_msg}")
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

fn show(bar: &ProgressBar, p: &Progress) {
    bar.set_position((p.fraction * 1000.0) as u64);
    let rate = p.ops as f64 / p.elapsed.as_secs_f64().max(1e-9);
    bar.set_message(format!(
        "{} ops ({rate:.0}/s), round {}, {} violations",
        p.ops, p.rounds, p.violations
    ));
}
