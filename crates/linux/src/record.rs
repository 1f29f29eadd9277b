//! What one delivered invalidation looks like to observers outside the
//! notifier callbacks: `mmun trace`, per-source counters, tests.
//!
//! Shared vocabulary of the hook side and the userfaultfd side; every value
//! here is plain data so that it can be built and written without
//! allocating (hooks run inside libc calls, possibly under malloc's locks).

use mmun_core::Event;

/// Where the process learned about a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Source {
    /// An interposed libc call: start before the system call, end after it,
    /// in the calling thread.
    Hook = 0,
    /// A userfaultfd event, read after the kernel changed the mapping: the
    /// start and end are delivered together, late.
    Uffd = 1,
    /// A change made by a notifier callback itself (say, a callback that
    /// unmaps), delivered after the outer invalidation ended.
    Deferred = 2,
}

/// The call (or kernel event) that caused an invalidation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
#[allow(missing_docs)] // the names are the libc calls and uffd events
pub enum Call {
    Mmap = 0,
    Munmap,
    Mremap,
    Madvise,
    Mprotect,
    PkeyMprotect,
    Brk,
    Sbrk,
    Shmat,
    Shmdt,
    Fork,
    Clone,
    Ftruncate,
    Fallocate,
    Execve,
    Exit,
    UffdUnmap,
    UffdRemove,
    UffdRemap,
    Fsync,
    Fdatasync,
    Msync,
    SyncFileRange,
    Syncfs,
    Sync,
}

/// Start or end of an invalidation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Phase {
    /// `invalidate_range_start` was delivered.
    Start = 0,
    /// `invalidate_range_end` was delivered.
    End = 1,
    /// `release` was delivered (exit or exec).
    Release = 2,
}

/// One delivered phase of one invalidation. `Copy`, fixed size, no heap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceRecord {
    /// `CLOCK_MONOTONIC` nanoseconds.
    pub time_ns: u64,
    /// The process (`getpid`).
    pub pid: u32,
    /// The thread (`gettid`).
    pub tid: u32,
    /// The event Linux itself uses for this change.
    pub event: Event,
    /// First byte of the range.
    pub start: u64,
    /// One past the last byte of the range.
    pub end: u64,
    /// Where it came from.
    pub source: Source,
    /// The call that caused it.
    pub call: Call,
    /// Start, end or release.
    pub phase: Phase,
}
