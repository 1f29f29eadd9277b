//! What can go wrong, each with the reason a user can act on.

use std::io;

/// Why the cache, a registration or an I/O failed.
#[derive(Debug, thiserror::Error)]
pub enum UringError {
    /// `kernel.io_uring_disabled` is 2: no process may create a ring.
    #[error("io_uring is disabled on this machine (sysctl kernel.io_uring_disabled = 2)")]
    Disabled,
    /// The kernel was built without io_uring (`ENOSYS`).
    #[error("this kernel has no io_uring (io_uring_setup: ENOSYS)")]
    Unsupported,
    /// `io_uring_setup` returned `EPERM`: `kernel.io_uring_disabled` is 1
    /// and the process is not in `kernel.io_uring_group`, or a seccomp
    /// filter forbids it.
    #[error(
        "io_uring is not permitted to this process (EPERM: kernel.io_uring_disabled = 1 without kernel.io_uring_group, or seccomp)"
    )]
    NotPermitted,
    /// io_uring refuses file-backed fixed buffers (only anonymous, shmem
    /// and hugetlb memory can be registered): `EOPNOTSUPP` from io_uring
    /// itself before Linux 6.5, `EFAULT` from GUP's long-term pin check
    /// since, told apart from a hole by `/proc/self/maps`.
    #[error(
        "the buffer is file-backed: io_uring refuses file-backed fixed buffers (EOPNOTSUPP, or EFAULT since Linux 6.5); use anonymous, shmem or hugetlb memory"
    )]
    FileBacked,
    /// `EFAULT`: part of the range is not mapped or not accessible.
    #[error("part of the buffer is not mapped or not accessible (EFAULT)")]
    Unmapped,
    /// Every slot of the fixed-buffer table holds a registration (raise
    /// [`UringConfig::slots`](crate::UringConfig::slots) or lower
    /// `max_regions`).
    #[error("every one of the {0} fixed-buffer slots is registered")]
    NoFreeSlot(u32),
    /// One fixed buffer may span at most 1 GiB.
    #[error("a fixed buffer may span at most 1 GiB; this one spans {0} bytes")]
    TooLong(u64),
    /// `ENOMEM`: pinning the pages would exceed `RLIMIT_MEMLOCK`, or the
    /// kernel is out of memory.
    #[error("registering would exceed RLIMIT_MEMLOCK or the kernel is out of memory (ENOMEM)")]
    MemLock,
    /// The cache was created before a `fork()` and this is the child (see
    /// the crate docs' fork policy).
    #[error(
        "this cache belongs to the parent process; a fork child may not use it (create a new cache)"
    )]
    Forked,
    /// The process's address space has exited (after `exit` began).
    #[error("the address space has exited")]
    Released,
    /// `mmun_linux::install` could not patch libc: without the hooks no
    /// invalidation arrives and the cache would hand out stale buffers.
    #[error("the mmun-linux hooks are not installed: {0}")]
    Hooks(String),
    /// The PFN check found a page the registration holds that the process
    /// no longer maps: the process changed it without an invalidation
    /// reaching the cache (a call the hooks do not see, see mmun-linux's
    /// coverage), or the cache ignored one.
    #[error(
        "PFN check: page {va:#x} is registered at PFN {registered:#x} but the process maps PFN {mapped:#x}"
    )]
    PfnMismatch {
        /// The page's virtual address.
        va: u64,
        /// The frame the registration holds.
        registered: u64,
        /// The frame the process maps now (0: not present).
        mapped: u64,
    },
    /// The PFN check needs `/proc/self/pagemap` to show frame numbers,
    /// which takes `CAP_SYS_ADMIN`.
    #[error("the PFN check needs /proc/self/pagemap with frame numbers (CAP_SYS_ADMIN): {0}")]
    PfnUnavailable(String),
    /// Any other failure of a system call.
    #[error("io_uring: {0}")]
    Io(#[from] io::Error),
}

impl From<mmun_core::Error> for UringError {
    /// A registration's interval notifier could not be inserted.
    fn from(err: mmun_core::Error) -> UringError {
        match err {
            mmun_core::Error::Overflow => UringError::Unmapped,
            _ => UringError::Released,
        }
    }
}

impl UringError {
    /// The error a failed buffer registration's errno means.
    pub(crate) fn from_register(err: io::Error) -> UringError {
        match err.raw_os_error() {
            Some(libc::EFAULT) => UringError::Unmapped,
            Some(libc::EOPNOTSUPP) => UringError::FileBacked,
            Some(libc::ENOMEM) => UringError::MemLock,
            _ => UringError::Io(err),
        }
    }

    /// The error a failed `io_uring_setup` means.
    pub(crate) fn from_setup(err: io::Error) -> UringError {
        match err.raw_os_error() {
            Some(libc::ENOSYS) => UringError::Unsupported,
            Some(libc::EPERM) => UringError::NotPermitted,
            _ => UringError::Io(err),
        }
    }

    /// Whether the error says io_uring cannot be used on this machine or
    /// by this process (what a test skips on).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            UringError::Disabled | UringError::Unsupported | UringError::NotPermitted
        )
    }
}
