//! `mmun`: the user-facing tools of the workspace.

#![forbid(unsafe_code)]

mod cmd;

use std::process::ExitCode;

use clap::Parser;

/// Linux MMU notifiers, in Rust, for userspace.
#[derive(Debug, Parser)]
#[command(name = "mmun", version, about)]
enum Command {
    /// Run an address-space script on the software MMU and print the report
    /// the kernel oracle would print.
    Replay(cmd::replay::Args),
    /// Run an address-space script on this machine's kernel (root, /dev/kvm
    /// and tracefs needed) and print what its MMU notifier saw.
    Oracle(cmd::oracle::Args),
    /// Run a script on the software MMU and on the kernel (or against a
    /// recorded report) and show the first step where they differ.
    Diff(cmd::diff::Args),
    /// Threads fault and access through the three reference secondaries
    /// while others unmap, protect, move, advise, fork, migrate, merge, take
    /// pages exclusively, reclaim and exit; every use is checked by the
    /// coherence oracle. Exits 1 on any violation.
    Stress(cmd::stress::Args),
    /// Run a command (following forks and execs) with the preload library
    /// and print every invalidation delivered to its notifiers: time,
    /// pid/tid, phase, event, range, source (hook or uffd) and the call;
    /// then a summary by event and source. `--verify-with-kernel` checks
    /// each of the kernel's own invalidations against them (exit 1 on a
    /// missed one).
    Trace(cmd::trace::Args),
    /// The headline measurements side by side in one run: the interposed
    /// munmap against the raw system call, and UCX's hooks and registration
    /// cache on the same work where libucx-dev is installed; medians,
    /// ratios and targets as a table.
    Bench(cmd::bench::Args),
    /// Internal: the stub `mmun trace` starts the command as.
    #[command(name = "__trace-exec", hide = true)]
    TraceExec(cmd::trace::ExecArgs),
}

fn main() -> ExitCode {
    let result = match Command::parse() {
        Command::Replay(args) => cmd::replay::run(&args),
        Command::Oracle(args) => cmd::oracle::run(&args),
        Command::Diff(args) => cmd::diff::run(&args),
        Command::Stress(args) => cmd::stress::run(&args),
        Command::Trace(args) => cmd::trace::run(&args),
        Command::Bench(args) => cmd::bench::run(&args),
        Command::TraceExec(args) => cmd::trace::run_exec(&args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("mmun: {err:#}");
            ExitCode::from(2)
        }
    }
}
