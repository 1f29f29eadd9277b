//! The system-call level types the address space takes: `PROT_*` and
//! `MADV_*` (Linux's `include/uapi/asm-generic/mman*.h`). The script format
//! (`mmun-script`) re-exports them for its steps.

use std::fmt;

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

/// An `madvise` advice (`MADV_*`), named as scripts and reports name it:
/// the constant's name in lower case.
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
    /// Every advice with its name and Linux's `MADV_*` value.
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

    /// Its name: `MADV_DONTNEED` is `dontneed`.
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

    /// The advice called `name` (see [`Advice::name`]).
    pub fn from_name(name: &str) -> Option<Advice> {
        Advice::ALL
            .iter()
            .find(|(_, n, _)| *n == name)
            .map(|(a, _, _)| *a)
    }
}
