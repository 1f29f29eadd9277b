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
    /// `EFAULT`: nothing is mapped there, or nothing the primary's fault
    /// can make accessible (no VMA, `PROT_NONE`; the CPU would get
    /// SIGSEGV).
    #[error("the primary has no accessible mapping there (EFAULT)")]
    Unmapped,
    /// `EPERM`: a write asked of a mapping that does not allow writing
    /// (`hmm_range_fault` refuses a write fault on a VMA without
    /// `VM_WRITE`).
    #[error("the mapping does not allow writing (EPERM)")]
    Denied,
    /// `EINVAL`: a device migration over a page with no VMA or a VMA
    /// without `VM_READ` (test_hmm's check before `migrate_vma_setup`).
    #[error("the range has a hole or an unreadable mapping (EINVAL)")]
    Invalid,
    /// `ENOENT`: after a migration to the device, a page of the range is
    /// not in the device's table (not migrated: shared memory, or a page
    /// another device holds; test_hmm's read-back fails).
    #[error("a page of the range did not reach the device (ENOENT)")]
    NotFound,
    /// The address space has exited, or the secondary was released.
    #[error("the address space is gone")]
    Released,
    /// A non-blocking attempt found the secondary busy.
    #[error("busy, try again")]
    Busy,
}

impl FaultError {
    /// The negated errno test_hmm's ioctl would return (`EBUSY` for
    /// [`FaultError::Busy`], `EINVAL` for a released mirror: test_hmm's
    /// `mmget_not_zero` failing).
    pub fn errno(self) -> i32 {
        match self {
            FaultError::Unmapped => -14,
            FaultError::Denied => -1,
            FaultError::Invalid | FaultError::Released => -22,
            FaultError::NotFound => -2,
            FaultError::Busy => -16,
        }
    }
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

impl From<mmun_core::Error> for FaultError {
    /// A registration's interval notifier could not be inserted: an
    /// interval past the end of the address space is nothing mapped
    /// ([`FaultError::Unmapped`]); otherwise the address space is gone.
    fn from(err: mmun_core::Error) -> FaultError {
        match err {
            mmun_core::Error::Overflow => FaultError::Unmapped,
            _ => FaultError::Released,
        }
    }
}
