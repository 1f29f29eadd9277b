//! The operations of a script.

/// Where the oracle puts offset 0 of a script: far from anything else in
/// the process, aligned to a PGD entry (512 GiB).
pub const WINDOW_BASE: u64 = 0x3000_0000_0000;
/// The window's length: 4 GiB.
pub const WINDOW_SIZE: u64 = 1 << 32;

// The system-call level types belong to the software MMU, which takes
// them; the script format names them.
pub use mmun_softmmu::{Advice, Prot};

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
