//! Patching libc while 4 threads spin in mmap/munmap: no crash, and no
//! call made after `install` returned misses its hook.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use mmun_core::{Notifier, NotifierOps, StartFn};

thread_local! {
    /// Starts this thread's own calls produced (callbacks run in the
    /// calling thread).
    static STARTS: Cell<u64> = const { Cell::new(0) };
}

static OPS: NotifierOps<()> = NotifierOps {
    invalidate_range_start: Some(StartFn::Infallible(|_, _| {
        STARTS.with(|s| s.set(s.get() + 1))
    })),
    ..NotifierOps::EMPTY
};

#[test]
fn install_while_four_threads_spin_in_mmap_munmap() {
    // A subscriber before installation, so every hooked call dispatches.
    let _n = Notifier::register(mmun_linux::process_mm(), &OPS, ()).unwrap();
    let installed = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let missed = Arc::new(AtomicU64::new(0));
    let after = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (installed, stop, missed, after) = (
                installed.clone(),
                stop.clone(),
                missed.clone(),
                after.clone(),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    let was_installed = installed.load(Ordering::Acquire);
                    let before = STARTS.with(Cell::get);
                    // SAFETY: a fresh private mapping, unmapped right away.
                    unsafe {
                        let p = libc::mmap(
                            std::ptr::null_mut(),
                            8192,
                            libc::PROT_READ | libc::PROT_WRITE,
                            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                            -1,
                            0,
                        );
                        assert_ne!(p, libc::MAP_FAILED);
                        *(p as *mut u8) = 1;
                        assert_eq!(libc::munmap(p, 8192), 0);
                    }
                    if was_installed {
                        after.fetch_add(1, Ordering::Relaxed);
                        if STARTS.with(Cell::get) != before + 1 {
                            missed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(50));
    mmun_linux::install().expect("libc patched");
    installed.store(true, Ordering::Release);
    std::thread::sleep(std::time::Duration::from_millis(200));
    stop.store(true, Ordering::Release);
    for t in threads {
        t.join().unwrap();
    }
    assert!(
        after.load(Ordering::Relaxed) > 100,
        "the threads kept running after installation"
    );
    assert_eq!(
        missed.load(Ordering::Relaxed),
        0,
        "munmaps after install without a hook"
    );
}
