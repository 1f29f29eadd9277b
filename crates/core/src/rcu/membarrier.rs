//! The heavy half of the asymmetric fences: `membarrier(2)` with
//! `MEMBARRIER_CMD_PRIVATE_EXPEDITED`, which makes every running thread of
//! the process execute a full memory barrier before the call returns (and a
//! thread that is not running has passed through one on its way out of the
//! CPU). That promotes the readers' compiler-only fences B and C to full
//! fences with respect to the updater's fence A, as described in
//! membarrier(2) ("barrier() in the fast path is promoted to smp_mb() by
//! membarrier() in the slow path") and used by liburcu's "memb" flavour.
//!
//! The command needs a one-time, process-wide registration
//! (`MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED`), done by [`available`] the
//! first time a domain is created. Where the system call is missing or
//! refused (ENOSYS on old kernels or other systems, EINVAL when the command
//! is unsupported, EPERM under a seccomp filter), [`available`] says so and
//! domains use symmetric full fences instead. Never under loom, which cannot
//! model the system call.

#[cfg(all(not(mmun_loom), any(target_os = "linux", target_os = "android")))]
mod imp {
    use std::sync::OnceLock;

    use rustix::thread::{MembarrierCommand, membarrier, membarrier_query};

    /// Whether this process can use `MEMBARRIER_CMD_PRIVATE_EXPEDITED`;
    /// registers it on the first call. Decided once per process: the answer
    /// never changes afterwards, so a domain that was built to rely on it can
    /// keep doing so.
    pub(in crate::rcu) fn available() -> bool {
        static AVAILABLE: OnceLock<bool> = OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            let supported = membarrier_query();
            supported.contains_command(MembarrierCommand::PrivateExpedited)
                && supported.contains_command(MembarrierCommand::RegisterPrivateExpedited)
                && membarrier(MembarrierCommand::RegisterPrivateExpedited).is_ok()
                // One trial run, so that a filter that allows the query and
                // the registration but not the command itself is caught here
                // rather than in the middle of a grace period.
                && membarrier(MembarrierCommand::PrivateExpedited).is_ok()
        })
    }

    /// Executes a full memory barrier on every running thread of the
    /// process (the updater's fence A in asymmetric mode).
    ///
    /// # Panics
    ///
    /// If the system call fails although it worked when [`available`]
    /// registered it (a seccomp filter installed since): the domain's
    /// readers rely on it, and no other fence can stand in for it, so going
    /// on would let a grace period end under a live reader.
    pub(in crate::rcu) fn heavy_barrier() {
        if let Err(err) = membarrier(MembarrierCommand::PrivateExpedited) {
            panic!(
                "membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) failed after a successful \
                 registration ({err}); SRCU readers of this domain cannot be fenced"
            );
        }
    }
}

#[cfg(not(all(not(mmun_loom), any(target_os = "linux", target_os = "android"))))]
mod imp {
    /// No `membarrier(2)` here (another system, or the loom backend).
    pub(in crate::rcu) fn available() -> bool {
        false
    }

    /// Unreachable: no domain uses asymmetric fences when [`available`]
    /// returns `false`.
    #[cfg(not(mmun_loom))]
    pub(in crate::rcu) fn heavy_barrier() {
        unreachable!("asymmetric SRCU fences without membarrier(2)");
    }
}

pub(super) use imp::*;
