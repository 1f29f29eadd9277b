//! Deliberate bugs a secondary MMU can be built with, so the coherence
//! oracle and the stress harness can be shown to catch each of them.
//!
//! Every bug here is one that real secondary-MMU code has shipped or that
//! the kernel documentation warns against; each is caught as a stale use
//! of a translation, not as a hang.

use std::fmt;
use std::str::FromStr;

/// A bug to inject into one of the reference secondaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bug {
    /// Device mirror: `invalidate` zaps but never calls `set_seq`, so a
    /// fault that walked the primary before the invalidation still passes
    /// `read_retry`.
    NoSetSeq,
    /// Device mirror: programs the device PTEs without `read_retry`.
    NoReadRetry,
    /// Device mirror: programs the device PTEs first and checks
    /// `read_retry` afterwards, leaving what it programmed in place.
    ProgramBeforeRetry,
    /// Device mirror: a non-blockable range is acknowledged (`true`)
    /// without zapping anything.
    IgnoreNonBlocking,
    /// Device mirror: skips every `Migrate`/`Exclusive` range, not only
    /// those carrying its own owner.
    SkipForeignOwner,
    /// Shadow MMU: `invalidate_range_end` forgets to bump the invalidation
    /// sequence, so a fault that raced the whole start..end installs the
    /// old frame.
    NoSeqBump,
    /// Shadow MMU: the fault path ignores the count of invalidations in
    /// progress and checks only the sequence.
    IgnoreInProgress,
    /// Shadow MMU: no `invalidate_range_end`; all the bookkeeping happens
    /// in `invalidate_range_start`, so the window between the start and the
    /// primary's update is unguarded.
    MissingRangeEnd,
    /// Registration cache: a hit is returned without `read_retry`, so a
    /// registration being invalidated can still be handed out.
    LookupNoRetry,
    /// Registration cache: `invalidate` bumps the seq but leaves the
    /// registration usable.
    KeepStaleRegistration,
}

impl Bug {
    /// Every bug, in the order `--help` lists them.
    pub const ALL: [Bug; 10] = [
        Bug::NoSetSeq,
        Bug::NoReadRetry,
        Bug::ProgramBeforeRetry,
        Bug::IgnoreNonBlocking,
        Bug::SkipForeignOwner,
        Bug::NoSeqBump,
        Bug::IgnoreInProgress,
        Bug::MissingRangeEnd,
        Bug::LookupNoRetry,
        Bug::KeepStaleRegistration,
    ];

    /// The command-line name (`--inject NAME`).
    pub fn name(self) -> &'static str {
        match self {
            Bug::NoSetSeq => "no-set-seq",
            Bug::NoReadRetry => "no-read-retry",
            Bug::ProgramBeforeRetry => "program-before-retry",
            Bug::IgnoreNonBlocking => "ignore-nonblocking",
            Bug::SkipForeignOwner => "skip-foreign-owner",
            Bug::NoSeqBump => "no-seq-bump",
            Bug::IgnoreInProgress => "ignore-in-progress",
            Bug::MissingRangeEnd => "missing-range-end",
            Bug::LookupNoRetry => "lookup-no-retry",
            Bug::KeepStaleRegistration => "keep-stale-registration",
        }
    }

    /// Which secondary carries the bug.
    pub fn secondary(self) -> &'static str {
        match self {
            Bug::NoSetSeq
            | Bug::NoReadRetry
            | Bug::ProgramBeforeRetry
            | Bug::IgnoreNonBlocking
            | Bug::SkipForeignOwner => "device-mirror",
            Bug::NoSeqBump | Bug::IgnoreInProgress | Bug::MissingRangeEnd => "shadow-mmu",
            Bug::LookupNoRetry | Bug::KeepStaleRegistration => "rcache",
        }
    }

    /// One line for `--help`.
    pub fn describe(self) -> &'static str {
        match self {
            Bug::NoSetSeq => "device mirror: invalidate never calls set_seq",
            Bug::NoReadRetry => "device mirror: programs PTEs without read_retry",
            Bug::ProgramBeforeRetry => "device mirror: programs PTEs before the retry check",
            Bug::IgnoreNonBlocking => "device mirror: acks non-blocking ranges without zapping",
            Bug::SkipForeignOwner => "device mirror: skips migrate/exclusive of any owner",
            Bug::NoSeqBump => "shadow MMU: invalidate_range_end does not bump the sequence",
            Bug::IgnoreInProgress => "shadow MMU: faults ignore invalidations in progress",
            Bug::MissingRangeEnd => "shadow MMU: no invalidate_range_end, all work in start",
            Bug::LookupNoRetry => "registration cache: hits skip read_retry",
            Bug::KeepStaleRegistration => "registration cache: invalidate leaves it usable",
        }
    }
}

impl fmt::Display for Bug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown bug name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown bug {0:?}; known bugs: {list}", list = Bug::ALL.map(Bug::name).join(", "))]
pub struct UnknownBug(pub String);

impl FromStr for Bug {
    type Err = UnknownBug;
    fn from_str(s: &str) -> Result<Bug, UnknownBug> {
        Bug::ALL
            .into_iter()
            .find(|bug| bug.name() == s)
            .ok_or_else(|| UnknownBug(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_list_the_known_ones() {
        for bug in Bug::ALL {
            assert_eq!(bug.name().parse::<Bug>(), Ok(bug));
        }
        let err = "no-such-bug".parse::<Bug>().unwrap_err().to_string();
        assert!(
            err.contains("no-such-bug") && err.contains("no-set-seq"),
            "{err}"
        );
    }
}
