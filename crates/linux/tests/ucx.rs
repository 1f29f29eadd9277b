//! Beside the real UCX memory hooks (Debian's `libucx0`: `libucm` patches
//! libc when `libucs` loads). Three orders, each in a fresh process:
//!
//! 1. UCX first, in its `bistro` (code patching) mode: installation refuses
//!    and names `libucm` and the way out; libc is left as UCX made it.
//! 2. mmun first, mode unset: installation asked UCX for its `reloc` mode,
//!    so UCX patches nothing of ours and both see a `munmap`.
//! 3. mmun first, `bistro` forced: UCX overwrites our hooks anyway; the
//!    hooked `mprotect` it uses notices, and `patch::foreign::overwritten`
//!    and a line on standard error name the functions and `libucm`.
//!
//! Skips (with a message) where `libucs.so.0` is not installed (`.ci/run`
//! installs `libucx0`).

mod common;

use std::ffi::{CStr, c_void};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicU64, Ordering};

use mmun_core::{Event, IntervalNotifier, IntervalNotifierOps, IntervalSub, Range, Seq};
use mmun_linux::patch::InstallError;

const ROLE: &str = "MMUN_UCX_ROLE";
const MODE: &str = "UCX_MEM_MMAP_HOOK_MODE";

fn main() -> ExitCode {
    match std::env::var(ROLE).as_deref() {
        Ok("ucx-first") => verdict(ucx_first()),
        Ok("mmun-first") => verdict(mmun_first_cooperates()),
        Ok("mmun-first-bistro") => verdict(mmun_first_bistro_forced()),
        _ => run_all(),
    }
}

fn verdict(result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("FAILED: {why}");
            ExitCode::FAILURE
        }
    }
}

fn run_all() -> ExitCode {
    if open(c"libucs.so.0", libc::RTLD_LAZY).is_none() {
        println!("ucx: SKIPPED: libucs.so.0 is not installed (Debian: libucx0)");
        return ExitCode::SUCCESS;
    }
    let mut failed = false;
    for (role, mode) in [
        ("ucx-first", Some("bistro")),
        ("mmun-first", None),
        ("mmun-first-bistro", Some("bistro")),
    ] {
        let mut cmd = Command::new(std::env::current_exe().expect("own path"));
        cmd.env(ROLE, role).env_remove(MODE);
        if let Some(mode) = mode {
            cmd.env(MODE, mode);
        }
        let out = cmd.output().expect("run a scenario");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let ok = out.status.success() && (role != "mmun-first-bistro" || announced(&stderr));
        println!("ucx {role}: {}", if ok { "ok" } else { "FAILED" });
        if !ok {
            println!("--- stderr of {role} ---\n{stderr}");
            failed = true;
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The one-line warning of `patch::foreign`.
fn announced(stderr: &str) -> bool {
    stderr
        .lines()
        .any(|l| l.contains("replaced mmun's hook of `munmap`") && l.contains("libucm"))
}

fn open(name: &CStr, flags: i32) -> Option<*mut c_void> {
    // SAFETY: dlopen with a NUL-terminated name.
    let h = unsafe { libc::dlopen(name.as_ptr(), flags) };
    (!h.is_null()).then_some(h)
}

type UcmCallback = extern "C" fn(event_type: i32, event: *mut c_void, arg: *mut c_void);
type SetEventHandler = unsafe extern "C" fn(i32, i32, UcmCallback, *mut c_void) -> i8;

/// `UCM_EVENT_VM_UNMAPPED`: what a registration cache subscribes to.
const UCM_EVENT_VM_UNMAPPED: i32 = 1 << 17;

static UCM_EVENTS: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_ucm_event(_type: i32, _event: *mut c_void, _arg: *mut c_void) {
    UCM_EVENTS.fetch_add(1, Ordering::SeqCst);
}

/// Loads UCX (libucm's constructor patches in bistro mode) and subscribes
/// to its unmap events, as UCX's registration cache does.
fn load_ucx() -> Result<(), String> {
    open(c"libucs.so.0", libc::RTLD_NOW | libc::RTLD_GLOBAL).ok_or("dlopen libucs.so.0")?;
    let ucm = open(c"libucm.so.0", libc::RTLD_NOW).ok_or("dlopen libucm.so.0")?;
    // SAFETY: a symbol lookup in a valid handle.
    let sym = unsafe { libc::dlsym(ucm, c"ucm_set_event_handler".as_ptr()) };
    if sym.is_null() {
        return Err("libucm lacks ucm_set_event_handler".into());
    }
    // SAFETY: ucm.h's `ucs_status_t ucm_set_event_handler(int events,
    // int priority, ucm_event_callback_t cb, void *arg)`.
    let set: SetEventHandler = unsafe { std::mem::transmute(sym) };
    // SAFETY: a static callback that only counts.
    let status = unsafe { set(UCM_EVENT_VM_UNMAPPED, 0, on_ucm_event, std::ptr::null_mut()) };
    if status != 0 {
        return Err(format!("ucm_set_event_handler: status {status}"));
    }
    Ok(())
}

fn munmap_entry() -> [u8; 5] {
    // SAFETY: reads the first bytes of libc's munmap.
    unsafe {
        let f = libc::dlsym(libc::RTLD_DEFAULT, c"munmap".as_ptr());
        std::ptr::read(f as *const [u8; 5])
    }
}

fn ucx_first() -> Result<(), String> {
    load_ucx()?;
    let before = munmap_entry();
    if before[0] != 0xe9 {
        return Err(format!(
            "UCX in bistro mode did not patch munmap: {before:02x?}"
        ));
    }
    match mmun_linux::install() {
        Err(e @ InstallError::Foreign { owner, .. }) => {
            let message = e.to_string();
            let owner = owner.as_deref().unwrap_or("");
            if !owner.contains("libucm") {
                return Err(format!("the refusal does not name libucm: {message}"));
            }
            if !message.contains("UCX_MEM_MMAP_HOOK_MODE=reloc") {
                return Err(format!("the refusal gives no way out: {message}"));
            }
        }
        other => return Err(format!("expected a refusal, got {other:?}")),
    }
    if munmap_entry() != before {
        return Err("the refusal changed UCX's patch".into());
    }
    Ok(())
}

#[derive(Default)]
struct Unmaps(AtomicU64);

impl IntervalNotifierOps for Unmaps {
    fn invalidate(&self, sub: &IntervalSub, range: &Range<'_>, cur_seq: Seq) -> bool {
        sub.set_seq(cur_seq);
        if range.event() == Event::Unmap && !range.is_late() {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        true
    }
}

fn mmun_first_cooperates() -> Result<(), String> {
    mmun_linux::install().map_err(|e| format!("install: {e}"))?;
    if std::env::var(MODE).as_deref() != Ok("reloc") {
        return Err(format!(
            "installation did not ask UCX for reloc mode: {:?}",
            std::env::var(MODE)
        ));
    }
    let ours = munmap_entry();
    load_ucx()?;
    if munmap_entry() != ours {
        return Err("UCX patched over our hook in reloc mode".into());
    }
    let len = 16 * 4096;
    let p = common::anon(len / common::PAGE, 0) as u64;
    let sub = IntervalNotifier::insert(mmun_linux::process_mm(), p, len as u64, Unmaps::default())
        .map_err(|e| format!("insert: {e}"))?;
    let ucm_before = UCM_EVENTS.load(Ordering::SeqCst);
    // SAFETY: unmaps our own mapping through libc (UCX's GOT hook, then
    // libc's patched system call).
    if unsafe { libc::munmap(p as *mut c_void, len) } != 0 {
        return Err("munmap failed".into());
    }
    let (mmun, ucx) = (
        sub.ops().0.load(Ordering::SeqCst),
        UCM_EVENTS.load(Ordering::SeqCst),
    );
    if mmun != 1 || ucx <= ucm_before {
        return Err(format!(
            "one munmap: mmun saw {mmun}, UCX saw {}",
            ucx - ucm_before
        ));
    }
    let replaced = mmun_linux::patch::foreign::overwritten();
    if !replaced.is_empty() {
        return Err(format!("hooks replaced in reloc mode: {replaced:?}"));
    }
    Ok(())
}

fn mmun_first_bistro_forced() -> Result<(), String> {
    mmun_linux::install().map_err(|e| format!("install: {e}"))?;
    if std::env::var(MODE).as_deref() != Ok("bistro") {
        return Err("installation overrode the user's UCX mode".into());
    }
    load_ucx()?;
    // Noticed by the hooked mprotect UCX made libc text writable with,
    // before anyone asks.
    let noticed = mmun_linux::patch::foreign::noticed();
    if !noticed.contains(&"munmap") {
        return Err(format!("the mprotect hook noticed only {noticed:?}"));
    }
    let replaced = mmun_linux::patch::foreign::overwritten();
    let munmap = replaced.iter().find(|o| o.function == "munmap");
    match munmap {
        Some(o) if o.owner.as_deref().is_some_and(|p| p.contains("libucm")) => Ok(()),
        _ => Err(format!("UCX's overwrite was not noticed: {replaced:?}")),
    }
}
