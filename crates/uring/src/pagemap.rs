//! `/proc/self/pagemap` frame numbers, for the PFN check (as UCX's
//! `UCX_RCACHE_CHECK_PFN`): the frames a registration holds against the
//! frames the process maps.

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::error::UringError;

const PAGE: u64 = 4096;
/// Bit 63 of an entry: the page is present.
const PRESENT: u64 = 1 << 63;
/// Bits 0-54: the frame number (zero without `CAP_SYS_ADMIN`).
const PFN_MASK: u64 = (1 << 55) - 1;

/// The process's pagemap, open for the cache's life.
#[derive(Debug)]
pub struct Pagemap {
    file: File,
}

impl Pagemap {
    /// Opens `/proc/self/pagemap` and checks it shows frame numbers.
    ///
    /// # Errors
    ///
    /// [`UringError::PfnUnavailable`] if it cannot be read or hides the
    /// frame numbers (no `CAP_SYS_ADMIN`).
    pub fn open() -> Result<Pagemap, UringError> {
        let unavailable = |why: String| UringError::PfnUnavailable(why);
        let file = File::open("/proc/self/pagemap").map_err(|e| unavailable(e.to_string()))?;
        let pagemap = Pagemap { file };
        // A page of our own stack is present: its frame shows if we may
        // see frames at all.
        let probe = 0u64;
        let at = std::ptr::from_ref(&probe) as u64 & !(PAGE - 1);
        let frame = pagemap
            .frames(at, at + PAGE)
            .map_err(|e| unavailable(e.to_string()))?;
        if frame.first().copied().unwrap_or(0) == 0 {
            return Err(unavailable("frame numbers read as 0".into()));
        }
        Ok(pagemap)
    }

    /// The frame of each page of `[start, end)` (page-aligned); 0 where
    /// none is present.
    ///
    /// # Errors
    ///
    /// The read's failure.
    pub fn frames(&self, start: u64, end: u64) -> std::io::Result<Vec<u64>> {
        let pages = ((end - start) / PAGE) as usize;
        let mut raw = vec![0u8; pages * 8];
        self.file.read_exact_at(&mut raw, start / PAGE * 8)?;
        Ok(raw
            .chunks_exact(8)
            .map(|e| {
                let entry = u64::from_ne_bytes(e.try_into().expect("8 bytes"));
                if entry & PRESENT == 0 {
                    0
                } else {
                    entry & PFN_MASK
                }
            })
            .collect())
    }

    /// Compares the frames `[start, end)` maps now with `registered`.
    ///
    /// # Errors
    ///
    /// [`UringError::PfnMismatch`] naming the first page that differs.
    pub fn check(&self, start: u64, end: u64, registered: &[u64]) -> Result<(), UringError> {
        let mapped = self.frames(start, end)?;
        let differs = registered.iter().zip(&mapped).position(|(r, m)| r != m);
        match differs {
            None => Ok(()),
            Some(i) => Err(UringError::PfnMismatch {
                va: start + i as u64 * PAGE,
                registered: registered[i],
                mapped: mapped[i],
            }),
        }
    }
}
