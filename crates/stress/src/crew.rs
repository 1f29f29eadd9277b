//! The accessor and mutator threads, started once per run and handed one
//! round after another.
//!
//! Spawning them per round cost each round four thread creations and
//! exits: a stack mapped, guarded, advised away and unmapped, the last
//! with a TLB shootdown of the other CPU; about 4 % of a two-core run,
//! spent on the harness rather than on the code under test.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::{Scope, ScopedJoinHandle};

use crate::rng::Rng;
use crate::round::Plan;
use crate::shared::{Out, Round};
use crate::trace::Actor;
use crate::{accessor, mutator};

/// The threads of a run, waiting for rounds.
pub(crate) struct Crew<'s, 'r> {
    accessors: Vec<Hand<'s, 'r>>,
    mutators: Vec<Hand<'s, 'r>>,
}

/// One thread: where its rounds go, where its results come back.
struct Hand<'s, 'r> {
    rounds: Sender<Arc<Round<'r>>>,
    outs: Receiver<Out>,
    thread: Option<ScopedJoinHandle<'s, ()>>,
}

impl<'s, 'r> Crew<'s, 'r> {
    /// Starts the configured accessors and mutators in `scope`.
    pub(crate) fn start(
        scope: &'s Scope<'s, '_>,
        config: &crate::config::StressConfig,
        plan: &'s Plan,
    ) -> Self
    where
        'r: 's,
    {
        let accessors = (0..config.accessors)
            .map(|i| Hand::start(scope, Actor::Accessor(i as u8), plan))
            .collect();
        let mutators = (0..config.mutators)
            .map(|i| Hand::start(scope, Actor::Mutator(i as u8), plan))
            .collect();
        Crew {
            accessors,
            mutators,
        }
    }

    /// Hands `round` to every thread.
    pub(crate) fn begin(&self, round: &Arc<Round<'r>>) {
        for hand in self.accessors.iter().chain(&self.mutators) {
            // A thread that died has panicked; `collect` reports it.
            let _ = hand.rounds.send(Arc::clone(round));
        }
    }

    /// Whether a mutator thread died (panicked): its round never counts
    /// down.
    pub(crate) fn a_mutator_died(&self) -> bool {
        self.mutators
            .iter()
            .any(|hand| hand.thread.as_ref().is_none_or(|t| t.is_finished()))
    }

    /// Every thread's results of the round, accessors first; re-raises the
    /// panic of a thread that died.
    pub(crate) fn collect(&mut self) -> Vec<Out> {
        self.accessors
            .iter_mut()
            .chain(&mut self.mutators)
            .map(Hand::result)
            .collect()
    }
}

impl<'s, 'r> Hand<'s, 'r> {
    fn start(scope: &'s Scope<'s, '_>, actor: Actor, plan: &'s Plan) -> Self
    where
        'r: 's,
    {
        let (rounds, inbox) = channel::<Arc<Round<'r>>>();
        let (outbox, outs) = channel();
        let thread = scope.spawn(move || {
            while let Ok(round) = inbox.recv() {
                // The round is dropped before its results go back, so the
                // main thread, once it has every result, holds the last
                // reference and tears the round down itself.
                let out = play(round, actor, plan);
                if outbox.send(out).is_err() {
                    return;
                }
            }
        });
        Hand {
            rounds,
            outs,
            thread: Some(thread),
        }
    }

    fn result(&mut self) -> Out {
        if let Ok(out) = self.outs.recv() {
            return out;
        }
        let thread = self.thread.take().expect("a dead thread is reported once");
        match thread.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("a crew thread left while its round was running"),
        }
    }
}

/// One thread's part of one round.
fn play(round: Arc<Round<'_>>, actor: Actor, plan: &Plan) -> Out {
    let config = &round.run.config;
    let out = Out::new(actor, config.window);
    match actor {
        Actor::Accessor(i) => {
            let mut rng = Rng::new(config.seed, round.number, u64::from(i));
            let mut out = out;
            accessor::run(&round, &mut rng, &mut out);
            out
        }
        Actor::Mutator(i) => {
            let rng = Rng::new(config.seed, round.number, 1000 + u64::from(i));
            let quota = config.round_ops.div_ceil(config.mutators as u64);
            mutator::run(&round, rng, out, quota, plan)
        }
        Actor::Main => unreachable!("the main thread is not in the crew"),
    }
}
