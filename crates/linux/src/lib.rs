//! MMU notifiers on the calling process's own address space.
//!
//! The process gets one [`mmun_core::Mm`]; list and interval notifiers
//! register on it with the core API unchanged, and their callbacks run for
//! what happens to the process's real memory:
//!
//! * interposed libc calls (`munmap`, `mremap`, `madvise`, `mprotect`, `brk`,
//!   `shmdt`, `fork`, ...) run `invalidate_range_start` → the real system
//!   call → `invalidate_range_end` in the calling thread ([`Source::Hook`]);
//! * userfaultfd reports what no hook sees (raw `syscall()`, static code)
//!   after the fact ([`Source::Uffd`], marked late).
//!
//! `DESIGN.md` has the source-by-source coverage table.

pub mod record;
pub mod trace_sink;
pub mod uffd;

pub use record::{Call, Phase, Source, TraceRecord};
