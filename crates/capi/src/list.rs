//! `mmun_notifier_*`: whole-address-space (list) notifiers.

use std::ffi::{c_int, c_void};

use mmun_core::{Notifier, NotifierOps, Range, StartFn};

use crate::entry::{code, core_errno, guarded, refuse_inside_callback, store};
use crate::range::MmunRange;
use crate::registry::Registry;

/// `struct mmun_notifier`: never defined; handles are numbers
/// (`crate::registry`).
#[repr(C)]
#[derive(Debug)]
pub struct MmunNotifier {
    _opaque: [u8; 0],
}

/// `mmun_range_fn`.
pub type RangeFn = extern "C" fn(range: *const MmunRange, arg: *mut c_void);

/// A C list notifier: its callbacks and argument.
#[derive(Debug)]
pub struct CList {
    start: Option<RangeFn>,
    end: Option<RangeFn>,
    /// The C caller's pointer, passed back untouched.
    arg: usize,
}

impl CList {
    fn call(&self, f: Option<RangeFn>, range: &Range<'_>) {
        if let Some(f) = f {
            f(&MmunRange::from(range), self.arg as *mut c_void);
        }
    }
}

/// Both callbacks are always present in the table: an absent C callback is
/// skipped when called, which Linux cannot tell from a callback that does
/// nothing (no start of these can fail, so no end is ever owed).
static OPS: NotifierOps<CList> = NotifierOps {
    invalidate_range_start: Some(StartFn::Infallible(|c, range| c.call(c.start, range))),
    invalidate_range_end: Some(|c, range| c.call(c.end, range)),
    ..NotifierOps::EMPTY
};

pub(crate) static NOTIFIERS: Registry<Notifier<CList>> = Registry::new();

/// Registers a list notifier; see `mmun.h`.
///
/// # Safety
///
/// `out` is null or points to writable storage for a handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmun_notifier_register(
    start: Option<RangeFn>,
    end: Option<RangeFn>,
    arg: *mut c_void,
    out: *mut *mut MmunNotifier,
) -> c_int {
    guarded(|| code(register(start, end, arg, out)))
}

fn register(
    start: Option<RangeFn>,
    end: Option<RangeFn>,
    arg: *mut c_void,
    out: *mut *mut MmunNotifier,
) -> Result<(), c_int> {
    if out.is_null() || (start.is_none() && end.is_none()) {
        return Err(-libc::EINVAL);
    }
    refuse_inside_callback()?;
    let handle = NOTIFIERS.reserve().ok_or(-libc::ENOMEM)?;
    let data = CList {
        start,
        end,
        arg: arg as usize,
    };
    match Notifier::register(mmun_linux::process_mm(), &OPS, data) {
        Ok(notifier) => {
            NOTIFIERS.publish(handle, Box::new(notifier), std::ptr::null());
            store(out, handle as *mut MmunNotifier)
        }
        Err(e) => {
            NOTIFIERS.release(handle);
            Err(core_errno(&e))
        }
    }
}

/// Unregisters a list notifier; see `mmun.h`.
#[unsafe(no_mangle)]
pub extern "C" fn mmun_notifier_unregister(notifier: *mut MmunNotifier) -> c_int {
    guarded(|| {
        code((|| {
            refuse_inside_callback()?;
            let notifier = NOTIFIERS.take(notifier as u64).ok_or(-libc::EINVAL)?;
            notifier.unregister();
            Ok(())
        })())
    })
}
