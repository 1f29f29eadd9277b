//! io_uring fixed buffers through the registration cache: a buffer is
//! registered on first use, later reads hit, and `free()` of the buffer
//! empties its slot before the memory goes, so a new buffer at the same
//! address gets a fresh registration instead of the old pages.
//!
//! `cargo run -p mmun-uring --example fixed_buffers`

use std::io::Write;
use std::os::fd::AsFd;

use mmun_uring::{UringCache, UringConfig, UringError};

/// 1 MiB: malloc serves it with mmap, so free() unmaps it.
const LEN: usize = 1 << 20;

fn main() -> Result<(), UringError> {
    // A fixed mmap threshold: glibc otherwise raises it after the first
    // free() of a large block, and serves the next ones from the heap,
    // where free() keeps the pages mapped (and the registration valid).
    // SAFETY: a plain malloc tuning call, before any thread starts.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024) };
    let cache = match UringCache::new(UringConfig::default()) {
        Ok(cache) => cache,
        Err(
            err @ (UringError::Hooks(_)
            | UringError::Disabled
            | UringError::NotPermitted
            | UringError::Unsupported),
        ) => {
            println!("skipped: {err}");
            return Ok(());
        }
        Err(err) => return Err(err),
    };
    let mut file = tempfile()?;
    file.write_all(&(0..LEN).map(|i| (i % 251) as u8).collect::<Vec<u8>>())?;

    let mut buf = vec![0u8; LEN];
    let first = buf.as_ptr() as u64;
    for offset in [0, 4096, 8192] {
        let n = cache.read_fixed(file.as_fd(), offset, &mut buf[..4096])?;
        assert_eq!(n, 4096);
        assert!(
            buf[..4096]
                .iter()
                .enumerate()
                .all(|(i, &b)| b == ((offset as usize + i) % 251) as u8)
        );
    }
    let s = cache.stats();
    println!(
        "3 reads into one buffer: {} registration, {} invalidations",
        s.registrations, s.invalidations
    );

    drop(buf); // free() → munmap → the slot is emptied first
    let s = cache.stats();
    println!(
        "after free(): {} invalidation, {} live registrations",
        s.invalidations,
        cache.rcache().len()
    );

    let mut again = vec![0u8; LEN];
    let n = cache.read_fixed(file.as_fd(), 12288, &mut again[..4096])?;
    assert_eq!(n, 4096);
    assert!(
        again[..4096]
            .iter()
            .enumerate()
            .all(|(i, &b)| b == ((12288 + i) % 251) as u8)
    );
    assert_eq!(cache.stats().registrations, 2);
    println!(
        "a new buffer{}: registered again ({} registrations), the data is where the new buffer is",
        if again.as_ptr() as u64 == first {
            " at the same address"
        } else {
            ""
        },
        cache.stats().registrations
    );
    Ok(())
}

/// An unnamed temporary file.
fn tempfile() -> std::io::Result<std::fs::File> {
    let path = std::env::temp_dir().join(format!("mmun-uring-example-{}", std::process::id()));
    let file = std::fs::File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(file)
}
