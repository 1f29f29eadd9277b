//! The measurements behind `mmun bench`: each headline figure of the
//! project beside its reference, measured interleaved in one run (this
//! machine's load drifts; ratios of interleaved medians do not), as
//! [`Row`]s the command prints as a table.
//!
//! | section | ours | reference |
//! |---|---|---|
//! | [`munmap`] | the interposed `munmap` (no subscriber, an interval notifier, the uffd net armed) | the raw system call |
//! | [`cache`] | the registration cache on this process (no-op registrar; io_uring slots) and `READ_FIXED` through it | `ucs_rcache`; a buffer registered once; registering per I/O |
//! | [`ucx`] | — | UCX's own hooks and `ucs_rcache`, where `libucx-dev` is installed |

pub mod cache;
pub mod measure;
pub mod munmap;
pub mod row;
pub mod ucx;

pub use row::{Row, Section, Skipped, Target};
