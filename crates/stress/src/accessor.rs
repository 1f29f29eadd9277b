//! Accessor threads: use pages through the secondaries, fault them in on a
//! miss, and use them again.

use mmun_secondary::{Access, FaultError, Secondary};

use crate::kind::OpKind;
use crate::rng::Rng;
use crate::shared::{Out, Round};
use crate::trace::Entry;

/// Accesses and faults through random secondaries at random pages until
/// the round is over, or the run (then the ring still ends with what led
/// to a violation).
pub(crate) fn run(round: &Round<'_>, rng: &mut Rng, out: &mut Out) {
    let secondaries = round.fleet.secondaries();
    while round.active() && !round.run.stopping() {
        let secondary = &**rng.pick(secondaries);
        let va = round.layout.pick_page(rng);
        let write = rng.chance(50);
        // After a fault the device uses the page again, whether the fault
        // mapped it or not: after a failed one the use must miss, and a
        // device that left something in its table there is checked now
        // rather than whenever the page comes up again.
        if access(round, out, secondary, va, write) == Access::Miss {
            fault(round, out, secondary, va, write);
            access(round, out, secondary, va, write);
        }
    }
    out.publish(round.run);
}

fn access(
    round: &Round<'_>,
    out: &mut Out,
    secondary: &dyn Secondary,
    va: u64,
    write: bool,
) -> Access {
    let at = round.run.now();
    let outcome = secondary.access(va, write);
    let entry = Entry::Access {
        secondary: secondary.name(),
        va,
        write,
        outcome,
    };
    out.record(round.run, OpKind::Access, at, entry);
    if outcome == Access::Hit {
        round.run.check_violations();
    }
    outcome
}

fn fault(round: &Round<'_>, out: &mut Out, secondary: &dyn Secondary, va: u64, write: bool) {
    let at = round.run.now();
    let result = secondary.fault(va, write);
    let entry = Entry::Fault {
        secondary: secondary.name(),
        va,
        write,
        result,
    };
    out.record(round.run, OpKind::Fault, at, entry);
    if result == Err(FaultError::Released) {
        // The round is ending: leave the processor to the thread ending it.
        std::thread::yield_now();
    }
}
