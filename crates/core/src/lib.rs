//! Linux MMU notifiers for userspace: the subsystem of
//! `include/linux/mmu_notifier.h` and `mm/mmu_notifier.c` (v6.5 API).
//!
//! A *primary* MMU (the software MMU of this workspace, or a real process)
//! calls the dispatch entry points — [`Invalidation::start`] … `end`, the
//! young callbacks, [`Mm::exit`] — around every change of its page tables.
//! *Secondary* MMUs (device mirrors, shadow page tables, registration
//! caches) subscribe either to the whole address space ([`Notifier`],
//! [`SharedNotifier`], with a [`NotifierOps`] table) or to one interval
//! ([`IntervalNotifier`], with [`IntervalNotifierOps`] and the
//! `read_begin`/`read_retry`/`set_seq` protocol).
//!
//! `DESIGN.md` at the repository root maps every C name to its item here.
//!
//! Building with the `disabled` feature gives the `!CONFIG_MMU_NOTIFIER`
//! build: the same API, every dispatch a no-op, every registration refused
//! with [`Error::Disabled`].

#![deny(unsafe_code)]

pub mod context;
pub mod driver_lock;
pub mod error;
pub mod event;
#[cfg(all(unix, not(mmun_loom)))]
pub mod fork;
pub mod interval_btree;
pub mod interval_node;
pub mod interval_notifier;
pub mod invalidation;
pub mod lockdep;
pub mod mm;
pub mod notifier;
pub mod notify;
pub mod observer;
pub mod ops;
pub mod range;
pub(crate) mod rcu;
pub mod seq;
pub(crate) mod seq_word;
pub(crate) mod subscriptions;
pub(crate) mod sync;
pub mod warn;

pub use context::{in_non_block, might_sleep};
pub use driver_lock::{DriverLock, FaultGuard, InvalidateGuard, Retry};
pub use error::{Error, Result, WouldBlock};
pub use event::Event;
pub use interval_node::IntervalNode;
#[cfg(not(mmun_loom))]
pub use interval_notifier::SeqWords;
pub use interval_notifier::{IntervalNotifier, IntervalSub};
pub use invalidation::Invalidation;
pub use mm::{HeldMmLock, Mm, MmapReadGuard, MmapWriteGuard, RmapGuard};
pub use notifier::{Notifier, SharedNotifier, synchronize};
pub use observer::MmObserver;
pub use ops::{IntervalNotifierOps, NotifierOps, PteValue, StartFn};
pub use range::{Owner, Range, RangeFlags};
pub use seq::Seq;
pub use warn::Warning;

/// Test probe: `(slots, free)` of the global SRCU domain's per-thread
/// counter slots (threads hand theirs back at exit).
#[doc(hidden)]
pub fn global_srcu_slot_stats() -> (usize, usize) {
    rcu::global_slot_stats()
}

/// The repository README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
