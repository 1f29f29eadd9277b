//! Living beside another patcher of libc: UCX's `libucm` (the one that
//! matters on HPC systems), libfabric's memhooks, Open MPI's patcher.
//!
//! * **It came first**: installation refuses (`InstallError::Foreign`) and
//!   names the library its jump leads into (`owner_of`).
//! * **We came first, and it would patch too**: `libucm` reads
//!   `UCX_MEM_MMAP_HOOK_MODE` when it loads. In `reloc` mode it hooks
//!   through the GOT/PLT of loaded objects and calls libc's own functions,
//!   which reach our patched system calls: both see every call. So
//!   installation sets `UCX_MEM_MMAP_HOOK_MODE=reloc` when the variable is
//!   unset and the process is still single-threaded (changing the
//!   environment of a threaded process races with `getenv`), and never
//!   overrides a value the user chose.
//! * **It patched over us anyway** (`bistro` mode asked for, or set after
//!   threads started): it overwrites the first bytes of the functions we
//!   patched, and those calls stop reaching our hooks. We cannot stop that
//!   and do not fight it (patching back would break it silently), but we
//!   notice it: a patcher makes libc text writable and then executable
//!   again with `mprotect`, which is hooked. After each hooked `mprotect`
//!   over a page holding one of our sites, the site's bytes are compared
//!   with the jump we wrote; a replaced site is recorded ([`overwritten`])
//!   and announced once on standard error, naming the function and the
//!   library that took it. A patcher that changes protections with a raw
//!   system call is not noticed; [`overwritten`] checks the bytes again
//!   whenever it is asked.

use std::ffi::CStr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// One site as we patched it.
#[derive(Debug)]
struct Written {
    function: &'static str,
    /// Address of our 5-byte `jmp rel32`.
    at: u64,
    jump: [u8; 5],
    /// The address the foreign jump leads to, or 1 if the bytes changed
    /// into something else; 0 while ours.
    replaced: AtomicU64,
}

/// Our sites, recorded once installation succeeded.
static WRITTEN: OnceLock<Box<[Written]>> = OnceLock::new();

/// Records the sites installation patched: `(function, at, jump bytes)`.
pub(super) fn record(sites: impl Iterator<Item = (&'static str, u64, [u8; 5])>) {
    let written: Box<[Written]> = sites
        .map(|(function, at, jump)| Written {
            function,
            at,
            jump,
            replaced: AtomicU64::new(0),
        })
        .collect();
    let _ = WRITTEN.set(written);
}

/// Sets `UCX_MEM_MMAP_HOOK_MODE=reloc` if unset and the process has one
/// thread (see the module docs). Returns whether it did.
pub(super) fn prefer_ucx_reloc_mode() -> bool {
    const VAR: &CStr = c"UCX_MEM_MMAP_HOOK_MODE";
    // SAFETY: getenv with a NUL-terminated name; the result is only
    // compared with null.
    if !unsafe { libc::getenv(VAR.as_ptr()) }.is_null() || !single_threaded() {
        return false;
    }
    // SAFETY: one thread, so no concurrent getenv can see the environment
    // change under it; NUL-terminated name and value; no overwrite.
    unsafe { libc::setenv(VAR.as_ptr(), c"reloc".as_ptr(), 0) == 0 }
}

/// Whether this process has exactly one thread (`/proc/self/stat`'s
/// `num_threads`, field 20).
fn single_threaded() -> bool {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return false;
    };
    // The command name (field 2) may hold spaces; fields after it do not.
    let Some(after_name) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return false;
    };
    after_name.split_whitespace().nth(17) == Some("1")
}

/// After a hooked `mprotect(start, len, prot)` returned: if it covered one
/// of our sites and left the page readable, checks that site's bytes.
/// Allocation-free; reads only libc text.
pub fn after_mprotect(start: u64, end: u64, prot: i32) {
    if prot & libc::PROT_READ == 0 {
        return;
    }
    let Some(written) = WRITTEN.get() else { return };
    for w in written.iter() {
        if w.at + 5 > start && w.at < end && w.replaced.load(Ordering::Relaxed) == 0 {
            check(w);
        }
    }
}

/// Compares one site with our jump; records and announces a replacement.
fn check(w: &Written) -> bool {
    // SAFETY: 5 bytes of libc text, mapped (and readable: the caller
    // checked the protection, or the page still holds our jump).
    let now = unsafe { std::ptr::read_volatile(w.at as *const [u8; 5]) };
    if now == w.jump {
        return true;
    }
    let target = jump_target(w.at, &now).unwrap_or(1);
    if w.replaced
        .compare_exchange(0, target, Ordering::Relaxed, Ordering::Relaxed)
        .is_ok()
    {
        announce(w.function, target);
    }
    false
}

/// Where a `jmp rel32` at `at` leads.
pub(super) fn jump_target(at: u64, bytes: &[u8]) -> Option<u64> {
    match bytes {
        [0xe9, r0, r1, r2, r3, ..] => {
            let rel = i32::from_le_bytes([*r0, *r1, *r2, *r3]);
            Some((at as i64 + 5 + i64::from(rel)) as u64)
        }
        _ => None,
    }
}

/// The file of the loaded object holding `addr` (`dladdr`), if any.
pub(super) fn owner_of(addr: u64) -> Option<&'static CStr> {
    // SAFETY: an all-zero Dl_info is a valid value to be overwritten.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: dladdr only reads its address argument and fills `info`.
    let found = unsafe { libc::dladdr(addr as *const libc::c_void, &mut info) } != 0;
    if !found || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: ld.so's file name of a loaded object, NUL-terminated, alive
    // while the object stays loaded (a patcher's library does).
    Some(unsafe { CStr::from_ptr(info.dli_fname) })
}

/// One line on standard error, built on the stack (this runs inside a
/// hooked call: no allocation).
fn announce(function: &str, target: u64) {
    let mut line = Line::default();
    line.push(b"mmun: another patcher replaced mmun's hook of `");
    line.push(function.as_bytes());
    line.push(b"`");
    if let Some(owner) = owner_of(target) {
        line.push(b" (its jump leads into ");
        line.push(owner.to_bytes());
        line.push(b")");
    }
    line.push(b"; these calls no longer reach mmun's notifiers.");
    if owner_of(target).is_some_and(|o| o.to_bytes().windows(6).any(|w| w == b"libucm")) {
        line.push(
            b" UCX: set UCX_MEM_MMAP_HOOK_MODE=reloc before it loads, and both see every call.",
        );
    }
    line.push(b"\n");
    // SAFETY: write(2) of our stack buffer.
    unsafe { libc::write(2, line.buf.as_ptr().cast(), line.len) };
}

/// A fixed stack buffer that truncates.
struct Line {
    buf: [u8; 512],
    len: usize,
}

impl Default for Line {
    fn default() -> Line {
        Line {
            buf: [0; 512],
            len: 0,
        }
    }
}

impl Line {
    fn push(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }
}

/// The functions whose replacement the `mprotect` hook has noticed so far
/// (no new check: what a program learns without asking).
pub fn noticed() -> Vec<&'static str> {
    WRITTEN.get().map_or_else(Vec::new, |written| {
        written
            .iter()
            .filter(|w| w.replaced.load(Ordering::Relaxed) != 0)
            .map(|w| w.function)
            .collect()
    })
}

/// A hook another patcher replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overwritten {
    /// The libc function.
    pub function: &'static str,
    /// Where its entry jumps now, if it is a `jmp rel32`.
    pub target: Option<u64>,
    /// The loaded object holding that address.
    pub owner: Option<String>,
}

/// The hooks another patcher has replaced since installation (checks every
/// site's bytes now, so it also sees patches made behind raw system calls).
pub fn overwritten() -> Vec<Overwritten> {
    let Some(written) = WRITTEN.get() else {
        return Vec::new();
    };
    written
        .iter()
        .filter(|w| w.replaced.load(Ordering::Relaxed) != 0 || !check(w))
        .map(|w| {
            let target = Some(w.replaced.load(Ordering::Relaxed)).filter(|&t| t > 1);
            Overwritten {
                function: w.function,
                target,
                owner: target
                    .and_then(owner_of)
                    .map(|o| o.to_string_lossy().into_owned()),
            }
        })
        .collect()
}
