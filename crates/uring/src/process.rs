//! The calling process as a registration cache's primary.

use std::fmt;
use std::sync::Arc;

use mmun_core::Mm;
use mmun_linux::{dispatch, thread};
use mmun_secondary::rcache::{Primary, Step};

use crate::error::UringError;

/// The pages of the calling process, guarded by interval notifiers on
/// [`mmun_linux::process_mm`] (the hooks of [`mmun_linux::install`]
/// deliver `invalidate_range_start` synchronously before `munmap`,
/// `mremap`, `madvise(MADV_DONTNEED)`, `free()`'s trims, ... change them).
///
/// The walk does nothing: the device's own registration (GUP in the
/// kernel) faults the pages in, and reports an unmapped or file-backed
/// range itself.
pub struct Process {
    mm: Arc<Mm>,
}

impl Process {
    /// The calling process, with the hooks installed.
    ///
    /// # Errors
    ///
    /// [`UringError::Hooks`] if libc cannot be patched here.
    pub fn current() -> Result<Process, UringError> {
        mmun_linux::install().map_err(|err| UringError::Hooks(err.to_string()))?;
        Ok(Process {
            mm: Arc::clone(mmun_linux::process_mm()),
        })
    }

    /// Whether this is still the process the primary was made in: a fork
    /// child has a fresh address space (mmun-linux's `process_mm` is a new
    /// `Mm` there), and the notifiers of this one never fire in it. One
    /// atomic load and a compare.
    #[inline]
    pub fn is_current(&self) -> bool {
        Arc::ptr_eq(&self.mm, mmun_linux::process_mm())
    }
}

impl fmt::Debug for Process {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Process")
            .field("current", &self.is_current())
            .finish()
    }
}

impl Primary for Process {
    type Pages = ();
    type Error = UringError;
    type Quiet = Quiet;
    const PAGE_SIZE: u64 = 4096;

    fn mm(&self) -> &Arc<Mm> {
        &self.mm
    }

    fn walk(&self, _: u64, _: u64) -> Result<(), Step<UringError>> {
        Ok(())
    }

    fn quiet(&self) -> Quiet {
        Quiet::enter()
    }
}

/// While alive, a hooked call of this thread (a `free()` that trims the
/// heap while the cache allocates under its lock) runs at once and its
/// invalidation is delivered when the guard drops, marked late, instead of
/// waiting for the cache lock this thread holds. mmun-linux's registration
/// scope, which the core uses around its own allocating paths.
#[derive(Debug)]
pub struct Quiet(());

impl Quiet {
    fn enter() -> Quiet {
        thread::registration(true);
        Quiet(())
    }
}

impl Drop for Quiet {
    fn drop(&mut self) {
        if thread::registration(false) {
            dispatch::deliver_deferred();
        }
    }
}
