//! The software MMU's fast paths, side by side in one run:
//!
//! * `fault/anon_write_4k`: one 4 KiB anonymous write fault on a page
//!   never touched before (a 1 GiB private rw mapping, walked page by page
//!   and recreated outside the timed part when used up); `..._with_notifier`
//!   the same with one list notifier with empty callbacks registered
//!   (filling an empty PTE notifies nothing: this is the cost of having a
//!   subscriber at all);
//! * `munmap/*`: munmap of 64 MiB, 256 MiB and 1 GiB of populated private
//!   anonymous memory, in the software MMU and in the real kernel of this
//!   machine (populated with `MAP_POPULATE` outside the timed part).
//!
//! Before the benches, the page-table bytes per mapped 4 KiB page of a
//! populated 1 GiB mapping are printed to stderr; after them, the munmap
//! cost per page of both sides and their ratio (medians of the per-iteration
//! times criterion measured).

// The kernel side of the munmap comparison needs raw mmap/munmap calls.
#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use mmun_core::{Notifier, NotifierOps, StartFn};
use mmun_softmmu::layout::PAGE_SIZE;
use mmun_softmmu::{AddressSpace, MapRequest, Memory, Prot};
use rustix::mm::{MapFlags, ProtFlags, mmap_anonymous, munmap};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// Where the fault bench maps its memory (page-table-aligned, far from 0).
const BASE: u64 = 0x1000_0000_0000;

static EMPTY_START_END: NotifierOps<()> = NotifierOps {
    invalidate_range_start: Some(StartFn::Infallible(|_, _| {})),
    invalidate_range_end: Some(|_, _| {}),
    ..NotifierOps::EMPTY
};

fn rw() -> Prot {
    Prot {
        read: true,
        write: true,
        exec: false,
    }
}

/// A fresh address space (with its own memory) holding one private rw
/// mapping of `len` bytes at [`BASE`], populated or not.
fn mapped_space(len: u64, populate: bool) -> AddressSpace {
    // RAM for the whole mapping and then some: the default 1 GiB machine
    // cannot hold a populated 1 GiB mapping plus the zero page.
    let space = AddressSpace::new(Arc::new(Memory::with_bytes(4 * GIB)));
    let addr = space
        .mmap(MapRequest {
            addr: BASE,
            len,
            prot: rw(),
            fixed: true,
            populate,
            ..MapRequest::default()
        })
        .expect("mmap of the bench mapping");
    assert_eq!(addr, BASE);
    space
}

/// A 1 GiB mapping being faulted in page by page. The notifier (if any) is
/// dropped before the address space.
struct FaultArena {
    _notifier: Option<Notifier<()>>,
    space: AddressSpace,
    next: u64,
}

impl FaultArena {
    fn new(with_notifier: bool) -> FaultArena {
        let space = mapped_space(GIB, false);
        let notifier = with_notifier.then(|| {
            Notifier::register(space.mm(), &EMPTY_START_END, ()).expect("register notifier")
        });
        FaultArena {
            _notifier: notifier,
            space,
            next: BASE,
        }
    }

    fn pages_left(&self) -> u64 {
        (BASE + GIB - self.next) / PAGE_SIZE
    }
}

fn bench_fault(c: &mut Criterion) {
    let mut group = c.benchmark_group("fault");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
        .throughput(Throughput::Elements(1));
    for (name, with_notifier) in [
        ("anon_write_4k", false),
        ("anon_write_4k_with_notifier", true),
    ] {
        let mut arena = FaultArena::new(with_notifier);
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    if arena.pages_left() == 0 {
                        // Untimed: the old space is torn down, a new one made.
                        arena = FaultArena::new(with_notifier);
                    }
                    let n = left.min(arena.pages_left());
                    let space = &arena.space;
                    let mut addr = arena.next;
                    let t = Instant::now();
                    for _ in 0..n {
                        space.access(black_box(addr), true).expect("write fault");
                        addr += PAGE_SIZE;
                    }
                    total += t.elapsed();
                    arena.next = addr;
                    left -= n;
                }
                total
            });
        });
    }
    group.finish();
}

/// Per-iteration munmap times, by bench id, for the summary.
static MUNMAP_TIMES: Mutex<BTreeMap<(u64, &str), Vec<Duration>>> = Mutex::new(BTreeMap::new());

fn record(len: u64, side: &'static str, d: Duration) {
    MUNMAP_TIMES
        .lock()
        .expect("not poisoned")
        .entry((len, side))
        .or_default()
        .push(d);
}

/// A populated private anonymous mapping of the real kernel.
fn kernel_populated(len: u64) -> *mut std::ffi::c_void {
    // SAFETY: a fresh private anonymous mapping at a kernel-chosen address
    // overlaps nothing; only this bench uses it, and `kernel_munmap`
    // unmaps it exactly once.
    unsafe {
        mmap_anonymous(
            std::ptr::null_mut(),
            len as usize,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::PRIVATE | MapFlags::POPULATE,
        )
    }
    .expect("kernel mmap")
}

fn kernel_munmap(ptr: *mut std::ffi::c_void, len: u64) {
    // SAFETY: `ptr` is a mapping of `len` bytes from `kernel_populated`,
    // private to this bench, no reference into it exists, and it is
    // unmapped exactly once, here.
    unsafe { munmap(ptr, len as usize) }.expect("kernel munmap");
}

fn label(len: u64) -> String {
    if len >= GIB {
        format!("{}GiB", len / GIB)
    } else {
        format!("{}MiB", len / MIB)
    }
}

fn bench_munmap(c: &mut Criterion) {
    let mut group = c.benchmark_group("munmap");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20)
        .sampling_mode(SamplingMode::Flat);
    for len in [64 * MIB, 256 * MIB, GIB] {
        group.throughput(Throughput::Elements(len / PAGE_SIZE));
        group.bench_function(
            BenchmarkId::new("softmmu", format!("{}_populated", label(len))),
            |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let space = mapped_space(len, true);
                        let t = Instant::now();
                        space.munmap(BASE, len).expect("munmap");
                        let d = t.elapsed();
                        record(len, "softmmu", d);
                        total += d;
                        drop(space);
                    }
                    total
                });
            },
        );
        group.bench_function(
            BenchmarkId::new("kernel", format!("{}_populated", label(len))),
            |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let ptr = kernel_populated(len);
                        let t = Instant::now();
                        kernel_munmap(ptr, len);
                        let d = t.elapsed();
                        record(len, "kernel", d);
                        total += d;
                    }
                    total
                });
            },
        );
    }
    group.finish();
}

fn median(times: &mut [Duration]) -> Option<Duration> {
    times.sort_unstable();
    times.get(times.len() / 2).copied()
}

fn print_munmap_summary() {
    let mut times = MUNMAP_TIMES.lock().expect("not poisoned");
    if times.is_empty() {
        return;
    }
    eprintln!("\nmunmap of populated memory, median per iteration:");
    eprintln!(
        "{:>8} {:>12} {:>14} {:>12} {:>14} {:>8}",
        "size", "softmmu", "softmmu/page", "kernel", "kernel/page", "ratio"
    );
    for len in [64 * MIB, 256 * MIB, GIB] {
        let pages = (len / PAGE_SIZE) as f64;
        let soft = times.get_mut(&(len, "softmmu")).and_then(|t| median(t));
        let kern = times.get_mut(&(len, "kernel")).and_then(|t| median(t));
        let per_page = |d: Option<Duration>| d.map(|d| d.as_nanos() as f64 / pages);
        let (sp, kp) = (per_page(soft), per_page(kern));
        let show = |d: Option<Duration>| d.map_or("-".to_owned(), |d| format!("{d:.2?}"));
        let ns = |x: Option<f64>| x.map_or("-".to_owned(), |x| format!("{x:.2} ns"));
        let ratio = match (sp, kp) {
            (Some(s), Some(k)) => format!("{:.2}", s / k),
            _ => "-".to_owned(),
        };
        eprintln!(
            "{:>8} {:>12} {:>14} {:>12} {:>14} {:>8}",
            label(len),
            show(soft),
            ns(sp),
            show(kern),
            ns(kp),
            ratio
        );
    }
    eprintln!("(ratio: softmmu ns/page ÷ kernel ns/page)");
}

/// Page-table bytes per mapped 4 KiB page once 1 GiB is populated.
fn print_page_table_overhead() {
    let space = mapped_space(GIB, true);
    let pages = GIB / PAGE_SIZE;
    let bytes = space.page_table_bytes();
    eprintln!(
        "page tables after populating 1 GiB: {bytes} bytes for {pages} pages = {:.2} bytes/page",
        bytes as f64 / pages as f64
    );
}

fn main() {
    print_page_table_overhead();
    let mut c = Criterion::default().configure_from_args();
    bench_fault(&mut c);
    bench_munmap(&mut c);
    c.final_summary();
    print_munmap_summary();
}
