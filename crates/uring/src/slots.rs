//! The io_uring registrar: one slot of a sparse fixed-buffer table per
//! registration, filled and emptied in place with
//! `IORING_REGISTER_BUFFERS_UPDATE`.

use std::fmt;
use std::io;
use std::ops::ControlFlow;
use std::sync::Arc;

use mmun_secondary::rcache::{Registrar, Step};
use parking_lot::Mutex;

use crate::error::UringError;
use crate::pagemap::Pagemap;
use crate::process::Process;
use crate::ring::Ring;

/// The longest buffer io_uring registers as one fixed buffer.
pub const MAX_BUFFER: u64 = 1 << 30;

/// A fixed-buffer table of `slots` entries on a [`Ring`], registered
/// sparse (`IORING_REGISTER_BUFFERS2` with `IORING_RSRC_REGISTER_SPARSE`).
pub struct FixedSlots {
    ring: Arc<Ring>,
    slots: u32,
    /// Empty slots. Its capacity is the table's size, reserved up front, so
    /// a `push` never allocates: `deregister` runs inside hooked `free()`.
    free: Mutex<Vec<u16>>,
    /// When set, each registration records its frames for the PFN check.
    pagemap: Option<Pagemap>,
}

/// A registration held by [`FixedSlots`]: a buffer index for
/// `READ_FIXED`/`WRITE_FIXED` (`buf_index`), valid while a use of the
/// cache's registration is held.
#[derive(Debug)]
pub struct Slot {
    index: u16,
    /// The frames at registration, for the PFN check.
    frames: Option<Box<[u64]>>,
}

impl Slot {
    /// The fixed-buffer index (`buf_index` of `READ_FIXED`/`WRITE_FIXED`).
    #[inline]
    pub fn index(&self) -> u16 {
        self.index
    }

    /// The frames the registration holds, if the PFN check is on.
    pub fn frames(&self) -> Option<&[u64]> {
        self.frames.as_deref()
    }
}

impl FixedSlots {
    /// A sparse table of `slots` (at most 16 384, io_uring's limit) on
    /// `ring`; `pagemap` turns the PFN check on.
    ///
    /// # Errors
    ///
    /// The failure of `IORING_REGISTER_BUFFERS2`.
    pub fn new(
        ring: Arc<Ring>,
        slots: u16,
        pagemap: Option<Pagemap>,
    ) -> Result<FixedSlots, UringError> {
        ring.uring()
            .submitter()
            .register_buffers_sparse(u32::from(slots))?;
        let mut free = Vec::with_capacity(usize::from(slots));
        free.extend((0..slots).rev());
        Ok(FixedSlots {
            ring,
            slots: u32::from(slots),
            free: Mutex::new(free),
            pagemap,
        })
    }

    /// Points slot `index` at `[start, end)`, or empties it (`start` 0).
    fn update(&self, index: u16, start: u64, len: u64) -> io::Result<()> {
        let iov = libc::iovec {
            iov_base: start as *mut libc::c_void,
            iov_len: len as usize,
        };
        // SAFETY: the kernel pins the pages the iovec names (or, for the
        // empty iovec, drops the slot's buffer) during the call and keeps
        // no pointer to `iov`; a later I/O through the slot uses the pinned
        // pages, which the cache's use reference keeps registered.
        unsafe {
            self.ring
                .uring()
                .submitter()
                .register_buffers_update(u32::from(index), &[iov], None)
        }
    }

    /// The pagemap of the PFN check, if it is on.
    pub fn pagemap(&self) -> Option<&Pagemap> {
        self.pagemap.as_ref()
    }

    /// How many slots the table has.
    pub fn slots(&self) -> u32 {
        self.slots
    }
}

impl Registrar<Process> for FixedSlots {
    type Handle = Slot;

    fn register(&self, _: &Process, start: u64, end: u64, _: ()) -> Result<Slot, Step<UringError>> {
        let len = end - start;
        if len > MAX_BUFFER {
            return Err(Step::Fail(UringError::TooLong(len)));
        }
        let index = self
            .free
            .lock()
            .pop()
            .ok_or(Step::Fail(UringError::NoFreeSlot(self.slots)))?;
        if let Err(err) = self.update(index, start, len) {
            self.free.lock().push(index);
            let err = match UringError::from_register(err) {
                UringError::Unmapped => why_efault(start, end),
                other => other,
            };
            return Err(Step::Fail(err));
        }
        let frames = match &self.pagemap {
            None => None,
            Some(pagemap) => match pagemap.frames(start, end) {
                Ok(frames) => Some(frames.into_boxed_slice()),
                Err(err) => {
                    self.release(index);
                    return Err(Step::Fail(err.into()));
                }
            },
        };
        Ok(Slot { index, frames })
    }

    fn deregister(&self, _: &Process, slot: &Slot) {
        self.release(slot.index);
    }
}

impl FixedSlots {
    /// Empties slot `index` and frees it. After the update returns, no new
    /// I/O can reach the old pages through the slot (the kernel keeps them
    /// pinned only for I/O already in flight, which the cache's use count
    /// rules out).
    fn release(&self, index: u16) {
        loop {
            match self.update(index, 0, 0) {
                Ok(()) => break,
                Err(err) if matches!(err.raw_os_error(), Some(libc::EINTR | libc::EAGAIN)) => {}
                // Cannot happen for a slot we filled; letting go silently
                // would leave a device mapping of pages about to change.
                Err(err) => panic!("emptying fixed-buffer slot {index} failed: {err}"),
            }
        }
        self.free.lock().push(index);
    }
}

/// What an `EFAULT` from registering `[start, end)` means: since Linux 6.5
/// GUP refuses long-term pins of file pages that need dirty tracking with
/// `EFAULT` (io_uring used to say `EOPNOTSUPP` itself), so a range that
/// reaches a file mapping is [`UringError::FileBacked`]; otherwise part of
/// it is not mapped.
fn why_efault(start: u64, end: u64) -> UringError {
    let mut file_backed = false;
    let _ = mmun_linux::maps::for_each_vma(|vma| {
        if vma.start >= end {
            return ControlFlow::Break(());
        }
        if vma.end > start && vma.inode != 0 && !vma.sysv {
            file_backed = true;
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    });
    if file_backed {
        UringError::FileBacked
    } else {
        UringError::Unmapped
    }
}

impl fmt::Debug for FixedSlots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FixedSlots")
            .field("slots", &self.slots)
            .field("free", &self.free.lock().len())
            .field("check_pfn", &self.pagemap.is_some())
            .finish()
    }
}
