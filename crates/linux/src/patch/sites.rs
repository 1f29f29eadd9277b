//! Where glibc 2.36 (x86_64, Debian 12) issues the system calls we hook.
//!
//! Each site is the 7 bytes `b8 <nr:u32> 0f 05` (`mov eax, nr; syscall`)
//! at the end of an exact byte pattern that starts at the function's
//! symbol: the pattern pins the glibc build (a different one is refused),
//! and the 5-byte `mov` is the one instruction the patch replaces, so no
//! thread can be halfway through it. `aligned` says whether `rsp` is
//! 16-byte aligned at the site (0 bytes pushed since the call: `false`).
//! `??` matches any byte (call displacements).
//!
//! Read with `objdump -d /lib/x86_64-linux-gnu/libc.so.6`.

use crate::fork_calls;
use crate::hooks::{self, Args};
use crate::sys::Ret;
use crate::writeback;

/// One `syscall` instruction inside a libc function, or a function entry.
#[derive(Debug, Clone, Copy)]
pub struct Site {
    /// The exported symbol the pattern starts at.
    pub symbol: &'static str,
    /// The bytes from the symbol to the end of the `syscall` instruction
    /// (for [`Kind::Function`]: to the end of the first instruction).
    pub pattern: &'static str,
    /// How the site is entered and left.
    pub kind: Kind,
    /// What runs instead of the system call.
    pub hook: fn(Args) -> Ret,
}

/// How a patched site hands over to its hook.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// The last 7 bytes of the pattern are `mov eax, nr; syscall`: the
    /// `mov` jumps to a trampoline that calls the hook with the syscall
    /// registers and resumes after the `syscall`. `aligned`: whether `rsp`
    /// is 16-byte aligned there.
    Syscall {
        /// `rsp` is 16-byte aligned at the site.
        aligned: bool,
    },
    /// The function's first instruction (at least 5 bytes long, the whole
    /// pattern) jumps to `replacement`, a C-ABI function with the libc
    /// signature that sets `errno` itself. Used where the `syscall` site
    /// straddles a cache line.
    Function {
        /// The replacement's address.
        replacement: fn() -> usize,
    },
}

impl Site {
    /// Offset of the patched instruction from the symbol.
    pub fn offset(&self) -> usize {
        match self.kind {
            Kind::Syscall { .. } => parse(self.pattern).len() - 7,
            Kind::Function { .. } => 0,
        }
    }
}

/// The sites, in patching order.
pub const SITES: &[Site] = &[
    Site {
        symbol: "munmap",
        pattern: "b8 0b 00 00 00 0f 05",
        kind: Kind::Syscall { aligned: false },
        hook: hooks::munmap,
    },
    Site {
        symbol: "madvise",
        pattern: "b8 1c 00 00 00 0f 05",
        kind: Kind::Syscall { aligned: false },
        hook: hooks::madvise,
    },
    Site {
        symbol: "mprotect",
        pattern: "b8 0a 00 00 00 0f 05",
        kind: Kind::Syscall { aligned: false },
        hook: hooks::mprotect,
    },
    Site {
        symbol: "brk",
        pattern: "b8 0c 00 00 00 0f 05",
        kind: Kind::Syscall { aligned: false },
        hook: hooks::brk,
    },
    Site {
        symbol: "shmat",
        pattern: "b8 1e 00 00 00 0f 05",
        kind: Kind::Syscall { aligned: false },
        hook: hooks::shmat,
    },
    Site {
        symbol: "shmdt",
        pattern: "b8 43 00 00 00 0f 05",
        kind: Kind::Syscall { aligned: false },
        hook: hooks::shmdt,
    },
    Site {
        symbol: "ftruncate",
        pattern: "b8 4d 00 00 00 0f 05",
        kind: Kind::Syscall { aligned: false },
        hook: hooks::ftruncate,
    },
    Site {
        // mov r10d, ecx; test r9d, 0xfff; jne einval; mov eax, 9; syscall
        symbol: "mmap",
        pattern: "41 89 ca 41 f7 c1 ff 0f 00 00 75 14 b8 09 00 00 00 0f 05",
        kind: Kind::Syscall { aligned: false },
        hook: hooks::mmap,
    },
    Site {
        // mov r10d, ecx; cmp ecx, -1; je mprotect; mov eax, 0x149; syscall
        symbol: "pkey_mprotect",
        pattern: "41 89 ca 83 f9 ff 74 30 b8 49 01 00 00 0f 05",
        kind: Kind::Syscall { aligned: false },
        hook: hooks::pkey_mprotect,
    },
    Site {
        // sub rsp, 0x58; ... the flags checks; mov eax, 25; syscall
        symbol: "mremap",
        pattern: "48 83 ec 58 4c 89 44 24 40 64 48 8b 04 25 28 00 00 00 \
                  48 89 44 24 18 31 c0 83 f9 07 77 5a 41 89 ca 45 31 c0 \
                  f6 c1 06 75 27 b8 19 00 00 00 0f 05",
        kind: Kind::Syscall { aligned: true },
        hook: hooks::mremap,
    },
    Site {
        // cmpb __libc_single_threaded, 0 (7 bytes); mov r10, rcx; je ...
        // Its first `syscall` site straddles a cache line, so the whole
        // function is replaced from its entry (losing only its being a
        // cancellation point).
        symbol: "fallocate",
        pattern: "80 3d ?? ?? ?? ?? 00",
        kind: Kind::Function {
            replacement: fallocate_address,
        },
        hook: hooks::fallocate,
    },
    Site {
        symbol: "sync",
        pattern: "b8 a2 00 00 00 0f 05",
        kind: Kind::Syscall { aligned: false },
        hook: writeback::sync,
    },
    Site {
        symbol: "syncfs",
        pattern: "b8 32 01 00 00 0f 05",
        kind: Kind::Syscall { aligned: false },
        hook: writeback::syncfs,
    },
    Site {
        // mov rax, fs:0x10; xor r8d, r8d; xor edx, edx; xor esi, esi;
        // mov edi, CHILD_SETTID|CHILD_CLEARTID|SIGCHLD; lea r10, [rax+0x2d0];
        // mov eax, 56; syscall
        symbol: "_Fork",
        pattern: "64 48 8b 04 25 10 00 00 00 45 31 c0 31 d2 31 f6 \
                  bf 11 00 20 01 4c 8d 90 d0 02 00 00 b8 38 00 00 00 0f 05",
        kind: Kind::Syscall { aligned: false },
        hook: fork_calls::fork_site,
    },
    Site {
        // The checks of fn and stack; fn and arg stored on the new stack;
        // the arguments moved to the syscall registers; mov eax, 56; syscall
        symbol: "clone",
        pattern: "48 c7 c0 ea ff ff ff 48 85 ff 74 3e 48 83 e6 f0 74 38 \
                  48 89 4e f8 48 83 ee 10 48 89 3e 48 89 d7 4c 89 c2 4d 89 c8 \
                  4c 8b 54 24 08 b8 38 00 00 00 0f 05",
        kind: Kind::Syscall { aligned: false },
        hook: fork_calls::clone_site,
    },
    // The next four start with `cmp byte [__libc_single_threaded], 0` (7
    // bytes) and issue their `syscall` with asynchronous cancellation on
    // when the process has threads: replaced whole from their entry, so a
    // hook is never cancelled between a start and its end.
    Site {
        symbol: "fsync",
        pattern: "80 3d ?? ?? ?? ?? 00",
        kind: Kind::Function {
            replacement: || writeback::fsync_replacement as *const () as usize,
        },
        hook: writeback::fsync,
    },
    Site {
        symbol: "fdatasync",
        pattern: "80 3d ?? ?? ?? ?? 00",
        kind: Kind::Function {
            replacement: || writeback::fdatasync_replacement as *const () as usize,
        },
        hook: writeback::fdatasync,
    },
    Site {
        symbol: "msync",
        pattern: "80 3d ?? ?? ?? ?? 00",
        kind: Kind::Function {
            replacement: || writeback::msync_replacement as *const () as usize,
        },
        hook: writeback::msync,
    },
    Site {
        symbol: "sync_file_range",
        pattern: "80 3d ?? ?? ?? ?? 00",
        kind: Kind::Function {
            replacement: || writeback::sync_file_range_replacement as *const () as usize,
        },
        hook: writeback::sync_file_range,
    },
];

/// `fallocate(fd, mode, offset, len)` with the libc signature.
extern "C" fn fallocate_replacement(
    fd: libc::c_int,
    mode: libc::c_int,
    offset: libc::off_t,
    len: libc::off_t,
) -> libc::c_int {
    let ret = hooks::fallocate([
        fd as usize,
        mode as usize,
        offset as usize,
        len as usize,
        0,
        0,
    ]);
    if crate::sys::is_err(ret) {
        // SAFETY: errno is this thread's.
        unsafe { *libc::__errno_location() = -ret as i32 };
        -1
    } else {
        0
    }
}

fn fallocate_address() -> usize {
    fallocate_replacement as *const () as usize
}

/// Parses a pattern into bytes (`None` for `??`).
pub fn parse(pattern: &str) -> Vec<Option<u8>> {
    pattern
        .split_whitespace()
        .map(|b| match b {
            "??" => None,
            hex => Some(u8::from_str_radix(hex, 16).expect("patterns are hex bytes")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pattern_ends_in_mov_eax_syscall() {
        for site in SITES
            .iter()
            .filter(|s| matches!(s.kind, Kind::Syscall { .. }))
        {
            let bytes = parse(site.pattern);
            let n = bytes.len();
            assert!(n >= 7, "{}", site.symbol);
            assert_eq!(bytes[n - 7], Some(0xb8), "{}", site.symbol);
            assert_eq!(
                &bytes[n - 2..],
                &[Some(0x0f), Some(0x05)],
                "{}",
                site.symbol
            );
        }
    }
}
