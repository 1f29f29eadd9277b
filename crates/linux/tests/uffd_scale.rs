//! 20,000 interval-sized watches (single pages, every other page of one
//! mapping, the worst case for VMA splits) stay under `vm.max_map_count`,
//! every one is armed, and the application can still map memory.

mod uffd_support;

use mmun_linux::uffd::Watch;
use uffd_support::*;

#[test]
fn twenty_thousand_watches_leave_room_for_the_application() {
    let _serial = serial();
    // Every other page: neighbours are bridged into one registration.
    scale("twenty_thousand_watches_leave_room_for_the_application", 2);
    // Every 32nd page: too far apart to bridge; past half of max_map_count
    // the net registers whole VMAs.
    scale(
        "twenty_thousand_watches_leave_room_for_the_application (sparse)",
        32,
    );
}

fn scale(test: &str, stride: u64) {
    let Some(net) = net_or_skip(test) else { return };
    let limit: usize = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    const N: u64 = 20_000;
    // SAFETY: a fresh anonymous mapping, not populated (stride * N pages).
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            (stride * N * PAGE) as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    } as u64;
    let before = vma_count();
    for k in 0..N {
        let a = base + stride * k * PAGE;
        assert_eq!(net.watch(a, a + PAGE).unwrap(), Watch::Armed, "watch {k}");
    }
    let after = vma_count();
    eprintln!(
        "stride {stride}: VMAs: {before} before, {after} after {N} watches (max_map_count {limit}); coarse registrations: {}",
        net.stats().coarse
    );
    assert!(
        after <= limit / 2 + 64,
        "our splits stay within half of max_map_count: {after}"
    );
    let armed = net.armed_ranges();
    for k in 0..N {
        let a = base + stride * k * PAGE;
        assert!(
            armed.iter().any(|&(s, e)| s <= a && e >= a + PAGE),
            "page {k} armed"
        );
    }
    // The application maps 2,000 more non-mergeable mappings.
    let mut maps = Vec::new();
    for i in 0..2_000 {
        let prot = if i % 2 == 0 {
            libc::PROT_READ
        } else {
            libc::PROT_READ | libc::PROT_WRITE
        };
        // SAFETY: fresh anonymous mappings.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGE as usize,
                prot,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "the application's mmap {i} failed");
        maps.push(p);
    }
    for p in maps {
        // SAFETY: our mappings.
        unsafe { libc::munmap(p, PAGE as usize) };
    }
    if stride > 2 {
        assert!(
            net.stats().coarse > 0,
            "the budget switched to whole-VMA registrations"
        );
    }
    for k in 0..N {
        let a = base + stride * k * PAGE;
        net.unwatch(a, a + PAGE);
    }
    assert!(
        net.armed_ranges()
            .iter()
            .all(|&(s, e)| e <= base || s >= base + stride * N * PAGE),
        "all unregistered"
    );
    assert_eq!(raw_munmap(base, stride * N * PAGE), 0);
}
