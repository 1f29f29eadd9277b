//! `LD_PRELOAD=libmmun_preload.so program`: installs the `mmun-linux` hooks
//! when the library loads (an ELF constructor), so that any dynamically
//! linked program gets synchronous invalidations around its (and glibc's
//! internal) memory-management calls, and exports a small C API:
//!
//! ```c
//! typedef void (*mmun_cb)(void *arg, int phase, int event,
//!                         uint64_t start, uint64_t end, int late);
//! void *mmun_subscribe(uint64_t start, uint64_t len, mmun_cb cb, void *arg);
//! void  mmun_unsubscribe(void *subscription);
//! int   mmun_installed(void);
//! ```
//!
//! `phase` is 0 for `invalidate_range_start` (before the change) and 1 for
//! `invalidate_range_end` (after it); `event` is the kernel's
//! `enum mmu_notifier_event` value. Callbacks run in the thread that made
//! the call, possibly inside `malloc`/`free`: they must not allocate.

use mmun_core::{Notifier, NotifierOps, Range, StartFn};

/// The C callback.
pub type Callback =
    extern "C" fn(arg: *mut libc::c_void, phase: i32, event: i32, start: u64, end: u64, late: i32);

/// One C subscription: a list notifier that reports what overlaps its range.
#[derive(Debug)]
pub struct Subscription {
    start: u64,
    end: u64,
    cb: Callback,
    /// The C caller's pointer, passed back untouched.
    arg: usize,
}

impl Subscription {
    fn report(&self, phase: i32, range: &Range<'_>) {
        if range.overlaps(self.start, self.end) {
            (self.cb)(
                self.arg as *mut libc::c_void,
                phase,
                range.event() as i32,
                range.start(),
                range.end(),
                i32::from(range.is_late()),
            );
        }
    }
}

static OPS: NotifierOps<Subscription> = NotifierOps {
    invalidate_range_start: Some(StartFn::Infallible(|s, range| s.report(0, range))),
    invalidate_range_end: Some(|s, range| s.report(1, range)),
    ..NotifierOps::EMPTY
};

/// Subscribes `cb` to every start and end overlapping `[start, start+len)`.
/// Returns NULL if `len` is 0 or the range overflows.
#[unsafe(no_mangle)]
pub extern "C" fn mmun_subscribe(
    start: u64,
    len: u64,
    cb: Callback,
    arg: *mut libc::c_void,
) -> *mut libc::c_void {
    let Some(end) = start.checked_add(len).filter(|_| len > 0) else {
        return std::ptr::null_mut();
    };
    let sub = Subscription {
        start,
        end,
        cb,
        arg: arg as usize,
    };
    match Notifier::register(mmun_linux::process_mm(), &OPS, sub) {
        Ok(n) => Box::into_raw(Box::new(n)).cast(),
        Err(_) => std::ptr::null_mut(),
    }
}

/// Ends a subscription made by [`mmun_subscribe`].
///
/// # Safety
///
/// `subscription` is a non-NULL value [`mmun_subscribe`] returned, not yet
/// unsubscribed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmun_unsubscribe(subscription: *mut libc::c_void) {
    if subscription.is_null() {
        return;
    }
    // SAFETY: the caller passes a box made by `mmun_subscribe`, once.
    drop(unsafe { Box::from_raw(subscription.cast::<Notifier<Subscription>>()) });
}

/// 1 if libc is patched in this process, else 0.
#[unsafe(no_mangle)]
pub extern "C" fn mmun_installed() -> i32 {
    i32::from(mmun_linux::installed())
}

extern "C" fn on_load() {
    if let Err(e) = mmun_linux::install() {
        let msg = format!("libmmun_preload: hooks not installed: {e}\n");
        // SAFETY: write(2) of our own buffer.
        unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
    }
    // Under `mmun trace`: records to its pipe (a no-op otherwise).
    mmun_linux::trace_sink::init_from_env();
}

/// Runs `on_load` when the dynamic loader maps this library.
#[used]
#[unsafe(link_section = ".init_array")]
static ON_LOAD: extern "C" fn() = on_load;
