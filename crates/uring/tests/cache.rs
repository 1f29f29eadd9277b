//! The io_uring cache's rules, one test each: hits reuse the slot, an
//! invalidation empties the slot before the call that changes the pages
//! returns, typed errors for unmapped and file-backed buffers and a full
//! table, and the PFN check (root) catching a registration the cache kept
//! past an invalidation.

mod common;

use std::os::fd::{AsFd, AsRawFd};

use common::{PAGE, PatternFile, cache_or_skip, expected, map_anon};
use io_uring::{opcode, types};
use mmun_secondary::Bug;
use mmun_uring::{UringCache, UringConfig, UringError};

/// `READ_FIXED` of `len` bytes of `file` at 0 into `addr` through slot
/// `index`, with no use held: what a device that kept a stale index
/// would do. Returns the completion's result.
fn read_through_slot(
    cache: &UringCache,
    file: &PatternFile,
    addr: u64,
    len: u32,
    index: u16,
) -> i32 {
    let entry = opcode::ReadFixed::new(
        types::Fd(file.file.as_raw_fd()),
        addr as *mut u8,
        len,
        index,
    )
    .build();
    // SAFETY: `addr` is a live mapping of ours; a slot that does not hold
    // it makes the kernel refuse (-EFAULT), not write elsewhere.
    unsafe { cache.ring().run(&entry) }.expect("io_uring_enter")
}

/// Fresh anonymous pages over `[addr, addr + len)`, ours already.
fn map_fixed(addr: u64, len: usize) {
    // SAFETY: replaces the test's own mapping.
    let p = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
            -1,
            0,
        )
    };
    assert_eq!(p as u64, addr);
}

fn unmap(addr: u64, len: usize) {
    // SAFETY: the test's own mapping.
    assert_eq!(unsafe { libc::munmap(addr as *mut libc::c_void, len) }, 0);
}

#[test]
fn a_hit_reuses_the_registration_and_its_slot() {
    let Some(cache) = cache_or_skip(
        "a_hit_reuses_the_registration_and_its_slot",
        UringConfig::default(),
    ) else {
        return;
    };
    let addr = map_anon(4 * PAGE);
    let (id, index) = {
        let buf = cache.get(addr + 100, 2 * PAGE as u64).expect("miss");
        (buf.id(), buf.registration().index())
    };
    let buf = cache.get(addr + 5000, 10).expect("hit");
    assert_eq!((buf.id(), buf.registration().index()), (id, index));
    assert_eq!(cache.stats().registrations, 1);
    drop(buf);
    unmap(addr, 4 * PAGE);
}

#[test]
fn mapping_over_a_registration_empties_its_slot_before_mmap_returns() {
    let test = "mapping_over_a_registration_empties_its_slot_before_mmap_returns";
    let Some(cache) = cache_or_skip(test, UringConfig::default()) else {
        return;
    };
    let file = PatternFile::new("slot", 1 << 16);
    let addr = map_anon(2 * PAGE);
    let index = cache
        .get(addr, PAGE as u64)
        .expect("register")
        .registration()
        .index();
    assert_eq!(read_through_slot(&cache, &file, addr, 64, index), 64);
    // SAFETY: the mapping the read just filled.
    let landed = unsafe { std::slice::from_raw_parts(addr as *const u8, 64) };
    assert!(
        landed
            .iter()
            .enumerate()
            .all(|(i, &b)| b == expected(i as u64))
    );
    // New pages at the same addresses (mmap(MAP_FIXED) is hooked: the
    // callback runs before the old pages go).
    map_fixed(addr, 2 * PAGE);
    // A device still naming the slot reaches nothing, not the old pages.
    assert_eq!(
        read_through_slot(&cache, &file, addr, 64, index),
        -libc::EFAULT
    );
    assert!(
        cache.rcache().is_empty(),
        "the registration died with the pages"
    );
    unmap(addr, 2 * PAGE);
}

#[test]
fn unmapped_and_file_backed_buffers_are_typed_errors() {
    let Some(cache) = cache_or_skip(
        "unmapped_and_file_backed_buffers_are_typed_errors",
        UringConfig::default(),
    ) else {
        return;
    };
    // Inaccessible rather than unmapped: a hole could be filled by another
    // test's mmap meanwhile (the tests share the process).
    let addr = map_anon(PAGE);
    // SAFETY: our own page.
    let protected = unsafe { libc::mprotect(addr as *mut libc::c_void, PAGE, libc::PROT_NONE) };
    assert_eq!(protected, 0);
    assert!(
        matches!(cache.get(addr, 8), Err(UringError::Unmapped)),
        "{:?}",
        cache.get(addr, 8).err()
    );
    unmap(addr, PAGE);
    let file = PatternFile::new("backed", 1 << 16);
    // SAFETY: a fresh shared mapping of our own file.
    let mapped = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.file.as_fd().as_raw_fd(),
            0,
        )
    };
    assert_ne!(mapped, libc::MAP_FAILED);
    let err = cache.get(mapped as u64, 8).err();
    assert!(matches!(err, Some(UringError::FileBacked)), "{err:?}");
    unmap(mapped as u64, PAGE);
    assert_eq!(
        cache.rcache().notifiers(),
        0,
        "failed registrations leave no notifier"
    );
}

#[test]
fn a_full_table_is_a_typed_error() {
    let config = UringConfig {
        slots: 1,
        ..UringConfig::default()
    };
    let Some(cache) = cache_or_skip("a_full_table_is_a_typed_error", config) else {
        return;
    };
    let addr = map_anon(3 * PAGE);
    let first = cache.get(addr, 1).expect("the one slot");
    let err = cache.get(addr + 2 * PAGE as u64, 1).err();
    assert!(matches!(err, Some(UringError::NoFreeSlot(1))), "{err:?}");
    drop(first);
    unmap(addr, 3 * PAGE);
    let again = map_anon(PAGE);
    cache
        .get(again, 1)
        .expect("the slot came back with the invalidation");
    unmap(again, PAGE);
}

/// With the PFN check a hit on a registration the cache kept past an
/// invalidation (the injected bug) is reported; without the bug the same
/// steps pass the check.
#[test]
fn the_pfn_check_reports_a_stale_hit() {
    for bug in [None, Some(Bug::KeepStaleRegistration)] {
        let config = UringConfig {
            check_pfn: true,
            bug,
            ..UringConfig::default()
        };
        let Some(cache) = cache_or_skip("the_pfn_check_reports_a_stale_hit", config) else {
            return;
        };
        let addr = map_anon(PAGE);
        // SAFETY: our own mapping: fault the page in.
        unsafe { std::ptr::write_bytes(addr as *mut u8, 1, PAGE) };
        cache.get(addr, PAGE as u64).expect("register");
        // New pages at the same address.
        map_fixed(addr, PAGE);
        // SAFETY: fault the new page in.
        unsafe { std::ptr::write_bytes(addr as *mut u8, 2, PAGE) };
        let got = cache.get(addr, PAGE as u64).map(|b| b.id());
        match bug {
            None => assert!(got.is_ok(), "{got:?}"),
            Some(_) => assert!(
                matches!(got, Err(UringError::PfnMismatch { va, .. }) if va == addr),
                "{got:?}"
            ),
        }
        drop(cache);
        unmap(addr, PAGE);
    }
}
