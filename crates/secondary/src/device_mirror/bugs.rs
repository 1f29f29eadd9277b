//! The device mirror's injectable bugs (`mmun stress --inject`), each a
//! [`Protocol`] that replaces one textbook step with a broken one. They go
//! through the plain device lock, which the driver-lock type cannot refuse
//! them: what the type prevents is writing them by accident on the path
//! that uses `lock_if_current` and `lock_for_invalidate`.

use mmun_core::{IntervalSub, Range, Seq};

use super::device::{Device, is_migration};
use super::protocol::Protocol;
use super::table::{DevicePte, bump};
use crate::bug::Bug;
use crate::secondary::FaultError;

/// The broken protocol for `bug`, if it is one of the device mirror's.
pub(super) fn protocol(bug: Option<Bug>) -> Option<&'static dyn Protocol> {
    Some(match bug? {
        Bug::NoSetSeq => &NoSetSeq,
        Bug::NoReadRetry => &NoReadRetry,
        Bug::ProgramBeforeRetry => &ProgramBeforeRetry,
        Bug::IgnoreNonBlocking => &IgnoreNonBlocking,
        Bug::SkipForeignOwner => &SkipForeignOwner,
        _ => return None,
    })
}

/// [`Bug::NoSetSeq`]: zaps under the device lock but never `set_seq`s.
#[derive(Debug)]
struct NoSetSeq;

impl Protocol for NoSetSeq {
    fn invalidate(&self, device: &Device, _: &IntervalSub, range: &Range<'_>, _: Seq) -> bool {
        if device.is_own_migration(range) {
            return true;
        }
        let table = if range.is_blockable() {
            Some(device.table.lock())
        } else {
            device.table.try_lock()
        };
        let Some(mut table) = table else {
            return false;
        };
        device.zap(&mut table, range);
        true
    }
}

/// [`Bug::NoReadRetry`]: programs whatever the walk found.
#[derive(Debug)]
struct NoReadRetry;

impl Protocol for NoReadRetry {
    fn commit(
        &self,
        device: &Device,
        _: &IntervalSub,
        _: Seq,
        _: u64,
        page: u64,
        pte: DevicePte,
    ) -> Result<bool, FaultError> {
        let mut table = device.table.lock();
        if table.released {
            return Err(FaultError::Released);
        }
        table.ptes.insert(page, pte);
        Ok(true)
    }
}

/// [`Bug::ProgramBeforeRetry`]: programs, then checks `read_retry` and
/// leaves what it programmed in place when it says retry.
#[derive(Debug)]
struct ProgramBeforeRetry;

impl Protocol for ProgramBeforeRetry {
    fn commit(
        &self,
        device: &Device,
        sub: &IntervalSub,
        seq: Seq,
        generation: u64,
        page: u64,
        pte: DevicePte,
    ) -> Result<bool, FaultError> {
        let mut table = device.table.lock();
        if table.released {
            return Err(FaultError::Released);
        }
        table.ptes.insert(page, pte);
        Ok(!sub.read_retry(seq) && table.generation == generation)
    }
}

/// [`Bug::IgnoreNonBlocking`]: acknowledges a non-blockable range without
/// zapping.
#[derive(Debug)]
struct IgnoreNonBlocking;

impl Protocol for IgnoreNonBlocking {
    fn invalidate(&self, device: &Device, sub: &IntervalSub, range: &Range<'_>, seq: Seq) -> bool {
        !range.is_blockable() || device.invalidate(sub, range, seq)
    }
}

/// [`Bug::SkipForeignOwner`]: skips every `Migrate`/`Exclusive` range,
/// whoever started it.
#[derive(Debug)]
struct SkipForeignOwner;

impl Protocol for SkipForeignOwner {
    fn invalidate(&self, device: &Device, sub: &IntervalSub, range: &Range<'_>, seq: Seq) -> bool {
        if is_migration(range) {
            bump(&device.counts.skipped);
            return true;
        }
        device.invalidate(sub, range, seq)
    }
}
