//! One round: map the window, attach the secondaries, let the threads
//! loose, then (sometimes) OOM-reap and exit while the accessors go on.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mmun_script::Op;
use mmun_softmmu::{AddressSpace, Config, Memory, ThpMode};

use crate::StressError;
use crate::crew::Crew;
use crate::fleet::Fleet;
use crate::kind::OpKind;
use crate::layout::Layout;
use crate::rng::Rng;
use crate::settle::{Countdown, Settle};
use crate::shared::{Out, Round, Shared};
use crate::slow::SlowWalks;
use crate::trace::{Actor, Entry};

/// How often the main thread looks at the clock and reports progress.
const POLL: Duration = Duration::from_millis(1);

/// What a round leaves behind.
#[derive(Debug)]
pub(crate) struct RoundOut {
    /// Every thread's counts and ring, the main thread's first.
    pub(crate) outs: Vec<Out>,
    /// The secondaries' counters.
    pub(crate) counters: Vec<(&'static str, mmun_secondary::Counters)>,
}

/// The per-round knobs the run chooses.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// Mutator weights (see [`mutator::WEIGHTS`]).
    pub(crate) weights: Vec<u32>,
    /// Percent of rounds that run the OOM reaper before exit.
    pub(crate) oom_percent: u64,
    /// Percent of mutator operations that race a walk with their
    /// invalidation (see the racer).
    pub(crate) race_percent: u64,
    /// One device-mirror fault attempt in this many waits for a mutator
    /// between its walk and its commit (see [`SlowWalks`]).
    pub(crate) slow_every: u64,
    /// One registration-cache use in this many waits, with its use
    /// reference held, for a mutator (see [`SlowWalks::use_hook`]).
    pub(crate) slow_use_every: u64,
    /// Percent of mutator operations aimed at the page a slow
    /// device-mirror walk holds, when one does (see [`SlowWalks`]).
    pub(crate) aim_percent: u64,
}

/// Runs round `number` with `crew`'s threads; `tick` is called every
/// millisecond or so.
pub(crate) fn run<'r>(
    run: &'r Shared,
    number: u64,
    plan: &Plan,
    crew: &mut Crew<'_, 'r>,
    tick: &mut dyn FnMut(),
) -> Result<RoundOut, StressError> {
    let config = &run.config;
    let mut main = Out::new(Actor::Main, config.window);
    let memory = Arc::new(Memory::new());
    let space = Arc::new(AddressSpace::with_config(
        Arc::clone(&memory),
        Config {
            thp: ThpMode::Madvise,
            thp_zero_page: true,
        },
    ));
    let layout = Layout::new(&memory);
    for (op, result) in layout.map_all(&space) {
        let kind = match op {
            Op::Mmap { .. } => OpKind::Mmap,
            _ => OpKind::Madvise,
        };
        main.record(run, kind, run.now(), Entry::Step(op, result.err()));
    }
    let slow = SlowWalks::new(plan.slow_every, plan.slow_use_every);
    let fleet = Fleet::build(
        &space,
        &run.coherence,
        config.inject,
        layout.span(),
        slow.clone(),
    )?;
    let round = Arc::new(Round {
        number,
        run,
        space,
        layout,
        fleet,
        slow,
        settle: Settle::default(),
        mutating: Countdown::new(config.mutators),
        exiting: AtomicBool::new(false),
        over: AtomicBool::new(false),
    });
    let mut rng = Rng::new(config.seed, number, u64::MAX);
    crew.begin(&round);
    // A mutator that panicked never counts down.
    while !round.mutating.wait_for_zero(POLL) && !crew.a_mutator_died() {
        beat(run, &mut main, tick);
    }
    if rng.chance(plan.oom_percent) {
        let at = run.now();
        round.space.oom_reap();
        round.slow.mutated();
        main.record(run, OpKind::OomReap, at, Entry::Step(Op::OomReap, None));
        settle(&round, false, &mut main, tick);
    }
    let at = run.now();
    round.exiting.store(true, Ordering::Relaxed);
    round.space.exit();
    round.slow.mutated();
    main.record(run, OpKind::Exit, at, Entry::Step(Op::Exit, None));
    settle(&round, true, &mut main, tick);
    round.over.store(true, Ordering::Relaxed);
    let mut outs = vec![main];
    outs.extend(crew.collect());
    Ok(RoundOut {
        outs,
        counters: round.fleet.counters(),
    })
}

/// The main thread's heartbeat while it waits: beat, check the oracle,
/// report.
fn beat(run: &Shared, main: &mut Out, tick: &mut dyn FnMut()) {
    main.publish(run);
    run.check_violations();
    tick();
}

/// Lets the accessors run into what the last operation left.
fn settle(round: &Round<'_>, last: bool, main: &mut Out, tick: &mut dyn FnMut()) {
    let run = round.run;
    round.slow.set_settling(true);
    round.settle.run(run.config.accessors, last);
    round.slow.set_settling(false);
    main.publish(run);
    run.check_violations();
    tick();
}
