//! The userfaultfd net's costs, measured side by side in one run (medians;
//! the variants are interleaved round by round, so that machine noise hits
//! them alike):
//!
//! * event rate: `madvise(DONTNEED)` of one page of a registered range,
//!   which blocks until the handler has read the REMOVE event — through
//!   the net (decode, book-keeping, `deliver`) vs a bare reader thread that
//!   does nothing but `poll` + `read`;
//! * `munmap` of a populated 16-page range: unwatched, watched by the net,
//!   and registered on the bare reader.
//!
//! `cargo bench -p mmun-linux --bench uffd` (prints a table; skips without
//! userfaultfd).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use mmun_linux::uffd::{LateChange, UffdNet, Watch};

const PAGE: usize = 4096;
const ROUNDS: usize = 40;
const PER_ROUND: usize = 250;

static DELIVERED: AtomicU64 = AtomicU64::new(0);

fn deliver(_: LateChange) {
    DELIVERED.fetch_add(1, Ordering::Relaxed);
}

/// A bare userfaultfd reader: one context, one thread that only reads.
struct Bare {
    uffd: Arc<OwnedFd>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Bare {
    fn start() -> Bare {
        // SAFETY: plain syscall; UFFD_USER_MODE_ONLY = 1.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_userfaultfd,
                libc::O_CLOEXEC | libc::O_NONBLOCK | 1,
            )
        };
        assert!(fd >= 0, "userfaultfd");
        // SAFETY: a fresh fd.
        let uffd = Arc::new(unsafe { OwnedFd::from_raw_fd(fd as i32) });
        // UFFDIO_API asking for UNMAP|REMOVE|REMAP, like the net.
        let mut api = [0xAAu64, 0x40 | 0x8 | 0x4, 0];
        // SAFETY: UFFDIO_API on a stack struct of three u64.
        let rc = unsafe { libc::ioctl(uffd.as_raw_fd(), 0xc018aa3f, api.as_mut_ptr()) };
        assert_eq!(rc, 0);
        let stop = Arc::new(AtomicBool::new(false));
        let (fd, flag) = (Arc::clone(&uffd), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 64 * 32];
            while !flag.load(Ordering::Relaxed) {
                let mut p = libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one pollfd on the stack; 10 ms timeout to see `stop`.
                if unsafe { libc::poll(&mut p, 1, 10) } > 0 {
                    // SAFETY: reads into our stack buffer.
                    unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                }
            }
        });
        Bare {
            uffd,
            stop,
            thread: Some(thread),
        }
    }

    fn register(&self, addr: usize, len: usize) {
        let mut reg = [addr as u64, len as u64, 2, 0]; // MODE_WP
        // SAFETY: UFFDIO_REGISTER on a stack struct of four u64.
        let rc = unsafe { libc::ioctl(self.uffd.as_raw_fd(), 0xc020aa00, reg.as_mut_ptr()) };
        assert_eq!(rc, 0);
    }
}

impl Drop for Bare {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn map(pages: usize, populate: bool) -> usize {
    let flags =
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | if populate { libc::MAP_POPULATE } else { 0 };
    // SAFETY: a fresh anonymous mapping.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            pages * PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    p as usize
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// ns per `madvise(DONTNEED)` of one page (one REMOVE event each).
fn madvise_round(base: usize) -> f64 {
    let t = Instant::now();
    for i in 0..PER_ROUND {
        // SAFETY: our own registered mapping of PER_ROUND pages.
        unsafe { libc::madvise((base + i * PAGE) as *mut _, PAGE, libc::MADV_DONTNEED) };
    }
    t.elapsed().as_nanos() as f64 / PER_ROUND as f64
}

/// ns per `munmap` of a populated 16-page range; `arm` registers it first
/// (not timed).
fn munmap_round(arm: &dyn Fn(usize)) -> f64 {
    let mut total = 0u128;
    for _ in 0..PER_ROUND / 5 {
        let a = map(16, true);
        arm(a);
        let t = Instant::now();
        // SAFETY: our own mapping.
        unsafe { libc::munmap(a as *mut _, 16 * PAGE) };
        total += t.elapsed().as_nanos();
    }
    total as f64 / (PER_ROUND / 5) as f64
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let net = match UffdNet::start(deliver) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("uffd bench: skipped: {e}");
            return;
        }
    };
    let bare = Bare::start();
    let net_area = map(PER_ROUND, false);
    let bare_area = map(PER_ROUND, false);
    assert_eq!(
        net.watch(net_area as u64, (net_area + PER_ROUND * PAGE) as u64)
            .unwrap(),
        Watch::Armed
    );
    bare.register(bare_area, PER_ROUND * PAGE);

    let (mut ev_net, mut ev_bare) = (Vec::new(), Vec::new());
    let (mut un_plain, mut un_net, mut un_bare) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        ev_net.push(madvise_round(net_area));
        ev_bare.push(madvise_round(bare_area));
        un_plain.push(munmap_round(&|_| {}));
        un_net.push(munmap_round(&|a| {
            assert_eq!(
                net.watch(a as u64, (a + 16 * PAGE) as u64).unwrap(),
                Watch::Armed
            );
        }));
        un_bare.push(munmap_round(&|a| bare.register(a, 16 * PAGE)));
    }
    let (en, eb) = (median(&mut ev_net), median(&mut ev_bare));
    let (up, un, ub) = (
        median(&mut un_plain),
        median(&mut un_net),
        median(&mut un_bare),
    );
    println!("uffd net bench: medians of {ROUNDS} rounds, interleaved");
    println!("  REMOVE event round trip (madvise DONTNEED 1 page):");
    println!(
        "    bare reader      {eb:9.0} ns   {:8.0} events/s",
        1e9 / eb
    );
    println!(
        "    net              {en:9.0} ns   {:8.0} events/s   rate net/bare = {:.2}",
        1e9 / en,
        eb / en
    );
    println!("  munmap of a populated 16-page range:");
    println!("    unwatched        {up:9.0} ns");
    println!(
        "    bare-registered  {ub:9.0} ns   {:.2}x unwatched",
        ub / up
    );
    println!(
        "    net-watched      {un:9.0} ns   {:.2}x unwatched, {:.2}x bare-registered",
        un / up,
        un / ub
    );
    println!(
        "  events delivered by the net: {}",
        DELIVERED.load(Ordering::Relaxed)
    );
}
