//! Entry patching of glibc on x86_64, without a torn instruction.
//!
//! For each [`Site`]: the 5-byte `mov eax, nr` before a `syscall` becomes a
//! `jmp rel32` to a trampoline in a page mapped within ±2 GiB of libc. The
//! trampoline saves the syscall argument registers, calls the hook with
//! them (16-byte aligned, below the red zone), restores them and jumps to
//! the instruction after the `syscall`, where glibc's own code turns the
//! raw result into `errno` (and, for `brk`, `__curbrk`).
//!
//! Why no thread can see a torn patch: the 5 patched bytes are exactly one
//! instruction, so a thread is either before it (and fetches the old or
//! the new bytes — they are written with one 8-byte store that stays inside
//! one cache line, the other 3 bytes rewritten unchanged) or past it (and
//! never comes back to it within this call). Then
//! `membarrier(PRIVATE_EXPEDITED_SYNC_CORE)` makes every core of the
//! process serialise its instruction stream before installation returns:
//! from then on every call goes through the hook (UCX #5855/#11112 tore
//! prologues by writing several instructions non-atomically).

use std::ffi::CString;

use super::sites::{Kind, SITES, Site, parse};
use super::{InstallError, Patched};
use crate::hooks::Args;
use crate::sys::{self, Ret};

/// The trampoline of one site.
const SLOT: usize = 96;

/// Called by every trampoline: `saved` points at the six argument registers
/// as pushed (r9 first), `hook` is the site's hook.
extern "C" fn entry(saved: *const [usize; 6], hook: usize) -> Ret {
    // SAFETY: the trampoline passes its own stack area holding the six
    // pushed registers, valid for the duration of this call.
    let s = unsafe { &*saved };
    let args: Args = [s[5], s[4], s[3], s[2], s[1], s[0]];
    // SAFETY: trampolines are only built with `Site::hook` values.
    let hook: fn(Args) -> Ret = unsafe { std::mem::transmute::<usize, fn(Args) -> Ret>(hook) };
    hook(args)
}

/// Machine code of one trampoline.
fn trampoline(site: &Site, resume: u64) -> Vec<u8> {
    let mut c = Vec::with_capacity(SLOT);
    let aligned = match site.kind {
        Kind::Syscall { aligned } => aligned,
        Kind::Function { replacement } => {
            c.extend_from_slice(&[0x49, 0xbb]); // movabs r11, replacement
            c.extend_from_slice(&(replacement() as u64).to_le_bytes());
            c.extend_from_slice(&[0x41, 0xff, 0xe3]); // jmp r11
            return c;
        }
    };
    c.extend_from_slice(&[0x48, 0x8d, 0x64, 0x24, 0x80]); // lea rsp, [rsp-128]
    c.extend_from_slice(&[0x57, 0x56, 0x52, 0x41, 0x52, 0x41, 0x50, 0x41, 0x51]); // push rdi rsi rdx r10 r8 r9
    c.extend_from_slice(&[0x48, 0x89, 0xe7]); // mov rdi, rsp
    c.extend_from_slice(&[0x48, 0xbe]); // movabs rsi, hook
    c.extend_from_slice(&(site.hook as usize as u64).to_le_bytes());
    if !aligned {
        c.extend_from_slice(&[0x48, 0x83, 0xec, 0x08]); // sub rsp, 8
    }
    c.extend_from_slice(&[0x48, 0xb8]); // movabs rax, entry
    c.extend_from_slice(&(entry as *const () as u64).to_le_bytes());
    c.extend_from_slice(&[0xff, 0xd0]); // call rax
    if !aligned {
        c.extend_from_slice(&[0x48, 0x83, 0xc4, 0x08]); // add rsp, 8
    }
    c.extend_from_slice(&[0x41, 0x59, 0x41, 0x58, 0x41, 0x5a, 0x5a, 0x5e, 0x5f]); // pop r9 r8 r10 rdx rsi rdi
    c.extend_from_slice(&[0x48, 0x8d, 0xa4, 0x24, 0x80, 0x00, 0x00, 0x00]); // lea rsp, [rsp+128]
    c.extend_from_slice(&[0x49, 0xbb]); // movabs r11, resume
    c.extend_from_slice(&resume.to_le_bytes());
    c.extend_from_slice(&[0x41, 0xff, 0xe3]); // jmp r11
    assert!(c.len() <= SLOT, "trampoline fits its slot");
    c
}

/// A site found in this process's libc.
struct Located {
    site: &'static Site,
    /// Address of the patched instruction.
    at: u64,
    /// The 8-byte window the patch is stored with.
    window: u64,
}

/// Finds every site and checks its bytes; refuses on the first mismatch.
fn locate() -> Result<Vec<Located>, InstallError> {
    // SAFETY: dlopen of the already-loaded libc (RTLD_NOLOAD) only returns
    // a handle to it.
    let libc_handle =
        unsafe { libc::dlopen(c"libc.so.6".as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD) };
    if libc_handle.is_null() {
        return Err(InstallError::NoLibc);
    }
    let mut found = Vec::new();
    for site in SITES {
        let name = CString::new(site.symbol).expect("symbol names have no NUL");
        // SAFETY: a symbol lookup in a valid handle.
        let sym = unsafe { libc::dlsym(libc_handle, name.as_ptr()) } as u64;
        if sym == 0 {
            return Err(InstallError::Missing(site.symbol));
        }
        let pattern = parse(site.pattern);
        // SAFETY: libc's text is mapped and readable for the pattern's
        // length (the function is at least that long in the build the
        // pattern describes; a shorter one differs in its first bytes,
        // which are compared first).
        let actual: Vec<u8> = (0..pattern.len())
            .map(|i| unsafe { *((sym + i as u64) as *const u8) })
            .collect();
        let matches = pattern
            .iter()
            .zip(&actual)
            .all(|(p, a)| p.is_none_or(|p| p == *a));
        if !matches {
            let owner = super::foreign::jump_target(sym, &actual)
                .and_then(super::foreign::owner_of)
                .map(|o| o.to_string_lossy().into_owned());
            return Err(InstallError::foreign(site.symbol, &actual).with_owner(owner));
        }
        let at = sym + site.offset() as u64;
        let window = window(at).ok_or(InstallError::Straddles(site.symbol))?;
        found.push(Located { site, at, window });
    }
    // SAFETY: drops the reference dlopen took.
    unsafe { libc::dlclose(libc_handle) };
    let loader = super::ldso::locate()?;
    for (f, start) in super::ldso::LOADER_FUNCTIONS.iter().zip(loader) {
        let at = start + f.site.offset() as u64;
        let window = window(at).ok_or(InstallError::Straddles(f.site.symbol))?;
        found.push(Located {
            site: &f.site,
            at,
            window,
        });
    }
    Ok(found)
}

/// Maps one page within ±2 GiB of every site.
fn trampoline_page(sites: &[Located]) -> Result<u64, InstallError> {
    let lo = sites.iter().map(|s| s.at).min().expect("sites");
    let hi = sites.iter().map(|s| s.at).max().expect("sites");
    let page = sys::page_size();
    let reach = (1u64 << 31) - 2 * page;
    for step in 1..=32768u64 {
        for candidate in [
            sys::page_down(lo).checked_sub(step * 16 * page),
            sys::page_up(hi).checked_add(step * 16 * page),
        ]
        .into_iter()
        .flatten()
        {
            if candidate.abs_diff(lo) > reach || candidate.abs_diff(hi) > reach {
                continue;
            }
            // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping.
            let ret = unsafe {
                sys::syscall6(
                    libc::SYS_mmap as usize,
                    [
                        candidate as usize,
                        page as usize,
                        (libc::PROT_READ | libc::PROT_WRITE) as usize,
                        (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE)
                            as usize,
                        usize::MAX,
                        0,
                    ],
                )
            };
            if !sys::is_err(ret) && ret as u64 == candidate {
                return Ok(candidate);
            }
        }
    }
    Err(InstallError::NoTrampolineSpace)
}

fn mprotect(addr: u64, len: u64, prot: i32) -> Result<(), InstallError> {
    // SAFETY: changes the protection of libc text or our trampoline page,
    // never removing execute permission from code that may be running.
    let ret = unsafe {
        sys::syscall6(
            libc::SYS_mprotect as usize,
            [addr as usize, len as usize, prot as usize, 0, 0, 0],
        )
    };
    if sys::is_err(ret) {
        return Err(InstallError::Protect(-ret as i32));
    }
    Ok(())
}

/// The 8-byte window holding the 5 patched bytes inside one cache line:
/// 8-aligned when possible; `None` if the 5 bytes straddle two lines.
fn window(at: u64) -> Option<u64> {
    let aligned = at & !7;
    if at + 5 <= aligned + 8 {
        return Some(aligned);
    }
    (at.saturating_sub(3)..=at).find(|w| w / 64 == (w + 7) / 64)
}

/// Writes `jmp rel32` to `target` over the 5 bytes at `at` with one store
/// to the 8 bytes at `w`.
fn write_jump(at: u64, w: u64, target: u64) -> Result<(), InstallError> {
    let rel = target as i64 - (at as i64 + 5);
    let rel = i32::try_from(rel).map_err(|_| InstallError::NoTrampolineSpace)?;
    // SAFETY: reads 8 bytes of mapped libc text.
    let old = unsafe { std::ptr::read_unaligned(w as *const u64) };
    let mut bytes = old.to_le_bytes();
    let off = (at - w) as usize;
    bytes[off] = 0xe9;
    bytes[off + 1..off + 5].copy_from_slice(&rel.to_le_bytes());
    let new = u64::from_le_bytes(bytes);
    let page = sys::page_down(w);
    let rwx = libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC;
    mprotect(page, sys::page_size(), rwx)?;
    // SAFETY: one 8-byte `mov` to memory that is now writable; the window
    // lies in one cache line, so the store is atomic for every fetching
    // core (Intel SDM vol. 3 §9.1.1, AMD APM vol. 2 §7.3.2).
    unsafe {
        core::arch::asm!(
            "mov qword ptr [{addr}], {val}",
            addr = in(reg) w,
            val = in(reg) new,
            options(nostack, preserves_flags),
        );
    }
    mprotect(page, sys::page_size(), libc::PROT_READ | libc::PROT_EXEC)
}

const MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE: usize = 1 << 5;
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE: usize = 1 << 6;

fn membarrier(cmd: usize) -> Result<(), InstallError> {
    // SAFETY: membarrier has no memory arguments.
    let ret = unsafe { sys::syscall6(libc::SYS_membarrier as usize, [cmd, 0, 0, 0, 0, 0]) };
    if sys::is_err(ret) {
        return Err(InstallError::Membarrier(-ret as i32));
    }
    Ok(())
}

/// Patches every site, or none.
pub fn install() -> Result<Patched, InstallError> {
    let sites = locate()?;
    membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE)?;
    let page = trampoline_page(&sites)?;
    for s in &sites {
        if s.site.symbol == "clone" {
            // The clone hook's child jumps there itself (`fork_calls`).
            crate::fork_calls::set_clone_resume(s.at + 7);
        }
    }
    for (i, s) in sites.iter().enumerate() {
        let code = trampoline(s.site, s.at + 7);
        let slot = page + (i * SLOT) as u64;
        // SAFETY: our own fresh RW page, large enough for every slot.
        unsafe {
            std::ptr::copy_nonoverlapping(code.as_ptr(), slot as *mut u8, code.len());
        }
    }
    mprotect(page, sys::page_size(), libc::PROT_READ | libc::PROT_EXEC)?;
    for (i, s) in sites.iter().enumerate() {
        write_jump(s.at, s.window, page + (i * SLOT) as u64)?;
    }
    membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE)?;
    super::foreign::record(sites.iter().enumerate().map(|(i, s)| {
        let target = page + (i * SLOT) as u64;
        let rel = (target as i64 - (s.at as i64 + 5)) as i32;
        let r = rel.to_le_bytes();
        (s.site.symbol, s.at, [0xe9, r[0], r[1], r[2], r[3]])
    }));
    super::foreign::prefer_ucx_reloc_mode();
    Ok(Patched {
        functions: sites.iter().map(|s| s.site.symbol).collect(),
        trampolines: page,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_stay_in_one_cache_line_and_cover_the_jump() {
        for at in 0x1000u64..0x1100 {
            let Some(w) = window(at) else {
                assert!(at % 64 > 59, "{at:#x} has a window");
                continue;
            };
            assert!(w <= at && at + 5 <= w + 8, "{at:#x}");
            assert_eq!(w / 64, (w + 7) / 64, "{at:#x}");
        }
        assert_eq!(window(0x103c), None, "5 bytes across a line boundary");
    }
}
