//! The stress harness behind `mmun stress`.
//!
//! Each round builds a fresh address space of the software MMU with a
//! window of mappings (THP-sized anonymous memory, small anonymous pages, a
//! shared memfd), attaches the three reference secondaries, and lets the
//! threads loose: accessors use random pages through random secondaries
//! (faulting them in on a miss, then using them again), while mutators
//! unmap and remap, protect, move, advise, fork, migrate, merge, take pages
//! exclusively, reclaim and age. The round ends with the OOM reaper
//! (sometimes) and exit while the accessors go on; then the next round
//! starts. Every use of a secondary translation is checked by the
//! [`Coherence`](mmun_secondary::Coherence) oracle.
//!
//! With an injected [`Bug`], the secondary carrying it
//! is built broken and the run stops at the first violation: the report
//! says how long detection took, and holds the recent operations of every
//! thread as a script.

#![forbid(unsafe_code)]

mod accessor;
pub mod config;
mod crew;
mod fleet;
pub mod kind;
mod layout;
mod mutator;
mod racer;
pub mod report;
pub mod rng;
mod round;
pub mod script;
mod settle;
mod shared;
mod slow;
pub mod trace;
mod watchdog;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mmun_secondary::Bug;

pub use config::{ConfigError, DEFAULT_SECONDS, MAX_ROUND_OPS, StressConfig};
pub use kind::{OpCounts, OpKind};
pub use report::{SecondaryReport, StressReport};
pub use trace::Trace;

use crate::crew::Crew;
use crate::round::{Plan, RoundOut};
use crate::shared::Shared;

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum StressError {
    /// A bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A secondary could not be attached to a round's address space.
    #[error("attaching the {secondary} secondary: {reason}")]
    Attach {
        /// Which.
        secondary: &'static str,
        /// Why.
        reason: String,
    },
}

/// Where a run is, for a progress bar.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Time since the start.
    pub elapsed: Duration,
    /// Operations so far.
    pub ops: u64,
    /// Rounds started.
    pub rounds: u64,
    /// Violations so far.
    pub violations: u64,
    /// How far along the run is, 0 to 1, by time or operations, whichever
    /// is further.
    pub fraction: f64,
}

/// How often the progress callback is called, at most.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// Runs the harness until the time or operation budget is spent (or the
/// first violation, if so configured), calling `progress` now and then.
///
/// # Errors
///
/// [`StressError`] if the configuration is invalid or a secondary cannot
/// be attached.
pub fn run(
    config: &StressConfig,
    progress: impl FnMut(&Progress),
) -> Result<StressReport, StressError> {
    run_until(config, &AtomicBool::new(false), progress)
}

/// [`run`], ending early (the round in progress still ends with its exit)
/// once `interrupt` is set, e.g. by a Ctrl-C handler; the report covers
/// what ran until then.
///
/// # Errors
///
/// As [`run`].
pub fn run_until(
    config: &StressConfig,
    interrupt: &AtomicBool,
    mut progress: impl FnMut(&Progress),
) -> Result<StressReport, StressError> {
    config.validate()?;
    let shared = Shared::new(config);
    let plan = plan(config);
    let done = AtomicBool::new(false);
    let mut totals = Totals::default();
    let result = std::thread::scope(|s| {
        s.spawn(|| watchdog::watch(&shared, &done));
        // Dismissed even if a thread's panic unwinds through here.
        let _dismiss = watchdog::Dismiss(&done);
        rounds(&shared, &plan, interrupt, &mut progress, &mut totals)
    });
    let rounds = result?;
    Ok(summarise(&shared, rounds, totals))
}

/// What the rounds did, summed as they end.
#[derive(Debug, Default)]
struct Totals {
    ops: OpCounts,
    after_exit: u64,
    secondaries: Vec<SecondaryReport>,
    trace: Option<Trace>,
}

impl Totals {
    fn add(&mut self, shared: &Shared, number: u64, round: RoundOut) {
        for (name, counters) in round.counters {
            match self.secondaries.iter_mut().find(|s| s.name == name) {
                Some(s) => s.counters += counters,
                None => self.secondaries.push(SecondaryReport { name, counters }),
            }
        }
        for out in &round.outs {
            self.ops += out.counts;
            self.after_exit += out.after_exit;
        }
        let first = shared.first_violation.get();
        if self.trace.is_none() && first.is_some_and(|&(_, r)| r == number) {
            let rings = round.outs.into_iter().map(|o| o.ring);
            self.trace = Some(Trace::merge(number, rings));
        }
    }
}

/// Runs rounds until the budget is spent; returns how many ran, and
/// adds what they did to `totals`.
fn rounds(
    shared: &Shared,
    plan: &Plan,
    interrupt: &AtomicBool,
    progress: &mut dyn FnMut(&Progress),
    totals: &mut Totals,
) -> Result<u64, StressError> {
    std::thread::scope(|scope| {
        let mut crew = Crew::start(scope, &shared.config, plan);
        let mut last_report = Duration::ZERO;
        let mut number = 0;
        while !shared.stopping() {
            shared.round.store(number, Ordering::Relaxed);
            let mut tick = || {
                check_budget(shared, interrupt);
                let now = shared.now();
                if now >= last_report + PROGRESS_EVERY {
                    last_report = now;
                    progress(&progress_of(shared, number + 1));
                }
            };
            let out = round::run(shared, number, plan, &mut crew, &mut tick)?;
            shared.check_violations();
            totals.add(shared, number, out);
            number += 1;
            check_budget(shared, interrupt);
        }
        progress(&progress_of(shared, number));
        Ok(number)
    })
}

fn check_budget(shared: &Shared, interrupt: &AtomicBool) {
    if interrupt.load(Ordering::Relaxed) {
        shared.stop.store(true, Ordering::Relaxed);
    }
    let config = &shared.config;
    let timed_out = config.time_limit().is_some_and(|t| shared.now() >= t);
    let spent = config
        .ops
        .is_some_and(|n| shared.ops.load(Ordering::Relaxed) >= n);
    if timed_out || spent {
        shared.stop.store(true, Ordering::Relaxed);
    }
}

fn progress_of(shared: &Shared, rounds: u64) -> Progress {
    let config = &shared.config;
    let elapsed = shared.now();
    let ops = shared.ops.load(Ordering::Relaxed);
    let by_time = config
        .time_limit()
        .map_or(0.0, |t| elapsed.as_secs_f64() / t.as_secs_f64());
    let by_ops = config.ops.map_or(0.0, |n| ops as f64 / n as f64);
    Progress {
        elapsed,
        ops,
        rounds,
        violations: shared.coherence.violation_count(),
        fraction: by_time.max(by_ops).min(1.0),
    }
}

/// The knobs of every round: the mutators' weights, how often the OOM
/// reaper runs, how often walks race or wait — biased towards what exposes
/// an injected bug.
fn plan(config: &StressConfig) -> Plan {
    let mut plan = Plan {
        weights: mutator::WEIGHTS.iter().map(|&(_, w)| w).collect(),
        oom_percent: 25,
        race_percent: 50,
        slow_every: 128,
        slow_use_every: 128,
        aim_percent: 0,
    };
    match config.inject {
        Some(Bug::IgnoreNonBlocking) => plan.oom_percent = 100,
        Some(Bug::SkipForeignOwner) => {
            boost(&mut plan, &[OpKind::MigrateDevice, OpKind::Exclusive]);
            plan.slow_every = 16;
        }
        // A fault that programs before its retry check leaves a stale entry
        // when the retry then fails: after a protection change or an unmap.
        // Aimed at the page a slow walk holds, so that its retry fails
        // there and not on some other page.
        Some(Bug::ProgramBeforeRetry) => {
            boost(&mut plan, &[OpKind::Mprotect, OpKind::Munmap]);
            plan.slow_every = 16;
            plan.aim_percent = 50;
        }
        Some(bug) if bug.secondary() == "device-mirror" => plan.slow_every = 16,
        Some(bug) if bug.secondary() == "rcache" => plan.slow_use_every = 32,
        _ => {}
    }
    plan
}

/// Makes `kinds` four times as likely.
fn boost(plan: &mut Plan, kinds: &[OpKind]) {
    for (weight, (kind, _)) in plan.weights.iter_mut().zip(mutator::WEIGHTS) {
        if kinds.contains(&kind) {
            *weight *= 4;
        }
    }
}

fn summarise(shared: &Shared, rounds: u64, totals: Totals) -> StressReport {
    let config = &shared.config;
    StressReport {
        seed: config.seed,
        inject: config.inject,
        threads: (config.accessors, config.mutators),
        elapsed: shared.now(),
        rounds,
        ops: totals.ops,
        after_exit: totals.after_exit,
        secondaries: totals.secondaries,
        checks: shared.coherence.checks(),
        inconclusive: shared.coherence.inconclusive(),
        violation_count: shared.coherence.violation_count(),
        violations: shared.coherence.violations(),
        first_violation: shared.first_violation.get().copied(),
        trace: totals.trace,
    }
}
