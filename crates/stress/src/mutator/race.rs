//! A mutator's racing walk: arm the racer before an operation, check the
//! outcome after it.

use mmun_secondary::Secondary;
use mmun_secondary::shadow_mmu::Commit;
use mmun_softmmu::Translation;

use super::Mutator;
use crate::kind::OpKind;
use crate::layout::Target;
use crate::racer::{Race, When};
use crate::script::off;
use crate::trace::Entry;
use mmun_softmmu::layout::PAGE_SIZE;

impl Mutator<'_, '_> {
    /// Walks a random page of `t` and arms the racer with it; returns the
    /// page and the walk, if the page is mapped.
    pub(super) fn arm(&mut self, t: Target) -> Option<(u64, Translation)> {
        let page = t.start + self.rng.below(t.len / PAGE_SIZE) * PAGE_SIZE;
        let walked = self.round.space.translate_frame(page)?;
        let when = match self.rng.weighted(&[2, 1, 1]) {
            0 => When::Inside,
            1 => When::Preempted(self.rng.below(3) as u8),
            _ => When::After,
        };
        self.round.fleet.racer().arm(page, walked, when);
        Some((page, walked))
    }

    /// Collects the race; a fault the shadow MMU committed is used at once,
    /// so that the oracle sees it.
    pub(super) fn finish_race(&mut self, page: u64, walked: Translation) {
        let at = self.round.run.now();
        let race = self.round.fleet.racer().finish();
        let Race::Committed { when, result } = race else {
            return;
        };
        let text = format!(
            "shadow-mmu racing walk of {:#x} (pfn {:#x}) committed {when}: {result:?}",
            off(page),
            walked.pfn
        );
        self.out
            .record(self.round.run, OpKind::Fault, at, Entry::Note(text));
        if result == Ok(Commit::Installed) {
            let shadow = self.round.fleet.shadow();
            let outcome = shadow.access(page, walked.writable);
            let entry = Entry::Access {
                secondary: shadow.name(),
                va: page,
                write: walked.writable,
                outcome,
            };
            self.out.record(self.round.run, OpKind::Access, at, entry);
            self.round.run.check_violations();
        }
    }
}
