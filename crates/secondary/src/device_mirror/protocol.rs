//! The two steps of the hmm.rst protocol the device mirror takes, as a
//! strategy: [`Textbook`] runs the device's own code (`Device::invalidate`,
//! `Device::commit`, which read like test_hmm); the injected bugs of
//! [`bugs`](super::bugs) replace one step each, so the textbook lines carry
//! no `if bug` of their own.

use std::fmt;

use mmun_core::{IntervalSub, Range, Seq};

use super::device::Device;
use super::table::DevicePte;
use crate::bug::Bug;
use crate::secondary::FaultError;

/// The steps a bug may replace. The provided methods are the correct ones.
pub(super) trait Protocol: Send + Sync + fmt::Debug {
    /// The interval notifier's `invalidate` callback.
    fn invalidate(&self, device: &Device, sub: &IntervalSub, range: &Range<'_>, seq: Seq) -> bool {
        device.invalidate(sub, range, seq)
    }

    /// The fault's commit: whether the walked `pte` was programmed.
    fn commit(
        &self,
        device: &Device,
        sub: &IntervalSub,
        seq: Seq,
        generation: u64,
        page: u64,
        pte: DevicePte,
    ) -> Result<bool, FaultError> {
        device.commit(sub, seq, generation, page, pte)
    }
}

/// The protocol as hmm.rst and test_hmm write it.
#[derive(Debug)]
pub(super) struct Textbook;

impl Protocol for Textbook {}

/// The protocol a device built with `bug` follows (the textbook one for
/// no bug, or for another secondary's bug).
pub(super) fn for_bug(bug: Option<Bug>) -> &'static dyn Protocol {
    super::bugs::protocol(bug).unwrap_or(&Textbook)
}
