//! What a run found, and the table `mmun stress` prints.

use std::fmt::{self, Write};
use std::time::Duration;

use mmun_secondary::{Bug, Counters, Violation};

use crate::kind::{OpCounts, OpKind};
use crate::trace::Trace;

/// One secondary's counters over the whole run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecondaryReport {
    /// Its name.
    pub name: &'static str,
    /// Its counts, summed over the rounds.
    pub counters: Counters,
}

/// The outcome of [`run`](crate::run).
#[derive(Debug, Clone)]
pub struct StressReport {
    /// The seed.
    pub seed: u64,
    /// The bug injected, if any.
    pub inject: Option<Bug>,
    /// Accessor and mutator threads.
    pub threads: (usize, usize),
    /// Wall-clock time.
    pub elapsed: Duration,
    /// Rounds run (address spaces created and exited).
    pub rounds: u64,
    /// Operations by kind.
    pub ops: OpCounts,
    /// Of `ops`, the accesses and faults begun after their round's address
    /// space began to exit. They only show that released secondaries stay
    /// released, and cost little (a use misses, a fault is refused at
    /// once), so [`StressReport::live_rate`] leaves them out.
    pub after_exit: u64,
    /// Every secondary's counters, in a fixed order.
    pub secondaries: Vec<SecondaryReport>,
    /// Accesses the oracle checked.
    pub checks: u64,
    /// Deferred checks that proved nothing: the primary had changed and the
    /// secondary had dropped the translation by the time it could be read
    /// (see `Coherence::check_after`). Counted, not hidden; the invariant
    /// those uses rely on is checked directly as well.
    pub inconclusive: u64,
    /// Violations the oracle found.
    pub violation_count: u64,
    /// The first violations, in full.
    pub violations: Vec<Violation>,
    /// When the first violation was found (since the start) and in which
    /// round.
    pub first_violation: Option<(Duration, u64)>,
    /// The recent history of the round of the first violation.
    pub trace: Option<Trace>,
}

impl StressReport {
    /// Whether the oracle found nothing.
    pub fn is_clean(&self) -> bool {
        self.violation_count == 0
    }

    /// Operations of `kind` per second.
    pub fn rate(&self, kind: OpKind) -> f64 {
        per_second(self.ops[kind], self.elapsed)
    }

    /// All operations per second.
    pub fn total_rate(&self) -> f64 {
        per_second(self.ops.total(), self.elapsed)
    }

    /// Operations per second begun while their address space was live:
    /// the throughput figure, which the no-op uses after exit cannot
    /// inflate.
    pub fn live_rate(&self) -> f64 {
        per_second(self.ops.total() - self.after_exit, self.elapsed)
    }

    /// The secondaries' counters summed.
    pub fn total(&self) -> Counters {
        let mut sum = Counters::default();
        for s in &self.secondaries {
            sum += s.counters;
        }
        sum
    }

    /// The command line that runs this again.
    pub fn command_line(&self) -> String {
        let mut s = format!("mmun stress --seed {}", self.seed);
        if let Some(bug) = self.inject {
            let _ = write!(s, " --inject {bug}");
        }
        s
    }

    /// The violations, the seed and the trace: what `mmun stress` prints
    /// (and writes with `--trace-out`) when the oracle found something.
    /// `accessor_tail` limits the secondary accesses shown (see
    /// [`Trace::render`]).
    pub fn violation_report(&self, accessor_tail: Option<usize>) -> String {
        let mut s = String::new();
        let _ = self.write_violations(&mut s, accessor_tail);
        s
    }

    fn write_violations(&self, s: &mut String, tail: Option<usize>) -> fmt::Result {
        writeln!(
            s,
            "# {} violation(s); seed {}",
            self.violation_count, self.seed
        )?;
        if let Some((at, round)) = self.first_violation {
            writeln!(s, "# first after {} in round {round}", millis(at))?;
        }
        writeln!(s, "# reproduce: {}", self.command_line())?;
        for v in &self.violations {
            writeln!(s, "# violation: {v}")?;
        }
        if let Some(trace) = &self.trace {
            writeln!(
                s,
                "# recent operations (steps replay with `mmun replay`; the rest are comments):"
            )?;
            s.push_str(&trace.render(tail));
        }
        Ok(())
    }
}

impl fmt::Display for StressReport {
    /// The table: operations by kind, the secondaries, the oracle.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "seed {}, {:.2} s, {} rounds, {} accessors, {} mutators{}",
            self.seed,
            self.elapsed.as_secs_f64(),
            self.rounds,
            self.threads.0,
            self.threads.1,
            self.inject
                .map(|b| format!(", injected bug {b}"))
                .unwrap_or_default()
        )?;
        writeln!(f)?;
        writeln!(f, "{:<16} {:>12} {:>12}", "operation", "count", "ops/s")?;
        for (kind, count) in self.ops.iter() {
            writeln!(
                f,
                "{:<16} {count:>12} {:>12.0}",
                kind.name(),
                self.rate(kind)
            )?;
        }
        let total = self.ops.total();
        writeln!(f, "{:<16} {total:>12} {:>12.0}", "total", self.total_rate())?;
        let after = self.after_exit;
        let after_rate = per_second(after, self.elapsed);
        writeln!(f, "{:<16} {after:>12} {after_rate:>12.0}", "  after exit")?;
        let live = total - after;
        writeln!(f, "{:<16} {live:>12} {:>12.0}", "  live", self.live_rate())?;
        writeln!(f)?;
        writeln!(
            f,
            "{:<14} {:>10} {:>9} {:>7} {:>13} {:>11} {:>10}",
            "secondary", "faults", "retries", "retry%", "invalidations", "hits", "misses"
        )?;
        for s in &self.secondaries {
            counters_row(f, s.name, &s.counters)?;
        }
        counters_row(f, "total", &self.total())?;
        writeln!(f)?;
        writeln!(f, "coherence checks {}", self.checks)?;
        writeln!(f, "inconclusive     {}", self.inconclusive)?;
        write!(f, "violations       {}", self.violation_count)?;
        if let Some((at, round)) = self.first_violation {
            write!(f, " (first after {} in round {round})", millis(at))?;
        }
        writeln!(f)
    }
}

fn counters_row(f: &mut fmt::Formatter<'_>, name: &str, c: &Counters) -> fmt::Result {
    let attempts = c.faults + c.retries;
    let rate = if attempts == 0 {
        0.0
    } else {
        100.0 * c.retries as f64 / attempts as f64
    };
    writeln!(
        f,
        "{name:<14} {:>10} {:>9} {rate:>6.2}% {:>13} {:>11} {:>10}",
        c.faults, c.retries, c.invalidations, c.hits, c.misses
    )
}

fn per_second(count: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 { count as f64 / secs } else { 0.0 }
}

/// A duration in milliseconds, for detection times.
fn millis(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}
