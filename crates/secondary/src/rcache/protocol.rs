//! The registration cache's steps that an injected bug may replace: the
//! hit path's state check and the notifier callback. [`Textbook`] runs the
//! cache's own code; [`bugs`](super::bugs) holds the broken versions, so the
//! correct lines carry no `if bug`.

use std::fmt;

use mmun_core::{IntervalSub, Range, Seq};

use super::Shared;
use super::backend::{Primary, Registrar};
use super::registration::{Registration, State};
use crate::bug::Bug;

/// The steps a bug may replace. The provided methods are the correct ones.
pub(super) trait Protocol<P: Primary, R: Registrar<P>>: Send + Sync + fmt::Debug {
    /// Whether a lookup may hand out a registration found in `state`.
    fn hands_out(&self, state: State) -> bool {
        state == State::Live
    }

    /// The interval notifier's `invalidate` callback for `reg`.
    fn invalidate(
        &self,
        cache: &Shared<P, R>,
        reg: &Registration<P, R>,
        sub: &IntervalSub,
        range: &Range<'_>,
        cur_seq: Seq,
    ) -> bool {
        cache.invalidate(reg, sub, range, cur_seq)
    }
}

/// The correct cache.
#[derive(Debug)]
pub(super) struct Textbook;

impl<P: Primary, R: Registrar<P>> Protocol<P, R> for Textbook {}

/// The steps of a cache built with `bug` (the textbook ones for no bug or
/// another secondary's bug).
pub(super) fn for_bug<P: Primary, R: Registrar<P>>(
    bug: Option<Bug>,
) -> &'static dyn Protocol<P, R> {
    super::bugs::protocol(bug).unwrap_or(&Textbook)
}
