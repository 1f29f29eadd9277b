//! What every C entry point shares: no panic crosses the boundary, and the
//! calls that would wait for the calling thread itself are refused.

use std::ffi::c_int;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// Runs the body of an entry point. A panic (an internal bug: every rule a
/// caller can break is checked before it could panic) is caught and
/// returned as `-ENOTRECOVERABLE`; the panic hook has already printed it.
#[inline(always)]
pub(crate) fn guarded(body: impl FnOnce() -> c_int) -> c_int {
    // AssertUnwindSafe: after a caught panic the caller gets an error and
    // the state the body touched is the library's, whose locks are
    // poison-free and whose invariants the panicking rule left intact.
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(-libc::ENOTRECOVERABLE)
}

/// `-EDEADLK` if this thread is inside a callback (or a registration path)
/// of the process address space: registering, unregistering and removing
/// take the locks that the running invalidation holds, or wait for it to
/// end.
#[inline]
pub(crate) fn refuse_inside_callback() -> Result<(), c_int> {
    if mmun_linux::thread::busy() {
        Err(-libc::EDEADLK)
    } else {
        Ok(())
    }
}

/// `Ok` value or errno, as the entry points return them.
pub(crate) fn code(result: Result<(), c_int>) -> c_int {
    match result {
        Ok(()) => 0,
        Err(errno) => errno,
    }
}

/// `-errno` of a core error.
pub(crate) fn core_errno(e: &mmun_core::Error) -> c_int {
    -e.errno()
}

/// Stores `value` through `out`, or `-EINVAL` for a null `out`.
pub(crate) fn store<T>(out: *mut T, value: T) -> Result<(), c_int> {
    if out.is_null() {
        return Err(-libc::EINVAL);
    }
    // SAFETY: non-null; the C caller passes a pointer to writable storage
    // of the right type, as the header documents.
    unsafe { out.write(value) };
    Ok(())
}
