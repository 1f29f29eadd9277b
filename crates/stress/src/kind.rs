//! The kinds of operation the harness runs and counts.

use std::fmt;
use std::ops::{AddAssign, Index};

/// One kind of operation, as counted in the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpKind {
    /// An access through a secondary's own translation.
    Access,
    /// A secondary fault (after a miss).
    Fault,
    /// A CPU access of the primary (`touch`).
    Touch,
    /// `mmap` (re-mapping what was unmapped).
    Mmap,
    /// `munmap`.
    Munmap,
    /// `mprotect`.
    Mprotect,
    /// `mremap` away and back.
    Mremap,
    /// `madvise`.
    Madvise,
    /// `fork`.
    Fork,
    /// Something a forked child does: write faults (COW) or exit.
    Child,
    /// Migration of anonymous pages (`migrate_pages`).
    Migrate,
    /// Migration to a device (`migrate_vma_*`).
    MigrateDevice,
    /// KSM merging.
    Ksm,
    /// `make_device_exclusive`.
    Exclusive,
    /// Reclaim.
    Reclaim,
    /// MGLRU aging.
    Age,
    /// `mlock` or `munlock`.
    Mlock,
    /// `clear_refs` soft-dirty (`echo 4 > /proc/PID/clear_refs`).
    SoftDirty,
    /// khugepaged's `test_young` of a page.
    TestYoung,
    /// The OOM reaper (non-blockable invalidations).
    OomReap,
    /// `exit_mmap`: the end of a round.
    Exit,
}

impl OpKind {
    /// How many kinds there are.
    pub const COUNT: usize = 21;

    /// Every kind, in report order.
    pub const ALL: [OpKind; OpKind::COUNT] = [
        OpKind::Access,
        OpKind::Fault,
        OpKind::Touch,
        OpKind::Mmap,
        OpKind::Munmap,
        OpKind::Mprotect,
        OpKind::Mremap,
        OpKind::Madvise,
        OpKind::Fork,
        OpKind::Child,
        OpKind::Migrate,
        OpKind::MigrateDevice,
        OpKind::Ksm,
        OpKind::Exclusive,
        OpKind::Reclaim,
        OpKind::Age,
        OpKind::Mlock,
        OpKind::SoftDirty,
        OpKind::TestYoung,
        OpKind::OomReap,
        OpKind::Exit,
    ];

    /// The name in the report.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Access => "access",
            OpKind::Fault => "fault",
            OpKind::Touch => "touch",
            OpKind::Mmap => "mmap",
            OpKind::Munmap => "munmap",
            OpKind::Mprotect => "mprotect",
            OpKind::Mremap => "mremap",
            OpKind::Madvise => "madvise",
            OpKind::Fork => "fork",
            OpKind::Child => "child",
            OpKind::Migrate => "migrate",
            OpKind::MigrateDevice => "migrate-device",
            OpKind::Ksm => "ksm",
            OpKind::Exclusive => "exclusive",
            OpKind::Reclaim => "reclaim",
            OpKind::Age => "age",
            OpKind::Mlock => "mlock",
            OpKind::SoftDirty => "soft-dirty",
            OpKind::TestYoung => "test-young",
            OpKind::OomReap => "oom-reap",
            OpKind::Exit => "exit",
        }
    }

    /// Whether threads of the secondaries run it (the others change the
    /// primary).
    pub fn is_secondary(self) -> bool {
        matches!(self, OpKind::Access | OpKind::Fault)
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A count per [`OpKind`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpCounts([u64; OpKind::COUNT]);

impl OpCounts {
    /// Counts one more `kind`.
    pub fn bump(&mut self, kind: OpKind) {
        self.0[kind.index()] += 1;
    }

    /// Every operation counted.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// The kinds with their counts, in report order.
    pub fn iter(&self) -> impl Iterator<Item = (OpKind, u64)> + '_ {
        OpKind::ALL.iter().map(|&k| (k, self[k]))
    }
}

impl Index<OpKind> for OpCounts {
    type Output = u64;
    fn index(&self, kind: OpKind) -> &u64 {
        &self.0[kind.index()]
    }
}

impl AddAssign for OpCounts {
    fn add_assign(&mut self, other: OpCounts) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a += b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_declaration_order() {
        for (i, kind) in OpKind::ALL.iter().enumerate() {
            assert_eq!(kind.index(), i);
        }
    }
}
