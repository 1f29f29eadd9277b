//! Mutator threads: change the address space under the secondaries.

use mmun_core::Owner;
use mmun_script::Op;
use mmun_softmmu::{AddressSpace, Errno};

use crate::kind::OpKind;
use crate::layout::Target;
use crate::rng::Rng;
use crate::round::Plan;
use crate::shared::{Out, Round};
use crate::trace::{Actor, Entry};

mod ops;
mod race;

/// How often each operation is chosen (relative weights).
pub(crate) const WEIGHTS: [(OpKind, u32); 16] = [
    (OpKind::Touch, 10),
    (OpKind::Munmap, 10),
    (OpKind::Mprotect, 10),
    (OpKind::Mremap, 6),
    (OpKind::Madvise, 12),
    (OpKind::Fork, 4),
    (OpKind::Child, 6),
    (OpKind::Migrate, 8),
    (OpKind::MigrateDevice, 6),
    (OpKind::Ksm, 6),
    (OpKind::Exclusive, 6),
    (OpKind::Reclaim, 6),
    (OpKind::Age, 6),
    (OpKind::Mlock, 4),
    (OpKind::SoftDirty, 2),
    (OpKind::TestYoung, 4),
];

/// Percent of operations that, while a slow walk of a device-mirror fault
/// holds a page, are instead the mirror's own migration of that page to
/// its device (see [`SlowWalks`](crate::slow::SlowWalks)): a device
/// migrating what it is faulting is common (prefetch racing a fault), and
/// the walk waits only until the next operation.
const OWN_MIGRATION_PERCENT: u64 = 25;

/// One mutator thread's state in a round.
pub(crate) struct Mutator<'r, 'a> {
    pub(crate) round: &'r Round<'a>,
    pub(crate) rng: Rng,
    pub(crate) out: Out,
    /// Forked children still alive.
    pub(crate) children: Vec<AddressSpace>,
    /// Another device, whose migrations and exclusive accesses the
    /// device mirror must not skip.
    pub(crate) stranger: Owner,
    /// A device with device-private memory (and no translations of its
    /// own): the pages it takes are reachable only through device-private
    /// entries, which every CPU touch, secondary fault, fork, `mprotect`,
    /// zap and exit of the run then meets.
    pub(crate) private_stranger: Owner,
    /// Whether this mutator runs racing walks (one mutator per round may).
    race: bool,
    /// Percent of operations that race a walk.
    race_percent: u64,
    /// Percent of operations aimed at a slow walk's page.
    aim_percent: u64,
}

impl std::fmt::Debug for Mutator<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mutator")
            .field("actor", &self.out.actor)
            .field("children", &self.children.len())
            .finish_non_exhaustive()
    }
}

/// Runs `quota` random operations (fewer if the run stops), then exits the
/// children it forked.
pub(crate) fn run(round: &Round<'_>, rng: Rng, out: Out, quota: u64, plan: &Plan) -> Out {
    let mut m = Mutator {
        round,
        rng,
        race: out.actor == Actor::Mutator(0),
        out,
        children: Vec::new(),
        stranger: Owner::unique(),
        private_stranger: private_device(round),
        race_percent: plan.race_percent,
        aim_percent: plan.aim_percent,
    };
    for _ in 0..quota {
        if round.run.stopping() {
            break;
        }
        let kind = WEIGHTS[m.rng.weighted(&plan.weights)].0;
        m.one(kind);
        m.out.publish(round.run);
    }
    while !m.children.is_empty() {
        m.child_exit(0);
    }
    m.out.publish(round.run);
    round.mutating.count_down();
    m.out
}

/// A fresh owner whose memory is device-private in the round's machine.
/// Its driver keeps no translations, so it has nothing to drop when the
/// CPU takes a page back: its ops are a no-op, and the memory stays
/// private once they are gone.
fn private_device(round: &Round<'_>) -> Owner {
    struct NoTranslations;
    impl mmun_softmmu::DevicePagemap for NoTranslations {
        fn page_to_ram(&self, _: u64, _: mmun_softmmu::Pfn, _: Option<mmun_softmmu::Translation>) {}
    }
    let owner = Owner::unique();
    let ops: std::sync::Arc<dyn mmun_softmmu::DevicePagemap> = std::sync::Arc::new(NoTranslations);
    round.space.memory().register_device_private(owner, &ops);
    owner
}

impl Mutator<'_, '_> {
    fn one(&mut self, kind: OpKind) {
        let t = self.round.layout.pick_target(&mut self.rng);
        let walked = self.round.slow.walked_page();
        if walked.is_some() && self.rng.chance(OWN_MIGRATION_PERCENT) {
            // The page a slow walk of the mirror's own fault holds.
            return self.migrate_own_device(t.start, t.len);
        }
        let t = match walked {
            Some(page) if self.rng.chance(self.aim_percent) => {
                self.round.layout.target_at(page).unwrap_or(t)
            }
            _ => t,
        };
        let race = self.race && self.rng.chance(self.race_percent);
        let armed = if race { self.arm(t) } else { None };
        self.run_op(kind, t);
        if let Some((page, walked)) = armed {
            self.finish_race(page, walked);
        }
    }

    fn run_op(&mut self, kind: OpKind, t: Target) {
        match kind {
            OpKind::Touch => self.touch(t),
            OpKind::Munmap => self.munmap(t),
            OpKind::Mprotect => self.mprotect(t),
            OpKind::Mremap => self.mremap(t),
            OpKind::Madvise => self.madvise(t),
            OpKind::Fork => self.fork(t),
            OpKind::Child => self.child(t),
            OpKind::Migrate => self.migrate(t),
            OpKind::MigrateDevice => self.migrate_device(t),
            OpKind::Ksm => self.ksm(t),
            OpKind::Exclusive => self.exclusive(t),
            OpKind::Reclaim => self.reclaim(t),
            OpKind::Age => self.age(t),
            OpKind::Mlock => self.mlock(t),
            OpKind::SoftDirty => self.soft_dirty(),
            OpKind::TestYoung => self.test_young(t),
            _ => unreachable!("{kind} is not a mutator operation"),
        }
    }

    /// Runs `f` on the address space as the script step `op`, counted as
    /// `kind`; returns whether it succeeded.
    pub(crate) fn step(
        &mut self,
        kind: OpKind,
        op: Op,
        f: impl FnOnce(&AddressSpace) -> Result<(), Errno>,
    ) -> bool {
        let at = self.round.run.now();
        let result = f(&self.round.space);
        // Wakes the slow walks: each step, not each operation, so that a
        // walk can see the hole between an unmap and the remap.
        self.round.slow.mutated();
        let ok = result.is_ok();
        self.out
            .record(self.round.run, kind, at, Entry::Step(op, result.err()));
        ok
    }

    /// Something with no script line, counted as `kind`.
    pub(crate) fn note(&mut self, kind: OpKind, text: String) {
        let at = self.round.run.now();
        self.out.record(self.round.run, kind, at, Entry::Note(text));
    }
}
