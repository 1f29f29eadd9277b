//! The shadow MMU's steps that an injected bug may replace: the fault's
//! staleness check, the start and end callbacks, and whether the ops
//! table has an end. [`Textbook`] runs KVM's code (`callbacks.rs`);
//! [`bugs`](super::bugs) holds the broken versions, so the KVM lines carry
//! no `if bug`.
//!
//! The shadow MMU does not use `mmun_core::DriverLock`: it is a list
//! notifier, with no `IntervalSub` to `set_seq` and no `read_begin`. KVM's
//! protocol is its own — `mmu_invalidate_in_progress` raised by the start,
//! `mmu_invalidate_seq` bumped by the end, both under `mmu_lock`, and a
//! fault that retries while either says a change may be under way — and
//! it is written out in `callbacks.rs`.

use std::fmt;
use std::sync::Arc;

use mmun_core::{NotifierOps, Range};

use super::callbacks::{Inner, OPS};
use super::table::Table;
use crate::bug::Bug;

/// The steps a bug may replace. The provided methods are the correct ones.
pub(super) trait Protocol: Send + Sync + fmt::Debug {
    /// `is_page_fault_stale`, under `mmu_lock`.
    fn fault_is_stale(&self, inner: &Inner, table: &Table, page: u64, mmu_seq: u64) -> bool {
        inner.fault_is_stale(table, page, mmu_seq)
    }

    /// `kvm_mmu_notifier_invalidate_range_start`.
    fn invalidate_range_start(&self, inner: &Inner, range: &Range<'_>) {
        inner.invalidate_range_start(range);
    }

    /// `kvm_mmu_notifier_invalidate_range_end`.
    fn invalidate_range_end(&self, inner: &Inner, range: &Range<'_>) {
        inner.invalidate_range_end(range);
    }

    /// The ops table to register.
    fn ops(&self) -> &'static NotifierOps<Arc<Inner>> {
        &OPS
    }
}

/// KVM's shadow MMU.
#[derive(Debug)]
pub(super) struct Textbook;

impl Protocol for Textbook {}

/// The steps of a shadow MMU built with `bug` (the textbook ones for no
/// bug or another secondary's bug).
pub(super) fn for_bug(bug: Option<Bug>) -> &'static dyn Protocol {
    super::bugs::protocol(bug).unwrap_or(&Textbook)
}
