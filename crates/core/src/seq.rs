//! The interval sequence number.
//!
//! Kernel counterpart: the `unsigned long` `invalidate_seq` of
//! `mm/mmu_notifier.c` and the `cur_seq`/`seq` values drivers pass around.
//!
//! | operation (under the subscriptions lock) | meaning |
//! |---|---|
//! | `seq \|= 1` | an invalidation that hit an interval begins: the tree freezes |
//! | `seq += 1` (odd → even) | the last running invalidation ended: the tree thaws |
//! | `seq & 1` | is anyone invalidating an interval? |
//!
//! The address space's seq starts at 2 and is even while idle; an interval's
//! seq is always odd, so the two are equal only while an epoch that covers
//! the interval is open.

use std::fmt;

/// A value of the collision counter, as `read_begin` returns it and
/// `invalidate` receives it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
#[must_use]
pub struct Seq(pub(crate) u64);

impl Seq {
    /// The raw counter value.
    #[inline]
    pub fn get(self) -> u64 {
        self.0
    }

    /// The value whose [`Seq::get`] is `raw`: for callers that carry a seq
    /// across an interface as a number (the C API). Only a value that
    /// [`Seq::get`] returned means anything to `read_retry`.
    #[inline]
    pub fn from_raw(raw: u64) -> Seq {
        Seq(raw)
    }

    /// Whether an invalidation was running when this value was taken. A
    /// `cur_seq` handed to a callback is always odd.
    #[inline]
    pub fn is_odd(self) -> bool {
        self.0 & 1 == 1
    }
}

impl fmt::Debug for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Seq({})", self.0)
    }
}
