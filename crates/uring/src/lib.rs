//! An io_uring fixed-buffer registration cache on the calling process,
//! kept coherent by MMU notifiers.
//!
//! io_uring's fixed buffers (`IORING_REGISTER_BUFFERS`) pin the pages they
//! were given: after `munmap`, `mremap`, `MADV_DONTNEED` or a `free()` +
//! `malloc()` that reuses the address, a `READ_FIXED` still lands in the
//! *old* pages, where nobody looks. [`UringCache`] is the generic
//! registration cache of `mmun-secondary` ([`mmun_secondary::rcache::Rcache`])
//! with the calling process as its primary ([`Process`]: interval notifiers
//! on [`mmun_linux::process_mm`], fed by the libc hooks of
//! [`mmun_linux::install`]) and a sparse fixed-buffer table as its
//! registrar ([`FixedSlots`]): [`UringCache::get`] returns a registration
//! whose [`Slot::index`] is a `buf_index` valid for `READ_FIXED` and
//! `WRITE_FIXED` for as long as a use of it is held.
//!
//! ```no_run
//! use std::os::fd::AsFd;
//! # fn main() -> Result<(), mmun_uring::UringError> {
//! let cache = mmun_uring::UringCache::new(mmun_uring::UringConfig::default())?;
//! let file = std::fs::File::open("/etc/hostname")?;
//! let mut buf = vec![0u8; 4096];
//! let n = cache.read_fixed(file.as_fd(), 0, &mut buf)?; // registers buf's pages once
//! let n = cache.read_fixed(file.as_fd(), 0, &mut buf)?; // a hit: no registration
//! drop(buf); // free() → munmap → the slot is emptied before the pages go
//! # let _ = n; Ok(()) }
//! ```
//!
//! # How a use holds the registration
//!
//! A hit ([`UringCache::get`]) takes no lock and makes no system call. The
//! device may use the slot only inside a use ([`FixedBuf::enter`] →
//! [`FixedUse`]), held from submission until the completion is reaped:
//!
//! * the notifier callback (which the hooks run in the thread calling
//!   `munmap`/`madvise`/`mremap`/`free`, *before* the system call) marks
//!   the registration dead under the cache lock, waits until no use is in
//!   flight, then empties the slot (`IORING_REGISTER_BUFFERS_UPDATE` with an
//!   empty iovec) and only then returns, letting the system call go on;
//! * a use increments the use count and then checks the registration is
//!   still live (the callback stores dead and then reads the count, both
//!   SeqCst), so no I/O starts on a slot being emptied, and none is in
//!   flight when the pages change.
//!
//! A registration that races an invalidation while it is being made (the
//! kernel pinned the old pages) fails `read_retry` and is emptied and made
//! again. The generic cache's module docs give the whole argument.
//!
//! # Fork and exec
//!
//! The cache belongs to the process that created it. In a fork child,
//! mmun-linux gives the process a fresh address space (`process_mm` is a
//! new `Mm`) on which the cache's notifiers are not inserted, and the ring
//! and its buffer table are *shared* with the parent: so every
//! [`UringCache::get`] in the child returns [`UringError::Forked`] (one
//! pointer compare on the hit path), and dropping the cache in the child
//! leaks it instead of emptying the parent's slots. A child makes its own
//! cache (UCX purges its cache on fork; this one refuses to be used). In
//! the parent, mmun-linux's fork handling invalidates the writable private
//! mappings (`ProtectionPage`, as `copy_page_range` does), so every
//! registration on them is dropped and made again on next use. After
//! `execve` nothing of the cache exists (the ring fd is close-on-exec).
//!
//! # Limits
//!
//! Registration goes through the kernel's GUP: an unmapped range is
//! [`UringError::Unmapped`], a file-backed one [`UringError::FileBacked`]
//! (io_uring accepts anonymous, shmem and hugetlb memory only), more than
//! `RLIMIT_MEMLOCK` (without `CAP_IPC_LOCK`) [`UringError::MemLock`]. The
//! changes no libc hook sees (raw `syscall()`, other processes writing
//! `/proc/PID/mem`) are caught late by mmun-linux's userfaultfd net if it
//! is started, or not at all; the optional PFN check
//! ([`UringConfig::check_pfn`], root) reports such a hit as
//! [`UringError::PfnMismatch`].

mod cache;
mod error;
pub mod pagemap;
mod process;
pub mod ring;
mod slots;

pub use cache::{FixedBuf, FixedUse, UringCache, UringConfig};
pub use error::UringError;
pub use process::{Process, Quiet};
pub use ring::{Ring, probe};
pub use slots::{FixedSlots, MAX_BUFFER, Slot};
