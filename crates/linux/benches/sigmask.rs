//! What holding back signals costs a hook (`signals::hold` and its drop:
//! two `rt_sigprocmask`), next to what it brackets: a raw `munmap` of 16
//! populated pages. Interleaved rounds (one of each per round), medians of
//! one run: `cargo bench -p mmun-linux --bench sigmask`.

use std::hint::black_box;
use std::time::Instant;

const LEN: usize = 16 * 4096;
const ROUNDS: usize = 2001;

fn populated() -> *mut libc::c_void {
    // SAFETY: a fresh populated anonymous mapping.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            LEN,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    p
}

fn raw_munmap(p: *mut libc::c_void) {
    // SAFETY: unmaps the mapping `populated` returned.
    let ret = unsafe { libc::syscall(libc::SYS_munmap, p, LEN) };
    assert_eq!(ret, 0);
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("sigmask: bench");
        return;
    }
    let (mut bare, mut held, mut pair) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let p = populated();
        let t = Instant::now();
        raw_munmap(black_box(p));
        bare.push(t.elapsed().as_nanos() as u64);

        let p = populated();
        let t = Instant::now();
        let guard = mmun_linux::signals::hold();
        raw_munmap(black_box(p));
        drop(guard);
        held.push(t.elapsed().as_nanos() as u64);

        let t = Instant::now();
        drop(black_box(mmun_linux::signals::hold()));
        pair.push(t.elapsed().as_nanos() as u64);
    }
    let (b, h, s) = (median(bare), median(held), median(pair));
    println!("munmap 16 pages, raw:               median {b} ns");
    println!(
        "munmap 16 pages, signals held back: median {h} ns (ratio {:.3})",
        h as f64 / b as f64
    );
    println!("hold + release alone:               median {s} ns");
}
