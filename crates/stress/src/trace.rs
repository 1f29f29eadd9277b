//! What each thread did last: a bounded ring per thread, merged by time
//! into a script when a violation is reported.
//!
//! Mutator steps are script lines (`mmun replay` runs them on the software
//! MMU); what accessors and forked children did is kept as comments.

use std::collections::VecDeque;
use std::fmt::{self, Write};
use std::time::Duration;

use mmun_script::Op;
use mmun_secondary::{Access, FaultError};
use mmun_softmmu::Errno;

use crate::script::off;

/// Which thread of the run did something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Actor {
    /// The thread running the rounds: mapping, OOM reaping, exit.
    Main,
    /// An accessor thread.
    Accessor(u8),
    /// A mutator thread.
    Mutator(u8),
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::Main => f.write_str("main"),
            Actor::Accessor(i) => write!(f, "acc{i}"),
            Actor::Mutator(i) => write!(f, "mut{i}"),
        }
    }
}

/// What was done.
#[derive(Debug, Clone)]
pub enum Entry {
    /// A step of the address space, and its error if it failed.
    Step(Op, Option<Errno>),
    /// Something with no script line (a child's doing, a device's own
    /// migration); written as a comment.
    Note(String),
    /// A secondary's access.
    Access {
        /// Which secondary.
        secondary: &'static str,
        /// The address.
        va: u64,
        /// Whether for writing.
        write: bool,
        /// What it found.
        outcome: Access,
    },
    /// A secondary's fault.
    Fault {
        /// Which secondary.
        secondary: &'static str,
        /// The address.
        va: u64,
        /// Whether for writing.
        write: bool,
        /// How it ended.
        result: Result<(), FaultError>,
    },
}

/// One entry, with when (since the run started) and by whom.
#[derive(Debug, Clone)]
pub struct Record {
    /// When it started.
    pub at: Duration,
    /// Who did it.
    pub actor: Actor,
    /// What.
    pub entry: Entry,
}

/// The last `capacity` records of one thread.
#[derive(Debug)]
pub struct Ring {
    capacity: usize,
    records: VecDeque<Record>,
    dropped: u64,
}

impl Ring {
    /// An empty ring keeping at most `capacity` records.
    pub fn new(capacity: usize) -> Ring {
        Ring {
            capacity,
            records: VecDeque::with_capacity(capacity.min(4096)),
            dropped: 0,
        }
    }

    /// Adds a record, forgetting the oldest if full.
    pub fn push(&mut self, record: Record) {
        if self.capacity == 0 {
            self.dropped += 1;
            return;
        }
        if self.records.len() == self.capacity {
            self.records.pop_front();
            self.dropped += 1;
        }
        self.records.push_back(record);
    }
}

/// The merged recent history of a round.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    /// The round it comes from (0-based).
    pub round: u64,
    /// Every kept record, oldest first.
    pub records: Vec<Record>,
    /// Whether older steps were forgotten (then the steps do not start
    /// from the round's beginning). Accessors always forget: they run far
    /// more operations than a ring holds.
    pub truncated: bool,
}

impl Trace {
    /// Merges the rings of a round's threads by time.
    pub fn merge(round: u64, rings: impl IntoIterator<Item = Ring>) -> Trace {
        let mut truncated = false;
        let mut records = Vec::new();
        for ring in rings {
            let steps = ring
                .records
                .iter()
                .any(|r| matches!(r.actor, Actor::Main | Actor::Mutator(_)));
            truncated |= steps && ring.dropped > 0;
            records.extend(ring.records);
        }
        records.sort_by_key(|r| (r.at, r.actor));
        Trace {
            round,
            records,
            truncated,
        }
    }

    /// The steps alone, in order: the script `mmun replay` runs.
    pub fn steps(&self) -> impl Iterator<Item = &Op> {
        self.records.iter().filter_map(|r| match &r.entry {
            Entry::Step(op, _) => Some(op),
            _ => None,
        })
    }
}

impl Trace {
    /// The trace as a script: steps as lines, everything else as comments.
    /// With `accessor_tail`, only that many of the last secondary accesses
    /// and faults are kept (steps and notes always are).
    pub fn render(&self, accessor_tail: Option<usize>) -> String {
        let secondary = |r: &Record| matches!(r.entry, Entry::Access { .. } | Entry::Fault { .. });
        let accesses = self.records.iter().filter(|r| secondary(r)).count();
        let skip = accessor_tail.map_or(0, |tail| accesses.saturating_sub(tail));
        let mut s = format!("# round {} of the run\n", self.round);
        if self.truncated {
            s.push_str("# (older entries were dropped: raise --window)\n");
        }
        if skip > 0 {
            let _ = writeln!(s, "# ({skip} older secondary accesses not shown)");
        }
        let mut seen = 0;
        for r in &self.records {
            if secondary(r) {
                seen += 1;
                if seen <= skip {
                    continue;
                }
            }
            let _ = write_record(&mut s, r);
        }
        s
    }
}

impl fmt::Display for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(None))
    }
}

fn write_record(s: &mut String, r: &Record) -> fmt::Result {
    let when = r.at.as_secs_f64();
    let rw = |write: bool| if write { "w" } else { "r" };
    match &r.entry {
        Entry::Step(op, err) => {
            writeln!(s, "{op}")?;
            if let Some(e) = err {
                writeln!(s, "#   ^ {} {when:.6}: {e}", r.actor)?;
            }
        }
        Entry::Note(text) => writeln!(s, "# {when:.6} {}: {text}", r.actor)?,
        Entry::Access {
            secondary,
            va,
            write,
            outcome,
        } => writeln!(
            s,
            "# {when:.6} {}: {secondary} access {:#x} {} -> {outcome:?}",
            r.actor,
            off(*va),
            rw(*write)
        )?,
        Entry::Fault {
            secondary,
            va,
            write,
            result,
        } => {
            let how = match result {
                Ok(()) => "mapped".to_owned(),
                Err(e) => format!("{e:?}"),
            };
            writeln!(
                s,
                "# {when:.6} {}: {secondary} fault {:#x} {} -> {how}",
                r.actor,
                off(*va),
                rw(*write)
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(at: u64, actor: Actor, entry: Entry) -> Record {
        Record {
            at: Duration::from_micros(at),
            actor,
            entry,
        }
    }

    #[test]
    fn rings_keep_the_last_records_and_traces_parse_as_scripts() {
        let mut a = Ring::new(2);
        for at in [1, 3, 5] {
            a.push(rec(at, Actor::Mutator(0), Entry::Step(Op::Fork, None)));
        }
        let mut b = Ring::new(4);
        b.push(rec(
            4,
            Actor::Accessor(0),
            Entry::Fault {
                secondary: "shadow-mmu",
                va: mmun_script::WINDOW_BASE + 0x1000,
                write: true,
                result: Err(FaultError::Unmapped),
            },
        ));
        b.push(rec(
            6,
            Actor::Main,
            Entry::Step(Op::Exit, Some(Errno::Inval)),
        ));
        let trace = Trace::merge(3, [a, b]);
        assert!(trace.truncated);
        assert_eq!(trace.steps().count(), 3);
        let text = trace.to_string();
        assert!(
            text.contains("shadow-mmu fault 0x1000 w -> Unmapped"),
            "{text}"
        );
        let steps = mmun_script::parse_script(&text).unwrap();
        let ops: Vec<Op> = steps.into_iter().map(|s| s.op).collect();
        assert_eq!(ops, [Op::Fork, Op::Fork, Op::Exit]);
    }
}
