//! The coherence oracle: every use of a secondary translation is compared
//! with what the primary maps at that instant.
//!
//! A secondary calls [`Coherence::try_check`] (or [`Coherence::check`]) for
//! each access, *holding the lock its invalidation callback takes before it
//! zaps*. An invalidation of the page then either has not started (the
//! primary still maps what the secondary holds) or is waiting for that lock
//! (the primary has not changed the page yet either), so any difference is
//! a stale use.
//!
//! A translation is a frame in one of its lives: the pfn plus the frame's
//! allocation serial, so a freed and reallocated frame does not pass for
//! the old one.
//!
//! # Reading the primary without deadlocking
//!
//! The software MMU calls invalidation callbacks with its page-table lock
//! held, and reading the primary takes that lock. A checker holding its
//! own lock that blocks on the page-table lock can therefore deadlock with
//! an invalidation that holds the page-table lock and waits in the
//! callback for the checker's lock. [`Coherence::try_check`] does not
//! wait: when the page-table lock is busy it returns
//! [`CheckError::Busy`], and the secondary drops its lock and tries the
//! whole access again. The software MMU holds that lock from before an
//! invalidation's callbacks until after its page-table change, so when the
//! check does get it, every invalidation has either not started or has
//! zapped the secondary and finished: the argument above still holds. [`Coherence::check`] blocks, so it is only for
//! secondaries whose callbacks never wait for the lock held around it.
//!
//! # Device-exclusive entries
//!
//! A device that made a page exclusive (`make_device_exclusive`) uses it
//! while the CPU cannot: the primary's entry is a device-exclusive swap
//! entry. [`Use::device`] names the accessing device; the check accepts
//! such an entry only if that device made it, and the CPU's access that
//! takes the page back notifies a `Clear` without owner, which every
//! device must honour.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use mmun_core::Owner;
use mmun_softmmu::{AddressSpace, Translation};
use parking_lot::Mutex;

/// Violations kept in full; later ones are only counted.
const KEPT: usize = 64;

/// One stale use of a secondary translation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The secondary that used it.
    pub secondary: &'static str,
    /// The virtual address.
    pub va: u64,
    /// Whether it was a write.
    pub write: bool,
    /// What the secondary used.
    pub held: Translation,
    /// What the primary maps there now (`None`: nothing accessible).
    pub primary: Option<Translation>,
    /// What was wrong.
    pub kind: ViolationKind,
}

/// What a [`Violation`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViolationKind {
    /// The use did not match the primary.
    Stale,
    /// The use was still in flight when an invalidation callback of its
    /// translation returned (the primary was free to change the page under
    /// it), whatever the primary mapped when it was checked.
    OutlivedInvalidation,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.write { "write" } else { "read" };
        if self.kind == ViolationKind::OutlivedInvalidation {
            return write!(
                f,
                "{}: {kind} of {:#x} through pfn {:#x} (serial {}) was in flight \
                 when its invalidation callback returned",
                self.secondary, self.va, self.held.pfn, self.held.serial,
            );
        }
        write!(
            f,
            "{}: stale {kind} of {:#x} through pfn {:#x} (serial {}, {}), primary ",
            self.secondary,
            self.va,
            self.held.pfn,
            self.held.serial,
            if self.held.writable { "rw" } else { "ro" },
        )?;
        match self.primary {
            Some(t) => write!(
                f,
                "maps pfn {:#x} (serial {}, {})",
                t.pfn,
                t.serial,
                if t.writable { "rw" } else { "ro" }
            ),
            None => f.write_str("maps nothing accessible"),
        }
    }
}

/// One use of a secondary translation, as [`Coherence::try_check`] judges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Use {
    /// The secondary that uses it.
    pub secondary: &'static str,
    /// The virtual address.
    pub va: u64,
    /// Whether it is a write.
    pub write: bool,
    /// What the secondary uses.
    pub held: Translation,
    /// The accessing device, whose own device-exclusive entries count as
    /// mappings (`None`: only what the CPU can reach counts).
    pub device: Option<Owner>,
}

/// Why [`Coherence::try_check`] did not pass a use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    /// The primary's page-table lock was busy: drop the secondary's lock
    /// and try the access again. Nothing was checked or recorded.
    #[error("the primary's page table is busy; retry without the secondary's lock")]
    Busy,
    /// The use was stale; the violation is recorded.
    #[error("{0}")]
    Stale(Violation),
}

/// The oracle; shared by every secondary of a run.
#[derive(Debug, Default)]
pub struct Coherence {
    checks: AtomicU64,
    inconclusive: AtomicU64,
    violations: AtomicU64,
    kept: Mutex<Vec<Violation>>,
}

impl Coherence {
    /// An oracle with nothing checked yet.
    pub fn new() -> Coherence {
        Coherence::default()
    }

    /// Checks one use of `held` at `va` by `secondary`; records and returns
    /// the violation if the primary no longer maps that frame life, or no
    /// longer lets it be written and this is a write.
    ///
    /// Waits for the primary's page-table lock: see the module docs for
    /// when that deadlocks, and [`Coherence::try_check`] for the variant
    /// that does not.
    pub fn check(
        &self,
        secondary: &'static str,
        space: &AddressSpace,
        va: u64,
        held: Translation,
        write: bool,
    ) -> Result<(), Violation> {
        let primary = space.translate_frame(va);
        let used = Use {
            secondary,
            va,
            write,
            held,
            device: None,
        };
        self.judge(&used, primary)
    }

    /// Checks `used` against the primary without waiting for its page-table
    /// lock (call it holding the lock the secondary's invalidation takes).
    ///
    /// # Errors
    ///
    /// [`CheckError::Busy`] if the page-table lock is held (back off and
    /// retry); [`CheckError::Stale`] with the recorded violation if the
    /// primary no longer maps that frame life to `used.device` (or, for a
    /// write, no longer lets it be written).
    pub fn try_check(&self, space: &AddressSpace, used: &Use) -> Result<(), CheckError> {
        let view = space
            .try_device_view(used.va, used.device)
            .map_err(|_| CheckError::Busy)?;
        let primary = view.map(|v| v.translation);
        self.judge(used, primary).map_err(CheckError::Stale)
    }

    /// Checks `used` after the fact, for a use whose check found the
    /// primary busy and that could not wait for it: reads the primary now
    /// (waiting for it; call it holding no lock a callback could need), and
    /// if it differs, asks `still_held` (evaluated after that read) whether
    /// the secondary still holds the same translation.
    ///
    /// Sound because a correct secondary drops a translation (under its own
    /// lock) before the primary may change that page: a translation that
    /// is still held after the primary changed was kept across the change.
    /// A difference whose translation is gone proves nothing: it is counted
    /// as inconclusive, not as a violation.
    ///
    /// # Errors
    ///
    /// The recorded violation, if the translation survived the change.
    pub fn check_after(
        &self,
        space: &AddressSpace,
        used: &Use,
        still_held: impl FnOnce() -> bool,
    ) -> Result<(), Violation> {
        let primary = space
            .device_view(used.va, used.device)
            .map(|v| v.translation);
        if matches_use(used, primary) {
            self.checks.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        if !still_held() {
            self.inconclusive.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        self.judge(used, primary)
    }

    /// Counts a check a secondary made by other means that proved nothing
    /// (it found the primary changed and the translation already gone).
    pub fn note_inconclusive(&self) {
        self.inconclusive.fetch_add(1, Ordering::Relaxed);
    }

    /// Deferred checks that proved nothing (see [`Coherence::check_after`]),
    /// and those counted by [`Coherence::note_inconclusive`].
    pub fn inconclusive(&self) -> u64 {
        self.inconclusive.load(Ordering::Relaxed)
    }

    /// The verdict on one use, given what the primary maps.
    fn judge(&self, used: &Use, primary: Option<Translation>) -> Result<(), Violation> {
        self.checks.fetch_add(1, Ordering::Relaxed);
        if matches_use(used, primary) {
            return Ok(());
        }
        let held = used.held;
        let violation = Violation {
            secondary: used.secondary,
            va: used.va,
            write: used.write,
            held,
            primary,
            kind: ViolationKind::Stale,
        };
        self.record(violation.clone());
        Err(violation)
    }

    /// Records that `used` was still in flight when an invalidation
    /// callback of its translation returned: the rule that a callback may
    /// not let the primary change a page while a use of it is in flight,
    /// checked directly (no look at the primary, so no lock to meet busy).
    pub fn record_outlived(&self, used: &Use) {
        self.record(Violation {
            secondary: used.secondary,
            va: used.va,
            write: used.write,
            held: used.held,
            primary: None,
            kind: ViolationKind::OutlivedInvalidation,
        });
    }

    /// Records a violation found by other means (a secondary's own check).
    pub fn record(&self, violation: Violation) {
        self.violations.fetch_add(1, Ordering::Relaxed);
        let mut kept = self.kept.lock();
        if kept.len() < KEPT {
            kept.push(violation);
        }
    }

    /// Accesses checked so far.
    pub fn checks(&self) -> u64 {
        self.checks.load(Ordering::Relaxed)
    }

    /// Violations found so far.
    pub fn violation_count(&self) -> u64 {
        self.violations.load(Ordering::Relaxed)
    }

    /// The first violations, in full.
    pub fn violations(&self) -> Vec<Violation> {
        self.kept.lock().clone()
    }
}

/// Whether the primary's `primary` still backs `used`: the same frame life,
/// and writable if the use writes.
fn matches_use(used: &Use, primary: Option<Translation>) -> bool {
    let held = used.held;
    let same_frame = primary.is_some_and(|p| p.pfn == held.pfn && p.serial == held.serial);
    let may_write = primary.is_some_and(|p| p.writable);
    same_frame && (!used.write || may_write)
}
