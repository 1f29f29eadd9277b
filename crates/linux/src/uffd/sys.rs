//! The userfaultfd system interface, thin and allocation-free: opening a
//! context, the API handshake, (un)registering ranges, reading events, and
//! the few other calls the net needs (eventfd, poll, signal mask, VMA
//! counts).
//!
//! Why not the `userfaultfd` crate: it runs bindgen over the system headers
//! at build time (libclang, and Debian 12's 6.1 headers), pulls a second
//! `nix`, and its `read_event` cannot wait on an exit eventfd at the same
//! time. What we need is five ioctls and one `read`; the constants and
//! structs come from `linux-raw-sys` (current uapi, no build step).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use linux_raw_sys::general as uapi;
use linux_raw_sys::ioctl as ioc;

/// `USERFAULTFD_IOC_NEW` = `_IO(USERFAULTFD_IOC, 0x00)`: the `/dev/userfaultfd`
/// ioctl that returns a new context (Linux 6.1+).
const USERFAULTFD_IOC_NEW: libc::c_ulong = (uapi::USERFAULTFD_IOC as libc::c_ulong) << 8;

/// The events the net asks for. No `EVENT_FORK`: a child must not inherit
/// registrations (and an unserviced child context would block its faults).
pub(crate) const FEATURES: u64 = (uapi::UFFD_FEATURE_EVENT_UNMAP
    | uapi::UFFD_FEATURE_EVENT_REMOVE
    | uapi::UFFD_FEATURE_EVENT_REMAP) as u64;

/// One kernel message, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Msg {
    /// `UFFD_EVENT_UNMAP`: `[start, end)` is gone (VMA already removed).
    Unmap { start: u64, end: u64 },
    /// `UFFD_EVENT_REMOVE`: `[start, end)` is about to be zapped.
    Remove { start: u64, end: u64 },
    /// `UFFD_EVENT_REMAP`: `len` bytes moved from `from` to `to`.
    Remap { from: u64, to: u64, len: u64 },
    /// A page fault at `address` (only if a page was write-protected by
    /// someone: the net never does so, but a waiting thread must be woken).
    Fault { address: u64 },
    /// Anything else (a future event type).
    Other(u8),
}

/// Size of one `struct uffd_msg`.
pub(crate) const MSG_SIZE: usize = size_of::<uapi::uffd_msg>();
const _: () = assert!(MSG_SIZE == 32);

/// Opens a non-blocking, close-on-exec userfaultfd context: the syscall with
/// `UFFD_USER_MODE_ONLY` (works without privilege since 5.11), then
/// `/dev/userfaultfd` (5.11+, needs access to the node).
pub(crate) fn open() -> io::Result<OwnedFd> {
    let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
    let user_only = flags | uapi::UFFD_USER_MODE_ONLY as libc::c_int;
    // SAFETY: userfaultfd takes one int argument and returns an fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, user_only) };
    if fd >= 0 {
        // SAFETY: the kernel just returned this fd to us; nobody else owns it.
        return Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
    }
    let syscall_err = io::Error::last_os_error();
    let dev = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/userfaultfd")
    {
        Ok(dev) => dev,
        Err(_) => return Err(syscall_err),
    };
    // SAFETY: USERFAULTFD_IOC_NEW takes the open flags as its int argument.
    let fd = unsafe { libc::ioctl(dev.as_raw_fd(), USERFAULTFD_IOC_NEW, flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above, a fresh fd from the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The `UFFDIO_API` handshake asking for [`FEATURES`]; returns what the
/// kernel granted.
pub(crate) fn api(uffd: &OwnedFd) -> io::Result<u64> {
    let mut api = uapi::uffdio_api {
        api: uapi::UFFD_API as u64,
        features: FEATURES,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API reads and writes one `struct uffdio_api`, which
    // lives on our stack for the duration of the call.
    let rc = unsafe { libc::ioctl(uffd.as_raw_fd(), ioc::UFFDIO_API as _, &mut api) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(api.features)
}

/// `UFFDIO_REGISTER` of `[start, end)` in write-protect mode (no page is
/// ever write-protected, so no fault ever waits for us; the non-cooperative
/// events arrive all the same).
pub(crate) fn register(uffd: RawFd, start: u64, end: u64) -> io::Result<()> {
    let mut reg = uapi::uffdio_register {
        range: uapi::uffdio_range {
            start,
            len: end - start,
        },
        mode: uapi::UFFDIO_REGISTER_MODE_WP as u64,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_REGISTER reads and writes one `struct uffdio_register`
    // on our stack.
    let rc = unsafe { libc::ioctl(uffd, ioc::UFFDIO_REGISTER as _, &mut reg) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `UFFDIO_UNREGISTER` of `[start, end)`.
pub(crate) fn unregister(uffd: RawFd, start: u64, end: u64) -> io::Result<()> {
    let range = uapi::uffdio_range {
        start,
        len: end - start,
    };
    // SAFETY: UFFDIO_UNREGISTER reads one `struct uffdio_range` on our stack.
    let rc = unsafe { libc::ioctl(uffd, ioc::UFFDIO_UNREGISTER as _, &range) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `UFFDIO_WAKE` of the page at `address`: wakes a thread faulting there.
pub(crate) fn wake(uffd: RawFd, address: u64) {
    let page = address & !(crate::uffd::PAGE - 1);
    let range = uapi::uffdio_range {
        start: page,
        len: crate::uffd::PAGE,
    };
    // SAFETY: UFFDIO_WAKE reads one `struct uffdio_range` on our stack.
    unsafe { libc::ioctl(uffd, ioc::UFFDIO_WAKE as _, &range) };
}

/// Reads up to `buf.len() / MSG_SIZE` messages; `Ok(0)` when none is
/// pending (the fd is non-blocking).
pub(crate) fn read_msgs(uffd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
    let n = unsafe { libc::read(uffd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EAGAIN) {
            return Ok(0);
        }
        return Err(err);
    }
    Ok(n as usize / MSG_SIZE)
}

/// Decodes the `i`-th message of `buf`.
pub(crate) fn decode(buf: &[u8], i: usize) -> Msg {
    let bytes = &buf[i * MSG_SIZE..(i + 1) * MSG_SIZE];
    // SAFETY: `uffd_msg` is plain data (integers in a packed struct and a
    // union of integer structs); every bit pattern is valid, and
    // `read_unaligned` copes with the byte buffer's alignment.
    let msg: uapi::uffd_msg = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let arg = msg.arg;
    // SAFETY: the kernel fills the union member that `event` names; the
    // other members are plain integers too, so any read is defined.
    unsafe {
        match u32::from(msg.event) {
            uapi::UFFD_EVENT_UNMAP => Msg::Unmap {
                start: arg.remove.start,
                end: arg.remove.end,
            },
            uapi::UFFD_EVENT_REMOVE => Msg::Remove {
                start: arg.remove.start,
                end: arg.remove.end,
            },
            uapi::UFFD_EVENT_REMAP => Msg::Remap {
                from: arg.remap.from,
                to: arg.remap.to,
                len: arg.remap.len,
            },
            uapi::UFFD_EVENT_PAGEFAULT => Msg::Fault {
                address: arg.pagefault.address,
            },
            other => Msg::Other(other as u8),
        }
    }
}

/// A non-blocking, close-on-exec eventfd: the handler's exit signal.
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes an initial value and flags, returns an fd or -1.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd from the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds one to an eventfd (wakes its poller).
pub(crate) fn signal(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: an eventfd write takes exactly 8 bytes, read from our stack.
    unsafe { libc::write(fd, (&raw const one).cast(), 8) };
}

/// Which of the two fds are readable; waits (restarting after signals)
/// until one is.
pub(crate) fn poll2(a: RawFd, b: RawFd) -> io::Result<(bool, bool)> {
    let mut fds = [
        libc::pollfd {
            fd: a,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: b,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: `fds` is a valid array of two pollfd structs.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if rc >= 0 {
            let ready =
                |p: &libc::pollfd| p.revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0;
            return Ok((ready(&fds[0]), ready(&fds[1])));
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}

/// Blocks every asynchronous signal in the calling thread, so that process
/// signals (a profiler's SIGPROF, SIGCHLD, ...) go to the application's
/// threads and never interrupt the handler. Synchronous ones (SIGSEGV,
/// SIGBUS, SIGFPE, SIGILL, SIGTRAP) stay unblocked: blocking them would only
/// turn a crash into a silent hang.
pub(crate) fn block_async_signals() {
    // SAFETY: sigset_t is plain data that sigfillset initialises; the calls
    // only read/write it on our stack.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        for sync in [
            libc::SIGSEGV,
            libc::SIGBUS,
            libc::SIGFPE,
            libc::SIGILL,
            libc::SIGTRAP,
        ] {
            libc::sigdelset(&mut set, sync);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// `vm.max_map_count`, or Linux's default if it cannot be read.
pub(crate) fn max_map_count() -> usize {
    std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(65_530)
}

/// How many VMAs the process has now (lines of `/proc/self/maps`).
pub(crate) fn vma_count() -> io::Result<usize> {
    let maps = std::fs::read("/proc/self/maps")?;
    Ok(maps.iter().filter(|&&b| b == b'\n').count())
}

/// One VMA of `/proc/self/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MapsLine {
    pub(crate) start: u64,
    pub(crate) end: u64,
    /// The path column, empty for anonymous memory.
    pub(crate) path: String,
}

/// The VMAs overlapping `[start, end)`, in address order.
pub(crate) fn vmas_overlapping(start: u64, end: u64) -> io::Result<Vec<MapsLine>> {
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    Ok(maps
        .lines()
        .filter_map(parse_maps_line)
        .filter(|v| v.start < end && start < v.end)
        .collect())
}

/// `start-end perms offset dev inode   path`.
fn parse_maps_line(line: &str) -> Option<MapsLine> {
    let mut cols = line.splitn(6, ' ');
    let (start, end) = cols.next()?.split_once('-')?;
    let path = cols.nth(4).unwrap_or("").trim_start().to_string();
    Some(MapsLine {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines_parse() {
        let l = parse_maps_line("7f00-7f10 rw-p 00000000 00:00 0 ").unwrap();
        assert_eq!((l.start, l.end, l.path.as_str()), (0x7f00, 0x7f10, ""));
        let l =
            parse_maps_line("1000-2000 r--s 00000000 00:01 5   /SYSV00000000 (deleted)").unwrap();
        assert_eq!(l.path, "/SYSV00000000 (deleted)");
        assert_eq!(parse_maps_line("junk"), None);
    }

    #[test]
    fn ioc_new_is_io_0xaa_0() {
        assert_eq!(USERFAULTFD_IOC_NEW, 0xAA00);
    }
}
