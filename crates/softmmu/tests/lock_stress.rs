//! Threads that share the mmap lock for read (faults, `MADV_DONTNEED`,
//! `FREE`, `COLD`, `PAGEOUT`, KSM) or hold only the rmap stand-in
//! (migration, reclaim, aging) meet in each other's windows: every start
//! and end drops the page-table lock. Here they hammer one address space
//! with huge pages, beside a thread that forks and unmaps (the mmap lock
//! for write); afterwards every frame must be free again, which fails if
//! any window let a map count or a reference go wrong (the frame
//! bookkeeping also panics at once on an unmap of an unmapped page).
//! Nothing is timed.

mod notify_log;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use mmun_core::{IntervalNotifier, IntervalNotifierOps, IntervalSub, Range, Seq};
use mmun_softmmu::{AddressSpace, Advice, Config, Memory, Prot, ThpMode};

const B: u64 = 0x2000_0000_0000;
const P: u64 = 0x1000;
const M2: u64 = 0x20_0000;
/// The hammered region: four huge-page blocks.
const LEN: u64 = 4 * M2;
const PAGES: u64 = LEN / P;

/// A secondary MMU that takes its time in every callback, so that the
/// windows the callbacks open are wide enough for the other threads.
struct Slow;

impl IntervalNotifierOps for Slow {
    fn invalidate(&self, sub: &IntervalSub, _range: &Range<'_>, cur_seq: Seq) -> bool {
        sub.set_seq(cur_seq);
        std::thread::yield_now();
        true
    }
}

/// xorshift64*: each thread's own sequence of choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A page-aligned piece of the region, often crossing a huge page's
    /// edge or covering only part of one.
    fn piece(&mut self) -> (u64, u64) {
        let first = self.below(PAGES);
        let pages = 1 + self.below((PAGES - first).min(700));
        (B + first * P, pages * P)
    }
}

fn spawn_loop(
    space: &Arc<AddressSpace>,
    stop: &Arc<AtomicBool>,
    seed: u64,
    mut step: impl FnMut(&AddressSpace, &mut Rng) + Send + 'static,
) -> std::thread::JoinHandle<u64> {
    let (space, stop) = (Arc::clone(space), Arc::clone(stop));
    std::thread::spawn(move || {
        let mut rng = Rng(seed);
        let mut steps = 0u64;
        while !stop.load(Ordering::Relaxed) {
            step(&space, &mut rng);
            steps += 1;
        }
        steps
    })
}

fn fault(space: &AddressSpace, rng: &mut Rng) {
    let addr = B + rng.below(PAGES) * P;
    let _ = space.access(addr, rng.below(3) != 0);
}

fn advise(space: &AddressSpace, rng: &mut Rng) {
    let (addr, len) = rng.piece();
    let advice = [
        Advice::PageOut,
        Advice::Cold,
        Advice::Free,
        Advice::DontNeed,
    ][rng.below(4) as usize];
    // ENOMEM: the writer thread had a piece unmapped for a moment.
    let result = space.madvise(addr, len, advice);
    assert!(
        matches!(result, Ok(()) | Err(mmun_softmmu::Errno::NoMem)),
        "{advice:?}: {result:?}"
    );
}

fn from_the_rmap(space: &AddressSpace, rng: &mut Rng) {
    let (addr, len) = rng.piece();
    match rng.below(4) {
        0 => drop(space.migrate(addr, addr + len)),
        1 => drop(space.reclaim(addr, addr + len)),
        2 => drop(space.age(addr, addr + len)),
        _ => drop(space.ksm_merge(addr, addr + len)),
    }
}

/// The forked children, which share the parent's pages copy-on-write.
type Children = Arc<parking_lot::Mutex<Vec<Arc<AddressSpace>>>>;

/// Forks (children exit later) and now and then unmaps and maps a piece
/// again.
fn with_the_write_lock(space: &AddressSpace, rng: &mut Rng, children: &Children) {
    match rng.below(8) {
        0 if children.lock().len() < 2 => {
            let child = Arc::new(space.fork());
            children.lock().push(child);
        }
        1 => {
            let child = children.lock().pop();
            if let Some(child) = child {
                child.exit();
            }
        }
        2 => {
            let (addr, len) = rng.piece();
            space.munmap(addr, len).expect("munmap");
            notify_log::map(space, addr, len, Prot::RW);
        }
        _ => std::thread::yield_now(),
    }
}

/// What a child does with the pages it shares: faults (a write copies),
/// and the same advices, under its own locks, beside everything the parent
/// does to the same frames.
fn in_a_child(children: &Children, rng: &mut Rng) {
    let child = {
        let children = children.lock();
        if children.is_empty() {
            None
        } else {
            Some(Arc::clone(
                &children[rng.below(children.len() as u64) as usize],
            ))
        }
    };
    match child {
        Some(child) if rng.below(2) == 0 => fault(&child, rng),
        Some(child) => advise(&child, rng),
        None => std::thread::yield_now(),
    }
}

/// One run: the four kinds of threads for `iterations` faults.
fn hammer(seed: u64, iterations: u64) {
    let memory = Arc::new(Memory::new());
    let space = Arc::new(AddressSpace::with_config(
        Arc::clone(&memory),
        Config {
            thp: ThpMode::Always,
            thp_zero_page: true,
        },
    ));
    notify_log::map(&space, B, LEN, Prot::RW);
    // The huge zero page stays once allocated: allocate it first.
    memory.huge_zero().expect("a free huge page");
    let baseline = memory.allocated();
    let slow = IntervalNotifier::insert(space.mm(), B, LEN, Slow).expect("interval notifier");
    let stop = Arc::new(AtomicBool::new(false));
    let children = Children::default();
    let others = [
        spawn_loop(&space, &stop, seed ^ 0x1111, fault),
        spawn_loop(&space, &stop, seed ^ 0x2222, advise),
        spawn_loop(&space, &stop, seed ^ 0x5555, advise),
        spawn_loop(&space, &stop, seed ^ 0x3333, from_the_rmap),
        {
            let (space, stop, children) =
                (Arc::clone(&space), Arc::clone(&stop), Arc::clone(&children));
            std::thread::spawn(move || {
                let mut rng = Rng(seed ^ 0x4444);
                while !stop.load(Ordering::Relaxed) {
                    with_the_write_lock(&space, &mut rng, &children);
                }
                0
            })
        },
        {
            let (stop, children) = (Arc::clone(&stop), Arc::clone(&children));
            std::thread::spawn(move || {
                let mut rng = Rng(seed ^ 0x6666);
                let mut steps = 0;
                while !stop.load(Ordering::Relaxed) {
                    in_a_child(&children, &mut rng);
                    steps += 1;
                }
                steps
            })
        },
    ];
    let mut rng = Rng(seed);
    for _ in 0..iterations {
        fault(&space, &mut rng);
    }
    stop.store(true, Ordering::Relaxed);
    let steps: Vec<u64> = others
        .into_iter()
        .map(|t| t.join().expect("a hammering thread panicked"))
        .collect();
    children.lock().drain(..).for_each(|child| child.exit());
    assert!(
        steps[1..4].iter().all(|&n| n > 0),
        "every thread beside the faults ran (advice, advice, rmap): {steps:?}"
    );
    slow.remove();
    space.exit();
    assert_eq!(
        memory.allocated(),
        baseline,
        "frames left allocated after every mapping is gone (seed {seed})"
    );
}

/// Faults per run: the windows are what matter, so a debug build (about
/// ten times slower) runs fewer.
const FAULTS: u64 = if cfg!(debug_assertions) {
    100_000
} else {
    1_000_000
};

#[test]
fn readers_and_rmap_walkers_in_each_others_windows_keep_the_frames_counted() {
    for seed in 1..=4u64 {
        hammer(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15), FAULTS);
    }
}
