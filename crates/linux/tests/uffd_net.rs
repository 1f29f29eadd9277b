//! The userfaultfd net on this kernel: raw system calls that no hook sees
//! reach `deliver`, with the right kind and range. Skips (with a message)
//! where userfaultfd is unavailable.

mod uffd_support;

use std::os::fd::AsRawFd;

use mmun_linux::uffd::{LateChange, Watch};
use uffd_support::*;

#[test]
fn raw_munmap_is_delivered_as_unmap() {
    let _serial = serial();
    let Some(net) = net_or_skip("raw_munmap_is_delivered_as_unmap") else {
        return;
    };
    let a = map(16);
    assert_eq!(net.watch(a, a + 16 * PAGE).unwrap(), Watch::Armed);
    assert_eq!(raw_munmap(a + 4 * PAGE, 8 * PAGE), 0);
    assert!(wait_for(LateChange::Unmap {
        start: a + 4 * PAGE,
        end: a + 12 * PAGE
    }));
    assert_eq!(raw_munmap(a, 16 * PAGE), 0);
    // One event for the whole call, hole included (the kernel reports the
    // range asked for).
    assert!(wait_for(LateChange::Unmap {
        start: a,
        end: a + 16 * PAGE
    }));
    assert_eq!(
        net.stats().faults,
        0,
        "WP mode: no fault ever reaches the net"
    );
}

#[test]
fn raw_madvise_dontneed_is_delivered_as_remove() {
    let _serial = serial();
    let Some(net) = net_or_skip("raw_madvise_dontneed_is_delivered_as_remove") else {
        return;
    };
    let a = map(16);
    assert_eq!(net.watch(a, a + 16 * PAGE).unwrap(), Watch::Armed);
    assert_eq!(raw_madvise(a + PAGE, 2 * PAGE, libc::MADV_DONTNEED), 0);
    assert!(wait_for(LateChange::Remove {
        start: a + PAGE,
        end: a + 3 * PAGE
    }));
    // The range stays watched: a later unmap is reported too.
    assert_eq!(raw_munmap(a, 16 * PAGE), 0);
    assert!(wait_for(LateChange::Unmap {
        start: a,
        end: a + 16 * PAGE
    }));
}

#[test]
fn raw_mremap_move_follows_the_registration() {
    let _serial = serial();
    let Some(net) = net_or_skip("raw_mremap_move_follows_the_registration") else {
        return;
    };
    let a = map(16);
    let b = map(16); // the destination VA, replaced by the move
    let len = 16 * PAGE;
    assert_eq!(net.watch(a, a + len).unwrap(), Watch::Armed);
    assert_eq!(raw_mremap_fixed(a, len, b) as u64, b);
    assert!(wait_for(LateChange::Remap {
        from: a,
        to: b,
        len
    }));
    assert!(
        net.armed_ranges()
            .iter()
            .any(|&(s, e)| s <= b && e >= b + len),
        "the armed book moved along"
    );
    // The registration moved with the VMA: unmapping at the new VA is seen.
    assert_eq!(raw_munmap(b, len), 0);
    assert!(wait_for(LateChange::Unmap {
        start: b,
        end: b + len
    }));
    net.unwatch(a, a + len);
}

#[test]
fn map_fixed_over_then_rearm_then_munmap_is_seen() {
    let _serial = serial();
    let Some(net) = net_or_skip("map_fixed_over_then_rearm_then_munmap_is_seen") else {
        return;
    };
    let a = map(16);
    let len = 16 * PAGE;
    assert_eq!(net.watch(a, a + len).unwrap(), Watch::Armed);
    // SAFETY: replaces our own mapping at `a`.
    let p = unsafe {
        libc::mmap(
            a as *mut _,
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
            -1,
            0,
        )
    };
    assert_eq!(p as u64, a);
    assert!(wait_for(LateChange::Unmap {
        start: a,
        end: a + len
    }));
    let before = delivered_in(a, a + len).len();
    net.rearm(a, a + len);
    assert_eq!(raw_munmap(a, len), 0);
    assert!(
        wait_for_count(a, a + len, before + 1),
        "the munmap after rearm must be reported: {:?}",
        delivered_in(a, a + len)
    );
}

fn wait_for_count(s: u64, e: u64, n: usize) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        if delivered_in(s, e).len() >= n {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    false
}

#[test]
fn file_backed_memory_is_unwatchable() {
    let _serial = serial();
    let Some(net) = net_or_skip("file_backed_memory_is_unwatchable") else {
        return;
    };
    let path = std::env::temp_dir().join(format!("mmun-uffd-file-{}", std::process::id()));
    let file = std::fs::File::create_new(&path).unwrap();
    file.set_len(4 * PAGE).unwrap();
    // SAFETY: a fresh shared mapping of our own file.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            (4 * PAGE) as usize,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    let a = p as u64;
    assert_eq!(
        net.watch(a, a + 4 * PAGE).unwrap(),
        Watch::Unwatchable("file-backed")
    );
    assert!(
        net.armed_ranges()
            .iter()
            .all(|&(s, e)| e <= a || s >= a + 4 * PAGE)
    );
    assert_eq!(raw_munmap(a, 4 * PAGE), 0);
    std::fs::remove_file(&path).unwrap();
    // Unmapped memory: refused with its own reason, not an error.
    assert_eq!(
        net.watch(a, a + 4 * PAGE).unwrap(),
        Watch::Unwatchable("unmapped")
    );
}

#[test]
fn a_range_the_application_registered_itself_is_busy() {
    let _serial = serial();
    let Some(net) = net_or_skip("a_range_the_application_registered_itself_is_busy") else {
        return;
    };
    let a = map(8);
    // The application's own context, registered in MISSING mode.
    // SAFETY: plain syscalls and ioctls on stack structs.
    let theirs = unsafe {
        libc::syscall(
            libc::SYS_userfaultfd,
            libc::O_CLOEXEC | libc::O_NONBLOCK | 1,
        )
    } as i32;
    assert!(theirs >= 0);
    let mut api = [0xAAu64, 0, 0];
    // SAFETY: UFFDIO_API on a stack struct of three u64.
    let rc = unsafe { libc::ioctl(theirs, 0xc018aa3f, api.as_mut_ptr()) };
    assert_eq!(rc, 0);
    let mut reg = [a, 8 * PAGE, 1, 0];
    // SAFETY: UFFDIO_REGISTER on a stack struct of four u64.
    let rc = unsafe { libc::ioctl(theirs, 0xc020aa00, reg.as_mut_ptr()) };
    assert_eq!(rc, 0);
    assert_eq!(net.watch(a + PAGE, a + 2 * PAGE).unwrap(), Watch::Busy);
    // SAFETY: our fd.
    unsafe { libc::close(theirs) };
    assert_eq!(
        net.watch(a + PAGE, a + 2 * PAGE).unwrap(),
        Watch::Armed,
        "free again once theirs is closed"
    );
    net.unwatch(a + PAGE, a + 2 * PAGE);
    assert_eq!(raw_munmap(a, 8 * PAGE), 0);
}

#[test]
fn watches_are_refcounted_and_unregistered_when_the_last_goes() {
    let _serial = serial();
    let Some(net) = net_or_skip("watches_are_refcounted_and_unregistered_when_the_last_goes")
    else {
        return;
    };
    let a = map(32);
    let len = 32 * PAGE;
    assert_eq!(net.watch(a, a + 8 * PAGE).unwrap(), Watch::Armed);
    assert_eq!(
        net.watch(a + 4 * PAGE, a + 12 * PAGE).unwrap(),
        Watch::Armed
    );
    assert_eq!(
        net.watch(a + 4 * PAGE, a + 12 * PAGE).unwrap(),
        Watch::Armed
    );
    net.unwatch(a + 4 * PAGE, a + 12 * PAGE);
    net.unwatch(a, a + 8 * PAGE);
    assert!(
        net.armed_ranges()
            .iter()
            .any(|&(s, e)| s <= a + 4 * PAGE && e >= a + 12 * PAGE),
        "one watcher left"
    );
    net.unwatch(a + 4 * PAGE, a + 12 * PAGE);
    assert!(
        net.armed_ranges()
            .iter()
            .all(|&(s, e)| e <= a || s >= a + len),
        "nobody watches: unregistered, {:x?}",
        net.armed_ranges()
    );
    assert_eq!(raw_munmap(a, len), 0);
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(
        delivered_in(a, a + len),
        vec![],
        "an unregistered range is not reported"
    );
}

#[test]
fn neighbours_are_bridged_into_one_registration() {
    let _serial = serial();
    let Some(net) = net_or_skip("neighbours_are_bridged_into_one_registration") else {
        return;
    };
    let a = map(64);
    assert_eq!(net.watch(a, a + PAGE).unwrap(), Watch::Armed);
    assert_eq!(net.watch(a + 4 * PAGE, a + 5 * PAGE).unwrap(), Watch::Armed);
    let armed: Vec<_> = net
        .armed_ranges()
        .into_iter()
        .filter(|&(s, e)| s < a + 64 * PAGE && e > a)
        .collect();
    assert_eq!(
        armed,
        vec![(a, a + 5 * PAGE)],
        "the 3-page gap is registered too"
    );
    net.unwatch(a, a + PAGE);
    net.unwatch(a + 4 * PAGE, a + 5 * PAGE);
    assert_eq!(raw_munmap(a, 64 * PAGE), 0);
}
