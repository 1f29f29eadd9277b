//! The userfaultfd safety net: what no hook sees (raw `syscall()`, static
//! code, another process's `process_madvise`) still reaches the notifiers,
//! late.
//!
//! Ranges under interval notifiers are registered on one userfaultfd
//! context in write-protect mode (never MISSING: no page is ever
//! write-protected, so no fault ever waits for us, and first-touch faults
//! cost what they cost unwatched) with the non-cooperative events UNMAP,
//! REMOVE and REMAP (never FORK). One handler thread reads the events and
//! hands them to the `deliver` function as [`LateChange`]s.
//!
//! What the kernel gives and what we add (`shared/spec/userspace-monitors.md`
//! §1 items 2–5, §4.3):
//!
//! * Registration follows the VMA, not the interval: `mmap(MAP_FIXED)` over
//!   a watched range reports UNMAP and leaves the new mapping unwatched, so
//!   the hook side calls [`UffdNet::rearm`]; an `mremap` move takes the
//!   registration along (we follow REMAP).
//! * The kernel does not refcount registrations and each one may split a
//!   VMA (at `vm.max_map_count`, about 32 k single-page registrations, the
//!   *application's* next `mmap` fails with ENOMEM). We count watchers per
//!   page (`ranges::Watched`), register page-aligned supersets bridging
//!   small gaps to armed neighbours, and past half of `max_map_count`
//!   register whole VMAs instead (no split at all); if even that fails the
//!   watch is refused with `Unwatchable("max_map_count")`.
//! * The unmapping thread is held only until the handler `read()`s the
//!   event, so delivery is late by construction; with hooks installed, the
//!   hook delivers first and synchronously, and a hooked unmap takes the
//!   range off the net before the call (`disarm.rs`), so it is neither held
//!   nor reported twice.
//!
//! # Locks
//!
//! `state` (watch counts, VMA budget) is taken only by callers of
//! `watch`/`unwatch`/`rearm`, never by the handler; it may be held across
//! `UFFDIO_REGISTER` and allocations. `armed` is shared with the handler
//! and taken after `state`; nothing allocates while holding it (its vector
//! is reserved at start-up), so the handler never waits for a thread that
//! waits for malloc's lock. The handler reads a whole batch of events
//! before taking `armed`, so a mutator blocked in `munmap` never waits for
//! a lock.

mod disarm;
mod handler;
pub(crate) mod ranges;
pub(crate) mod sys;

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

pub use disarm::Disarmed;
use ranges::{Armed, Watched};

/// The page size the net aligns to (x86_64 and the machines we run on; checked
/// at [`UffdNet::start`]).
pub const PAGE: u64 = 4096;

/// Armed neighbours closer than this are bridged (their gap registered too),
/// so that the two registrations make one VMA instead of two splits.
const BRIDGE_GAP: u64 = 16 * PAGE;

/// What the kernel reported, after the fact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LateChange {
    /// `UFFD_EVENT_UNMAP`: `[start, end)` is no longer mapped (munmap, brk
    /// shrink, `mmap(MAP_FIXED)` over it, the source of an mremap).
    Unmap {
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
    },
    /// `UFFD_EVENT_REMOVE`: the pages of `[start, end)` are being zapped
    /// (`madvise` DONTNEED/FREE/REMOVE); the mapping stays.
    Remove {
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
    },
    /// `UFFD_EVENT_REMAP`: `len` bytes moved from `from` to `to` (mremap).
    Remap {
        /// Old first byte.
        from: u64,
        /// New first byte.
        to: u64,
        /// Bytes moved.
        len: u64,
    },
}

/// The outcome of [`UffdNet::watch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watch {
    /// Registered (or already covered): changes to the range are reported.
    /// Pair it with one [`UffdNet::unwatch`] of the same range.
    Armed,
    /// uffd cannot watch this memory; the reason, e.g. `"file-backed"`,
    /// `"SysV shm"`, `"VM_PFNMAP/VM_IO or special mapping"`, `"unmapped"`,
    /// `"max_map_count"`. Not counted: do not unwatch it.
    Unwatchable(&'static str),
    /// Another userfaultfd context (the application's own) registered part
    /// of the range (`EBUSY`). Not counted: do not unwatch it.
    Busy,
}

/// Why the net could not start or a registration failed unexpectedly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UffdError {
    /// Neither `userfaultfd(UFFD_USER_MODE_ONLY)` nor `/dev/userfaultfd`
    /// gave a context.
    #[error("userfaultfd unavailable: {0}")]
    Unavailable(io::Error),
    /// The `UFFDIO_API` handshake failed.
    #[error("UFFDIO_API: {0}")]
    Api(io::Error),
    /// The kernel lacks some of UNMAP/REMOVE/REMAP (before 4.11).
    #[error("userfaultfd lacks events: asked for {wanted:#x}, got {granted:#x}")]
    MissingFeatures {
        /// The features asked for.
        wanted: u64,
        /// What the kernel granted.
        granted: u64,
    },
    /// The page size is not 4 KiB.
    #[error("the userfaultfd net assumes 4 KiB pages; this machine has {0}-byte pages")]
    PageSize(usize),
    /// The exit eventfd or the handler thread could not be created.
    #[error("{what}: {source}")]
    Setup {
        /// eventfd or thread.
        what: &'static str,
        /// What failed.
        source: io::Error,
    },
    /// `start >= end` or the range wraps.
    #[error("empty or wrapping range [{start:#x}, {end:#x})")]
    BadRange {
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
    },
    /// `UFFDIO_REGISTER` failed in a way that is neither "cannot watch" nor
    /// "busy".
    #[error("UFFDIO_REGISTER [{start:#x}, {end:#x}): {source}")]
    Register {
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
        /// The errno.
        source: io::Error,
    },
}

/// Counters, for tests, benches and `mmun trace`'s summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    /// UNMAP events delivered.
    pub unmaps: u64,
    /// REMOVE events delivered.
    pub removes: u64,
    /// REMAP events delivered.
    pub remaps: u64,
    /// Page faults woken (should stay 0: the net write-protects nothing).
    pub faults: u64,
    /// `read()` calls that returned events.
    pub batches: u64,
    /// Registrations made with a whole-VMA span because of the VMA budget.
    pub coarse: u64,
}

#[derive(Debug, Default)]
struct Counters {
    unmaps: AtomicU64,
    removes: AtomicU64,
    remaps: AtomicU64,
    faults: AtomicU64,
    batches: AtomicU64,
    coarse: AtomicU64,
}

/// VMA accounting: how many more splits the net allows itself.
#[derive(Debug)]
struct VmaBudget {
    /// `vm.max_map_count`.
    limit: usize,
    /// The VMA count at the last measurement.
    measured: usize,
    /// Armed ranges at the last measurement.
    armed_then: usize,
    /// Watches since the last measurement (limits re-reading the maps).
    since: u32,
}

impl VmaBudget {
    /// Our splits may take the process to half of `max_map_count`; the
    /// other half stays the application's.
    fn soft_limit(&self) -> usize {
        self.limit / 2
    }

    /// Whether one more exact registration (up to two more VMAs) fits.
    fn may_split(&mut self, armed_now: usize) -> bool {
        self.since += 1;
        let estimate = self.measured + 2 * armed_now.saturating_sub(self.armed_then);
        if estimate + 2 <= self.soft_limit() {
            return true;
        }
        // Re-read the maps when near the limit (merges may have freed
        // room), otherwise only every 64 watches: reading 30,000 lines of
        // /proc/self/maps per watch would dominate.
        let near = estimate + 2 <= self.soft_limit() + 128;
        if (self.since >= 64 || near)
            && let Ok(count) = sys::vma_count()
        {
            self.measured = count;
            self.armed_then = armed_now;
            self.since = 0;
        }
        self.measured + 2 <= self.soft_limit()
    }
}

/// What callers lock (never the handler).
#[derive(Debug)]
struct State {
    watched: Watched,
    budget: VmaBudget,
}

/// One userfaultfd context with its handler thread.
#[derive(Debug)]
struct Inner {
    uffd: OwnedFd,
    exit: OwnedFd,
    deliver: fn(LateChange),
    state: Mutex<State>,
    armed: Mutex<Armed>,
    /// True from just before the handler's `read()` until the batch's
    /// `armed` updates are done: callers wait it out so that an UNMAP they
    /// caused is accounted before they re-register.
    reading: AtomicBool,
    handler_tid: AtomicI32,
    thread: Mutex<Option<JoinHandle<()>>>,
    counters: Counters,
}

/// The safety net. See the [module docs](self).
#[derive(Debug)]
pub struct UffdNet {
    /// From `Arc::into_raw`; null after [`UffdNet::forget_in_child`] until
    /// the child's first `watch`. Replaced only in `forget_in_child` (old
    /// value leaked, never freed) and freed only in `drop`, so a reference
    /// obtained from it lives as long as `&self`.
    inner: AtomicPtr<Inner>,
    deliver: fn(LateChange),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic under these locks leaves plain data; keep going.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl UffdNet {
    /// Opens a userfaultfd context, asks for UNMAP|REMOVE|REMAP, and spawns
    /// the handler thread that calls `deliver` for every event.
    ///
    /// `deliver` runs on the handler thread. It must not unmap, `madvise`
    /// away or `mremap` watched memory itself (the kernel would wait for
    /// the handler to read that very event: a self-deadlock, libfabric
    /// #5554), and should not allocate (a thread blocked in a watched
    /// `munmap` may hold malloc's lock).
    ///
    /// # Errors
    ///
    /// [`UffdError`]: no userfaultfd here, an old kernel, no thread.
    pub fn start(deliver: fn(LateChange)) -> Result<UffdNet, UffdError> {
        let inner = Inner::start(deliver)?;
        Ok(UffdNet {
            inner: AtomicPtr::new(Arc::into_raw(inner).cast_mut()),
            deliver,
        })
    }

    fn inner(&self) -> Option<&Inner> {
        let p = self.inner.load(Ordering::Acquire);
        // SAFETY: non-null values come from `Arc::into_raw` and are freed
        // only by `drop(&mut self)`; `forget_in_child` leaks the old value.
        // So the pointee outlives `&self`.
        unsafe { p.as_ref() }
    }

    /// The context, restarted in a fork child that forgot its parent's.
    fn inner_or_restart(&self) -> Result<&Inner, UffdError> {
        if let Some(inner) = self.inner() {
            return Ok(inner);
        }
        let fresh = Arc::into_raw(Inner::start(self.deliver)?).cast_mut();
        match self.inner.compare_exchange(
            ptr::null_mut(),
            fresh,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => {}
            Err(_) => {
                // Another thread restarted first; ours goes.
                // SAFETY: `fresh` came from `Arc::into_raw` above and was
                // never published.
                let ours = unsafe { Arc::from_raw(fresh) };
                ours.shutdown();
            }
        }
        Ok(self.inner().expect("just published"))
    }

    /// Watches `[start, end)` (page-aligned outwards): reference-counted,
    /// coalesced with armed neighbours. See [`Watch`] for the outcomes.
    ///
    /// # Errors
    ///
    /// [`UffdError::BadRange`], or an unexpected `UFFDIO_REGISTER` errno;
    /// in a fork child, what [`UffdNet::start`] returns.
    pub fn watch(&self, start: u64, end: u64) -> Result<Watch, UffdError> {
        let (s, e) = align(start, end)?;
        let inner = self.inner_or_restart()?;
        inner.wait_reader_idle();
        let mut state = lock(&inner.state);
        let outcome = inner.arm(&mut state, s, e)?;
        if outcome == Watch::Armed {
            state.watched.add(s, e);
        }
        Ok(outcome)
    }

    /// Drops one watcher of `[start, end)`; ranges nobody watches any more
    /// are unregistered (whole armed ranges only, so unwatching never splits
    /// a VMA).
    ///
    /// # Panics
    ///
    /// If a page of the range is not watched: every `unwatch` pairs with a
    /// `watch` that returned [`Watch::Armed`].
    pub fn unwatch(&self, start: u64, end: u64) {
        let Ok((s, e)) = align(start, end) else {
            panic!("UffdNet::unwatch({start:#x}, {end:#x}): empty or wrapping range");
        };
        let Some(inner) = self.inner() else {
            return; // a fork child that forgot: nothing is registered
        };
        inner.wait_reader_idle();
        let mut state = lock(&inner.state);
        state.watched.sub(s, e);
        inner.disarm_unwatched(&state, s, e);
    }

    /// Registers again the watched parts of `[start, end)`: call it after
    /// `mmap(MAP_FIXED)` or `shmat(SHM_REMAP)` replaced part of a watched
    /// range (the new VMA carries no registration). Best effort: parts that
    /// cannot be watched any more (say, now file-backed) stay unwatched.
    pub fn rearm(&self, start: u64, end: u64) {
        let Ok((s, e)) = align(start, end) else {
            return;
        };
        let Some(inner) = self.inner() else {
            return;
        };
        inner.wait_reader_idle();
        let mut state = lock(&inner.state);
        for (ps, pe) in state.watched.pieces(s, e) {
            let _ = inner.arm(&mut state, ps, pe);
        }
    }

    /// In a fork child, before it creates threads: forgets the parent's
    /// context without taking any lock (a parent thread may have held one at
    /// the fork). The child has no registrations (no `EVENT_FORK`) and no
    /// handler thread; the inherited fd still names the *parent's* mm, so it
    /// is closed, never used. The old state is leaked (a few hundred KiB);
    /// the next `watch` starts a fresh context for the child.
    pub fn forget_in_child(&self) {
        let old = self.inner.swap(ptr::null_mut(), Ordering::AcqRel);
        // SAFETY: `old` is null or from `Arc::into_raw`; we leak it, so the
        // reference stays valid; we only read two fd numbers.
        if let Some(old) = unsafe { old.as_ref() } {
            // SAFETY: closing our copies of two fds we own; the leaked
            // `Inner` never closes them again (it is never dropped).
            unsafe {
                libc::close(old.uffd.as_raw_fd());
                libc::close(old.exit.as_raw_fd());
            }
        }
    }

    /// The handler thread's id (tests direct signals at it); `None` in a
    /// child that forgot, or before the thread started.
    pub fn handler_tid(&self) -> Option<i32> {
        let tid = self.inner()?.handler_tid.load(Ordering::Acquire);
        (tid != 0).then_some(tid)
    }

    /// Whether this process has a live context and handler thread.
    pub fn is_running(&self) -> bool {
        self.inner().is_some()
    }

    /// The armed (kernel-registered) ranges as the net believes them.
    /// Allocates; for tests and diagnostics.
    pub fn armed_ranges(&self) -> Vec<(u64, u64)> {
        self.inner()
            .map_or_else(Vec::new, |i| lock(&i.armed).to_vec())
    }

    /// The event counters.
    pub fn stats(&self) -> NetStats {
        let Some(inner) = self.inner() else {
            return NetStats::default();
        };
        let c = &inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        NetStats {
            unmaps: get(&c.unmaps),
            removes: get(&c.removes),
            remaps: get(&c.remaps),
            faults: get(&c.faults),
            batches: get(&c.batches),
            coarse: get(&c.coarse),
        }
    }
}

impl Drop for UffdNet {
    fn drop(&mut self) {
        let p = std::mem::replace(self.inner.get_mut(), ptr::null_mut());
        if !p.is_null() {
            // SAFETY: from `Arc::into_raw`, owned by this net, not leaked.
            let inner = unsafe { Arc::from_raw(p) };
            inner.shutdown();
        }
    }
}

/// Page-aligns `[start, end)` outwards.
fn align(start: u64, end: u64) -> Result<(u64, u64), UffdError> {
    let bad = UffdError::BadRange { start, end };
    if start >= end {
        return Err(bad);
    }
    let e = end.checked_add(PAGE - 1).ok_or(bad)? & !(PAGE - 1);
    Ok((start & !(PAGE - 1), e))
}

impl Inner {
    fn start(deliver: fn(LateChange)) -> Result<Arc<Inner>, UffdError> {
        let page = rustix::param::page_size();
        if page as u64 != PAGE {
            return Err(UffdError::PageSize(page));
        }
        let uffd = sys::open().map_err(UffdError::Unavailable)?;
        let granted = sys::api(&uffd).map_err(UffdError::Api)?;
        if granted & sys::FEATURES != sys::FEATURES {
            return Err(UffdError::MissingFeatures {
                wanted: sys::FEATURES,
                granted,
            });
        }
        let exit = sys::eventfd().map_err(|source| UffdError::Setup {
            what: "eventfd",
            source,
        })?;
        let limit = sys::max_map_count();
        let inner = Arc::new(Inner {
            uffd,
            exit,
            deliver,
            state: Mutex::new(State {
                watched: Watched::default(),
                budget: VmaBudget {
                    limit,
                    measured: sys::vma_count().unwrap_or(0),
                    armed_then: 0,
                    since: 0,
                },
            }),
            // Disjoint armed ranges each hold at least one VMA of their
            // own, so there are never more than max_map_count of them.
            armed: Mutex::new(Armed::with_capacity(limit + 16)),
            reading: AtomicBool::new(false),
            handler_tid: AtomicI32::new(0),
            thread: Mutex::new(None),
            counters: Counters::default(),
        });
        let for_thread = Arc::clone(&inner);
        let thread = std::thread::Builder::new()
            .name("mmun-uffd".into())
            .spawn(move || handler::run(&for_thread))
            .map_err(|source| UffdError::Setup {
                what: "handler thread",
                source,
            })?;
        *lock(&inner.thread) = Some(thread);
        while inner.handler_tid.load(Ordering::Acquire) == 0 {
            std::thread::yield_now();
        }
        Ok(inner)
    }

    /// Signals the handler to exit and joins it (not from the handler
    /// itself, which would wait for itself).
    fn shutdown(&self) {
        sys::signal(self.exit.as_raw_fd());
        let thread = lock(&self.thread).take();
        if let Some(thread) = thread
            && thread.thread().id() != std::thread::current().id()
        {
            let _ = thread.join();
        }
    }

    fn wait_reader_idle(&self) {
        if rustix::thread::gettid().as_raw_pid() == self.handler_tid.load(Ordering::Relaxed) {
            return; // `deliver` calling back: the batch is accounted already
        }
        while self.reading.load(Ordering::Acquire) {
            std::thread::yield_now();
        }
    }

    /// Registers (a superset of) `[s, e)`; the caller holds `state`.
    fn arm(&self, state: &mut State, s: u64, e: u64) -> Result<Watch, UffdError> {
        let fd = self.uffd.as_raw_fd();
        let (covered, armed_len, (before, after)) = {
            let armed = lock(&self.armed);
            (
                armed.covers(s, e),
                armed.len(),
                armed.neighbours(s, e, BRIDGE_GAP),
            )
        };
        if covered {
            // Usually a no-op in the kernel (same context, same mode); it
            // re-arms a range whose UNMAP we have not seen yet and whose VA
            // was mapped again.
            return self.register_exact(state, fd, s, e);
        }
        if !state.budget.may_split(armed_len) {
            return self.register_coarse(fd, s, e);
        }
        let (bs, be) = (before.unwrap_or(s), after.unwrap_or(e));
        if (bs, be) != (s, e) && sys::register(fd, bs, be).is_ok() {
            lock(&self.armed).insert(bs, be);
            return Ok(Watch::Armed);
        }
        self.register_exact(state, fd, s, e)
    }

    fn register_exact(
        &self,
        _state: &mut State,
        fd: i32,
        s: u64,
        e: u64,
    ) -> Result<Watch, UffdError> {
        match sys::register(fd, s, e) {
            Ok(()) => {
                lock(&self.armed).insert(s, e);
                Ok(Watch::Armed)
            }
            Err(err)
                if err.raw_os_error() == Some(libc::ENOMEM) && self.whole_vmas(s, e).is_some() =>
            {
                // Out of VMAs, or a hole: whole VMAs never split.
                self.register_coarse(fd, s, e)
            }
            Err(err) => self.refusal(s, e, err),
        }
    }

    /// Registers the whole VMAs around `[s, e)`: no split, and neighbours
    /// we registered before merge with them.
    fn register_coarse(&self, fd: i32, s: u64, e: u64) -> Result<Watch, UffdError> {
        let Some((vs, ve)) = self.whole_vmas(s, e) else {
            return Ok(Watch::Unwatchable("unmapped"));
        };
        match sys::register(fd, vs, ve) {
            Ok(()) => {
                self.counters.coarse.fetch_add(1, Ordering::Relaxed);
                lock(&self.armed).insert(vs, ve);
                Ok(Watch::Armed)
            }
            Err(err) if err.raw_os_error() == Some(libc::ENOMEM) => {
                Ok(Watch::Unwatchable("max_map_count"))
            }
            Err(err) => self.refusal(s, e, err),
        }
    }

    /// The span of the contiguous VMAs covering `[s, e)`, if they do.
    fn whole_vmas(&self, s: u64, e: u64) -> Option<(u64, u64)> {
        let vmas = sys::vmas_overlapping(s, e).ok()?;
        let first = vmas.first()?;
        let mut reach = first.end;
        for v in &vmas[1..] {
            if v.start != reach {
                return None;
            }
            reach = v.end;
        }
        (first.start <= s && reach >= e).then_some((first.start, reach))
    }

    /// Turns a registration errno into the caller's answer.
    fn refusal(&self, s: u64, e: u64, err: io::Error) -> Result<Watch, UffdError> {
        match err.raw_os_error() {
            Some(libc::EBUSY) => Ok(Watch::Busy),
            Some(libc::EINVAL) | Some(libc::ENOMEM) | Some(libc::EPERM) => {
                Ok(Watch::Unwatchable(classify(s, e)))
            }
            _ => Err(UffdError::Register {
                start: s,
                end: e,
                source: err,
            }),
        }
    }

    /// Unregisters every armed range overlapping `[s, e)` that holds no
    /// watched page any more. One range at a time, so nothing is allocated
    /// under `armed`.
    fn disarm_unwatched(&self, state: &State, s: u64, e: u64) {
        let mut cursor = s;
        while cursor < e {
            let Some((rs, re)) = lock(&self.armed).first_overlapping(cursor, e) else {
                return;
            };
            if !state.watched.any_in(rs, re) {
                // Errors mean the range is (partly) gone already: the
                // kernel dropped that registration with the VMA.
                let _ = sys::unregister(self.uffd.as_raw_fd(), rs, re);
                lock(&self.armed).remove(rs, re);
            }
            cursor = re;
        }
    }
}

/// Why `UFFDIO_REGISTER` refused `[s, e)`, from `/proc/self/maps`.
fn classify(s: u64, e: u64) -> &'static str {
    let Ok(vmas) = sys::vmas_overlapping(s, e) else {
        return "not anonymous or shmem memory";
    };
    let mut reach = s;
    for v in &vmas {
        if v.start > reach {
            return "unmapped";
        }
        reach = v.end;
    }
    if vmas.is_empty() || reach < e {
        return "unmapped";
    }
    for v in &vmas {
        if v.path.starts_with("/SYSV") {
            return "SysV shm";
        }
    }
    for v in &vmas {
        let p = v.path.as_str();
        if p.starts_with('/') && !p.starts_with("/memfd:") && !p.starts_with("/dev/zero") {
            return "file-backed";
        }
    }
    "VM_PFNMAP/VM_IO or special mapping"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn align_goes_outwards_and_rejects_empty() {
        assert_eq!(align(0x1001, 0x1002).unwrap(), (0x1000, 0x2000));
        assert_eq!(align(0x1000, 0x3000).unwrap(), (0x1000, 0x3000));
        assert!(matches!(align(5, 5), Err(UffdError::BadRange { .. })));
        assert!(matches!(
            align(0, u64::MAX),
            Err(UffdError::BadRange { .. })
        ));
    }

    #[test]
    fn budget_allows_splits_up_to_half_the_limit() {
        let mut b = VmaBudget {
            limit: 1000,
            measured: 100,
            armed_then: 0,
            since: 0,
        };
        assert!(b.may_split(0));
        assert!(b.may_split(199));
        // 100 + 2 * 200 = 500 is the soft limit: a re-measure decides.
        let _ = b.may_split(200);
    }
}
