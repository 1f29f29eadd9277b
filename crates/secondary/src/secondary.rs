//! What the stress harness drives: the common face of the three reference
//! secondaries.

use std::fmt;

/// One secondary MMU mirroring one address space.
///
/// A `fault` goes through the secondary's full protocol (sequence read,
/// primary walk, lock, retry check, program); an `access` uses only the
/// secondary's own translation, checks it with the [`Coherence`](crate::Coherence)
/// oracle under the lock its invalidation takes, and never walks the
/// primary.
pub trait Secondary: Send + Sync {
    /// Short name for tables and violation reports (`device-mirror`, …).
    fn name(&self) -> &'static str;

    /// Makes `va` usable through the secondary, for writing if `write`.
    ///
    /// # Errors
    ///
    /// [`FaultError`] when the primary cannot provide the page.
    fn fault(&self, va: u64, write: bool) -> Result<(), FaultError>;

    /// Uses `va` through the secondary's translation, checked by the oracle.
    fn access(&self, va: u64, write: bool) -> Access;

    /// What the secondary has done so far.
    fn counters(&self) -> Counters;
}

/// The outcome of [`Secondary::access`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The secondary had a translation and used it (the oracle checked it).
    Hit,
    /// The secondary has no usable translation: fault first.
    Miss,
}

/// Why a [`Secondary::fault`] did not map the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FaultError {
    /// Nothing is mapped there, or not with the access asked for (the
    /// primary's fault would raise SIGSEGV).
    #[error("the primary has no accessible mapping there")]
    Unmapped,
    /// The address space has exited, or the secondary was released.
    #[error("the address space is gone")]
    Released,
    /// A non-blocking attempt found the secondary busy.
    #[error("busy, try again")]
    Busy,
}

/// Counts a secondary keeps, for the stress table and the tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Faults that ended with the page mapped.
    pub faults: u64,
    /// Fault attempts that had to start over because an invalidation
    /// collided with them.
    pub retries: u64,
    /// Invalidation callbacks that reached the secondary.
    pub invalidations: u64,
    /// Accesses that found a translation.
    pub hits: u64,
    /// Accesses that found none.
    pub misses: u64,
}

impl std::ops::AddAssign for Counters {
    fn add_assign(&mut self, other: Counters) {
        self.faults += other.faults;
        self.retries += other.retries;
        self.invalidations += other.invalidations;
        self.hits += other.hits;
        self.misses += other.misses;
    }
}

impl fmt::Display for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} faults, {} retries, {} invalidations, {} hits, {} misses",
            self.faults, self.retries, self.invalidations, self.hits, self.misses
        )
    }
}
