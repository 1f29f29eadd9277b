//! `mmun_interval_*`: interval subscriptions on the process address space.

use std::cell::Cell;
use std::ffi::{c_int, c_void};

use mmun_core::{IntervalNotifier, IntervalNotifierOps, IntervalSub, Range, Seq};

use crate::entry::{code, core_errno, guarded, refuse_inside_callback, store};
use crate::range::MmunRange;
use crate::registry::Registry;

/// `struct mmun_interval`: never defined; handles are numbers
/// (`crate::registry`).
#[repr(C)]
#[derive(Debug)]
pub struct MmunInterval {
    _opaque: [u8; 0],
}

/// `mmun_interval_invalidate_fn`.
pub type InvalidateFn = extern "C" fn(
    sub: *mut MmunInterval,
    range: *const MmunRange,
    cur_seq: u64,
    arg: *mut c_void,
) -> c_int;

/// The driver state behind a C interval: its callback and argument.
#[derive(Debug)]
pub struct CInterval {
    handle: u64,
    invalidate: InvalidateFn,
    /// The C caller's pointer, passed back untouched.
    arg: usize,
}

pub(crate) static INTERVALS: Registry<IntervalNotifier<CInterval>> = Registry::new();

/// The invalidate callback this thread is running: what `set_seq` accepts.
#[derive(Clone, Copy)]
struct Running {
    handle: u64,
    sub: *const IntervalSub,
    cur_seq: u64,
}

thread_local! {
    /// Const-initialised and without a destructor: touching it inside a
    /// hook never allocates.
    static RUNNING: Cell<Option<Running>> = const { Cell::new(None) };
}

impl IntervalNotifierOps for CInterval {
    fn invalidate(&self, sub: &IntervalSub, range: &Range<'_>, cur_seq: Seq) -> bool {
        let running = Running {
            handle: self.handle,
            sub,
            cur_seq: cur_seq.get(),
        };
        // Callbacks nest when one interval's callback runs inside another's
        // (a change delivered late from within): restore the outer one.
        let outer = RUNNING.replace(Some(running));
        let range = MmunRange::from(range);
        let done = (self.invalidate)(
            self.handle as *mut MmunInterval,
            &range,
            cur_seq.get(),
            self.arg as *mut c_void,
        );
        RUNNING.set(outer);
        done != 0
    }
}

fn live(sub: *mut MmunInterval) -> Result<&'static IntervalNotifier<CInterval>, c_int> {
    INTERVALS.get(sub as u64).ok_or(-libc::EINVAL)
}

/// The sequence word of a live interval, one lookup away (`read_retry`).
#[inline]
fn live_seq(sub: *mut MmunInterval) -> Result<&'static IntervalSub, c_int> {
    let word = INTERVALS.hot(sub as u64).ok_or(-libc::EINVAL)?;
    // SAFETY: `hot` of an interval is its notifier's seq word, valid while
    // the handle is live (the caller does not remove it meanwhile).
    Ok(unsafe { &*word.cast::<IntervalSub>() })
}

/// Subscribes `[start, start+length)`; see `mmun.h`.
///
/// # Safety
///
/// `out` is null or points to writable storage for a handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmun_interval_insert(
    start: u64,
    length: u64,
    invalidate: Option<InvalidateFn>,
    arg: *mut c_void,
    out: *mut *mut MmunInterval,
) -> c_int {
    guarded(|| code(insert(start, length, invalidate, arg, out)))
}

fn insert(
    start: u64,
    length: u64,
    invalidate: Option<InvalidateFn>,
    arg: *mut c_void,
    out: *mut *mut MmunInterval,
) -> Result<(), c_int> {
    let (Some(invalidate), false) = (invalidate, out.is_null()) else {
        return Err(-libc::EINVAL);
    };
    refuse_inside_callback()?;
    let handle = INTERVALS.reserve().ok_or(-libc::ENOMEM)?;
    let ops = CInterval {
        handle,
        invalidate,
        arg: arg as usize,
    };
    match IntervalNotifier::insert(mmun_linux::process_mm(), start, length, ops) {
        Ok(notifier) => {
            // The seq word stays where it is for the notifier's life.
            let word: *const IntervalSub = &*notifier;
            INTERVALS.publish(handle, Box::new(notifier), word.cast());
            store(out, handle as *mut MmunInterval)
        }
        Err(e) => {
            INTERVALS.release(handle);
            Err(core_errno(&e))
        }
    }
}

/// Unsubscribes; see `mmun.h`.
#[unsafe(no_mangle)]
pub extern "C" fn mmun_interval_remove(sub: *mut MmunInterval) -> c_int {
    guarded(|| {
        code((|| {
            refuse_inside_callback()?;
            let notifier = INTERVALS.take(sub as u64).ok_or(-libc::EINVAL)?;
            notifier.remove();
            Ok(())
        })())
    })
}

/// `mmu_interval_read_begin`; see `mmun.h`.
///
/// # Safety
///
/// `seq` is null or points to writable storage for a `uint64_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmun_interval_read_begin(sub: *mut MmunInterval, seq: *mut u64) -> c_int {
    guarded(|| {
        code((|| {
            if seq.is_null() {
                return Err(-libc::EINVAL);
            }
            let begun = live(sub)?.try_read_begin().ok_or(-libc::EDEADLK)?;
            store(seq, begun.get())
        })())
    })
}

/// `struct mmun_interval_seq`: the words the header's inline `read_begin`
/// and `read_retry` read (`mmun_core::SeqWords`), and the handle for the
/// slow path.
#[repr(C)]
#[derive(Debug)]
pub struct MmunIntervalSeq {
    /// The interval's sequence word.
    pub interval: *const u64,
    /// The sequence of the running invalidation.
    pub invalidating: *const u64,
    /// The handle, for `read_begin`'s slow path.
    pub sub: *mut MmunInterval,
}

/// Fills the inline functions' words for `sub`; see `mmun.h`.
///
/// # Safety
///
/// `out` is null or points to writable storage for the struct.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmun_interval_seq_get(
    sub: *mut MmunInterval,
    out: *mut MmunIntervalSeq,
) -> c_int {
    guarded(|| {
        code((|| {
            if out.is_null() {
                return Err(-libc::EINVAL);
            }
            let words = live(sub)?.seq_words();
            let filled = MmunIntervalSeq {
                interval: words.interval,
                invalidating: words.invalidating,
                sub,
            };
            // SAFETY: non-null, and writable by the caller's contract.
            unsafe { out.write(filled) };
            Ok(())
        })())
    })
}

/// `mmu_interval_read_retry`; see `mmun.h`.
#[unsafe(no_mangle)]
pub extern "C" fn mmun_interval_read_retry(sub: *mut MmunInterval, seq: u64) -> c_int {
    guarded(|| match live_seq(sub) {
        Ok(n) => c_int::from(n.read_retry(Seq::from_raw(seq))),
        Err(errno) => errno,
    })
}

/// `mmu_interval_check_retry`; see `mmun.h`.
#[unsafe(no_mangle)]
pub extern "C" fn mmun_interval_check_retry(sub: *mut MmunInterval, seq: u64) -> c_int {
    guarded(|| match live_seq(sub) {
        Ok(n) => c_int::from(n.check_retry(Seq::from_raw(seq))),
        Err(errno) => errno,
    })
}

/// `mmu_interval_set_seq`, from the interval's own callback; see `mmun.h`.
#[unsafe(no_mangle)]
pub extern "C" fn mmun_interval_set_seq(sub: *mut MmunInterval, cur_seq: u64) -> c_int {
    guarded(|| match RUNNING.get() {
        Some(r) if r.handle == sub as u64 && r.cur_seq == cur_seq => {
            // SAFETY: `RUNNING` holds the callback's `&IntervalSub` only
            // while that callback runs on this thread, and it runs now
            // (this call comes from inside it).
            unsafe { &*r.sub }.set_seq(Seq::from_raw(cur_seq));
            0
        }
        _ => -libc::EINVAL,
    })
}

/// The interval's first byte and length; see `mmun.h`.
///
/// # Safety
///
/// `start` and `length` are null or point to writable `uint64_t`s.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmun_interval_range(
    sub: *mut MmunInterval,
    start: *mut u64,
    length: *mut u64,
) -> c_int {
    guarded(|| {
        code((|| {
            if start.is_null() || length.is_null() {
                return Err(-libc::EINVAL);
            }
            let n = live(sub)?;
            store(start, n.start())?;
            store(length, n.last() - n.start() + 1)
        })())
    })
}
