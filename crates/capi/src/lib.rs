//! `libmmun.so` / `libmmun.a`: the C API of `include/mmun.h` over
//! `mmun-linux`'s process address space.
//!
//! The header is the reference: every exported function is documented
//! there, with its error codes, and the README's "C API" section shows the
//! build and install. This crate's rules, in one place:
//!
//! * **One object per process.** The same shared object is `libmmun.so`
//!   and `libmmun_preload.so` (a symlink), so a program linked with
//!   `-lmmun` and run with `LD_PRELOAD=libmmun_preload.so` loads it once
//!   (the dynamic loader matches the file and the soname) and has one
//!   address space ([`mmun_linux::process_mm`]) and one set of hooks. A
//!   second, different copy (a static `libmmun.a` beside a loaded
//!   `libmmun.so`) finds the first one's `mmun_version` and stays inert
//!   (`mmun_install` returns `-EEXIST`).
//! * **No unwinding across the boundary.** Every entry point runs its body
//!   under `catch_unwind` (`entry::guarded`); the rules the Rust API
//!   enforces with a panic (waiting for one's own invalidation) are checked
//!   first and returned as `-EDEADLK`.
//! * **Handles are numbers** (`registry`): a removed or made-up handle is
//!   `-EINVAL`, never a dereference.
//! * **Callbacks run inside the hooked call**, possibly inside `malloc` or
//!   `free`: the trampolines here allocate nothing.

pub mod entry;
pub mod interval;
pub mod list;
pub mod range;
pub mod rcache;
pub(crate) mod registry;

use std::ffi::{CString, c_char, c_int, c_uint};
use std::sync::{Once, OnceLock};

/// `MMUN_VERSION_NUMBER(major, minor, patch)` of this build (the package
/// version).
pub const VERSION: c_uint = version_number();

const fn parse(s: &str) -> c_uint {
    let bytes = s.as_bytes();
    let mut value = 0;
    let mut i = 0;
    while i < bytes.len() {
        value = value * 10 + (bytes[i] - b'0') as c_uint;
        i += 1;
    }
    value
}

const fn version_number() -> c_uint {
    parse(env!("CARGO_PKG_VERSION_MAJOR")) << 16
        | parse(env!("CARGO_PKG_VERSION_MINOR")) << 8
        | parse(env!("CARGO_PKG_VERSION_PATCH"))
}

/// The library's version; see `mmun.h`.
#[unsafe(no_mangle)]
pub extern "C" fn mmun_version() -> c_uint {
    VERSION
}

/// What the first `mmun_install` concluded.
static INSTALL: OnceLock<(c_int, Option<CString>)> = OnceLock::new();

/// Installs the hooks once; see `mmun.h`.
#[unsafe(no_mangle)]
pub extern "C" fn mmun_install() -> c_int {
    entry::guarded(|| INSTALL.get_or_init(install).0)
}

fn install() -> (c_int, Option<CString>) {
    if another_copy_is_loaded() {
        let why = "another copy of libmmun is loaded in this process and owns the hooks";
        return (-libc::EEXIST, CString::new(why).ok());
    }
    register_fork_handlers();
    match mmun_linux::install() {
        Ok(_) => (0, None),
        Err(e) => (-libc::ENOTSUP, CString::new(e.to_string()).ok()),
    }
}

/// Whether the `mmun_version` the process resolves first is not ours: a
/// different libmmun object (or a program exporting its own) came first.
fn another_copy_is_loaded() -> bool {
    // SAFETY: dlsym with a NUL-terminated name; RTLD_DEFAULT searches the
    // global scope and may return null.
    let first = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"mmun_version".as_ptr()) };
    let ours = mmun_version as extern "C" fn() -> c_uint as *mut libc::c_void;
    !first.is_null() && first != ours
}

/// 1 if libc is patched in this process; see `mmun.h`.
#[unsafe(no_mangle)]
pub extern "C" fn mmun_installed() -> c_int {
    entry::guarded(|| c_int::from(mmun_linux::installed()))
}

/// Why `mmun_install` failed, or null; see `mmun.h`.
#[unsafe(no_mangle)]
pub extern "C" fn mmun_install_error() -> *const c_char {
    match INSTALL.get() {
        Some((_, Some(why))) => why.as_ptr(),
        _ => std::ptr::null(),
    }
}

/// Starts the userfaultfd net; see `mmun.h`.
#[unsafe(no_mangle)]
pub extern "C" fn mmun_net_start() -> c_int {
    entry::guarded(|| {
        entry::code((|| {
            entry::refuse_inside_callback()?;
            mmun_linux::net::start_uffd().map_err(|_| -libc::ENOTSUP)?;
            Ok(())
        })())
    })
}

/// Registers the registries' fork handlers, once (see [`registry`]).
pub(crate) fn register_fork_handlers() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: the handlers are `extern "C" fn()` with static lifetime.
        let ret = unsafe {
            libc::pthread_atfork(Some(fork_prepare), Some(fork_parent), Some(fork_child))
        };
        // Only ENOMEM: the process is out of memory; the registries then
        // stay usable in the parent, and a child forked while another
        // thread registers may find their lock taken.
        debug_assert_eq!(ret, 0, "pthread_atfork");
    });
}

extern "C" fn fork_prepare() {
    interval::INTERVALS.lock_for_fork();
    list::NOTIFIERS.lock_for_fork();
    rcache::RCACHES.lock_for_fork();
}

extern "C" fn fork_parent() {
    rcache::RCACHES.parent_after_fork();
    list::NOTIFIERS.parent_after_fork();
    interval::INTERVALS.parent_after_fork();
}

extern "C" fn fork_child() {
    rcache::RCACHES.child_after_fork();
    list::NOTIFIERS.child_after_fork();
    interval::INTERVALS.child_after_fork();
}

/// At load (`libmmun.so`, `libmmun_preload.so`; for `libmmun.a` only if
/// the linker kept this object): install the hooks, and under `mmun trace`
/// connect its sink.
extern "C" fn on_load() {
    let status = mmun_install();
    if status != 0 {
        let why = INSTALL
            .get()
            .and_then(|(_, why)| why.as_ref())
            .map(|w| w.to_string_lossy().into_owned())
            .unwrap_or_default();
        let msg = format!("libmmun: hooks not installed: {why}\n");
        // SAFETY: write(2) of our own buffer.
        unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
        return;
    }
    mmun_linux::trace_sink::init_from_env();
}

/// Runs `on_load` when the dynamic loader maps this library.
#[used]
#[unsafe(link_section = ".init_array")]
static ON_LOAD: extern "C" fn() = on_load;

#[cfg(test)]
mod tests {
    /// The header's version macros and ABI number are this package's.
    #[test]
    fn header_versions_match_the_package() {
        let header = include_str!("../include/mmun.h");
        let define = |name: &str| -> u32 {
            header
                .lines()
                .find_map(|l| l.strip_prefix(&format!("#define {name} ")))
                .unwrap_or_else(|| panic!("{name} not defined"))
                .trim()
                .parse()
                .unwrap()
        };
        let number = define("MMUN_VERSION_MAJOR") << 16
            | define("MMUN_VERSION_MINOR") << 8
            | define("MMUN_VERSION_PATCH");
        assert_eq!(number, super::VERSION);
        assert_eq!(
            define("MMUN_ABI_VERSION").to_string(),
            env!("MMUN_ABI_VERSION")
        );
    }
}
