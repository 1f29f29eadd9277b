//! State the threads of a run share: the stop flag, the operation count,
//! the oracle, the watchdog's heartbeats; and per round the address space,
//! its layout and the secondaries.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use mmun_secondary::Coherence;
use mmun_softmmu::AddressSpace;

use crate::config::StressConfig;
use crate::fleet::Fleet;
use crate::kind::{OpCounts, OpKind};
use crate::layout::Layout;
use crate::trace::{Actor, Entry, Record, Ring};

/// Operations a thread counts before publishing them.
const BATCH: u64 = 64;

/// Run-wide state.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: StressConfig,
    pub(crate) start: Instant,
    pub(crate) stop: AtomicBool,
    /// Operations so far (published in batches).
    pub(crate) ops: AtomicU64,
    pub(crate) coherence: Arc<Coherence>,
    pub(crate) first_violation: OnceLock<(Duration, u64)>,
    /// The round being run.
    pub(crate) round: AtomicU64,
    /// One heartbeat per thread slot: the main thread, then the accessors,
    /// then the mutators.
    pub(crate) beats: Vec<AtomicU64>,
}

impl Shared {
    pub(crate) fn new(config: &StressConfig) -> Shared {
        let slots = 1 + config.accessors + config.mutators;
        Shared {
            config: config.clone(),
            start: Instant::now(),
            stop: AtomicBool::new(false),
            ops: AtomicU64::new(0),
            coherence: Arc::new(Coherence::new()),
            first_violation: OnceLock::new(),
            round: AtomicU64::new(0),
            beats: (0..slots).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Time since the run started.
    pub(crate) fn now(&self) -> Duration {
        self.start.elapsed()
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// The heartbeat slot of `actor`.
    pub(crate) fn slot(&self, actor: Actor) -> usize {
        match actor {
            Actor::Main => 0,
            Actor::Accessor(i) => 1 + usize::from(i),
            Actor::Mutator(i) => 1 + self.config.accessors + usize::from(i),
        }
    }

    /// Notes the first violation the oracle found (time and round), and
    /// stops the run if asked to.
    pub(crate) fn check_violations(&self) -> bool {
        if self.coherence.violation_count() == 0 {
            return false;
        }
        let round = self.round.load(Ordering::Relaxed);
        self.first_violation.get_or_init(|| (self.now(), round));
        if self.config.stop_on_violation {
            self.stop.store(true, Ordering::Relaxed);
        }
        true
    }
}

/// One round: a fresh address space with its secondaries.
#[derive(Debug)]
pub(crate) struct Round<'a> {
    pub(crate) number: u64,
    pub(crate) run: &'a Shared,
    pub(crate) space: Arc<AddressSpace>,
    pub(crate) layout: Layout,
    pub(crate) fleet: Fleet,
    pub(crate) slow: crate::slow::SlowWalks,
    /// The settle the main thread is waiting for, if any.
    pub(crate) settle: crate::settle::Settle,
    /// Mutators still running.
    pub(crate) mutating: crate::settle::Countdown,
    /// Set just before the round's address space exits.
    pub(crate) exiting: AtomicBool,
    /// Set when the round's address space has exited and settled.
    pub(crate) over: AtomicBool,
}

impl Round<'_> {
    /// Whether accessors should go on.
    pub(crate) fn active(&self) -> bool {
        !self.over.load(Ordering::Relaxed)
    }

    /// Whether the address space has begun to exit: from then on the
    /// secondaries are released and accessors only check that they stay so.
    pub(crate) fn exiting(&self) -> bool {
        self.exiting.load(Ordering::Relaxed)
    }
}

/// What one thread did in a round.
#[derive(Debug)]
pub(crate) struct Out {
    pub(crate) actor: Actor,
    pub(crate) counts: OpCounts,
    /// Of `counts`, the operations begun after the address space began to
    /// exit (accessors only: uses and faults of released secondaries).
    pub(crate) after_exit: u64,
    pub(crate) ring: Ring,
    unpublished: u64,
}

impl Out {
    pub(crate) fn new(actor: Actor, window: usize) -> Out {
        Out {
            actor,
            counts: OpCounts::default(),
            after_exit: 0,
            ring: Ring::new(window),
            unpublished: 0,
        }
    }

    /// Records `entry`, started at `at`, as one operation of `kind`.
    pub(crate) fn record(&mut self, run: &Shared, kind: OpKind, at: Duration, entry: Entry) {
        self.counts.bump(kind);
        self.ring.push(Record {
            at,
            actor: self.actor,
            entry,
        });
        self.unpublished += 1;
        if self.unpublished >= BATCH {
            self.publish(run);
        }
    }

    /// Adds what this thread did to the run's count and beats its heart.
    pub(crate) fn publish(&mut self, run: &Shared) {
        run.ops.fetch_add(self.unpublished, Ordering::Relaxed);
        self.unpublished = 0;
        run.beats[run.slot(self.actor)].fetch_add(1, Ordering::Relaxed);
    }
}
