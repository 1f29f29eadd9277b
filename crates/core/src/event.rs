//! Why an invalidation happens.
//!
//! Kernel counterpart: `enum mmu_notifier_event` in
//! `include/linux/mmu_notifier.h`. The numeric values are the kernel's.

use std::fmt;

/// The reason the core VM invalidates a range (`enum mmu_notifier_event`).
///
/// Consumers that filter by [`Range::owner`](crate::Range::owner) must do so
/// only for [`Event::Migrate`] and [`Event::Exclusive`]; every other event is
/// a plain invalidation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Event {
    /// The range is being unmapped: munmap, mremap move, exit_mmap, the OOM
    /// reaper (`MMU_NOTIFY_UNMAP`).
    Unmap = 0,
    /// PTEs are cleared or replaced: madvise, COW, KSM, reclaim, THP
    /// (`MMU_NOTIFY_CLEAR`).
    Clear = 1,
    /// The VMA's protection changes: mprotect, NUMA hinting, uffd-wp
    /// (`MMU_NOTIFY_PROTECTION_VMA`).
    ProtectionVma = 2,
    /// Per-page write protection; read the CPU page table to see which pages
    /// (`MMU_NOTIFY_PROTECTION_PAGE`).
    ProtectionPage = 3,
    /// Soft-dirty tracking is reset (`MMU_NOTIFY_SOFT_DIRTY`).
    SoftDirty = 4,
    /// The address space is exiting; sent only to interval notifiers
    /// (`MMU_NOTIFY_RELEASE`).
    Release = 5,
    /// Device migration; `owner` is the migrating device
    /// (`MMU_NOTIFY_MIGRATE`).
    Migrate = 6,
    /// Conversion to (or, in v6.5, back from) device-exclusive entries;
    /// `owner` is the device (`MMU_NOTIFY_EXCLUSIVE`).
    Exclusive = 7,
}

impl Event {
    /// All eight events, in numeric order.
    pub const ALL: [Event; 8] = [
        Event::Unmap,
        Event::Clear,
        Event::ProtectionVma,
        Event::ProtectionPage,
        Event::SoftDirty,
        Event::Release,
        Event::Migrate,
        Event::Exclusive,
    ];

    /// The kernel's name without the `MMU_NOTIFY_` prefix, e.g. `"UNMAP"`.
    pub fn name(self) -> &'static str {
        match self {
            Event::Unmap => "UNMAP",
            Event::Clear => "CLEAR",
            Event::ProtectionVma => "PROTECTION_VMA",
            Event::ProtectionPage => "PROTECTION_PAGE",
            Event::SoftDirty => "SOFT_DIRTY",
            Event::Release => "RELEASE",
            Event::Migrate => "MIGRATE",
            Event::Exclusive => "EXCLUSIVE",
        }
    }

    /// Whether consumers should look at the range's owner for this event.
    pub fn carries_owner(self) -> bool {
        matches!(self, Event::Migrate | Event::Exclusive)
    }
}

impl TryFrom<u8> for Event {
    type Error = u8;

    fn try_from(value: u8) -> Result<Self, u8> {
        Event::ALL.get(usize::from(value)).copied().ok_or(value)
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Event {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let name = s.strip_prefix("MMU_NOTIFY_").unwrap_or(s);
        Event::ALL
            .into_iter()
            .find(|e| e.name().eq_ignore_ascii_case(name))
            .ok_or_else(|| format!("unknown event `{s}`"))
    }
}
