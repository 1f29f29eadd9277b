//! The coherence oracle: every use of a secondary translation is compared
//! with what the primary maps at that instant.
//!
//! A secondary calls [`Coherence::check`] for each access, *holding the lock
//! its invalidation callback takes before it zaps*. An invalidation of the
//! page then either has not started (the primary still maps what the
//! secondary holds) or is waiting for that lock (the primary has not
//! changed the page yet either), so any difference is a stale use.
//!
//! A translation is a frame in one of its lives: the pfn plus the frame's
//! allocation serial, so a freed and reallocated frame does not pass for
//! the old one.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

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
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.write { "write" } else { "read" };
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

/// The oracle; shared by every secondary of a run.
#[derive(Debug, Default)]
pub struct Coherence {
    checks: AtomicU64,
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
    pub fn check(
        &self,
        secondary: &'static str,
        space: &AddressSpace,
        va: u64,
        held: Translation,
        write: bool,
    ) -> Result<(), Violation> {
        self.checks.fetch_add(1, Ordering::Relaxed);
        let primary = space.translate_frame(va);
        let same_frame = primary.is_some_and(|p| p.pfn == held.pfn && p.serial == held.serial);
        let may_write = primary.is_some_and(|p| p.writable);
        if same_frame && (!write || may_write) {
            return Ok(());
        }
        let violation = Violation {
            secondary,
            va,
            write,
            held,
            primary,
        };
        self.record(violation.clone());
        Err(violation)
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
