//! `mmun_rcache_*` and `mmun_region_*`: the registration cache of
//! `mmun-secondary` (`Rcache`) on the calling process (`mmun_uring::Process`)
//! with the user's `mem_reg`/`mem_dereg` as its registrar
//! (`mmun_secondary::rcache::Callbacks`), as UCX's `ucs_rcache` takes them.
//!
//! A region the C caller holds (`get` … `put`) is a use of the
//! registration (`InUse`): an invalidation of its pages waits until it is
//! put. Region objects are recycled per cache and freed only when the
//! cache is destroyed, so a second `put` of one finds it free and is
//! `-EINVAL` rather than a use of freed memory.
//!
//! The hit path takes no lock of its own: each thread parks the region it
//! put last (with its cache's handle) in a thread-local slot, and its next
//! `get` on the same cache takes it back; only a second spare goes to the
//! cache's list, under its lock. A parked region of a destroyed cache is
//! never touched: the slot's handle no longer matches a live cache.

use std::cell::Cell;
use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicU32, Ordering};

use mmun_secondary::rcache::{Callbacks, InUse, Rcache, RcacheConfig};
use mmun_uring::{Process, UringError};
use parking_lot::Mutex;

use crate::entry::{code, guarded, refuse_inside_callback, store};
use crate::registry::Registry;

/// `struct mmun_rcache`: never defined; handles are numbers.
#[repr(C)]
#[derive(Debug)]
pub struct MmunRcache {
    _opaque: [u8; 0],
}

/// `mmun_mem_reg_fn`: registers `[addr, addr+length)`, stores what names
/// the registration in `*memh`, returns 0 or a negative errno.
pub type MemRegFn =
    extern "C" fn(arg: *mut c_void, addr: u64, length: u64, memh: *mut u64) -> c_int;

/// `mmun_mem_dereg_fn`: releases a registration `mem_reg` made.
pub type MemDeregFn = extern "C" fn(arg: *mut c_void, addr: u64, length: u64, memh: u64);

/// What a registration holds: the range `mem_reg` was given and the value
/// it stored.
#[derive(Debug, Clone, Copy)]
pub struct Memh {
    addr: u64,
    length: u64,
    value: u64,
}

type RegFn = Box<dyn Fn(u64, u64) -> Result<Memh, UringError> + Send + Sync>;
type DeregFn = Box<dyn Fn(&Memh) + Send + Sync>;
type Registrar = Callbacks<Memh, RegFn, DeregFn>;
type Cache = Rcache<Process, Registrar>;

/// A C cache: the Rust cache and its region objects.
pub struct CCache {
    cache: Cache,
    handle: u64,
    regions: Mutex<Regions>,
}

/// Every region object a cache made (freed by destroy), and the spare ones
/// not parked in a thread's slot.
#[derive(Default)]
struct Regions {
    made: Vec<*mut Region>,
    spare: Vec<*mut Region>,
}

impl Regions {
    /// Whether a region is held (destroy and purge refuse then).
    fn any_held(&self) -> bool {
        self.made.iter().any(|&r| {
            // SAFETY: made regions live until destroy frees them.
            unsafe { &*r }.state.load(Ordering::Acquire) == HELD
        })
    }
}

thread_local! {
    /// The region this thread put last and the handle of its cache:
    /// const-initialised, no destructor (a parked region belongs to its
    /// cache, which frees it).
    static PARKED: Cell<(u64, *mut Region)> = const { Cell::new((0, std::ptr::null_mut())) };
}

// SAFETY: the raw pointers in `spare` are boxes this cache owns and hands
// out one at a time under the lock; nothing else aliases them.
unsafe impl Send for CCache {}
// SAFETY: as above; every field is otherwise Sync.
unsafe impl Sync for CCache {}

impl std::fmt::Debug for CCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CCache").finish_non_exhaustive()
    }
}

pub(crate) static RCACHES: Registry<CCache> = Registry::new();

/// `struct mmun_region`: a registration in use by the C caller.
pub struct Region {
    /// Borrows the cache, which outlives every held region (destroy
    /// refuses while one is held).
    in_use: Option<InUse<'static, Process, Registrar>>,
    /// `HELD` between `get` and `put`, `FREE` otherwise.
    state: AtomicU32,
    /// The cache that handed it out.
    cache: *const CCache,
    start: u64,
    length: u64,
    memh: u64,
}

const FREE: u32 = 0;
const HELD: u32 = 1;

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region")
            .field("start", &format_args!("{:#x}", self.start))
            .field("length", &self.length)
            .finish_non_exhaustive()
    }
}

/// The errno of a failed `get`.
fn errno(e: &UringError) -> c_int {
    -match e {
        UringError::Io(io) => io.raw_os_error().unwrap_or(libc::EIO),
        UringError::Unmapped => libc::EFAULT,
        UringError::MemLock => libc::ENOMEM,
        UringError::Released | UringError::Forked => libc::ESRCH,
        _ => libc::EIO,
    }
}

/// Creates a cache; see `mmun.h`.
///
/// # Safety
///
/// `out` is null or points to writable storage for a handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmun_rcache_create(
    mem_reg: Option<MemRegFn>,
    mem_dereg: Option<MemDeregFn>,
    arg: *mut c_void,
    max_regions: u64,
    max_bytes: u64,
    out: *mut *mut MmunRcache,
) -> c_int {
    guarded(|| code(create(mem_reg, mem_dereg, arg, max_regions, max_bytes, out)))
}

fn create(
    mem_reg: Option<MemRegFn>,
    mem_dereg: Option<MemDeregFn>,
    arg: *mut c_void,
    max_regions: u64,
    max_bytes: u64,
    out: *mut *mut MmunRcache,
) -> Result<(), c_int> {
    let (Some(mem_reg), Some(mem_dereg), false) = (mem_reg, mem_dereg, out.is_null()) else {
        return Err(-libc::EINVAL);
    };
    refuse_inside_callback()?;
    crate::register_fork_handlers();
    let process = Process::current().map_err(|_| -libc::ENOTSUP)?;
    let arg = arg as usize;
    let reg: RegFn = Box::new(move |addr, length| {
        let mut value = 0;
        match mem_reg(arg as *mut c_void, addr, length, &mut value) {
            0 => Ok(Memh {
                addr,
                length,
                value,
            }),
            e => Err(UringError::Io(std::io::Error::from_raw_os_error(
                e.checked_neg().filter(|e| *e > 0).unwrap_or(libc::EIO),
            ))),
        }
    });
    let dereg: DeregFn =
        Box::new(move |m: &Memh| mem_dereg(arg as *mut c_void, m.addr, m.length, m.value));
    let config = RcacheConfig {
        max_regions: usize::try_from(max_regions).unwrap_or(usize::MAX).max(1),
        max_bytes: max_bytes.max(1),
        ..RcacheConfig::default()
    };
    let handle = RCACHES.reserve().ok_or(-libc::ENOMEM)?;
    let cache = CCache {
        cache: Rcache::with_backend(process, Callbacks::new(reg, dereg), config),
        handle,
        regions: Mutex::new(Regions::default()),
    };
    RCACHES.publish(handle, Box::new(cache), std::ptr::null());
    store(out, handle as *mut MmunRcache)
}

/// Destroys a cache; see `mmun.h`.
#[unsafe(no_mangle)]
pub extern "C" fn mmun_rcache_destroy(rcache: *mut MmunRcache) -> c_int {
    guarded(|| {
        code((|| {
            refuse_inside_callback()?;
            let cache = RCACHES.get(rcache as u64).ok_or(-libc::EINVAL)?;
            if cache.regions.lock().any_held() {
                return Err(-libc::EBUSY);
            }
            let cache = RCACHES.take(rcache as u64).ok_or(-libc::EINVAL)?;
            for region in cache.regions.lock().made.drain(..) {
                // SAFETY: boxes this cache made, none held; parked ones are
                // never touched again (their slot's handle is dead now).
                drop(unsafe { Box::from_raw(region) });
            }
            drop(cache); // deregisters every registration
            Ok(())
        })())
    })
}

/// Looks up or registers a region and holds it; see `mmun.h`.
///
/// # Safety
///
/// `out` is null or points to writable storage for a region pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmun_rcache_get(
    rcache: *mut MmunRcache,
    addr: u64,
    length: u64,
    out: *mut *mut Region,
) -> c_int {
    guarded(|| code(get(rcache, addr, length, out)))
}

#[inline]
fn get(
    rcache: *mut MmunRcache,
    addr: u64,
    length: u64,
    out: *mut *mut Region,
) -> Result<(), c_int> {
    if out.is_null() || length == 0 || addr.checked_add(length).is_none() {
        return Err(if out.is_null() {
            -libc::EINVAL
        } else {
            -libc::EOVERFLOW
        });
    }
    let c: &'static CCache = RCACHES.get(rcache as u64).ok_or(-libc::EINVAL)?;
    let region = unpark(c).unwrap_or_else(|| spare_or_new(c));
    // SAFETY: unparked, taken from the spare list or just made: this
    // thread is the only one with it.
    let r = unsafe { &mut *region };
    if let Err(e) = hold(c, r, addr, length) {
        park(c, region);
        return Err(e);
    }
    r.state.store(HELD, Ordering::Release);
    store(out, region)
}

/// This thread's parked region, if it belongs to `c`.
#[inline]
fn unpark(c: &CCache) -> Option<*mut Region> {
    // `with` rather than `LocalKey::get`/`set`: those go through an
    // out-of-line `initialize_with` (measured: an eighth of a C hit).
    PARKED.with(|parked| {
        let (handle, region) = parked.get();
        (handle == c.handle && !region.is_null()).then(|| {
            parked.set((0, std::ptr::null_mut()));
            region
        })
    })
}

/// Parks a free region in this thread's slot, or gives it to the cache's
/// spare list if the slot holds a region of a live cache.
#[inline]
fn park(c: &CCache, region: *mut Region) {
    let parked_here = PARKED.with(|slot| {
        let (handle, parked) = slot.get();
        let free = parked.is_null() || RCACHES.get(handle).is_none();
        if free {
            slot.set((c.handle, region));
        }
        free
    });
    if !parked_here {
        c.regions.lock().spare.push(region);
    }
}

#[cold]
fn spare_or_new(c: &'static CCache) -> *mut Region {
    let mut regions = c.regions.lock();
    if let Some(region) = regions.spare.pop() {
        return region;
    }
    let region = Box::into_raw(Box::new(Region {
        in_use: None,
        state: AtomicU32::new(FREE),
        cache: c,
        start: 0,
        length: 0,
        memh: 0,
    }));
    regions.made.push(region);
    region
}

/// Fills `r` with a use of a registration covering the range.
#[inline]
fn hold(c: &'static CCache, r: &mut Region, addr: u64, length: u64) -> Result<(), c_int> {
    let in_use = match c.cache.acquire_hit(addr, length) {
        Some(hit) => hit,
        None => {
            // The miss path inserts a notifier and registers: not from
            // inside a callback.
            refuse_inside_callback()?;
            c.cache.acquire(addr, length).map_err(|e| errno(&e))?
        }
    };
    r.start = in_use.start();
    r.length = in_use.end() - in_use.start();
    r.memh = in_use.registration().value;
    r.in_use = Some(in_use);
    Ok(())
}

/// Releases a region `get` returned; see `mmun.h`.
///
/// # Safety
///
/// `region` is null or a region `mmun_rcache_get` returned, whose cache
/// was not destroyed since.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmun_rcache_put(region: *mut Region) -> c_int {
    guarded(|| {
        code((|| {
            if region.is_null() {
                return Err(-libc::EINVAL);
            }
            // SAFETY: a region pointer the caller got from `get`: region
            // objects are freed only with their cache, which is not
            // destroyed while one is held (a put after destroy is the
            // caller's use of a dangling pointer, as the header says).
            let r = unsafe { &mut *region };
            // SAFETY: the region's cache outlives it (as above).
            let c = unsafe { &*r.cache };
            if RCACHES.get(c.handle).is_none() {
                return Err(-libc::EINVAL); // a fork child: the parent's cache
            }
            // Not a read-modify-write: two threads putting one region at
            // once is a race the header forbids; a second put later is
            // what this catches.
            if r.state.load(Ordering::Acquire) != HELD {
                return Err(-libc::EINVAL); // put twice
            }
            r.in_use = None;
            r.state.store(FREE, Ordering::Release);
            park(c, region);
            Ok(())
        })())
    })
}

/// # Safety
///
/// As `mmun_rcache_put`'s.
unsafe fn held(region: *const Region) -> Option<&'static Region> {
    // SAFETY: the caller passes null or a region pointer from `get`.
    let r = unsafe { region.as_ref()? };
    (r.state.load(Ordering::Acquire) == HELD).then_some(r)
}

/// First byte of the registered range; see `mmun.h`.
///
/// # Safety
///
/// As [`mmun_rcache_put`]'s.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmun_region_start(region: *const Region) -> u64 {
    // SAFETY: the caller's contract.
    unsafe { held(region) }.map_or(0, |r| r.start)
}

/// Length of the registered range; see `mmun.h`.
///
/// # Safety
///
/// As [`mmun_rcache_put`]'s.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmun_region_length(region: *const Region) -> u64 {
    // SAFETY: the caller's contract.
    unsafe { held(region) }.map_or(0, |r| r.length)
}

/// What `mem_reg` stored for the region; see `mmun.h`.
///
/// # Safety
///
/// As [`mmun_rcache_put`]'s.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmun_region_memh(region: *const Region) -> u64 {
    // SAFETY: the caller's contract.
    unsafe { held(region) }.map_or(0, |r| r.memh)
}

/// Deregisters every registration no region holds; see `mmun.h`.
#[unsafe(no_mangle)]
pub extern "C" fn mmun_rcache_purge(rcache: *mut MmunRcache) -> c_int {
    guarded(|| {
        code((|| {
            refuse_inside_callback()?;
            let c = RCACHES.get(rcache as u64).ok_or(-libc::EINVAL)?;
            if c.regions.lock().any_held() {
                return Err(-libc::EBUSY); // purging waits for uses: for the caller's own
            }
            c.cache.purge();
            Ok(())
        })())
    })
}
