//! `struct mmun_range`: what a C callback is told about a change.

use mmun_core::Range;

/// `struct mmun_range` of `mmun.h`: `[start, end)`, the event (Linux's
/// `enum mmu_notifier_event` values) and the `MMUN_RANGE_*` flags.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmunRange {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// `enum mmun_event`.
    pub event: u32,
    /// `MMUN_RANGE_BLOCKABLE | MMUN_RANGE_LATE`.
    pub flags: u32,
}

/// `MMUN_RANGE_BLOCKABLE`.
pub const RANGE_BLOCKABLE: u32 = 1;
/// `MMUN_RANGE_LATE`.
pub const RANGE_LATE: u32 = 2;

impl From<&Range<'_>> for MmunRange {
    #[inline]
    fn from(range: &Range<'_>) -> MmunRange {
        let bit = |set: bool, b: u32| if set { b } else { 0 };
        MmunRange {
            start: range.start(),
            end: range.end(),
            event: range.event() as u32,
            flags: bit(range.is_blockable(), RANGE_BLOCKABLE) | bit(range.is_late(), RANGE_LATE),
        }
    }
}
