//! The dynamic loader's own system calls: `ld.so` maps, protects and
//! unmaps the objects it loads (`dlopen`, `dlclose`) with private copies of
//! `mmap`, `mprotect` and `munmap` that libc's patch does not reach.
//!
//! `ld.so` exports no symbol for them, so they are found without guessing
//! instruction boundaries: the loader's `.eh_frame_hdr` lists every
//! function's start, each FDE its length, and a function is one of ours
//! only if its *whole* body is the exact byte pattern of glibc 2.36's rtld
//! `__mmap64`, `__munmap` or `__mprotect` (only `rtld_errno`'s rel32
//! displacements are wildcards). Each must be found exactly once, or the
//! installation is refused. Inside a matched function the instruction
//! boundaries are the pattern's, so the `mov eax, nr` before the `syscall`
//! is patched as in libc. Read with `objdump -d
//! /lib64/ld-linux-x86-64.so.2` and `readelf --debug-dump=frames`.

use super::InstallError;
use super::sites::{Kind, Site, parse};
use crate::hooks;

/// One loader function: its whole body, and the site inside it.
pub struct LoaderFunction {
    /// The function's complete bytes (its FDE's range).
    pub body: &'static str,
    /// The site: `pattern` is the body's prefix through the `syscall`.
    pub site: Site,
    /// The refusal when no function has this body.
    pub not_found: &'static str,
    /// The refusal when several do.
    pub twice: &'static str,
}

/// glibc 2.36's rtld copies (Debian 12, x86_64).
pub static LOADER_FUNCTIONS: [LoaderFunction; 3] = [
    LoaderFunction {
        // mov r10d, ecx; test r9d, 0xfff; jne einval; mov eax, 9; syscall;
        // cmp rax, -4096; ja err; ret; nop; einval: mov [rtld_errno], 22;
        // mov rax, -1; ret; nop; err: neg eax; mov [rtld_errno], eax;
        // mov rax, -1; ret
        body: "41 89 ca 41 f7 c1 ff 0f 00 00 75 14 b8 09 00 00 00 0f 05 \
               48 3d 00 f0 ff ff 77 1d c3 0f 1f 40 00 \
               c7 05 ?? ?? ?? ?? 16 00 00 00 48 c7 c0 ff ff ff ff c3 \
               66 0f 1f 44 00 00 f7 d8 89 05 ?? ?? ?? ?? \
               48 c7 c0 ff ff ff ff c3",
        site: Site {
            symbol: "ld.so __mmap64",
            pattern: "41 89 ca 41 f7 c1 ff 0f 00 00 75 14 b8 09 00 00 00 0f 05",
            kind: Kind::Syscall { aligned: false },
            hook: hooks::mmap,
        },
        not_found: "no function is rtld's __mmap64",
        twice: "several functions look like rtld's __mmap64",
    },
    LoaderFunction {
        // mov eax, 11; syscall; cmp rax, -4095; jae err; ret;
        // err: lea rcx, [rtld_errno]; neg eax; mov [rcx], eax; or rax, -1; ret
        body: "b8 0b 00 00 00 0f 05 48 3d 01 f0 ff ff 73 01 c3 \
               48 8d 0d ?? ?? ?? ?? f7 d8 89 01 48 83 c8 ff c3",
        site: Site {
            symbol: "ld.so __munmap",
            pattern: "b8 0b 00 00 00 0f 05",
            kind: Kind::Syscall { aligned: false },
            hook: hooks::munmap,
        },
        not_found: "no function is rtld's __munmap",
        twice: "several functions look like rtld's __munmap",
    },
    LoaderFunction {
        // as __munmap, with mov eax, 10
        body: "b8 0a 00 00 00 0f 05 48 3d 01 f0 ff ff 73 01 c3 \
               48 8d 0d ?? ?? ?? ?? f7 d8 89 01 48 83 c8 ff c3",
        site: Site {
            symbol: "ld.so __mprotect",
            pattern: "b8 0a 00 00 00 0f 05",
            kind: Kind::Syscall { aligned: false },
            hook: hooks::mprotect,
        },
        not_found: "no function is rtld's __mprotect",
        twice: "several functions look like rtld's __mprotect",
    },
];

/// Where each of [`LOADER_FUNCTIONS`] starts in this process, in order.
pub fn locate() -> Result<[u64; 3], InstallError> {
    let hdr = eh_frame_hdr().ok_or(InstallError::Loader("no PT_GNU_EH_FRAME"))?;
    let functions = functions(hdr).ok_or(InstallError::Loader(
        ".eh_frame_hdr not in the encoding GNU ld writes (datarel sdata4 table, zR CIEs)",
    ))?;
    let mut found = [0u64; 3];
    for (slot, f) in found.iter_mut().zip(&LOADER_FUNCTIONS) {
        let body = parse(f.body);
        let mut hits = functions
            .iter()
            .filter(|&&(start, len)| len == body.len() as u64 && matches(start, &body));
        *slot = match (hits.next(), hits.next()) {
            (Some(&(start, _)), None) => start,
            (None, _) => return Err(InstallError::Loader(f.not_found)),
            (Some(_), Some(_)) => return Err(InstallError::Loader(f.twice)),
        };
    }
    Ok(found)
}

fn matches(start: u64, body: &[Option<u8>]) -> bool {
    body.iter().enumerate().all(|(i, b)| {
        // SAFETY: `[start, start + len)` is a function of the loader's
        // mapped text, as its FDE says, and `len == body.len()`.
        let actual = unsafe { *((start + i as u64) as *const u8) };
        b.is_none_or(|b| b == actual)
    })
}

/// The address of the loader's `.eh_frame_hdr` (its `PT_GNU_EH_FRAME`).
/// The loader is the object loaded at `AT_BASE`, or the program itself
/// when it was run as `ld.so PROGRAM` (`AT_BASE` is then 0).
fn eh_frame_hdr() -> Option<u64> {
    struct Search {
        base: u64,
        hdr: Option<u64>,
    }
    extern "C" fn visit(
        info: *mut libc::dl_phdr_info,
        _size: usize,
        data: *mut libc::c_void,
    ) -> i32 {
        // SAFETY: dl_iterate_phdr passes a valid info and our `Search`.
        let (info, search) = unsafe { (&*info, &mut *data.cast::<Search>()) };
        let first = search.hdr.is_none() && search.base == 0;
        if info.dlpi_addr != search.base && !first {
            return 0;
        }
        // SAFETY: dlpi_phdr points at dlpi_phnum program headers.
        let phdrs = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum.into()) };
        search.hdr = phdrs
            .iter()
            .find(|p| p.p_type == libc::PT_GNU_EH_FRAME)
            .map(|p| info.dlpi_addr + p.p_vaddr);
        1
    }
    // SAFETY: getauxval has no preconditions.
    let base = unsafe { libc::getauxval(libc::AT_BASE) };
    let mut search = Search { base, hdr: None };
    // SAFETY: the callback only reads the headers it is given.
    unsafe { libc::dl_iterate_phdr(Some(visit), (&raw mut search).cast()) };
    search.hdr
}

/// Reads `N` bytes at `addr` (mapped loader data).
fn read<const N: usize>(addr: u64) -> [u8; N] {
    // SAFETY: callers only read inside the loader's mapped
    // `.eh_frame_hdr` and `.eh_frame`, whose extents the headers give.
    unsafe { std::ptr::read_unaligned(addr as *const [u8; N]) }
}

fn i32_at(addr: u64) -> i64 {
    i64::from(i32::from_le_bytes(read(addr)))
}

fn u32_at(addr: u64) -> u64 {
    u64::from(u32::from_le_bytes(read(addr)))
}

/// Every function (start, length) the search table lists, or `None` if an
/// encoding is not the one GNU ld writes for x86_64.
fn functions(hdr: u64) -> Option<Vec<(u64, u64)>> {
    let [version, frame_enc, count_enc, table_enc] = read::<4>(hdr);
    // version 1; eh_frame_ptr pcrel|sdata4; count udata4; table datarel|sdata4
    if (version, frame_enc, count_enc, table_enc) != (1, 0x1b, 0x03, 0x3b) {
        return None;
    }
    let count = u32_at(hdr + 8);
    let mut out = Vec::with_capacity(count as usize);
    for i in 0..count {
        let entry = hdr + 12 + 8 * i;
        let start = hdr.wrapping_add_signed(i32_at(entry));
        let fde = hdr.wrapping_add_signed(i32_at(entry + 4));
        out.push((start, fde_length(fde, start)?));
    }
    Some(out)
}

/// The `pc_range` of the FDE at `fde`, checked against the table's start.
fn fde_length(fde: u64, start: u64) -> Option<u64> {
    if u32_at(fde) == 0xffff_ffff {
        return None; // 64-bit DWARF: not what GNU ld writes here
    }
    let cie = (fde + 4).checked_sub(u32_at(fde + 4))?;
    if cie_fde_encoding(cie)? != 0x1b {
        return None;
    }
    let pc_begin = (fde + 8).wrapping_add_signed(i32_at(fde + 8));
    (pc_begin == start).then(|| u32_at(fde + 12))
}

/// The FDE pointer encoding of a CIE with augmentation `zR` or `zRS`
/// (`S`: a signal frame, `__restore_rt`; it carries no data).
fn cie_fde_encoding(cie: u64) -> Option<u8> {
    if u32_at(cie + 4) != 0 {
        return None; // not a CIE
    }
    let version = read::<1>(cie + 8)[0];
    let augmentation = read::<4>(cie + 9);
    let len = match augmentation {
        [b'z', b'R', 0, _] => 3,
        [b'z', b'R', b'S', 0] => 4,
        _ => return None,
    };
    if !(version == 1 || version == 3) {
        return None;
    }
    let mut at = cie + 9 + len;
    leb(&mut at); // code alignment
    leb(&mut at); // data alignment
    if version == 1 {
        at += 1; // return register, one byte
    } else {
        leb(&mut at);
    }
    leb(&mut at); // augmentation data length
    Some(read::<1>(at)[0])
}

/// Skips one (U/S)LEB128 value.
fn leb(at: &mut u64) {
    while read::<1>(*at)[0] & 0x80 != 0 {
        *at += 1;
    }
    *at += 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_site_is_the_prefix_of_its_body_through_the_syscall() {
        for f in &LOADER_FUNCTIONS {
            let (body, site) = (parse(f.body), parse(f.site.pattern));
            assert_eq!(&body[..site.len()], &site[..], "{}", f.site.symbol);
            assert_eq!(&site[site.len() - 2..], &[Some(0x0f), Some(0x05)]);
            assert_eq!(site[site.len() - 7], Some(0xb8));
        }
    }

    #[test]
    fn a_body_matches_only_byte_for_byte_outside_its_wildcards() {
        let body = parse(LOADER_FUNCTIONS[1].body);
        let mut bytes: Vec<u8> = body.iter().map(|b| b.unwrap_or(0x42)).collect();
        assert!(matches(bytes.as_ptr() as u64, &body));
        let wildcard = body.iter().position(Option::is_none).unwrap();
        bytes[wildcard] ^= 0xff;
        assert!(
            matches(bytes.as_ptr() as u64, &body),
            "rel32 bytes are free"
        );
        for i in (0..body.len()).filter(|&i| body[i].is_some()) {
            bytes[i] ^= 0x01;
            assert!(!matches(bytes.as_ptr() as u64, &body), "byte {i} changed");
            bytes[i] ^= 0x01;
        }
    }

    #[test]
    fn this_machines_loader_has_each_function_exactly_once() {
        let found = locate().expect("glibc 2.36's ld.so");
        assert_eq!(found.len(), 3);
        assert!(found.iter().all(|&a| a != 0));
    }
}
