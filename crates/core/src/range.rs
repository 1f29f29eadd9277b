//! The description of one invalidation.
//!
//! Kernel counterpart: `struct mmu_notifier_range`,
//! `mmu_notifier_range_init{,_owner}()`, `mmu_notifier_range_blockable()`
//! and `MMU_NOTIFIER_RANGE_BLOCKABLE` in `include/linux/mmu_notifier.h`.

use std::fmt;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::mm::HeldMmLock;
use crate::{Event, Mm};

/// Flags of a range: the kernel's [`RangeFlags::BLOCKABLE`], and the mmun
/// extension [`RangeFlags::LATE`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct RangeFlags(u32);

impl RangeFlags {
    /// No flag set: what callers pass to `range_init`.
    pub const NONE: RangeFlags = RangeFlags(0);
    /// Callbacks may sleep (`MMU_NOTIFIER_RANGE_BLOCKABLE`). Set by
    /// [`Invalidation::start`](crate::Invalidation::start), cleared by
    /// [`Invalidation::start_nonblock`](crate::Invalidation::start_nonblock).
    pub const BLOCKABLE: RangeFlags = RangeFlags(1);
    /// mmun extension, not in Linux: the primary change already happened
    /// when `invalidate_range_start` ran. A real process's backend
    /// (`mmun-linux`) sets it for changes it learned about after the fact —
    /// a userfaultfd event, or a change made by a notifier callback itself
    /// and delivered once the outer invalidation ended. The start and end
    /// still come in pairs; a secondary sees the flag in
    /// [`Range::flags`] and knows that, between the change and this start,
    /// it may have used a stale translation (a registration cache counts
    /// these; a mirror needs nothing special, it zaps as usual).
    pub const LATE: RangeFlags = RangeFlags(2);

    /// The raw bits.
    #[inline]
    pub fn bits(self) -> u32 {
        self.0
    }

    /// Whether every flag of `other` is set.
    #[inline]
    pub fn contains(self, other: RangeFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Both sets of flags.
    #[inline]
    pub fn union(self, other: RangeFlags) -> RangeFlags {
        RangeFlags(self.0 | other.0)
    }
}

impl fmt::Debug for RangeFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (
            self.contains(RangeFlags::BLOCKABLE),
            self.contains(RangeFlags::LATE),
        ) {
            (false, false) => f.write_str("0"),
            (true, false) => f.write_str("BLOCKABLE"),
            (false, true) => f.write_str("LATE"),
            (true, true) => f.write_str("BLOCKABLE|LATE"),
        }
    }
}

/// Identifies the device (or driver) that started a migration or an
/// exclusive conversion, so that it can skip its own invalidations
/// (the kernel's `void *owner`, e.g. a `pgmap_owner`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct Owner(NonZeroUsize);

impl Owner {
    /// An owner token no other call of `unique` returns.
    pub fn unique() -> Owner {
        static NEXT: AtomicUsize = AtomicUsize::new(1);
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        Owner(NonZeroUsize::new(id).expect("owner ids do not wrap in practice"))
    }

    /// An owner token derived from the address of a driver object, as
    /// drivers pass `pgmap_owner` pointers in C.
    pub fn from_ref<T>(object: &T) -> Owner {
        let address = std::ptr::from_ref(object).addr();
        Owner(NonZeroUsize::new(address).expect("references are never null"))
    }

    /// The raw token value.
    #[inline]
    pub fn get(self) -> usize {
        self.0.get()
    }
}

/// One invalidation: `[start, end)` of an address space, why, and whether
/// callbacks may sleep (`struct mmu_notifier_range`).
///
/// A range is built with [`Range::new`] (`mmu_notifier_range_init`: flags 0,
/// no owner) or [`Range::new`] + [`Range::with_owner`]
/// (`mmu_notifier_range_init_owner`). The blockable flag is set or cleared
/// by the entry point that dispatches it, exactly like the kernel wrappers.
#[derive(Clone, Copy)]
pub struct Range<'mm> {
    mm: &'mm Mm,
    start: u64,
    end: u64,
    owner: Option<Owner>,
    /// The flags (bits 0..32), the event (bits 32..40) and the VMA
    /// readability hint (bits 40..42: 0 unknown, 2 no, 3 yes), in one word:
    /// built with one store and moved with one load, which keeps the
    /// no-subscriber invalidation path free of store-forwarding stalls.
    meta: u64,
}

const EVENT_SHIFT: u32 = 32;
const VMA_SHIFT: u32 = 40;
const VMA_KNOWN: u64 = 2;

impl<'mm> Range<'mm> {
    /// `mmu_notifier_range_init(range, event, 0, mm, start, end)`, for the
    /// address space whose lock `held` is: a range borrows the lock it was
    /// made under, and an [`Invalidation`](crate::Invalidation) keeps it
    /// until its end, so a range of one address space cannot be
    /// invalidated under another's lock, nor under none.
    ///
    /// # Panics
    ///
    /// If `end < start`: a range never runs backwards. An empty range
    /// (`start == end`) is allowed; it matches no interval notifier (the
    /// kernel would query `[start, start - 1]`, see `DESIGN.md`).
    ///
    /// Without a lock there is no range to invalidate:
    ///
    /// ```compile_fail
    /// use mmun_core::{Event, Invalidation, Mm, Range};
    /// let mm = Mm::new();
    /// Invalidation::start(Range::new(&*mm, Event::Clear, 0, 0x1000)).end();
    /// ```
    ///
    /// and the lock stays held until the invalidation ends:
    ///
    /// ```compile_fail
    /// use mmun_core::{Event, Invalidation, Mm, Range};
    /// let mm = Mm::new();
    /// let lock = mm.mmap_read();
    /// let inv = Invalidation::start(Range::new(&lock, Event::Clear, 0, 0x1000));
    /// drop(lock);
    /// inv.end();
    /// ```
    #[inline]
    #[track_caller]
    pub fn new(held: &'mm impl HeldMmLock, event: Event, start: u64, end: u64) -> Range<'mm> {
        Range::of(held.mm(), event, start, end)
    }

    /// [`Range::new`] from the address space itself, for the core's own
    /// ranges (exit's teardown range, tests of the range encoding).
    #[inline]
    #[track_caller]
    pub(crate) fn of(mm: &'mm Mm, event: Event, start: u64, end: u64) -> Range<'mm> {
        if end < start {
            backwards_range(start, end);
        }
        Range {
            mm,
            start,
            end,
            owner: None,
            meta: (event as u64) << EVENT_SHIFT,
        }
    }

    /// `mmu_notifier_range_init_owner`: the same range, tagged with the
    /// device that caused it.
    #[inline]
    pub fn with_owner(mut self, owner: Owner) -> Range<'mm> {
        self.owner = Some(owner);
        self
    }

    /// The same range with these flags. Entry points overwrite
    /// [`RangeFlags::BLOCKABLE`], as the kernel wrappers do.
    #[inline]
    pub fn with_flags(mut self, flags: RangeFlags) -> Range<'mm> {
        self.meta = (self.meta & !u64::from(u32::MAX)) | u64::from(flags.0);
        self
    }

    /// Records whether the VMA behind a [`Event::ProtectionVma`] change is
    /// still readable (the removed `range->vma` field); only
    /// [`Range::update_to_read_only`] reads it.
    #[inline]
    pub fn with_vma_readable(mut self, readable: bool) -> Range<'mm> {
        let hint = VMA_KNOWN | u64::from(readable);
        self.meta = (self.meta & !(3 << VMA_SHIFT)) | (hint << VMA_SHIFT);
        self
    }

    /// The address space being invalidated (`range->mm`).
    #[inline]
    pub fn mm(&self) -> &'mm Mm {
        self.mm
    }

    /// First address of the range.
    #[inline]
    pub fn start(&self) -> u64 {
        self.start
    }

    /// One past the last address of the range (half-open).
    #[inline]
    pub fn end(&self) -> u64 {
        self.end
    }

    /// The inclusive last address, or `None` for an empty range. This is the
    /// one place where the half-open range becomes the tree's closed form.
    #[inline]
    pub fn last(&self) -> Option<u64> {
        self.end.checked_sub(1).filter(|_| self.end > self.start)
    }

    /// The flags.
    #[inline]
    pub fn flags(&self) -> RangeFlags {
        RangeFlags(self.meta as u32)
    }

    /// Why the range is invalidated.
    #[inline]
    pub fn event(&self) -> Event {
        Event::ALL[usize::from(self.event_code())]
    }

    /// The event as its `u8` discriminant, without the decoding (the
    /// per-thread open record keeps it so, on every start).
    #[inline]
    pub(crate) fn event_code(&self) -> u8 {
        (self.meta >> EVENT_SHIFT) as u8
    }

    /// Who caused a [`Event::Migrate`] or [`Event::Exclusive`]; `None` for
    /// ranges built without an owner.
    #[inline]
    pub fn owner(&self) -> Option<Owner> {
        self.owner
    }

    /// Whether the change was learned about after it happened
    /// ([`RangeFlags::LATE`], an mmun extension).
    #[inline]
    pub fn is_late(&self) -> bool {
        self.flags().contains(RangeFlags::LATE)
    }

    /// `mmu_notifier_range_blockable()`: whether callbacks may sleep.
    #[inline]
    pub fn is_blockable(&self) -> bool {
        self.flags().contains(RangeFlags::BLOCKABLE)
    }

    /// Whether `[start, end)` intersects this range.
    #[inline]
    pub fn overlaps(&self, start: u64, end: u64) -> bool {
        start < self.end && self.start < end
    }

    /// `mmu_notifier_range_update_to_read_only()`: true iff this is a
    /// protection change of a VMA that stays readable, i.e. a write-protect
    /// downgrade.
    #[deprecated(
        note = "removed from Linux in v6.3 (7d4a8be0c4b2); the v6.5 header keeps only the prototype"
    )]
    pub fn update_to_read_only(&self) -> bool {
        let hint = (self.meta >> VMA_SHIFT) & 3;
        self.event() == Event::ProtectionVma && hint == VMA_KNOWN | 1
    }

    #[inline]
    pub(crate) fn set_blockable(&mut self, blockable: bool) {
        let bit = u64::from(RangeFlags::BLOCKABLE.0);
        self.meta = if blockable {
            self.meta | bit
        } else {
            self.meta & !bit
        };
    }
}

#[cold]
#[inline(never)]
#[track_caller]
fn backwards_range(start: u64, end: u64) -> ! {
    panic!("mmu_notifier_range: end {end:#x} is below start {start:#x}")
}

impl fmt::Debug for Range<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Range")
            .field("start", &format_args!("{:#x}", self.start))
            .field("end", &format_args!("{:#x}", self.end))
            .field("event", &self.event())
            .field("flags", &self.flags())
            .field("owner", &self.owner)
            .finish()
    }
}
