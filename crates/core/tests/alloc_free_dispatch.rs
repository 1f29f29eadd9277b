//! The dispatch path (start → callbacks → end, the other list dispatchers,
//! `read_begin`/`read_retry`) never allocates or frees once the
//! subscriptions exist, not even on a thread's first use: the real-process
//! backend runs it inside interposed `munmap`/`madvise`/`brk`, possibly
//! while glibc holds its malloc arena lock.
//!
//! Two traps, both armed by a per-thread "in dispatch" flag:
//! * a `#[global_allocator]` that counts Rust allocations, frees and
//!   reallocations made while the flag is set;
//! * (glibc) `malloc`, `calloc`, `realloc`, `free` and the aligned forms
//!   interposed in this test binary, forwarding to glibc's `__libc_*`, which
//!   also catch C-level allocations Rust never sees (glibc allocating for a
//!   thread-exit destructor registration, say).
//!
//! Registration, thread creation and the test's own bookkeeping happen with
//! the flag clear.

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};

use mmun_core::{
    Event, HeldMmLock, IntervalNotifier, IntervalNotifierOps, IntervalSub, Invalidation, Mm,
    Notifier, NotifierOps, Range, Seq, StartFn, WouldBlock,
};

thread_local! {
    /// Set while this thread is inside the code under test.
    static IN_DISPATCH: Cell<bool> = const { Cell::new(false) };
    /// Allocator calls this thread made with the flag set.
    static TRAPPED: Cell<usize> = const { Cell::new(0) };
}

/// Counts a call of the allocator if this thread is in dispatch.
fn trap() {
    // `try_with`: the allocator also runs while thread-locals are torn down.
    let _ = IN_DISPATCH.try_with(|flag| {
        if flag.get() {
            TRAPPED.with(|n| n.set(n.get() + 1));
        }
    });
}

struct Trapping;

// SAFETY: every method forwards to `System` with the caller's arguments,
// which upholds `GlobalAlloc`'s contract; `trap` only touches const
// thread-locals without destructors, so it neither allocates nor recurses.
unsafe impl GlobalAlloc for Trapping {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        trap();
        // SAFETY: forwarded as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        trap();
        // SAFETY: forwarded as is.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        trap();
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        trap();
        // SAFETY: forwarded as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Trapping = Trapping;

/// glibc's malloc, interposed: the executable's definitions win over
/// libc's for every caller in the process, libc itself included.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod interposed {
    use std::ffi::c_void;

    // SAFETY: the prototypes of glibc's exported `__libc_*` allocator
    // entry points, which take and return what malloc(3) and friends do.
    unsafe extern "C" {
        fn __libc_malloc(size: usize) -> *mut c_void;
        fn __libc_calloc(n: usize, size: usize) -> *mut c_void;
        fn __libc_realloc(ptr: *mut c_void, size: usize) -> *mut c_void;
        fn __libc_free(ptr: *mut c_void);
        fn __libc_memalign(align: usize, size: usize) -> *mut c_void;
    }

    /// `malloc`, trapped.
    #[unsafe(no_mangle)]
    pub extern "C" fn malloc(size: usize) -> *mut c_void {
        super::trap();
        // SAFETY: glibc's own implementation, same contract.
        unsafe { __libc_malloc(size) }
    }

    /// `calloc`, trapped.
    #[unsafe(no_mangle)]
    pub extern "C" fn calloc(n: usize, size: usize) -> *mut c_void {
        super::trap();
        // SAFETY: glibc's own implementation, same contract.
        unsafe { __libc_calloc(n, size) }
    }

    /// `realloc`, trapped.
    ///
    /// # Safety
    /// As `realloc(3)`.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn realloc(ptr: *mut c_void, size: usize) -> *mut c_void {
        super::trap();
        // SAFETY: the caller passes what `realloc(3)` requires.
        unsafe { __libc_realloc(ptr, size) }
    }

    /// `free`, trapped.
    ///
    /// # Safety
    /// As `free(3)`.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn free(ptr: *mut c_void) {
        super::trap();
        // SAFETY: the caller passes what `free(3)` requires.
        unsafe { __libc_free(ptr) }
    }

    /// `memalign`, trapped.
    #[unsafe(no_mangle)]
    pub extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
        super::trap();
        // SAFETY: glibc's own implementation, same contract.
        unsafe { __libc_memalign(align, size) }
    }

    /// `aligned_alloc`, trapped.
    #[unsafe(no_mangle)]
    pub extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
        memalign(align, size)
    }

    /// `posix_memalign`, trapped.
    ///
    /// # Safety
    /// As `posix_memalign(3)`: `out` is writable.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn posix_memalign(
        out: *mut *mut c_void,
        align: usize,
        size: usize,
    ) -> i32 {
        let p = memalign(align, size);
        if p.is_null() {
            return 12; // ENOMEM
        }
        // SAFETY: the caller hands a writable pointer slot.
        unsafe { out.write(p) };
        0
    }
}

/// Runs `f` with the trap armed and returns its result and how many
/// allocator calls it made.
fn trapped<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let before = TRAPPED.with(Cell::get);
    IN_DISPATCH.with(|flag| flag.set(true));
    let result = f();
    IN_DISPATCH.with(|flag| flag.set(false));
    (result, TRAPPED.with(Cell::get) - before)
}

#[track_caller]
fn assert_allocation_free<R>(what: &str, f: impl FnOnce() -> R) -> R {
    let (result, calls) = trapped(f);
    assert_eq!(calls, 0, "{what}: {calls} allocator calls inside dispatch");
    result
}

/// The trap itself works: an allocation inside is counted.
#[test]
fn the_trap_catches_rust_and_c_allocations() {
    let ((), calls) = trapped(|| drop(std::hint::black_box(vec![1u8; 64])));
    // Seen by the global allocator, and (glibc) again as malloc and free.
    let expected = if cfg!(all(target_os = "linux", target_env = "gnu")) {
        4
    } else {
        2
    };
    assert_eq!(calls, expected, "a Vec's alloc and dealloc");
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let ((), calls) = trapped(|| {
            // SAFETY: plain malloc/free pair of the C library.
            unsafe { libc_free(std::hint::black_box(libc_malloc(32))) }
        });
        assert_eq!(calls, 2, "C malloc and free");
    }
}

/// The hazard the SRCU per-thread state avoids: the first touch of a
/// thread-local with a destructor makes glibc allocate its registration,
/// invisibly to a Rust `#[global_allocator]`.
#[test]
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn the_trap_sees_glibc_registering_a_thread_local_destructor() {
    struct WithDrop(u8);
    impl Drop for WithDrop {
        fn drop(&mut self) {
            std::hint::black_box(self.0);
        }
    }
    thread_local! {
        static FRESH: WithDrop = const { WithDrop(1) };
    }
    let calls = std::thread::spawn(|| trapped(|| FRESH.with(|f| std::hint::black_box(f.0))).1)
        .join()
        .unwrap();
    assert!(calls >= 1, "glibc's __cxa_thread_atexit_impl callocs");
}

// SAFETY: the prototypes of malloc(3) and free(3), bound to the names the
// process resolves (glibc's, or this binary's interposed ones above).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
unsafe extern "C" {
    #[link_name = "malloc"]
    fn libc_malloc(size: usize) -> *mut std::ffi::c_void;
    #[link_name = "free"]
    fn libc_free(ptr: *mut std::ffi::c_void);
}

// ---- subscribers whose callbacks only touch atomics ----

#[derive(Default)]
struct Counts {
    starts: AtomicUsize,
    ends: AtomicUsize,
    other: AtomicUsize,
}

fn start(c: &Counts, _: &Range<'_>) {
    c.starts.fetch_add(1, Ordering::Relaxed);
}
fn end(c: &Counts, _: &Range<'_>) {
    c.ends.fetch_add(1, Ordering::Relaxed);
}
fn young(c: &Counts, _: &Mm, _: u64, _: u64) -> bool {
    c.other.fetch_add(1, Ordering::Relaxed);
    true
}

static LIST_OPS: NotifierOps<Counts> = NotifierOps {
    invalidate_range_start: Some(StartFn::Infallible(start)),
    invalidate_range_end: Some(end),
    invalidate_range: Some(|c, _, _, _| {
        c.other.fetch_add(1, Ordering::Relaxed);
    }),
    clear_young: Some(young),
    clear_flush_young: Some(young),
    test_young: Some(|c, _, _| {
        c.other.fetch_add(1, Ordering::Relaxed);
        false
    }),
    change_pte: Some(|c, _, _, _| {
        c.other.fetch_add(1, Ordering::Relaxed);
    }),
    ..NotifierOps::EMPTY
};

static REFUSING_OPS: NotifierOps<Counts> = NotifierOps {
    invalidate_range_start: Some(StartFn::Fallible(|c, range| {
        c.starts.fetch_add(1, Ordering::Relaxed);
        if range.is_blockable() {
            Ok(())
        } else {
            Err(WouldBlock)
        }
    })),
    ..NotifierOps::EMPTY
};

struct Interval {
    calls: AtomicU64,
    refuse_nonblock: AtomicBool,
}

impl Interval {
    fn new() -> Interval {
        Interval {
            calls: AtomicU64::new(0),
            refuse_nonblock: AtomicBool::new(false),
        }
    }
}

impl IntervalNotifierOps for Interval {
    fn invalidate(&self, sub: &IntervalSub, range: &Range<'_>, cur_seq: Seq) -> bool {
        if !range.is_blockable() && self.refuse_nonblock.load(Ordering::Relaxed) {
            return false;
        }
        sub.set_seq(cur_seq);
        self.calls.fetch_add(1, Ordering::Relaxed);
        true
    }
}

fn unmap(held: &impl HeldMmLock, start: u64, end: u64) -> Range<'_> {
    Range::new(held, Event::Unmap, start, end)
}

/// One full round of every dispatcher on `mm`.
fn every_dispatch(mm: &Mm) {
    let lock = mm.mmap_read();
    Invalidation::start(unmap(&lock, 0, 1 << 30)).end();
    Invalidation::start(Range::new(&lock, Event::Clear, 0x1000, 0x2000)).only_end();
    let rmap = mm.rmap_lock();
    let clear = Invalidation::start(Range::new(&rmap, Event::Clear, 0, 0x1000));
    clear.change_pte(0x0, 0x1234);
    clear.invalidate_range(0, 0x1000);
    mm.invalidate_range(0, 0x1000);
    clear.end();
    mm.clear_young(0, 0x1000);
    mm.clear_flush_young(0, 0x1000);
    mm.test_young(0);
    drop(rmap);
    if let Ok(inv) = Invalidation::start_nonblock(unmap(&lock, 0, 0x1000)) {
        inv.end();
    }
}

#[test]
fn list_and_interval_dispatch_on_a_brand_new_thread() {
    let mm = Mm::new();
    let a = Notifier::register(&mm, &LIST_OPS, Counts::default()).unwrap();
    let b = Notifier::register(&mm, &LIST_OPS, Counts::default()).unwrap();
    let sub = IntervalNotifier::insert(&mm, 0, 0x4000, Interval::new()).unwrap();
    let mm2 = Arc::clone(&mm);
    std::thread::spawn(move || {
        assert_allocation_free("first dispatch of a new thread", || every_dispatch(&mm2));
        assert_allocation_free("second dispatch", || every_dispatch(&mm2));
    })
    .join()
    .unwrap();
    assert_eq!(a.starts.load(Ordering::Relaxed), 8);
    assert_eq!(b.ends.load(Ordering::Relaxed), 8);
    assert!(a.other.load(Ordering::Relaxed) > 0);
    assert_eq!(sub.ops().calls.load(Ordering::Relaxed), 8);
}

#[test]
fn a_thousand_overlapping_interval_notifiers() {
    let mm = Mm::new();
    let subs: Vec<_> = (0..1000u64)
        .map(|i| IntervalNotifier::insert(&mm, i * 0x1000, 0x10_0000, Interval::new()).unwrap())
        .collect();
    let mm2 = Arc::clone(&mm);
    std::thread::spawn(move || {
        assert_allocation_free("1000 hits", || {
            let lock = mm2.mmap_read();
            Invalidation::start(unmap(&lock, 0, 1 << 40)).end();
        });
    })
    .join()
    .unwrap();
    assert!(
        subs.iter()
            .all(|s| s.ops().calls.load(Ordering::Relaxed) == 1)
    );
}

#[test]
fn nonblock_refusals_by_list_and_interval_notifiers() {
    let mm = Mm::new();
    let refuses = Notifier::register(&mm, &REFUSING_OPS, Counts::default()).unwrap();
    let counts = Notifier::register(&mm, &LIST_OPS, Counts::default()).unwrap();
    let sub = IntervalNotifier::insert(&mm, 0, 0x4000, Interval::new()).unwrap();
    let mm2 = Arc::clone(&mm);
    let sub = std::thread::spawn(move || {
        let lock = mm2.mmap_read();
        let refused = assert_allocation_free("list refusal", || {
            Invalidation::start_nonblock(unmap(&lock, 0, 0x1000)).is_err()
        });
        assert!(refused);
        sub.ops().refuse_nonblock.store(true, Ordering::Relaxed);
        let refused = assert_allocation_free("interval refusal", || {
            Invalidation::start_nonblock(unmap(&lock, 0, 0x1000)).is_err()
        });
        assert!(refused);
        sub
    })
    .join()
    .unwrap();
    assert_eq!(refuses.starts.load(Ordering::Relaxed), 1);
    assert_eq!(
        counts.ends.load(Ordering::Relaxed),
        1,
        "ended after the refusal"
    );
    assert_eq!(sub.ops().calls.load(Ordering::Relaxed), 1);
}

#[test]
fn read_begin_and_read_retry_on_a_brand_new_thread() {
    let mm = Mm::new();
    let sub = Arc::new(IntervalNotifier::insert(&mm, 0, 0x4000, Interval::new()).unwrap());
    let sub2 = Arc::clone(&sub);
    std::thread::spawn(move || {
        let retry = assert_allocation_free("read_begin + read_retry", || {
            let seq = sub2.read_begin();
            sub2.read_retry(seq)
        });
        assert!(!retry);
    })
    .join()
    .unwrap();
    // Waiting out an invalidation in read_begin sleeps on the wait queue.
    let mm2 = Arc::clone(&mm);
    let barrier = Arc::new(Barrier::new(2));
    let b2 = Arc::clone(&barrier);
    let reader = std::thread::spawn(move || {
        b2.wait();
        assert_allocation_free("read_begin that waits", || {
            let seq = sub.read_begin();
            sub.read_retry(seq)
        })
    });
    let lock = mm2.mmap_read();
    let inv = Invalidation::start(unmap(&lock, 0, 0x1000));
    barrier.wait();
    std::thread::sleep(std::time::Duration::from_millis(20));
    inv.end();
    assert!(!reader.join().unwrap());
}

/// Inserts and removes deferred during an epoch are applied by the end
/// that closes it, on the dispatching thread: that must not allocate
/// either (registration reserved the room).
#[test]
fn deferred_inserts_and_removes_applied_at_end() {
    let mm = Mm::new();
    let early = IntervalNotifier::insert(&mm, 0, 0x1000, Interval::new()).unwrap();
    let mm2 = Arc::clone(&mm);
    let (tx_started, rx_started) = std::sync::mpsc::channel();
    let (tx_done, rx_done) = std::sync::mpsc::channel::<()>();
    let dispatcher = std::thread::spawn(move || {
        let lock = mm2.mmap_read();
        let inv = assert_allocation_free("start", || Invalidation::start(unmap(&lock, 0, 0x1000)));
        tx_started.send(()).unwrap();
        rx_done.recv().unwrap();
        assert_allocation_free("end applying deferred updates", || inv.end());
    });
    rx_started.recv().unwrap();
    // Registration side, flag clear: these are deferred (the tree is frozen).
    let late: Vec<_> = (0..100u64)
        .map(|i| IntervalNotifier::insert(&mm, i * 0x10_0000, 0x1000, Interval::new()).unwrap())
        .collect();
    let remover = std::thread::spawn(move || early.remove());
    std::thread::sleep(std::time::Duration::from_millis(20));
    tx_done.send(()).unwrap();
    dispatcher.join().unwrap();
    remover.join().unwrap();
    drop(late);
}

/// Two threads hammering one address space: contended locks wait on a
/// futex, never on an allocated per-thread record.
#[test]
fn contended_dispatch_from_two_threads() {
    let mm = Mm::new();
    let _n = Notifier::register(&mm, &LIST_OPS, Counts::default()).unwrap();
    let _subs: Vec<_> = (0..8u64)
        .map(|i| IntervalNotifier::insert(&mm, i * 0x1000, 0x8000, Interval::new()).unwrap())
        .collect();
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let mm = Arc::clone(&mm);
            std::thread::spawn(move || {
                assert_allocation_free("contended dispatch", || {
                    for i in 0..2000u64 {
                        let lock = mm.mmap_read();
                        let start = (i % 8) * 0x1000;
                        Invalidation::start(unmap(&lock, start, start + 0x1000)).end();
                    }
                });
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}
