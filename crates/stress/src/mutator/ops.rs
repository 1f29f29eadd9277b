//! The operations a mutator chooses from.

use mmun_script::{Advice, Op, Prot};
use mmun_softmmu::MremapFlags;

use super::Mutator;
use crate::kind::OpKind;
use crate::layout::{AWAY, Kind, Target};
use crate::script::off;
use mmun_softmmu::layout::PAGE_SIZE;

/// The advice `madvise` picks from, with weights.
const ADVICE: [(Advice, u32); 10] = [
    (Advice::DontNeed, 25),
    (Advice::Free, 15),
    (Advice::Cold, 5),
    (Advice::PageOut, 10),
    (Advice::Remove, 10),
    (Advice::Collapse, 10),
    (Advice::HugePage, 5),
    (Advice::NoHugePage, 5),
    (Advice::PopulateWrite, 10),
    (Advice::WillNeed, 5),
];

/// Forked children alive at once, at most.
const CHILDREN: usize = 2;

impl Mutator<'_, '_> {
    /// CPU accesses to a few pages: COW breaks, exclusive entries restored.
    pub(super) fn touch(&mut self, t: Target) {
        let Target { start, len, .. } = t;
        let len = len.min(4 * PAGE_SIZE);
        let write = self.rng.chance(60);
        let op = Op::Touch {
            off: off(start),
            len,
            write,
        };
        self.step(OpKind::Touch, op, |space| {
            (start..start + len)
                .step_by(PAGE_SIZE as usize)
                .try_for_each(|page| space.access(page, write))
        });
    }

    /// `munmap`, then the range mapped again as it was.
    pub(super) fn munmap(&mut self, t: Target) {
        let Target { region, start, len } = t;
        let op = Op::Munmap {
            off: off(start),
            len,
        };
        self.step(OpKind::Munmap, op, |space| space.munmap(start, len));
        self.remap(region, start, len);
    }

    fn remap(&mut self, region: crate::layout::Region, start: u64, len: u64) {
        let done = self
            .round
            .layout
            .map(&self.round.space, &region, start, len);
        for (op, result) in done {
            let kind = match op {
                Op::Mmap { .. } => OpKind::Mmap,
                _ => OpKind::Madvise,
            };
            self.step(kind, op, |_| result);
        }
    }

    /// `mprotect` to read-only, none or read-write.
    pub(super) fn mprotect(&mut self, t: Target) {
        let Target { start, len, .. } = t;
        let read = Prot {
            read: true,
            ..Prot::NONE
        };
        let prot = [read, Prot::NONE, Prot::RW][self.rng.weighted(&[35, 15, 50])];
        let op = Op::Mprotect {
            off: off(start),
            len,
            prot,
        };
        self.step(OpKind::Mprotect, op, |space| {
            space.mprotect(start, len, prot)
        });
    }

    /// `mremap` of a range away from the window's regions and back, or
    /// (half the time, for ranges of two pages or more) shrunk in place and
    /// grown back.
    pub(super) fn mremap(&mut self, t: Target) {
        let Target { region, start, len } = t;
        if len >= 2 * PAGE_SIZE && self.rng.chance(50) {
            self.mremap_resize(t);
            return;
        }
        let away = start + AWAY;
        let moved = self.step(OpKind::Mremap, mremap_op(start, away, len), |space| {
            space.mremap(start, len, len, fixed(away)).map(drop)
        });
        if !moved {
            return;
        }
        if self.rng.chance(50) {
            let op = Op::Touch {
                off: off(away),
                len: PAGE_SIZE,
                write: true,
            };
            self.step(OpKind::Touch, op, |space| space.access(away, true));
        }
        let back = self.step(OpKind::Mremap, mremap_op(away, start, len), |space| {
            space.mremap(away, len, len, fixed(start)).map(drop)
        });
        if !back {
            let op = Op::Munmap {
                off: off(away),
                len,
            };
            self.step(OpKind::Munmap, op, |space| space.munmap(away, len));
            self.remap(region, start, len);
        }
    }

    /// `mremap` shrinking the range to its first half in place (the tail
    /// is unmapped: an invalidation), then growing it back in place (no
    /// invalidation; new pages fault in fresh); if the growth fails the
    /// tail is mapped again as it was.
    fn mremap_resize(&mut self, t: Target) {
        let Target { region, start, len } = t;
        let half = (len / PAGE_SIZE / 2) * PAGE_SIZE;
        let shrunk = self.step(OpKind::Mremap, resize_op(start, len, half), |space| {
            space.mremap(start, len, half, in_place()).map(drop)
        });
        if !shrunk {
            return;
        }
        let grown = self.step(OpKind::Mremap, resize_op(start, half, len), |space| {
            space.mremap(start, half, len, in_place()).map(drop)
        });
        if !grown {
            self.remap(region, start + half, len - half);
        }
    }

    /// `mlock` (populates the range) or `munlock` of a range.
    pub(super) fn mlock(&mut self, t: Target) {
        let Target { start, len, .. } = t;
        let off = off(start);
        if self.rng.chance(50) {
            let op = Op::Mlock { off, len };
            self.step(OpKind::Mlock, op, |space| space.mlock(start, len));
        } else {
            let op = Op::Munlock { off, len };
            self.step(OpKind::Mlock, op, |space| space.munlock(start, len));
        }
    }

    /// `echo 4 > /proc/PID/clear_refs` as a kernel with
    /// `CONFIG_MEM_SOFT_DIRTY=y` does it: every present entry becomes
    /// write-protected under the `SoftDirty` range, so a secondary that
    /// ignores the event keeps write access the CPU lost. (The trace's
    /// `softdirty` line replays as the recorded kernel's, which notifies
    /// the same range and changes no entry.)
    pub(super) fn soft_dirty(&mut self) {
        self.step(OpKind::SoftDirty, Op::SoftDirty, |space| {
            space.clear_soft_dirty_tracking();
            Ok(())
        });
    }

    /// khugepaged's `test_young` of the range's first page.
    pub(super) fn test_young(&mut self, t: Target) {
        let va = t.start;
        let op = Op::TestYoung { off: off(va) };
        self.step(OpKind::TestYoung, op, |space| {
            space.test_young(va);
            Ok(())
        });
    }

    /// `madvise` with a random advice; `pageout` is followed by reclaim of
    /// the range, as the kernel would do it.
    pub(super) fn madvise(&mut self, t: Target) {
        let Target { region, start, len } = t;
        let weights: Vec<u32> = ADVICE.iter().map(|&(_, w)| w).collect();
        let mut advice = ADVICE[self.rng.weighted(&weights)].0;
        if advice == Advice::Remove && region.kind != Kind::Memfd {
            advice = Advice::DontNeed;
        }
        let op = Op::Madvise {
            off: off(start),
            len,
            advice,
        };
        self.step(OpKind::Madvise, op, |space| {
            space.madvise(start, len, advice)
        });
        if advice == Advice::PageOut {
            self.reclaim_range(start, len);
        }
    }

    /// `fork`: the child shares every private page copy-on-write.
    pub(super) fn fork(&mut self, t: Target) {
        if self.children.len() >= CHILDREN {
            return self.child(t);
        }
        let at = self.round.run.now();
        let child = self.round.space.fork();
        self.children.push(child);
        let entry = crate::trace::Entry::Step(Op::Fork, None);
        self.out.record(self.round.run, OpKind::Fork, at, entry);
    }

    /// A child writes some pages (breaking COW on its side) or exits.
    pub(super) fn child(&mut self, t: Target) {
        if self.children.is_empty() {
            return self.fork(t);
        }
        let which = self.rng.below(self.children.len() as u64) as usize;
        if self.rng.chance(30) {
            return self.child_exit(which);
        }
        let Target { start, len, .. } = t;
        let child = &self.children[which];
        let errors = (start..start + len)
            .step_by(PAGE_SIZE as usize)
            .filter(|&page| child.access(page, true).is_err())
            .count();
        let text = format!(
            "child {which}: touch {:#x} {len:#x} w ({errors} pages failed)",
            off(start)
        );
        self.note(OpKind::Child, text);
    }

    /// Child `which` exits.
    pub(super) fn child_exit(&mut self, which: usize) {
        let child = self.children.remove(which);
        child.exit();
        self.note(OpKind::Child, format!("child {which}: exit"));
    }

    /// Migration of the range's anonymous pages.
    pub(super) fn migrate(&mut self, t: Target) {
        let Target { start, len, .. } = t;
        let op = Op::Migrate {
            off: off(start),
            len,
        };
        self.step(OpKind::Migrate, op, |space| {
            space.migrate(start, start + len);
            Ok(())
        });
    }

    /// Migration to a device: the mirror's own, or another one (half the
    /// time one with device-private memory).
    pub(super) fn migrate_device(&mut self, t: Target) {
        let Target { start, len, .. } = t;
        if self.rng.chance(50) {
            self.migrate_own_device(start, len);
        } else {
            // Another device migrates the page a slow mirror walk holds, if
            // one does: the window a mirror that skips every owner's
            // `Migrate` goes wrong in (a random target rarely lands there).
            let (start, len) = self.stranger_target(start, len);
            let op = Op::MigrateDevice {
                off: off(start),
                len,
            };
            let stranger = if self.rng.chance(50) {
                self.private_stranger
            } else {
                self.stranger
            };
            self.step(OpKind::MigrateDevice, op, |space| {
                space.migrate_device(start, start + len, stranger);
                Ok(())
            });
        }
    }

    /// The mirror's own device migrates `[start, start + len)` to its
    /// memory, or, while a slow walk of one of its faults holds a page,
    /// that page (see [`SlowWalks`](crate::slow::SlowWalks)); then wakes
    /// that walk, so that its fault commits right after the migration.
    pub(super) fn migrate_own_device(&mut self, start: u64, len: u64) {
        let walked = self.round.slow.walked_page();
        let (start, len, whose) = match walked {
            Some(page) => (page, PAGE_SIZE, " (the page a slow fault walk holds)"),
            None => (start, len, ""),
        };
        let op = Op::MigrateDevice {
            off: off(start),
            len,
        };
        let at = self.round.run.now();
        let result = self.round.fleet.migrate_to_device(start, start + len);
        self.round.slow.mutated();
        let text = format!("device-mirror's own device: {op}{whose} ({result})");
        let entry = crate::trace::Entry::Note(text);
        self.out
            .record(self.round.run, OpKind::MigrateDevice, at, entry);
    }

    /// Where another device's migration or exclusive access goes: the page
    /// a slow device-mirror walk holds, if one does; else, mostly, a
    /// page the mirror maps (a mirror that skips this owner's range keeps
    /// it, stale); else `[start, start + len)`.
    fn stranger_target(&mut self, start: u64, len: u64) -> (u64, u64) {
        if let Some(page) = self.round.slow.walked_page() {
            return (page, PAGE_SIZE);
        }
        let pick = self.rng.next_u64();
        match self.round.fleet.mirrored_page(pick) {
            Some(page) if self.rng.chance(75) => (page, PAGE_SIZE),
            _ => (start, len),
        }
    }

    /// KSM merges a few pages into one read-only page.
    pub(super) fn ksm(&mut self, t: Target) {
        let Target { start, len, .. } = t;
        let len = len.clamp(2 * PAGE_SIZE, 8 * PAGE_SIZE);
        let op = Op::Ksm {
            off: off(start),
            len,
        };
        self.step(OpKind::Ksm, op, |space| {
            space.ksm_merge(start, start + len);
            Ok(())
        });
    }

    /// A device takes a page exclusively: the mirror's own, or another.
    pub(super) fn exclusive(&mut self, t: Target) {
        let va = t.start;
        let op = Op::Exclusive {
            off: off(va),
            len: PAGE_SIZE,
        };
        if self.rng.chance(50) {
            let at = self.round.run.now();
            let result = self.round.fleet.make_exclusive(va);
            let text = format!("device-mirror's own device: {op} ({result})");
            let entry = crate::trace::Entry::Note(text);
            self.out
                .record(self.round.run, OpKind::Exclusive, at, entry);
        } else {
            let (va, _) = self.stranger_target(va, PAGE_SIZE);
            let op = Op::Exclusive {
                off: off(va),
                len: PAGE_SIZE,
            };
            let stranger = self.stranger;
            self.step(OpKind::Exclusive, op, |space| {
                space.make_device_exclusive(va, stranger).map(drop)
            });
        }
    }

    /// Reclaim of a range.
    pub(super) fn reclaim(&mut self, t: Target) {
        let Target { start, len, .. } = t;
        self.reclaim_range(start, len);
    }

    fn reclaim_range(&mut self, start: u64, len: u64) {
        let op = Op::Reclaim {
            off: off(start),
            len,
        };
        self.step(OpKind::Reclaim, op, |space| {
            space.reclaim(start, start + len);
            Ok(())
        });
    }

    /// MGLRU aging of a range.
    pub(super) fn age(&mut self, t: Target) {
        let Target { start, len, .. } = t;
        let op = Op::Age {
            off: off(start),
            len,
        };
        self.step(OpKind::Age, op, |space| {
            space.age(start, start + len);
            Ok(())
        });
    }
}

fn fixed(to: u64) -> MremapFlags {
    MremapFlags {
        may_move: true,
        dont_unmap: false,
        fixed: Some(to),
    }
}

fn in_place() -> MremapFlags {
    MremapFlags {
        may_move: false,
        dont_unmap: false,
        fixed: None,
    }
}

fn resize_op(at: u64, old_len: u64, new_len: u64) -> Op {
    Op::Mremap {
        off: off(at),
        old_len,
        new_len,
        may_move: false,
        dont_unmap: false,
        new_off: None,
    }
}

fn mremap_op(from: u64, to: u64, len: u64) -> Op {
    Op::Mremap {
        off: off(from),
        old_len: len,
        new_len: len,
        may_move: true,
        dont_unmap: false,
        new_off: Some(off(to)),
    }
}
