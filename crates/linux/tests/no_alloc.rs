//! Hooks never allocate: this binary's global allocator aborts the process
//! when it is called inside a hook's dispatch on the calling thread, and
//! the tests drive the paths where glibc calls the hooks with its own
//! locks held (free of large blocks, heap trimming, thread exit) and a
//! munmap under 1000 overlapping interval notifiers.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use mmun_core::{IntervalNotifier, IntervalNotifierOps, IntervalSub, Range, Seq};

struct AbortInHook;

fn die(what: &[u8]) -> ! {
    // SAFETY: write(2) of a static message, then abort.
    unsafe {
        libc::write(2, what.as_ptr().cast(), what.len());
        libc::abort()
    }
}

// SAFETY: forwards to the system allocator; only adds a check.
unsafe impl GlobalAlloc for AbortInHook {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if mmun_linux::in_hook() {
            die(b"allocation inside a hook\n");
        }
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if mmun_linux::in_hook() {
            die(b"deallocation inside a hook\n");
        }
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if mmun_linux::in_hook() {
            die(b"reallocation inside a hook\n");
        }
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: AbortInHook = AbortInHook;

static CALLS: AtomicUsize = AtomicUsize::new(0);

struct Count;
impl IntervalNotifierOps for Count {
    fn invalidate(&self, sub: &IntervalSub, _range: &Range<'_>, cur_seq: Seq) -> bool {
        sub.set_seq(cur_seq);
        CALLS.fetch_add(1, Ordering::Relaxed);
        true
    }
}

// SAFETY: the prototype of glibc's `malloc_trim` (<malloc.h>).
unsafe extern "C" {
    fn malloc_trim(pad: usize) -> libc::c_int;
}

#[test]
fn hooks_never_allocate() {
    mmun_linux::install().expect("libc patched");
    let mm = mmun_linux::process_mm();

    // 1000 overlapping interval notifiers over one 16-page range.
    let len = 16 * 4096;
    let p = common::anon(len / common::PAGE, 0) as u64;
    let subs: Vec<_> = (0..1000)
        .map(|i| {
            IntervalNotifier::insert(mm, p + (i % 16) * 4096, 4096 * (16 - i % 16), Count).unwrap()
        })
        .collect();
    // SAFETY: ours.
    assert_eq!(unsafe { libc::munmap(p as *mut _, len) }, 0);
    assert_eq!(
        CALLS.load(Ordering::Relaxed),
        1000,
        "every interval notifier was called"
    );

    // A whole-range subscriber so that glibc's own calls dispatch too.
    let all = IntervalNotifier::insert(mm, 0, u64::MAX, Count).unwrap();
    let before = CALLS.load(Ordering::Relaxed);
    // free() of large blocks (munmap inside glibc).
    for _ in 0..8 {
        drop(vec![1u8; 8 << 20]);
    }
    // Heap trimming: many small blocks freed, then malloc_trim.
    let small: Vec<Box<[u8; 2000]>> = (0..8192).map(|_| Box::new([0u8; 2000])).collect();
    drop(small);
    // SAFETY: no preconditions.
    unsafe { malloc_trim(0) };
    // Thread exit (stack madvise inside glibc).
    for _ in 0..4 {
        std::thread::spawn(|| std::hint::black_box([0u8; 4096]))
            .join()
            .unwrap();
    }
    assert!(
        CALLS.load(Ordering::Relaxed) > before + 8,
        "glibc's internal calls reached the hooks"
    );
    drop(all);
    drop(subs);
}
