//! Interposition of libc's memory-management calls by patching the
//! `syscall` sites inside glibc, which catches glibc's internal callers
//! (`free` → `__munmap`, heap trimming → `__brk`/`__madvise`, thread exit
//! → `__madvise`) and every library loaded later, with no symbol tricks.
//!
//! Supported: x86_64 with the glibc build the site patterns describe
//! (Debian 12's 2.36). Anything else is refused with an error that names
//! the function and the bytes found; there the process is covered by the
//! userfaultfd net alone (see DESIGN.md).

#[cfg(target_arch = "x86_64")]
pub mod foreign;
#[cfg(target_arch = "x86_64")]
mod ldso;
#[cfg(target_arch = "x86_64")]
mod sites;
#[cfg(target_arch = "x86_64")]
mod x86_64;

use std::fmt;

/// What installation patched.
#[derive(Debug, Clone)]
pub struct Patched {
    /// The libc functions whose system calls now go through hooks.
    pub functions: Vec<&'static str>,
    /// Address of the trampoline page.
    pub trampolines: u64,
}

/// Why the hooks could not be installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstallError {
    /// libc.so.6 is not loaded (a static or non-glibc program).
    NoLibc,
    /// A function to patch is not exported.
    Missing(&'static str),
    /// The function's bytes are not the expected glibc 2.36 prologue.
    Foreign {
        /// The function.
        function: &'static str,
        /// Its first bytes, as found.
        bytes: String,
        /// What they look like, e.g. another library's patch.
        verdict: &'static str,
        /// The loaded object a foreign `jmp` leads into, e.g.
        /// `/lib/x86_64-linux-gnu/libucm.so.0`.
        owner: Option<String>,
    },
    /// The instruction to patch straddles two cache lines (no atomic store
    /// can replace it).
    Straddles(&'static str),
    /// No free page within ±2 GiB of libc for the trampolines.
    NoTrampolineSpace,
    /// `mprotect` of libc text failed (errno), e.g. a W^X policy.
    Protect(i32),
    /// `membarrier` SYNC_CORE is unavailable (errno).
    Membarrier(i32),
    /// Not x86_64: entry patching is not implemented here.
    UnsupportedArch(&'static str),
    /// `pthread_atfork`/`atexit` failed (errno).
    Handlers(i32),
    /// The dynamic loader's own `mmap`/`munmap`/`mprotect` were not each
    /// found exactly once as glibc 2.36's exact function bodies.
    Loader(&'static str),
}

impl InstallError {
    /// A mismatch, with a guess at who patched it.
    pub fn foreign(function: &'static str, actual: &[u8]) -> InstallError {
        let verdict = match actual {
            [0xe9, ..] => {
                "starts with jmp rel32: already patched by another interposer (UCX libucm patches libc when libucs loads)"
            }
            [0xff, 0x25, ..] => "starts with jmp [rip+x]: already patched by another interposer",
            [0x49, 0xbb, ..] | [0x48, 0xb8, ..] => {
                "starts with movabs: already patched by another interposer (libfabric memhooks, Open MPI patcher)"
            }
            [0xcc, ..] => "starts with int3: a debugger breakpoint",
            _ => "an unknown glibc build",
        };
        let bytes = actual
            .iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ");
        InstallError::Foreign {
            function,
            bytes,
            verdict,
            owner: None,
        }
    }

    /// Names the object a foreign jump leads into.
    pub fn with_owner(mut self, owner: Option<String>) -> InstallError {
        if let InstallError::Foreign { owner: o, .. } = &mut self {
            *o = owner;
        }
        self
    }
}

impl fmt::Display for InstallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InstallError::NoLibc => f.write_str("libc.so.6 is not loaded in this process"),
            InstallError::Missing(s) => write!(f, "libc does not export `{s}`"),
            InstallError::Foreign {
                function,
                bytes,
                verdict,
                owner,
            } => {
                write!(
                    f,
                    "refusing to patch `{function}`: its code is not the expected glibc 2.36 x86_64 prologue ({verdict}); found: {bytes}"
                )?;
                if let Some(owner) = owner {
                    write!(f, "; the jump leads into {owner}")?;
                    if owner.contains("libucm") {
                        f.write_str(
                            "; UCX patched first: load mmun first, or set UCX_MEM_MMAP_HOOK_MODE=reloc, and both see every call",
                        )?;
                    }
                }
                Ok(())
            }
            InstallError::Straddles(s) => write!(
                f,
                "refusing to patch `{s}`: its system-call site straddles two cache lines"
            ),
            InstallError::NoTrampolineSpace => {
                f.write_str("no free page within 2 GiB of libc for the trampolines")
            }
            InstallError::Protect(e) => write!(f, "mprotect of libc text failed: errno {e}"),
            InstallError::Membarrier(e) => {
                write!(
                    f,
                    "membarrier(PRIVATE_EXPEDITED_SYNC_CORE) failed: errno {e}"
                )
            }
            InstallError::UnsupportedArch(a) => write!(
                f,
                "libc patching is implemented for x86_64 only, not {a}: hooks are off, only the userfaultfd net covers this process"
            ),
            InstallError::Handlers(e) => write!(f, "pthread_atfork/atexit failed: errno {e}"),
            InstallError::Loader(what) => write!(
                f,
                "refusing to patch the dynamic loader (not glibc 2.36's x86_64 ld.so): {what}"
            ),
        }
    }
}

impl std::error::Error for InstallError {}

/// Patches libc (all sites, or none).
pub fn install() -> Result<Patched, InstallError> {
    #[cfg(target_arch = "x86_64")]
    {
        x86_64::install()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Err(InstallError::UnsupportedArch(std::env::consts::ARCH))
    }
}

/// After a hooked `mprotect`: notices another patcher replacing our hooks
/// (see [`foreign`]).
#[inline]
pub fn after_mprotect(start: u64, end: u64, prot: i32) {
    #[cfg(target_arch = "x86_64")]
    foreign::after_mprotect(start, end, prot);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (start, end, prot);
}
