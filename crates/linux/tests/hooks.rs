//! The hook rows of the coverage matrix (userspace-monitors §4.1), through
//! plain libc calls: each asserts the event Linux uses, the range, that the
//! start saw the memory before the change and the end after it.

mod common;

// SAFETY: the prototype of glibc's `pkey_mprotect` (<sys/mman.h>).
unsafe extern "C" {
    fn pkey_mprotect(addr: *mut libc::c_void, len: usize, prot: i32, pkey: i32) -> i32;
}

use std::sync::{Mutex, OnceLock};

use common::{PAGE, Seen, anon, one_pair, recorder};
use mmun_core::{Event, Notifier};

/// The tests of this binary share one recorder and run one at a time
/// (each watches its own range, but the log is one).
fn setup() -> (
    std::sync::MutexGuard<'static, ()>,
    &'static Notifier<common::Log>,
) {
    static LOCK: Mutex<()> = Mutex::new(());
    static REC: OnceLock<Notifier<common::Log>> = OnceLock::new();
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    mmun_linux::install().expect("libc patched");
    (guard, REC.get_or_init(recorder))
}

fn run(rec: &Notifier<common::Log>, lo: u64, hi: u64, f: impl FnOnce()) -> Vec<Seen> {
    rec.watch(lo, hi);
    run_watched(rec, f)
}

fn run_watched(rec: &Notifier<common::Log>, f: impl FnOnce()) -> Vec<Seen> {
    f();
    let seen = rec.take();
    rec.watch(0, 0);
    seen
}

#[test]
fn munmap_whole_range() {
    let (_g, rec) = setup();
    let p = anon(16, 0xab) as u64;
    // SAFETY: unmaps our own mapping.
    let seen = run(rec, p, p + 16 * PAGE as u64, || unsafe {
        assert_eq!(libc::munmap(p as *mut _, 16 * PAGE), 0);
    });
    let (start, end) = one_pair(&seen);
    assert_eq!(
        (start.event, start.start, start.end),
        (Event::Unmap, p, p + 16 * PAGE as u64)
    );
    assert_eq!(start.perms, *b"rw-p", "start runs before the unmap");
    assert_eq!(start.byte, Some(0xab));
    assert_eq!(end.perms, *b"----", "end runs after the unmap");
    assert!(!start.late);
}

#[test]
fn munmap_middle_pages() {
    let (_g, rec) = setup();
    let p = anon(16, 1) as u64;
    let (a, b) = (p + 4 * PAGE as u64, p + 8 * PAGE as u64);
    // SAFETY: unmaps part of our own mapping.
    let seen = run(rec, p, p + 16 * PAGE as u64, || unsafe {
        assert_eq!(libc::munmap(a as *mut _, 4 * PAGE), 0);
    });
    let (start, end) = one_pair(&seen);
    assert_eq!((start.event, start.start, start.end), (Event::Unmap, a, b));
    assert_eq!((start.perms, end.perms), (*b"rw-p", *b"----"));
    // SAFETY: the rest of the mapping.
    unsafe {
        libc::munmap(p as *mut _, 16 * PAGE);
    }
}

#[test]
fn mmap_fixed_over_a_mapping() {
    let (_g, rec) = setup();
    let p = anon(16, 7) as u64;
    let seen = run(rec, p, p + 16 * PAGE as u64, || {
        // SAFETY: replaces our own mapping.
        let q = unsafe {
            libc::mmap(
                p as *mut _,
                16 * PAGE,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        assert_eq!(q as u64, p);
    });
    let (start, end) = one_pair(&seen);
    assert_eq!(
        (start.event, start.start, start.end),
        (Event::Unmap, p, p + 16 * PAGE as u64)
    );
    assert_eq!((start.perms, start.byte), (*b"rw-p", Some(7)));
    assert_eq!(
        (end.perms, end.byte),
        (*b"r--p", None),
        "end sees the new, empty mapping"
    );
    // SAFETY: our mapping.
    unsafe { libc::munmap(p as *mut _, 16 * PAGE) };
}

#[test]
fn mmap_without_fixed_is_silent() {
    let (_g, rec) = setup();
    let seen = run(rec, 0, u64::MAX, || {
        let p = anon(4, 0);
        // SAFETY: releases it without a watch on it.
        let _ = p;
    });
    assert!(seen.is_empty(), "{seen:#x?}");
}

fn mremap_case(pages_old: usize, pages_new: usize, flags: i32, expect: impl Fn(u64) -> (u64, u64)) {
    let (_g, rec) = setup();
    let p = anon(pages_old, 3) as u64;
    let mut moved_to = 0;
    let seen = run(rec, p, p + (pages_old.max(pages_new) * PAGE) as u64, || {
        // SAFETY: remaps our own mapping.
        let q = unsafe {
            libc::mremap(
                p as *mut _,
                pages_old * PAGE,
                pages_new * PAGE,
                flags,
                std::ptr::null_mut::<libc::c_void>(),
            )
        };
        assert_ne!(q, libc::MAP_FAILED);
        moved_to = q as u64;
    });
    let (start, end) = one_pair(&seen);
    let (lo, hi) = expect(p);
    assert_eq!(
        (start.event, start.start, start.end),
        (Event::Unmap, lo, hi)
    );
    assert_eq!(start.perms, *b"rw-p");
    assert_eq!(start.byte, Some(3));
    if moved_to != p || flags & libc::MREMAP_DONTUNMAP != 0 {
        assert_ne!(end.byte, Some(3), "the old pages left {lo:#x}");
    } else {
        assert_eq!(end.perms, *b"----");
    }
    // SAFETY: our mapping.
    unsafe { libc::munmap(moved_to as *mut _, pages_new * PAGE) };
    if flags & libc::MREMAP_DONTUNMAP != 0 {
        // SAFETY: the emptied old range stays mapped with DONTUNMAP.
        unsafe { libc::munmap(p as *mut _, pages_old * PAGE) };
    }
}

#[test]
fn mremap_shrink() {
    mremap_case(16, 8, 0, |p| (p + 8 * PAGE as u64, p + 16 * PAGE as u64));
}

#[test]
fn mremap_grow_that_may_move() {
    mremap_case(16, 64, libc::MREMAP_MAYMOVE, |p| (p, p + 16 * PAGE as u64));
}

#[test]
fn mremap_dontunmap() {
    mremap_case(16, 16, libc::MREMAP_MAYMOVE | libc::MREMAP_DONTUNMAP, |p| {
        (p, p + 16 * PAGE as u64)
    });
}

#[test]
fn mremap_move_fixed_covers_source_and_target() {
    let (_g, rec) = setup();
    let p = anon(16, 5) as u64;
    let target = anon(16, 6) as u64;
    // SAFETY: moves our own mapping onto our other one.
    let seen = run(
        rec,
        p.min(target),
        p.max(target) + 16 * PAGE as u64,
        || unsafe {
            let q = libc::mremap(
                p as *mut _,
                16 * PAGE,
                16 * PAGE,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                target as *mut libc::c_void,
            );
            assert_eq!(q as u64, target);
        },
    );
    assert_eq!(seen.len(), 4, "{seen:#x?}");
    let starts: Vec<_> = seen
        .iter()
        .filter(|s| s.start_phase)
        .map(|s| (s.event, s.start, s.end, s.byte))
        .collect();
    assert_eq!(
        starts,
        [
            (Event::Unmap, p, p + 16 * PAGE as u64, Some(5)),
            (Event::Unmap, target, target + 16 * PAGE as u64, Some(6)),
        ]
    );
    let ends: Vec<_> = seen
        .iter()
        .filter(|s| !s.start_phase)
        .map(|s| s.byte)
        .collect();
    assert_eq!(
        ends,
        [None, Some(5)],
        "after: source gone, target holds the moved pages"
    );
    // SAFETY: our mapping.
    unsafe { libc::munmap(target as *mut _, 16 * PAGE) };
}

fn madvise_case(advice: i32, lock: bool) {
    let (_g, rec) = setup();
    let p = anon(16, 9) as u64;
    if lock {
        // SAFETY: locks our own mapping.
        assert_eq!(unsafe { libc::mlock(p as *const _, 16 * PAGE) }, 0);
    }
    // SAFETY: advises our own mapping.
    let seen = run(rec, p, p + 16 * PAGE as u64, || unsafe {
        assert_eq!(libc::madvise(p as *mut _, 16 * PAGE, advice), 0);
    });
    let (start, end) = one_pair(&seen);
    assert_eq!(
        (start.event, start.start, start.end),
        (Event::Clear, p, p + 16 * PAGE as u64)
    );
    assert_eq!(start.byte, Some(9), "start sees the old contents");
    if advice != libc::MADV_FREE {
        assert_eq!(end.byte, None, "end sees the page zapped");
    }
    // SAFETY: our mapping.
    unsafe { libc::munmap(p as *mut _, 16 * PAGE) };
}

#[test]
fn madvise_dontneed() {
    madvise_case(libc::MADV_DONTNEED, false);
}

#[test]
fn madvise_free() {
    madvise_case(libc::MADV_FREE, false);
}

#[test]
fn madvise_dontneed_locked() {
    madvise_case(libc::MADV_DONTNEED_LOCKED, true);
}

#[test]
fn madvise_willneed_is_silent() {
    let (_g, rec) = setup();
    let p = anon(4, 1) as u64;
    // SAFETY: advises our own mapping.
    let seen = run(rec, p, p + 4 * PAGE as u64, || unsafe {
        libc::madvise(p as *mut _, 4 * PAGE, libc::MADV_WILLNEED);
    });
    assert!(seen.is_empty(), "{seen:#x?}");
    // SAFETY: our mapping.
    unsafe { libc::munmap(p as *mut _, 4 * PAGE) };
}

fn memfd(pages: usize, fill: u8) -> (i32, u64) {
    // SAFETY: plain fd calls on a fresh memfd; the mapping is ours.
    unsafe {
        let fd = libc::memfd_create(c"mmun-test".as_ptr(), libc::MFD_CLOEXEC);
        assert!(fd >= 0);
        assert_eq!(libc::ftruncate(fd, (pages * PAGE) as i64), 0);
        let p = libc::mmap(
            std::ptr::null_mut(),
            pages * PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_POPULATE,
            fd,
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        std::ptr::write_bytes(p.cast::<u8>(), fill, pages * PAGE);
        (fd, p as u64)
    }
}

#[test]
fn madvise_remove_on_memfd() {
    let (_g, rec) = setup();
    let (fd, p) = memfd(16, 4);
    // SAFETY: punches our own memfd mapping.
    let seen = run(rec, p, p + 16 * PAGE as u64, || unsafe {
        assert_eq!(libc::madvise(p as *mut _, 16 * PAGE, libc::MADV_REMOVE), 0);
    });
    let (start, end) = one_pair(&seen);
    assert_eq!(
        (start.event, start.start, start.end, start.byte),
        (Event::Clear, p, p + 16 * PAGE as u64, Some(4))
    );
    assert_eq!(end.byte, None);
    // SAFETY: ours.
    unsafe {
        libc::munmap(p as *mut _, 16 * PAGE);
        libc::close(fd);
    }
}

#[test]
fn mprotect_downgrade() {
    let (_g, rec) = setup();
    let p = anon(16, 2) as u64;
    // SAFETY: protects our own mapping.
    let seen = run(rec, p, p + 16 * PAGE as u64, || unsafe {
        assert_eq!(libc::mprotect(p as *mut _, 16 * PAGE, libc::PROT_READ), 0);
    });
    let (start, end) = one_pair(&seen);
    assert_eq!(
        (start.event, start.start, start.end),
        (Event::ProtectionVma, p, p + 16 * PAGE as u64)
    );
    assert_eq!((start.perms, end.perms), (*b"rw-p", *b"r--p"));
    // SAFETY: ours.
    unsafe { libc::munmap(p as *mut _, 16 * PAGE) };
}

#[test]
fn pkey_mprotect_downgrade() {
    let (_g, rec) = setup();
    let p = anon(4, 2) as u64;
    // SAFETY: protects our own mapping (pkey -1: no key).
    let seen = run(rec, p, p + 4 * PAGE as u64, || unsafe {
        assert_eq!(pkey_mprotect(p as *mut _, 4 * PAGE, libc::PROT_READ, -1), 0);
    });
    let (start, end) = one_pair(&seen);
    assert_eq!(
        (start.event, start.perms, end.perms),
        (Event::ProtectionVma, *b"rw-p", *b"r--p")
    );
    // SAFETY: ours.
    unsafe { libc::munmap(p as *mut _, 4 * PAGE) };
}

#[test]
fn ftruncate_of_a_mapped_memfd() {
    let (_g, rec) = setup();
    let (fd, p) = memfd(16, 8);
    // SAFETY: shrinks our own memfd.
    let seen = run(rec, p, p + 16 * PAGE as u64, || unsafe {
        assert_eq!(libc::ftruncate(fd, (4 * PAGE) as i64), 0);
    });
    let (start, end) = one_pair(&seen);
    let cut = p + 4 * PAGE as u64;
    assert_eq!(
        (start.event, start.start, start.end),
        (Event::Clear, cut, p + 16 * PAGE as u64)
    );
    assert_eq!(
        start.byte,
        Some(8),
        "the page past the new end is still there at start"
    );
    assert_eq!(end.byte, None, "and gone at end");
    // SAFETY: ours.
    unsafe {
        libc::munmap(p as *mut _, 16 * PAGE);
        libc::close(fd);
    }
}

#[test]
fn ftruncate_grow_is_silent() {
    let (_g, rec) = setup();
    let (fd, p) = memfd(4, 8);
    // SAFETY: grows our own memfd.
    let seen = run(rec, p, p + 4 * PAGE as u64, || unsafe {
        assert_eq!(libc::ftruncate(fd, (8 * PAGE) as i64), 0);
    });
    assert!(seen.is_empty(), "{seen:#x?}");
    // SAFETY: ours.
    unsafe {
        libc::munmap(p as *mut _, 4 * PAGE);
        libc::close(fd);
    }
}

#[test]
fn fallocate_punch_hole_of_a_mapped_memfd() {
    let (_g, rec) = setup();
    let (fd, p) = memfd(16, 6);
    // SAFETY: punches our own memfd.
    let seen = run(rec, p, p + 16 * PAGE as u64, || unsafe {
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        assert_eq!(
            libc::fallocate(fd, mode, (2 * PAGE) as i64, (4 * PAGE) as i64),
            0
        );
    });
    let (start, end) = one_pair(&seen);
    let hole = (p + 2 * PAGE as u64, p + 6 * PAGE as u64);
    assert_eq!(
        (start.event, start.start, start.end),
        (Event::Clear, hole.0, hole.1)
    );
    assert_eq!(
        (start.byte, end.byte),
        (Some(6), None),
        "start before the punch, end after"
    );
    // SAFETY: ours.
    unsafe {
        libc::munmap(p as *mut _, 16 * PAGE);
        libc::close(fd);
    }
}

#[test]
fn shmdt_of_a_sysv_segment() {
    let (_g, rec) = setup();
    // SAFETY: a private SysV segment, attached, written, detached, removed.
    unsafe {
        let id = libc::shmget(libc::IPC_PRIVATE, 16 * PAGE, libc::IPC_CREAT | 0o600);
        assert!(id >= 0);
        let p = libc::shmat(id, std::ptr::null(), 0) as u64;
        assert_ne!(p as isize, -1);
        std::ptr::write_bytes(p as *mut u8, 0x5a, 16 * PAGE);
        let seen = run(rec, p, p + 16 * PAGE as u64, || {
            assert_eq!(libc::shmdt(p as *const _), 0);
        });
        libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut());
        let (start, end) = one_pair(&seen);
        assert_eq!(
            (start.event, start.start, start.end),
            (Event::Unmap, p, p + 16 * PAGE as u64)
        );
        assert_eq!((start.byte, end.perms), (Some(0x5a), *b"----"));
    }
}

#[test]
fn free_of_64_mib_unmaps_inside_glibc() {
    let (_g, rec) = setup();
    let v = vec![0x77u8; 64 << 20];
    let p = v.as_ptr() as u64;
    let seen = run(rec, p, p + (64 << 20), || drop(v));
    let (start, end) = one_pair(&seen);
    assert_eq!(start.event, Event::Unmap);
    assert!(
        start.start <= p && start.end >= p + (64 << 20),
        "{start:#x?}"
    );
    assert_eq!((start.byte, end.perms), (Some(0x77), *b"----"));
}

#[test]
fn thread_exit_releases_its_stack_inside_glibc() {
    let (_g, rec) = setup();
    // A pthread with a known stack: glibc madvises (DONTNEED) the unused
    // part of a cached stack when the thread exits.
    static STACK_TOP: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    rec.watch(0, 0);
    extern "C" fn body(_: *mut libc::c_void) -> *mut libc::c_void {
        let local = 0u8;
        STACK_TOP.store(&raw const local as u64, std::sync::atomic::Ordering::SeqCst);
        std::ptr::null_mut()
    }
    // Watch everything, every thread (the exiting thread releases its own
    // stack); pick out what overlaps the thread's stack after.
    rec.watch_all_threads(0, u64::MAX);
    let seen = run_watched(rec, || {
        // SAFETY: a plain pthread with default attributes, joined.
        unsafe {
            let mut t: libc::pthread_t = 0;
            assert_eq!(
                libc::pthread_create(&mut t, std::ptr::null(), body, std::ptr::null_mut()),
                0
            );
            assert_eq!(libc::pthread_join(t, std::ptr::null_mut()), 0);
        }
    });
    let sp = STACK_TOP.load(std::sync::atomic::Ordering::SeqCst);
    let stack: Vec<_> = seen
        .iter()
        .filter(|s| s.start_phase && s.start <= sp + (1 << 20) && s.end + (8 << 20) > sp)
        .collect();
    assert!(
        stack.iter().any(|s| s.event == Event::Clear),
        "no Clear near the exited thread's stack {sp:#x}: {seen:#x?}"
    );
}

#[test]
fn shmat_remap_over_a_mapping() {
    let (_g, rec) = setup();
    let p = anon(16, 0x11) as u64;
    // SAFETY: a private SysV segment attached over our own mapping, then
    // detached and removed.
    unsafe {
        let id = libc::shmget(libc::IPC_PRIVATE, 16 * PAGE, libc::IPC_CREAT | 0o600);
        assert!(id >= 0);
        let seen = run(rec, p, p + 16 * PAGE as u64, || {
            let q = libc::shmat(id, p as *const _, libc::SHM_REMAP) as u64;
            assert_eq!(q, p);
        });
        libc::shmdt(p as *const _);
        libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut());
        let (start, end) = one_pair(&seen);
        assert_eq!(
            (start.event, start.start, start.end),
            (Event::Unmap, p, p + 16 * PAGE as u64)
        );
        assert_eq!((start.perms, start.byte), (*b"rw-p", Some(0x11)));
        assert_eq!(end.perms, *b"rw-s", "end sees the segment");
    }
}
