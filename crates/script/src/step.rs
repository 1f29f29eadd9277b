//! The operations of a script.

use std::fmt;

/// Where the oracle puts offset 0 of a script: far from anything else in
/// the process, aligned to a PGD entry (512 GiB).
pub const WINDOW_BASE: u64 = 0x3000_0000_0000;
/// The window's length: 4 GiB.
pub const WINDOW_SIZE: u64 = 1 << 32;

/// Memory protection: any of read, write, execute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Prot {
    /// `PROT_READ`.
    pub read: bool,
    /// `PROT_WRITE`.
    pub write: bool,
    /// `PROT_EXEC`.
    pub exec: bool,
}

impl Prot {
    /// `PROT_NONE`.
    pub const NONE: Prot = Prot {
        read: false,
        write: false,
        exec: false,
    };
    /// `PROT_READ | PROT_WRITE`.
    pub const RW: Prot = Prot {
        read: true,
        write: true,
        exec: false,
    };

    /// The `PROT_*` bits.
    pub fn bits(self) -> u32 {
        u32::from(self.read) | u32::from(self.write) << 1 | u32::from(self.exec) << 2
    }
}

impl fmt::Display for Prot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Prot::NONE {
            return f.write_str("none");
        }
        for (on, letter) in [(self.read, "r"), (self.write, "w"), (self.exec, "x")] {
            if on {
                f.write_str(letter)?;
            }
        }
        Ok(())
    }
}

/// The optional words of an `mmap` step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MmapFlags {
    /// `MAP_SHARED` instead of `MAP_PRIVATE`.
    pub shared: bool,
    /// Backed by a new memfd of the mapping's length instead of anonymous.
    pub memfd: bool,
    /// `MAP_POPULATE`.
    pub populate: bool,
    /// `MAP_FIXED` instead of `MAP_FIXED_NOREPLACE`.
    pub fixed: bool,
}

/// An `madvise` advice, by the script's name for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum Advice {
    DontNeed,
    DontNeedLocked,
    Free,
    Remove,
    Cold,
    PageOut,
    WillNeed,
    PopulateRead,
    PopulateWrite,
    HugePage,
    NoHugePage,
    Collapse,
    Mergeable,
    Unmergeable,
    DontFork,
    DoFork,
    WipeOnFork,
    KeepOnFork,
}

impl Advice {
    /// Every advice with its script name and Linux's `MADV_*` value.
    pub const ALL: [(Advice, &'static str, i32); 18] = [
        (Advice::DontNeed, "dontneed", 4),
        (Advice::DontNeedLocked, "dontneed_locked", 24),
        (Advice::Free, "free", 8),
        (Advice::Remove, "remove", 9),
        (Advice::Cold, "cold", 20),
        (Advice::PageOut, "pageout", 21),
        (Advice::WillNeed, "willneed", 3),
        (Advice::PopulateRead, "populate_read", 22),
        (Advice::PopulateWrite, "populate_write", 23),
        (Advice::HugePage, "hugepage", 14),
        (Advice::NoHugePage, "nohugepage", 15),
        (Advice::Collapse, "collapse", 25),
        (Advice::Mergeable, "mergeable", 12),
        (Advice::Unmergeable, "unmergeable", 13),
        (Advice::DontFork, "dontfork", 10),
        (Advice::DoFork, "dofork", 11),
        (Advice::WipeOnFork, "wipeonfork", 18),
        (Advice::KeepOnFork, "keeponfork", 19),
    ];

    /// The script's name for it.
    pub fn name(self) -> &'static str {
        Advice::ALL
            .iter()
            .find(|(a, _, _)| *a == self)
            .map(|(_, n, _)| *n)
            .unwrap_or("?")
    }

    /// Linux's `MADV_*` value.
    pub fn value(self) -> i32 {
        Advice::ALL
            .iter()
            .find(|(a, _, _)| *a == self)
            .map(|(_, _, v)| *v)
            .unwrap_or(-1)
    }

    /// The advice called `name` in scripts.
    pub fn from_name(name: &str) -> Option<Advice> {
        Advice::ALL
            .iter()
            .find(|(_, n, _)| *n == name)
            .map(|(a, _, _)| *a)
    }
}

/// One operation of a script. Addresses are offsets from the window base.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Op {
    Mmap {
        off: u64,
        len: u64,
        prot: Prot,
        flags: MmapFlags,
    },
    /// Read (or write) one byte of every page; stops at the first fault.
    Touch {
        off: u64,
        len: u64,
        write: bool,
    },
    Munmap {
        off: u64,
        len: u64,
    },
    Mprotect {
        off: u64,
        len: u64,
        prot: Prot,
    },
    Madvise {
        off: u64,
        len: u64,
        advice: Advice,
    },
    /// `new_off` means `MREMAP_FIXED | MREMAP_MAYMOVE` to that offset.
    Mremap {
        off: u64,
        old_len: u64,
        new_len: u64,
        may_move: bool,
        dont_unmap: bool,
        new_off: Option<u64>,
    },
    Fork,
    Mlock {
        off: u64,
        len: u64,
    },
    Munlock {
        off: u64,
        len: u64,
    },
    /// `echo 4 > /proc/self/clear_refs`.
    SoftDirty,
    /// Software MMU only: migrate the anonymous pages (`migrate_pages`).
    Migrate {
        off: u64,
        len: u64,
    },
    /// Software MMU only: a device driver migrates the range to its memory
    /// (`migrate_vma_*`, owner = the replay's device).
    MigrateDevice {
        off: u64,
        len: u64,
    },
    /// Software MMU only: ksmd merges the range's anonymous pages.
    Ksm {
        off: u64,
        len: u64,
    },
    /// Software MMU only: the replay's device takes each page exclusively
    /// (`make_device_exclusive`).
    Exclusive {
        off: u64,
        len: u64,
    },
    /// Software MMU only: MGLRU aging of the range (`clear_young`).
    Age {
        off: u64,
        len: u64,
    },
    /// Software MMU only: reclaim of the range (`clear_flush_young`, then
    /// unmapping of what can be reclaimed).
    Reclaim {
        off: u64,
        len: u64,
    },
    /// Software MMU only: khugepaged asks whether the page was used (`test_young`).
    TestYoung {
        off: u64,
    },
    /// Software MMU only: the OOM reaper unmaps everything, non-blocking.
    OomReap,
    /// Software MMU only: the process exits (`exit_mmap`).
    Exit,
}

impl Op {
    /// Whether the op exists only in the software MMU (the kernel oracle
    /// cannot trigger it deterministically).
    pub fn is_softmmu_only(&self) -> bool {
        matches!(
            self,
            Op::Migrate { .. }
                | Op::MigrateDevice { .. }
                | Op::Ksm { .. }
                | Op::Exclusive { .. }
                | Op::Age { .. }
                | Op::Reclaim { .. }
                | Op::TestYoung { .. }
                | Op::OomReap
                | Op::Exit
        )
    }
}

/// A step: its operation and its words as written (single-spaced), which
/// the report echoes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// 1-based position among the script's steps.
    pub number: usize,
    /// 1-based line of the script it came from.
    pub line: usize,
    /// The words, single-spaced.
    pub text: String,
    /// What to do.
    pub op: Op,
}
