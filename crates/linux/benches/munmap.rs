//! `munmap` of a populated 16-page range: the raw system call ("bare"),
//! the hooked libc call with no subscriber, under an interval notifier
//! (hooks only), and with the userfaultfd net armed on the range. Each
//! iteration maps and populates the range first (untimed, MAP_FIXED at one
//! reserved address so that the notifier and the net keep covering it).
//!
//! `cargo bench -p mmun-linux --bench munmap`; compare the medians of one
//! run (the machine is noisy; "bare" runs twice to show the drift). Each
//! comparison is also measured interleaved (bare and hooked alternating
//! per iteration, 20,000 each, medians and their ratio printed), which
//! keeps load drift out of the ratio.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion};
use mmun_core::{IntervalNotifier, IntervalNotifierOps, IntervalSub, Range, Seq};

const LEN: usize = 16 * 4096;

struct Mirror;
impl IntervalNotifierOps for Mirror {
    fn invalidate(&self, sub: &IntervalSub, _range: &Range<'_>, cur_seq: Seq) -> bool {
        sub.set_seq(cur_seq);
        true
    }
}

fn populate(at: u64) {
    // SAFETY: (re)maps the bench's reserved range.
    let p = unsafe {
        libc::mmap(
            at as *mut _,
            LEN,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_POPULATE,
            -1,
            0,
        )
    };
    assert_eq!(p as u64, at);
}

fn bare(at: u64) {
    // SAFETY: unmaps the bench's range behind libc's back.
    let r = unsafe { libc::syscall(libc::SYS_munmap, at, LEN) };
    assert_eq!(r, 0);
}

fn hooked(at: u64) {
    // SAFETY: unmaps the bench's range through (patched) libc.
    let r = unsafe { libc::munmap(at as *mut _, LEN) };
    assert_eq!(r, 0);
}

/// Nanoseconds of one `f(at)` after a fresh `populate(at)`.
fn once(at: u64, f: fn(u64)) -> u64 {
    populate(at);
    let t = std::time::Instant::now();
    f(black_box(at));
    t.elapsed().as_nanos() as u64
}

fn median(mut v: Vec<u64>) -> f64 {
    v.sort_unstable();
    v[v.len() / 2] as f64
}

/// The same comparison with the two variants alternating iteration by
/// iteration, so that the machine's load drifts over both alike: prints
/// both medians and their ratio.
fn interleaved(name: &str, (a_at, a): (u64, fn(u64)), (b_at, b): (u64, fn(u64))) {
    const N: usize = 20_000;
    let (mut ta, mut tb) = (Vec::with_capacity(N), Vec::with_capacity(N));
    for i in 0..2 * N {
        if i % 2 == 0 {
            ta.push(once(a_at, a));
        } else {
            tb.push(once(b_at, b));
        }
    }
    let (ma, mb) = (median(ta), median(tb));
    println!(
        "interleaved {name}: bare {:.2} µs, hooked {:.2} µs, ratio {:.3}",
        ma / 1e3,
        mb / 1e3,
        mb / ma
    );
}

fn run(c: &mut Criterion, name: &str, at: u64, f: fn(u64)) {
    c.bench_function(name, |b| {
        b.iter_batched(
            || populate(at),
            |()| f(black_box(at)),
            BatchSize::PerIteration,
        );
    });
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
        .configure_from_args();
    mmun_linux::install().expect("libc patched");
    let at = reserve();
    // Bare calls of the uffd comparison run on memory nobody watches: the
    // target is the cost over a plain munmap, not over a watched one.
    let unwatched = reserve();

    run(&mut c, "munmap16/bare", at, bare);
    run(&mut c, "munmap16/hooked_no_subscriber", at, hooked);
    interleaved("no subscriber", (at, bare), (at, hooked));
    let sub = IntervalNotifier::insert(mmun_linux::process_mm(), at, LEN as u64, Mirror).unwrap();
    run(&mut c, "munmap16/hooked_interval", at, hooked);
    interleaved("interval notifier", (unwatched, bare), (at, hooked));
    run(&mut c, "munmap16/bare_again", at, bare);
    drop(sub);
    populate(at); // mapped again while the net's thread starts
    match mmun_linux::net::start_uffd() {
        Ok(_) => {
            let _sub =
                IntervalNotifier::insert(mmun_linux::process_mm(), at, LEN as u64, Mirror).unwrap();
            run(&mut c, "munmap16/hooked_interval_uffd_armed", at, hooked);
            interleaved(
                "interval notifier + uffd net armed",
                (unwatched, bare),
                (at, hooked),
            );
            interleaved(
                "uffd net armed, raw syscall (the net's late path)",
                (unwatched, bare),
                (at, bare),
            );
        }
        Err(e) => eprintln!("uffd bench skipped: {e}"),
    }
    c.final_summary();
}

/// A 16-page range in the middle of three reserved ones.
fn reserve() -> u64 {
    // SAFETY: reserves three ranges' worth of address space and benches in
    // the middle one. The guards on both sides stay mapped, so nothing that
    // needs more than 16 free pages (a thread stack: the uffd net's handler
    // thread starts mid-run) can be placed where `populate` maps with
    // MAP_FIXED — which would silently replace it.
    let reserved = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            3 * LEN,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    } as u64;
    reserved + LEN as u64
}
