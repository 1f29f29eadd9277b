//! Carrying out one step on the window.

use std::io::Write;
use std::os::fd::AsFd;

use mmun_script::{MmapFlags, Op, Outcome, Prot, Step, WINDOW_BASE, WINDOW_SIZE};
use rustix::io::Errno;
use rustix::mm::{MapFlags, MprotectFlags, ProtFlags};

use crate::error::OracleError;
use crate::sys::{MmapError, Remap, TouchPipe, WinRange, Window};

const PAGE: u64 = 4096;

/// What a failed syscall leaves as the step's RC: `-errno`.
fn rc_of(result: Result<(), Errno>) -> Outcome {
    Outcome::Rc(result.map_or_else(|e| -i64::from(e.raw_os_error()), |()| 0))
}

/// Runs one step; syscalls that fail give the RC, anything that keeps the
/// step from being carried out at all is an error.
pub(crate) fn run_step(
    window: &mut Window,
    pipe: &TouchPipe,
    step: &Step,
) -> Result<Outcome, OracleError> {
    let fail = |op: &'static str, detail: String| OracleError::Step {
        step: step.number,
        op,
        detail,
    };
    let range = |op: &'static str, off: u64, len: u64| {
        WinRange::new(off, len).ok_or_else(|| {
            fail(
                op,
                format!("[{off:#x}, {off:#x} + {len:#x}) leaves the {WINDOW_SIZE:#x}-byte window"),
            )
        })
    };
    let outcome = match step.op {
        Op::Mmap {
            off,
            len,
            prot,
            flags,
        } => {
            let at = range("mmap", off, len)?;
            mmap(window, at, len, prot, flags).map_err(|(op, detail)| fail(op, detail))?
        }
        Op::Touch { off, len, write } => {
            range("touch", off, len)?;
            let mut result = Ok(());
            for page in (0..len).step_by(PAGE as usize) {
                let byte = range("touch", off + page, 1)?;
                result = window.touch(byte, write, pipe);
                if result.is_err() {
                    break;
                }
            }
            rc_of(result)
        }
        Op::Munmap { off, len } => rc_of(window.munmap(range("munmap", off, len)?)),
        Op::Mprotect { off, len, prot } => rc_of(window.mprotect(
            range("mprotect", off, len)?,
            MprotectFlags::from_bits_retain(prot.bits()),
        )),
        Op::Madvise { off, len, advice } => {
            rc_of(window.madvise(range("madvise", off, len)?, advice.value()))
        }
        Op::Mremap {
            off,
            old_len,
            new_len,
            may_move,
            dont_unmap,
            new_off,
        } => {
            let old = range("mremap", off, old_len)?;
            let how = match new_off {
                Some(to) => Remap::Fixed {
                    to: range("mremap", to, new_len)?,
                    dont_unmap,
                },
                None if may_move || dont_unmap => Remap::MayMove { dont_unmap },
                None => Remap::InPlace,
            };
            let new_len = usize::try_from(new_len)
                .map_err(|_| fail("mremap", format!("length {new_len:#x}")))?;
            match window.mremap(old, new_len, how) {
                Err(e) => rc_of(Err(e)),
                Ok(addr) => {
                    let addr = addr as u64;
                    if (WINDOW_BASE..=WINDOW_BASE + WINDOW_SIZE).contains(&addr) {
                        Outcome::Rc((addr - WINDOW_BASE) as i64)
                    } else {
                        Outcome::Moved
                    }
                }
            }
        }
        Op::Fork => {
            crate::sys::fork_and_reap().map_err(|e| fail("fork", e.to_string()))?;
            Outcome::Rc(0)
        }
        Op::Mlock { off, len } => rc_of(window.mlock(range("mlock", off, len)?)),
        Op::Munlock { off, len } => rc_of(window.munlock(range("munlock", off, len)?)),
        Op::SoftDirty => {
            let written = std::fs::OpenOptions::new()
                .write(true)
                .open("/proc/self/clear_refs")
                .and_then(|mut f| f.write(b"4"));
            match written {
                Ok(1) => Outcome::Rc(0),
                Ok(n) => {
                    return Err(fail(
                        "softdirty",
                        format!("wrote {n} bytes to /proc/self/clear_refs"),
                    ));
                }
                Err(e) => Outcome::Rc(-i64::from(e.raw_os_error().unwrap_or(libc::EIO))),
            }
        }
        // Software-MMU-only ops (run_script rejects them up front).
        _ => return Err(unsupported(step)),
    };
    Ok(outcome)
}

/// The error for a step the kernel oracle cannot run.
pub(crate) fn unsupported(step: &Step) -> OracleError {
    OracleError::Unsupported {
        step: step.number,
        text: step.text.clone(),
    }
}

/// An `mmap` step: `MAP_FIXED_NOREPLACE` (or `MAP_FIXED`), private (or
/// shared), anonymous unless `memfd`, `MAP_POPULATE` if asked.
fn mmap(
    window: &mut Window,
    at: WinRange,
    len: u64,
    prot: Prot,
    flags: MmapFlags,
) -> Result<Outcome, (&'static str, String)> {
    let mut map = if flags.fixed {
        MapFlags::FIXED
    } else {
        MapFlags::FIXED_NOREPLACE
    };
    map |= if flags.shared {
        MapFlags::SHARED
    } else {
        MapFlags::PRIVATE
    };
    if flags.populate {
        map |= MapFlags::POPULATE;
    }
    let prot = ProtFlags::from_bits_retain(prot.bits());
    let memfd = if flags.memfd {
        let fd = rustix::fs::memfd_create("oracle", rustix::fs::MemfdFlags::CLOEXEC)
            .map_err(|e| ("memfd_create", e.to_string()))?;
        rustix::fs::ftruncate(&fd, len).map_err(|e| ("ftruncate", e.to_string()))?;
        Some(fd)
    } else {
        None
    };
    // The mapping keeps its own reference to the memfd; ours closes here.
    match window.mmap(at, prot, map, memfd.as_ref().map(|fd| fd.as_fd())) {
        Ok(()) => Ok(Outcome::Rc(0)),
        Err(MmapError::Errno(e)) => Ok(rc_of(Err(e))),
        Err(MmapError::Misplaced(addr)) => Err((
            "mmap",
            format!("the kernel placed the mapping at {addr:#x}"),
        )),
    }
}
