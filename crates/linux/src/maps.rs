//! `/proc/self/maps`, read without allocating: hooks consult it (inside
//! libc calls, possibly under malloc's locks) for the VMAs of a mapped file
//! (`ftruncate`, `fallocate`), of a SysV segment (`shmdt`) and for fork's
//! private writable VMAs.
//!
//! The file is read with raw system calls into a buffer on the stack and
//! parsed line by line; a line longer than the buffer keeps its fields and
//! loses the tail of its path, which only matters for the `/SYSV` prefix.

use std::ops::ControlFlow;

use crate::sys;

/// One line of `/proc/self/maps`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vma {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// `r`, `w`, `x` and `p`/`s`.
    pub perms: [u8; 4],
    /// File offset of `start`.
    pub offset: u64,
    /// Device of the backing file (`major:minor`, as `makedev` builds it).
    pub dev: u64,
    /// Inode of the backing file; 0 for anonymous memory.
    pub inode: u64,
    /// The path starts with `/SYSV` (a System V shared memory segment).
    pub sysv: bool,
}

impl Vma {
    /// Writable and private.
    pub fn is_private_writable(&self) -> bool {
        self.perms[1] == b'w' && self.perms[3] == b'p'
    }

    /// What fork write-protects in the parent: a private (COW) mapping,
    /// Linux's `is_cow_mapping` (`MAP_PRIVATE` always has `VM_MAYWRITE`),
    /// that is writable or, read-only, holds anonymous pages — a RELRO
    /// region made read-only after relocation (seen by `mmun trace
    /// --verify-with-kernel` on bash), memory written before
    /// `mprotect(PROT_READ)`.
    pub fn is_cow_mapping(&self) -> bool {
        self.perms[3] == b'p'
            && (self.perms[1] == b'w' || crate::anon::has_anon_pages(self.start, self.end))
    }
}

const BUF: usize = 4096;

/// Calls `f` with every VMA of the process, in address order, until it
/// breaks. Returns the raw error of `open`/`read` if reading failed.
pub fn for_each_vma(mut f: impl FnMut(&Vma) -> ControlFlow<()>) -> Result<(), sys::Ret> {
    let path = c"/proc/self/maps";
    // SAFETY: openat with a NUL-terminated path we own.
    let fd = unsafe {
        sys::syscall6(
            libc::SYS_openat as usize,
            [
                libc::AT_FDCWD as usize,
                path.as_ptr() as usize,
                (libc::O_RDONLY | libc::O_CLOEXEC) as usize,
                0,
                0,
                0,
            ],
        )
    };
    if sys::is_err(fd) {
        return Err(fd);
    }
    let result = read_lines(fd as usize, &mut f);
    // SAFETY: closes the descriptor opened above.
    unsafe { sys::syscall6(libc::SYS_close as usize, [fd as usize, 0, 0, 0, 0, 0]) };
    result
}

fn read_lines(fd: usize, f: &mut impl FnMut(&Vma) -> ControlFlow<()>) -> Result<(), sys::Ret> {
    let mut buf = [0u8; BUF];
    let mut filled = 0;
    // Inside the tail of a line longer than the buffer, already reported.
    let mut skipping = false;
    loop {
        // SAFETY: reads into the unused tail of our own buffer.
        let n = unsafe {
            sys::syscall6(
                libc::SYS_read as usize,
                [
                    fd,
                    buf.as_mut_ptr() as usize + filled,
                    BUF - filled,
                    0,
                    0,
                    0,
                ],
            )
        };
        if sys::is_err(n) {
            return Err(n);
        }
        let eof = n == 0;
        filled += n as usize;
        let mut consumed = 0;
        if skipping {
            match buf[..filled].iter().position(|&b| b == b'\n') {
                Some(nl) => {
                    consumed = nl + 1;
                    skipping = false;
                }
                None => {
                    filled = 0;
                    if eof {
                        return Ok(());
                    }
                    continue;
                }
            }
        }
        while let Some(nl) = buf[consumed..filled].iter().position(|&b| b == b'\n') {
            if let Some(vma) = parse_line(&buf[consumed..consumed + nl])
                && f(&vma).is_break()
            {
                return Ok(());
            }
            consumed += nl + 1;
        }
        if eof {
            if consumed < filled
                && let Some(vma) = parse_line(&buf[consumed..filled])
            {
                let _ = f(&vma);
            }
            return Ok(());
        }
        if consumed == 0 && filled == BUF {
            // One line longer than the buffer (a very long path): parse
            // what we have, then skip to its end.
            if let Some(vma) = parse_line(&buf[..filled])
                && f(&vma).is_break()
            {
                return Ok(());
            }
            filled = 0;
            skipping = true;
            continue;
        }
        buf.copy_within(consumed..filled, 0);
        filled -= consumed;
    }
}

/// Parses `start-end perms offset major:minor inode [path]`.
pub fn parse_line(line: &[u8]) -> Option<Vma> {
    let mut fields = line.split(|&b| b == b' ').filter(|f| !f.is_empty());
    let range = fields.next()?;
    let dash = range.iter().position(|&b| b == b'-')?;
    let start = hex(&range[..dash])?;
    let end = hex(&range[dash + 1..])?;
    let perms: [u8; 4] = fields.next()?.try_into().ok()?;
    let offset = hex(fields.next()?)?;
    let dev_field = fields.next()?;
    let colon = dev_field.iter().position(|&b| b == b':')?;
    let major = hex(&dev_field[..colon])?;
    let minor = hex(&dev_field[colon + 1..])?;
    let inode = dec(fields.next()?)?;
    let sysv = fields.next().is_some_and(|p| p.starts_with(b"/SYSV"));
    Some(Vma {
        start,
        end,
        perms,
        offset,
        dev: libc::makedev(major as u32, minor as u32),
        inode,
        sysv,
    })
}

fn hex(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 16 {
        return None;
    }
    s.iter().try_fold(0u64, |acc, &b| {
        let d = (b as char).to_digit(16)?;
        Some(acc << 4 | u64::from(d))
    })
}

fn dec(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0u64, |acc, &b| {
        let d = (b as char).to_digit(10)?;
        acc.checked_mul(10)?.checked_add(u64::from(d))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_anonymous_file_and_sysv_lines() {
        let anon = parse_line(b"7f0000000000-7f0000010000 rw-p 00000000 00:00 0 ").unwrap();
        assert_eq!(
            (anon.start, anon.end, anon.inode),
            (0x7f00_0000_0000, 0x7f00_0001_0000, 0)
        );
        assert!(anon.is_private_writable());
        let file =
            parse_line(b"55d0a000-55d0b000 r--s 00003000 fd:01 1234567   /usr/lib/x").unwrap();
        assert_eq!(
            (file.offset, file.inode, file.dev),
            (0x3000, 1_234_567, libc::makedev(0xfd, 1))
        );
        assert!(!file.is_private_writable());
        let shm = parse_line(b"7f1-7f2 rw-s 00000000 00:01 98   /SYSV00000000 (deleted)").unwrap();
        assert!(shm.sysv);
        assert_eq!(parse_line(b"garbage line"), None);
        assert_eq!(parse_line(b"/a/very/long/path/tail"), None);
    }

    #[test]
    fn finds_a_fresh_mapping() {
        let len = 3 * 4096;
        // SAFETY: a fresh anonymous mapping, unmapped below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let addr = p as u64;
        let mut found = None;
        for_each_vma(|v| {
            if v.start <= addr && addr < v.end {
                found = Some(*v);
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        })
        .unwrap();
        // SAFETY: unmaps the mapping made above.
        unsafe { libc::munmap(p, len) };
        let vma = found.expect("the new mapping is listed");
        assert_eq!(&vma.perms, b"r--p");
        assert!(vma.end >= addr + len as u64);
    }
}
