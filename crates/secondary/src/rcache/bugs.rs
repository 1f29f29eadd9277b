//! The registration cache's injectable bugs (`mmun stress --inject`), each a
//! [`Protocol`] replacing one step.

use mmun_core::{IntervalSub, Range, Seq};

use super::Shared;
use super::backend::{Primary, Registrar};
use super::protocol::Protocol;
use super::registration::{Registration, State};
use crate::bug::Bug;

/// The broken steps for `bug`, if it is one of the cache's.
pub(super) fn protocol<P: Primary, R: Registrar<P>>(
    bug: Option<Bug>,
) -> Option<&'static dyn Protocol<P, R>> {
    Some(match bug? {
        Bug::LookupNoRetry => &LookupNoRetry,
        Bug::KeepStaleRegistration => &KeepStaleRegistration,
        _ => return None,
    })
}

/// [`Bug::LookupNoRetry`]: a hit hands out whatever it found, dead or not.
#[derive(Debug)]
struct LookupNoRetry;

impl<P: Primary, R: Registrar<P>> Protocol<P, R> for LookupNoRetry {
    fn hands_out(&self, _: State) -> bool {
        true
    }
}

/// [`Bug::KeepStaleRegistration`]: the callback `set_seq`s under the lock
/// and acknowledges, leaving the registration live and registered (pinned):
/// the cache ignores the invalidation.
#[derive(Debug)]
struct KeepStaleRegistration;

impl<P: Primary, R: Registrar<P>> Protocol<P, R> for KeepStaleRegistration {
    fn invalidate(
        &self,
        cache: &Shared<P, R>,
        _: &Registration<P, R>,
        sub: &IntervalSub,
        range: &Range<'_>,
        cur_seq: Seq,
    ) -> bool {
        cache
            .locked
            .lock_for_invalidate(sub, range, cur_seq)
            .is_some()
    }
}
