//! A raw `brk` shrink of a watched heap top is delivered as UNMAP. Alone in
//! its binary: it moves the program break under glibc's feet, so no other
//! test may allocate meanwhile (the recorder does not allocate).

mod uffd_support;

use mmun_linux::uffd::{LateChange, Watch};
use uffd_support::*;

fn raw_brk(to: u64) -> u64 {
    // SAFETY: brk(0) queries; growing then shrinking back to the same break
    // leaves glibc's cached break valid.
    unsafe { libc::syscall(libc::SYS_brk, to as usize) as u64 }
}

#[test]
fn raw_brk_shrink_is_delivered_as_unmap() {
    let Some(net) = net_or_skip("raw_brk_shrink_is_delivered_as_unmap") else {
        return;
    };
    let cur = raw_brk(0);
    let base = (cur + PAGE - 1) & !(PAGE - 1);
    let top = base + 16 * PAGE;
    assert_eq!(raw_brk(top), top, "grow the break by 16 pages");
    // SAFETY: the pages just added to the heap are ours until we shrink.
    unsafe { std::ptr::write_bytes(base as *mut u8, 1, (16 * PAGE) as usize) };
    assert_eq!(net.watch(base, top).unwrap(), Watch::Armed);
    assert_eq!(raw_brk(cur), cur, "shrink back");
    assert!(
        wait_for(LateChange::Unmap {
            start: base,
            end: top
        }),
        "delivered: {:x?}",
        delivered()
    );
}
