//! brk/sbrk shrink and glibc's heap trimming (`malloc_trim` → `__sbrk` →
//! `__brk`, and `__madvise` for thread arenas). One test in its own binary:
//! moving the break under other threads' malloc would be unsafe.

mod common;

use common::{PAGE, one_pair, recorder};
use mmun_core::Event;

// SAFETY: the prototype of glibc's `malloc_trim` (<malloc.h>).
unsafe extern "C" {
    fn malloc_trim(pad: usize) -> libc::c_int;
}

#[test]
fn brk_shrink_and_heap_trimming_invalidate_synchronously() {
    mmun_linux::install().expect("libc patched");
    let rec = recorder();

    // sbrk: grow (silent), fill, shrink by 8 pages.
    // SAFETY: this test is the only user of the break while it runs (its
    // binary has no other test); the memory grown is ours until shrunk.
    unsafe {
        let base = libc::sbrk(0) as u64;
        let top_before = base;
        rec.watch(base, base + 64 * PAGE as u64);
        assert_ne!(libc::sbrk((16 * PAGE) as isize) as isize, -1);
        assert!(rec.take().is_empty(), "growing the break changes nothing");
        std::ptr::write_bytes(base as *mut u8, 0x42, 16 * PAGE);
        rec.watch(base, base + 64 * PAGE as u64);
        assert_ne!(libc::sbrk(-((8 * PAGE) as isize)) as isize, -1);
        let (start, end) = one_pair(&rec.take());
        let page_up = |x: u64| (x + PAGE as u64 - 1) & !(PAGE as u64 - 1);
        let expect = (
            page_up(top_before + 8 * PAGE as u64),
            page_up(top_before + 16 * PAGE as u64),
        );
        assert_eq!(
            (start.event, start.start, start.end),
            (Event::Unmap, expect.0, expect.1)
        );
        assert_eq!(start.byte, Some(0x42), "start sees the heap page");
        assert_eq!(end.perms, *b"----", "end sees it gone");
        assert_eq!(
            libc::sbrk(0) as u64,
            top_before + 8 * PAGE as u64,
            "__curbrk stays coherent"
        );
        // brk() itself, back to where we started.
        rec.watch(base, base + 64 * PAGE as u64);
        assert_eq!(libc::brk(top_before as *mut _), 0);
        let (start, _) = one_pair(&rec.take());
        assert_eq!((start.event, start.end), (Event::Unmap, expect.0));
        assert_eq!(libc::sbrk(0) as u64, top_before);
    }

    // malloc_trim: free 4096 chunks of 4 KiB from this thread's arena,
    // (free() trims past the threshold, malloc_trim the rest): glibc gives
    // the pages back from inside itself.
    let chunks: Vec<Box<[u8; 4000]>> = (0..4096).map(|_| Box::new([1u8; 4000])).collect();
    let lo = chunks.iter().map(|c| c.as_ptr() as u64).min().unwrap();
    let hi = chunks.iter().map(|c| c.as_ptr() as u64).max().unwrap() + 4000;
    // free() itself trims once the top chunk passes the trim threshold.
    rec.watch(lo, hi);
    drop(chunks);
    // SAFETY: malloc_trim has no preconditions.
    unsafe { malloc_trim(0) };
    let seen = rec.take();
    assert!(
        seen.iter()
            .any(|s| s.start_phase && matches!(s.event, Event::Clear | Event::Unmap)),
        "malloc_trim returned no freed page through a hook: {seen:#x?}"
    );
}
