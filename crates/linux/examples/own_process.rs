//! The calling process's own memory, followed by an interval notifier:
//! a device-mirror-style subscriber learns about `free()`, `madvise` and
//! `mprotect` of its buffer before they happen, in the calling thread.
//!
//! `cargo run -p mmun-linux --example own_process`

use std::sync::Mutex;

use mmun_core::{Event, IntervalNotifier, IntervalNotifierOps, IntervalSub, Range, Seq};

/// What the mirror saw: (event, start, end). A Mutex<Vec> reserved up
/// front: callbacks must not allocate (they may run inside free()).
struct Mirror {
    seen: Mutex<Vec<(Event, u64, u64)>>,
}

impl IntervalNotifierOps for Mirror {
    fn invalidate(&self, sub: &IntervalSub, range: &Range<'_>, cur_seq: Seq) -> bool {
        let mut seen = self.seen.lock().unwrap();
        sub.set_seq(cur_seq);
        if seen.len() < seen.capacity() {
            seen.push((range.event(), range.start(), range.end()));
        }
        true
    }
}

fn main() {
    if let Err(e) = mmun_linux::install() {
        eprintln!("hooks unavailable here: {e}");
        std::process::exit(77);
    }
    let len = 8 << 20; // above glibc's mmap threshold: its own mapping
    let buf = vec![1u8; len];
    let start = buf.as_ptr() as u64;
    let mirror = Mirror {
        seen: Mutex::new(Vec::with_capacity(16)),
    };
    let sub = IntervalNotifier::insert(mmun_linux::process_mm(), start, len as u64, mirror)
        .expect("insert");

    // The retry loop around a use of the buffer's translation.
    let seq = sub.read_begin();
    let first_byte = buf[0]; // "walk the primary"
    assert!(!sub.read_retry(seq));
    println!("mirrored byte {first_byte} at {start:#x}");

    let page = start & !4095;
    // SAFETY: the buffer's own pages, not used afterwards but through drop.
    unsafe {
        libc::madvise((page + 4096 * 4) as *mut _, 4096, libc::MADV_DONTNEED);
        libc::mprotect((page + 4096 * 8) as *mut _, 4096, libc::PROT_READ);
        libc::mprotect(
            (page + 4096 * 8) as *mut _,
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
        );
    }
    drop(buf); // free() → glibc's munmap → the notifier, synchronously
    assert!(sub.read_retry(seq), "the buffer changed since read_begin");

    let seen = sub.ops().seen.lock().unwrap().clone();
    for (event, s, e) in &seen {
        println!("{:<15} {:#x}..{:#x}", event.name(), s, e);
    }
    let events: Vec<Event> = seen.iter().map(|s| s.0).collect();
    assert_eq!(
        events,
        [
            Event::Clear,
            Event::ProtectionVma,
            Event::ProtectionVma,
            Event::Unmap
        ],
        "madvise, mprotect twice, then free()"
    );
}
