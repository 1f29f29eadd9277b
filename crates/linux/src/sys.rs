//! Raw system calls, issued by the hooks themselves.
//!
//! A hook never calls the libc function it replaces (that entry is patched
//! and would come back to the hook), never allocates and never touches
//! `errno`: it returns what the kernel returned (`-errno` on failure), and
//! the patched libc function's own code after its `syscall` instruction
//! turns that into `errno` and its return value.

/// The kernel's return value: non-negative on success, `-errno` on failure.
pub type Ret = isize;

/// Whether a raw return value is an error (`-4095..=-1`).
#[inline]
pub fn is_err(ret: Ret) -> bool {
    (-4095..0).contains(&ret)
}

/// Issues system call `nr` with six arguments.
///
/// # Safety
///
/// The call must be valid with these arguments: memory-management calls
/// can unmap memory the caller still uses, exactly as the libc wrapper
/// could.
#[cfg(target_arch = "x86_64")]
#[inline]
pub unsafe fn syscall6(nr: usize, a: [usize; 6]) -> Ret {
    let ret: isize;
    // SAFETY: the `syscall` instruction with the Linux x86_64 convention:
    // number in rax, arguments in rdi, rsi, rdx, r10, r8, r9; it clobbers
    // rcx and r11 and returns in rax. The caller vouches for the call.
    unsafe {
        core::arch::asm!(
            "syscall",
            inlateout("rax") nr as isize => ret,
            in("rdi") a[0],
            in("rsi") a[1],
            in("rdx") a[2],
            in("r10") a[3],
            in("r8") a[4],
            in("r9") a[5],
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// Issues system call `nr` through libc's `syscall()`, which is never
/// patched, and turns its `errno` back into a raw return.
///
/// # Safety
///
/// As for the x86_64 version.
#[cfg(not(target_arch = "x86_64"))]
#[inline]
pub unsafe fn syscall6(nr: usize, a: [usize; 6]) -> Ret {
    // SAFETY: the caller vouches for the call; `syscall` is variadic and
    // takes its arguments as longs.
    let ret = unsafe { libc::syscall(nr as libc::c_long, a[0], a[1], a[2], a[3], a[4], a[5]) };
    if ret == -1 {
        // SAFETY: errno is thread-local and always valid to read.
        -(unsafe { *libc::__errno_location() } as isize)
    } else {
        ret as isize
    }
}

/// `getpid` and `gettid`, raw (no allocation, no libc cache).
pub fn ids() -> (u32, u32) {
    // SAFETY: getpid and gettid take no arguments and cannot fail.
    let (pid, tid) = unsafe {
        (
            syscall6(libc::SYS_getpid as usize, [0; 6]),
            syscall6(libc::SYS_gettid as usize, [0; 6]),
        )
    };
    (pid as u32, tid as u32)
}

/// `CLOCK_MONOTONIC` in nanoseconds (vDSO through libc; never allocates).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The page size (4 KiB on every target this crate patches; read once).
pub fn page_size() -> u64 {
    rustix::param::page_size() as u64
}

/// Rounds `x` up to a page boundary, saturating at the top.
pub fn page_up(x: u64) -> u64 {
    let mask = page_size() - 1;
    x.checked_add(mask).map_or(!mask, |v| v & !mask)
}

/// Rounds `x` down to a page boundary.
pub fn page_down(x: u64) -> u64 {
    x & !(page_size() - 1)
}
