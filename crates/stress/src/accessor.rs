//! Accessor threads: use pages through the secondaries, fault them in on a
//! miss, and use them again.

use mmun_secondary::{Access, FaultError, Secondary};

use crate::kind::OpKind;
use crate::rng::Rng;
use crate::settle::Debt;
use crate::shared::{Out, Round};
use crate::trace::Entry;

/// Accesses and faults through random secondaries at random pages until
/// the round is over (the accessor has run its share into what exit
/// left), or the run is (then the ring still ends with what led to a
/// violation).
pub(crate) fn run(round: &Round<'_>, rng: &mut Rng, out: &mut Out) {
    let secondaries = round.fleet.secondaries();
    let mut debt = Debt::default();
    while round.active() && !round.run.stopping() {
        let exiting = round.exiting();
        let settle = round.settle.epoch();
        let counted = out.counts.total();
        let secondary = &**rng.pick(secondaries);
        let released = use_or_fault(round, rng, out, secondary);
        let ops = out.counts.total() - counted;
        if exiting {
            out.after_exit += ops;
        }
        if debt.track(&round.settle, settle, ops) {
            break;
        }
        if released {
            // Exit is tearing the address space down: let it have the
            // processor until it is done and its settle begins.
            round.settle.wait_for_last();
        }
    }
    out.publish(round.run);
}

/// Uses a random page through `secondary`, faulting it in on a miss;
/// returns whether the fault found the secondary released.
fn use_or_fault(
    round: &Round<'_>,
    rng: &mut Rng,
    out: &mut Out,
    secondary: &dyn Secondary,
) -> bool {
    let va = round.layout.pick_page(rng);
    let write = rng.chance(50);
    if access(round, out, secondary, va, write) == Access::Hit {
        return false;
    }
    let result = fault(round, out, secondary, va, write);
    // After a fault the device uses the page again, whether the fault
    // mapped it or not: after a failed one the use must miss, and a
    // device that left something in its table there is checked now
    // rather than whenever the page comes up again.
    access(round, out, secondary, va, write);
    result == Err(FaultError::Released)
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

fn fault(
    round: &Round<'_>,
    out: &mut Out,
    secondary: &dyn Secondary,
    va: u64,
    write: bool,
) -> Result<(), FaultError> {
    let at = round.run.now();
    let result = secondary.fault(va, write);
    let entry = Entry::Fault {
        secondary: secondary.name(),
        va,
        write,
        result,
    };
    out.record(round.run, OpKind::Fault, at, entry);
    result
}
