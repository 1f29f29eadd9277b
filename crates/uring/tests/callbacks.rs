//! The generic cache on the real process with user `mem_reg`/`mem_dereg`
//! callbacks (what the C API wraps): one `mem_reg` per miss, and
//! `mem_dereg` runs inside `munmap`, before the pages go.

use std::sync::Mutex;

use mmun_secondary::rcache::{Callbacks, Rcache, RcacheConfig};
use mmun_uring::{Process, UringError};

const PAGE: usize = 4096;

/// What `mem_dereg` saw: the first byte of the registered range, read
/// through its address while the callback ran.
static SEEN: Mutex<Vec<u8>> = Mutex::new(Vec::new());

#[test]
fn mem_dereg_runs_before_munmap_unmaps() {
    let process = match Process::current() {
        Ok(process) => process,
        Err(err @ UringError::Hooks(_)) => {
            eprintln!("mem_dereg_runs_before_munmap_unmaps: skipped: {err}");
            return;
        }
        Err(err) => panic!("{err}"),
    };
    // Reserved: the callback runs inside munmap and must not allocate.
    SEEN.lock().unwrap().reserve(4);
    let mem_reg = |addr: u64, _len: u64| -> Result<u64, UringError> { Ok(addr) };
    let mem_dereg = |addr: &u64| {
        // SAFETY: the callback runs before the range is unmapped.
        let first = unsafe { std::ptr::read_volatile(*addr as *const u8) };
        SEEN.lock().unwrap().push(first);
    };
    let registrar = Callbacks::new(mem_reg, mem_dereg);
    let cache = Rcache::with_backend(process, registrar, RcacheConfig::default());
    // SAFETY: a fresh anonymous page of our own.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    // SAFETY: our own page.
    unsafe { *p.cast::<u8>() = 0x5a };
    let addr = p as u64;
    let id = cache.get(addr, 16).expect("miss").id();
    assert_eq!(cache.get(addr + 100, 16).expect("hit").id(), id);
    assert_eq!(cache.stats().registrations, 1, "one mem_reg");
    // SAFETY: our own page; the cache holds no use of it.
    assert_eq!(unsafe { libc::munmap(p, PAGE) }, 0);
    assert_eq!(
        *SEEN.lock().unwrap(),
        vec![0x5a],
        "mem_dereg ran once, with the page still mapped"
    );
    assert!(cache.lookup(addr, 1).is_none(), "invalidated");
}
