//! MMU notifiers on the calling process's own address space.
//!
//! The process gets one [`mmun_core::Mm`] ([`process_mm`]); list and
//! interval notifiers register on it with the core API unchanged, and their
//! callbacks run for what happens to the process's real memory:
//!
//! * interposed libc calls (`munmap`, `mmap(MAP_FIXED)`, `mremap`,
//!   `madvise`, `mprotect`, `pkey_mprotect`, `brk`/`sbrk`, `shmat`,
//!   `shmdt`, `ftruncate`, `fallocate`, the fsync family — `fsync`,
//!   `fdatasync`, `msync`, `sync_file_range`, `sync`, `syncfs` — `ld.so`'s
//!   own `mmap`/`mprotect`/`munmap`, and `fork` through `pthread_atfork`)
//!   run `invalidate_range_start` → the real system call →
//!   `invalidate_range_end` in the calling thread ([`Source::Hook`]), for
//!   glibc's internal callers too (`free`, heap trimming, thread exit);
//! * userfaultfd reports what no hook sees (raw `syscall()`, static code)
//!   after the fact ([`Source::Uffd`], marked late);
//! * exit releases the notifiers once.
//!
//! ```no_run
//! use mmun_core::{IntervalNotifier, IntervalNotifierOps, IntervalSub, Range, Seq};
//!
//! struct Mirror;
//! impl IntervalNotifierOps for Mirror {
//!     fn invalidate(&self, sub: &IntervalSub, range: &Range<'_>, cur_seq: Seq) -> bool {
//!         sub.set_seq(cur_seq); // and drop the translations of `range`
//!         true
//!     }
//! }
//!
//! mmun_linux::install().expect("libc patched");
//! let buf = vec![0u8; 1 << 20];
//! let sub = IntervalNotifier::insert(mmun_linux::process_mm(), buf.as_ptr() as u64, 1 << 20, Mirror)
//!     .unwrap();
//! drop(buf); // free() → munmap → Mirror::invalidate, before the memory is gone
//! # drop(sub);
//! ```
//!
//! `DESIGN.md` has the source-by-source coverage table and the threading
//! and reentrancy rules.

pub mod anon;
pub mod dispatch;
pub mod fork_calls;
pub mod hooks;
pub mod lifecycle;
pub mod maps;
pub mod net;
pub mod patch;
pub mod proc_fd;
pub mod process;
pub mod record;
pub mod signals;
pub mod sys;
pub mod thp;
pub mod thread;
pub mod trace;
pub mod trace_sink;
pub mod uffd;
pub mod writeback;

use std::sync::OnceLock;

pub use patch::{InstallError, Patched};
pub use process::process_mm;
pub use record::{Call, Phase, Source, TraceRecord};
pub use thread::in_hook;

static INSTALLED: OnceLock<Result<Patched, InstallError>> = OnceLock::new();

/// Installs the hooks in this process, once: fork and exit handlers, then
/// libc's system-call sites (all or none). The userfaultfd net is separate:
/// [`net::start_uffd`]. Later calls return the first
/// outcome. No environment variable is needed; libraries loaded later
/// (`dlopen`) call into the patched libc and are covered.
///
/// # Errors
///
/// [`InstallError`] names what stopped patching (a foreign prologue, an
/// unsupported architecture, ...). The fork/exit handlers stay registered
/// even then.
pub fn install() -> Result<&'static Patched, &'static InstallError> {
    INSTALLED
        .get_or_init(|| {
            lifecycle::register().map_err(InstallError::Handlers)?;
            patch::install()
        })
        .as_ref()
}

/// Whether [`install`] patched libc.
pub fn installed() -> bool {
    matches!(INSTALLED.get(), Some(Ok(_)))
}
