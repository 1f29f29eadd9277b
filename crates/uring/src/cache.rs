//! [`UringCache`]: the generic registration cache on the calling process,
//! with io_uring fixed-buffer slots as its registrations.

use std::fmt;
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::Arc;

use io_uring::{opcode, squeue, types};
use mmun_secondary::Bug;
use mmun_secondary::rcache::{InUse, Rcache, RcacheConfig, RcacheStats, RegHandle};

use crate::error::UringError;
use crate::pagemap::Pagemap;
use crate::process::Process;
use crate::ring::Ring;
use crate::slots::FixedSlots;

/// A registration of the cache: [`RegHandle::enter`] it for a use, whose
/// [`InUse::registration`] is the [`Slot`](crate::Slot) to name in
/// `buf_index`.
pub type FixedBuf<'c> = RegHandle<'c, Process, FixedSlots>;

/// A use in flight: the slot stays registered, with the pages the process
/// maps, until it is dropped. Hold it from submission to completion.
pub type FixedUse<'h> = InUse<'h, Process, FixedSlots>;

/// How a [`UringCache`] is sized and checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UringConfig {
    /// Entries of the sparse fixed-buffer table (at most 16 384). Must
    /// exceed `max_regions` by the number of threads that may miss at
    /// once: a miss takes a slot before eviction frees one.
    pub slots: u16,
    /// Live registrations kept before the least recently used idle ones
    /// are evicted.
    pub max_regions: usize,
    /// Registered bytes kept before eviction.
    pub max_bytes: u64,
    /// Submission queue entries of the ring.
    pub ring_entries: u32,
    /// Check every hit's frames against `/proc/self/pagemap` (root), as
    /// `UCX_RCACHE_CHECK_PFN` does: a debugging aid that costs a read of
    /// the pagemap per hit.
    pub check_pfn: bool,
    /// A registration-cache bug to inject (tests: proves the end-to-end
    /// check can fail).
    pub bug: Option<Bug>,
}

impl Default for UringConfig {
    /// 1024 slots, 512 live registrations, no byte bound, no check.
    fn default() -> UringConfig {
        UringConfig {
            slots: 1024,
            max_regions: 512,
            max_bytes: u64::MAX,
            ring_entries: 64,
            check_pfn: false,
            bug: None,
        }
    }
}

/// A registration cache of io_uring fixed buffers on the calling process.
/// See the crate docs.
pub struct UringCache {
    /// Dropped only in the process that made it (see the fork policy).
    cache: ManuallyDrop<Rcache<Process, FixedSlots>>,
    ring: Arc<Ring>,
    check_pfn: bool,
}

impl UringCache {
    /// A cache with its own ring; installs the mmun-linux hooks.
    ///
    /// # Errors
    ///
    /// [`UringError::Disabled`], [`UringError::Unsupported`],
    /// [`UringError::NotPermitted`] where io_uring cannot be used;
    /// [`UringError::Hooks`] without the hooks;
    /// [`UringError::PfnUnavailable`] for a PFN check without root.
    pub fn new(config: UringConfig) -> Result<UringCache, UringError> {
        let process = Process::current()?;
        let ring = Arc::new(Ring::new(config.ring_entries)?);
        let pagemap = config.check_pfn.then(Pagemap::open).transpose()?;
        let slots = FixedSlots::new(Arc::clone(&ring), config.slots, pagemap)?;
        let rcache_config = RcacheConfig {
            max_regions: config.max_regions,
            max_bytes: config.max_bytes,
            ..RcacheConfig::default()
        }
        .with_bug(config.bug);
        Ok(UringCache {
            cache: ManuallyDrop::new(Rcache::with_backend(process, slots, rcache_config)),
            ring,
            check_pfn: config.check_pfn,
        })
    }

    /// A registration covering `[addr, addr + len)`: a cached one (no
    /// lock, no system call) or a new one registered in a free slot.
    ///
    /// # Errors
    ///
    /// [`UringError::Forked`] in a fork child; what registration fails
    /// with ([`UringError::Unmapped`], [`UringError::FileBacked`],
    /// [`UringError::NoFreeSlot`], ...); [`UringError::PfnMismatch`] when
    /// the PFN check is on and finds a stale registration.
    #[inline(always)]
    pub fn get(&self, addr: u64, len: u64) -> Result<FixedBuf<'_>, UringError> {
        if !self.cache.shared().primary().is_current() {
            return forked();
        }
        if self.check_pfn {
            return self.get_checked(addr, len);
        }
        // In tail position, so the handle is built in the caller's slot:
        // moving it through a local cost a third of a hit (store
        // forwarding of the partly written handle fails).
        self.cache.get(addr, len)
    }

    /// [`UringCache::get`] with the PFN check.
    #[cold]
    fn get_checked(&self, addr: u64, len: u64) -> Result<FixedBuf<'_>, UringError> {
        let buf = self.cache.get(addr, len)?;
        self.check_frames(&buf)?;
        Ok(buf)
    }

    /// A use of a registration covering `[addr, addr + len)`, as
    /// [`UringCache::get`] + [`FixedBuf::enter`] in one step (UCX's
    /// `get`; dropping the use is the `put`): the hit path takes only the
    /// use count (see [`Rcache::acquire`]). Name
    /// [`FixedUse::registration`]'s slot in the I/O and hold the use until
    /// its completion is reaped.
    ///
    /// # Errors
    ///
    /// As [`UringCache::get`]'s.
    #[inline(always)]
    pub fn acquire(&self, addr: u64, len: u64) -> Result<FixedUse<'_>, UringError> {
        if !self.cache.shared().primary().is_current() {
            return forked();
        }
        if self.check_pfn {
            return self.acquire_checked(addr, len);
        }
        self.cache.acquire(addr, len)
    }

    /// [`UringCache::acquire`] with the PFN check.
    #[cold]
    fn acquire_checked(&self, addr: u64, len: u64) -> Result<FixedUse<'_>, UringError> {
        let in_use = self.cache.acquire(addr, len)?;
        self.check_use(&in_use)?;
        Ok(in_use)
    }

    /// Runs `f` inside a use of a registration covering `[addr, addr +
    /// len)` (the slot stays registered on the pages the process maps
    /// until `f` returns: submit and reap the I/O inside). The hit path
    /// revalidates this thread's copy of the index snapshot with one load
    /// and takes only the use count (see [`Rcache::acquire`]); a miss
    /// registers as [`UringCache::get`] does.
    ///
    /// `f` must not unmap, remap or free the buffer: the invalidation
    /// would wait for this very use to end (a self-deadlock, as a kernel
    /// driver that unmapped its own pinned buffer under I/O).
    ///
    /// # Errors
    ///
    /// [`UringCache::get`]'s errors.
    #[inline]
    pub fn with_fixed<T>(
        &self,
        addr: u64,
        len: u64,
        f: impl FnOnce(&FixedUse<'_>) -> T,
    ) -> Result<T, UringError> {
        if !self.cache.shared().primary().is_current() {
            return forked();
        }
        if !self.check_pfn
            && let Some(in_use) = self.cache.acquire_hit(addr, len)
        {
            return Ok(f(&in_use));
        }
        self.with_fixed_slow(addr, len, f)
    }

    #[cold]
    fn with_fixed_slow<T>(
        &self,
        addr: u64,
        len: u64,
        f: impl FnOnce(&FixedUse<'_>) -> T,
    ) -> Result<T, UringError> {
        loop {
            let buf = self.get(addr, len)?;
            if let Some(in_use) = buf.enter() {
                return Ok(f(&in_use));
            }
        }
    }

    /// The PFN check, inside a use so that no invalidation completes
    /// meanwhile: for a correct cache the process maps exactly what the
    /// registration holds.
    #[cold]
    fn check_frames(&self, buf: &FixedBuf<'_>) -> Result<(), UringError> {
        match buf.enter() {
            Some(in_use) => self.check_use(&in_use),
            // Already invalidated: the caller's own use fails too.
            None => Ok(()),
        }
    }

    /// The PFN check of a use's frames.
    #[cold]
    fn check_use(&self, in_use: &FixedUse<'_>) -> Result<(), UringError> {
        let slots = self.cache.shared().registrar();
        let (Some(pagemap), Some(frames)) = (slots.pagemap(), in_use.registration().frames())
        else {
            return Ok(());
        };
        pagemap.check(in_use.start(), in_use.end(), frames)
    }

    /// Reads `buf.len()` bytes of `fd` at `offset` into `buf` with
    /// `READ_FIXED` through the cache; returns the bytes read.
    ///
    /// # Errors
    ///
    /// [`UringCache::get`]'s errors; the read's errno as [`UringError::Io`].
    pub fn read_fixed(
        &self,
        fd: BorrowedFd<'_>,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize, UringError> {
        let (addr, len) = (buf.as_mut_ptr(), io_len(buf.len())?);
        self.run_fixed(addr as u64, len, |index| {
            opcode::ReadFixed::new(types::Fd(fd.as_raw_fd()), addr, len, index)
                .offset(offset)
                .build()
        })
    }

    /// Writes `buf` to `fd` at `offset` with `WRITE_FIXED` through the
    /// cache; returns the bytes written.
    ///
    /// # Errors
    ///
    /// [`UringCache::get`]'s errors; the write's errno as [`UringError::Io`].
    pub fn write_fixed(
        &self,
        fd: BorrowedFd<'_>,
        offset: u64,
        buf: &[u8],
    ) -> Result<usize, UringError> {
        let (addr, len) = (buf.as_ptr(), io_len(buf.len())?);
        self.run_fixed(addr as u64, len, |index| {
            opcode::WriteFixed::new(types::Fd(fd.as_raw_fd()), addr, len, index)
                .offset(offset)
                .build()
        })
    }

    /// One fixed-buffer I/O of `[addr, addr + len)` inside a use.
    fn run_fixed(
        &self,
        addr: u64,
        len: u32,
        entry: impl FnOnce(u16) -> squeue::Entry,
    ) -> Result<usize, UringError> {
        let result = self.with_fixed(addr, u64::from(len), |in_use| {
            let entry = entry(in_use.registration().index());
            // SAFETY: the caller's slice outlives the call; the slot stays
            // registered on these pages until the use ends, after the
            // completion.
            unsafe { self.ring.run(&entry) }
        })??;
        usize::try_from(result).map_err(|_| UringError::Io(io::Error::from_raw_os_error(-result)))
    }

    /// The ring the slots are registered on (to submit fixed-buffer I/O
    /// yourself, holding a [`FixedUse`] across it).
    pub fn ring(&self) -> &Arc<Ring> {
        &self.ring
    }

    /// The generic cache underneath (counts, reap, purge).
    pub fn rcache(&self) -> &Rcache<Process, FixedSlots> {
        &self.cache
    }

    /// What the cache has done so far.
    pub fn stats(&self) -> RcacheStats {
        self.cache.stats()
    }
}

/// The error of a cache used in a fork child, out of the hit path.
#[cold]
fn forked<T>() -> Result<T, UringError> {
    Err(UringError::Forked)
}

/// A buffer length as an SQE's `len`.
fn io_len(len: usize) -> Result<u32, UringError> {
    u32::try_from(len).map_err(|_| UringError::TooLong(len as u64))
}

impl Drop for UringCache {
    /// In the process that made it: empties every slot and removes every
    /// notifier. In a fork child: leaks everything — the ring is the
    /// parent's (emptying a slot would unregister the parent's buffer) and
    /// the notifiers are on the parent's leaked `Mm`.
    fn drop(&mut self) {
        if self.cache.shared().primary().is_current() {
            // SAFETY: dropped once, here, and never used again.
            unsafe { ManuallyDrop::drop(&mut self.cache) };
        }
    }
}

impl fmt::Debug for UringCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UringCache")
            .field("cache", &*self.cache)
            .field("check_pfn", &self.check_pfn)
            .finish()
    }
}
