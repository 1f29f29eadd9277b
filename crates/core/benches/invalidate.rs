//! The dispatch fast paths, side by side in one run:
//!
//! * `start_end/*`: one `Invalidation::start(..).end()` with no subscriber,
//!   one list notifier with empty callbacks, and 10^3 / 10^6 interval
//!   notifiers with the range hitting exactly one (a random one each
//!   iteration, or the same one every time: cold vs hot cache);
//! * `reference/random_load_64mib`: one dependent load from a random place
//!   of a 64 MiB array, the unit of the cold-cache target;
//! * `start_end/baseline_frozen_range`: building a range frozen in the shape
//!   `Range` had when the speed targets were set, their unit;
//! * `read_begin_retry/uncontended`: the reader's side of the protocol;
//! * `insert_remove/*`: subscribing and unsubscribing one interval in a
//!   pre-filled address space, against the raw `IntervalTree` and
//!   `iset::IntervalMap` at the same size;
//! * `srcu_young/clear_young_one_notifier`: a young query under SRCU.
//!
//! Before the benches, the memory an interval notifier costs is measured
//! from the process RSS around inserting 10^6 of them and printed to
//! stderr, for the movable handles and for pinned nodes in one slice
//! (`interval_1e6_nodes_hit_one` is the cold hit on the latter).
//!
//! Interval notifiers are 4 KiB wide at an 8 KiB stride, so a 4 KiB range
//! starting at one of them overlaps it and nothing else.

use std::hint::black_box;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion};
use iset::IntervalMap;
use mmun_core::interval_btree::{IntervalBTree, Key};
use mmun_core::{
    Event, IntervalNode, IntervalNotifier, IntervalNotifierOps, IntervalSub, Invalidation, Mm,
    Notifier, NotifierOps, Range, Seq, StartFn,
};
use mmun_rbtree::IntervalTree;

const PAGE: u64 = 4096;
const STRIDE: u64 = 2 * PAGE;
/// Precomputed random targets cycled through, so consecutive iterations
/// touch unrelated parts of the tree.
const ROTATION: usize = 1024;

/// The minimal driver: acknowledges every invalidation. Zero-sized, so the
/// memory figure is the subsystem's own bookkeeping.
struct SetSeq;

impl IntervalNotifierOps for SetSeq {
    fn invalidate(&self, sub: &IntervalSub, _range: &Range<'_>, cur_seq: Seq) -> bool {
        sub.set_seq(cur_seq);
        true
    }
}

static EMPTY_START_END: NotifierOps<()> = NotifierOps {
    invalidate_range_start: Some(StartFn::Infallible(|_, _| {})),
    invalidate_range_end: Some(|_, _| {}),
    ..NotifierOps::EMPTY
};

static NOT_YOUNG: NotifierOps<()> = NotifierOps {
    clear_young: Some(|_, _, _, _| false),
    ..NotifierOps::EMPTY
};

/// xorshift64: fixed seed, no dependency, comparable runs.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// An address space with `n` interval notifiers, and random targets.
struct Fixture {
    n: usize,
    mm: Arc<Mm>,
    notifiers: Vec<IntervalNotifier<SetSeq>>,
    /// Starts of existing notifiers, each hit by `[s, s + PAGE)` alone.
    hit_starts: Vec<u64>,
    /// Page-aligned random positions inside the populated span, for new
    /// intervals (they may overlap an existing one, as real ones do).
    fresh_starts: Vec<u64>,
}

fn build(n: usize) -> Fixture {
    let mm = Mm::new();
    let mut notifiers = Vec::with_capacity(n);
    for i in 0..n as u64 {
        notifiers.push(IntervalNotifier::insert(&mm, i * STRIDE, PAGE, SetSeq).unwrap());
    }
    fixture_from(n, mm, notifiers)
}

fn fixture_from(n: usize, mm: Arc<Mm>, notifiers: Vec<IntervalNotifier<SetSeq>>) -> Fixture {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15 ^ n as u64);
    let hit_starts = (0..ROTATION)
        .map(|_| rng.below(n) as u64 * STRIDE)
        .collect();
    let span_pages = n as u64 * STRIDE / PAGE;
    let fresh_starts = (0..ROTATION)
        .map(|_| (rng.next() % span_pages) * PAGE)
        .collect();
    Fixture {
        n,
        mm,
        notifiers,
        hit_starts,
        fresh_starts,
    }
}

/// Resident set size in bytes, from `/proc/self/statm` (field 2, in pages).
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Builds the 10^6 fixture of movable handles while measuring what it
/// costs in RSS.
fn build_measured(n: usize) -> Fixture {
    let before = rss_bytes();
    let mm = Mm::new();
    let mut notifiers = Vec::with_capacity(n);
    for i in 0..n as u64 {
        notifiers.push(IntervalNotifier::insert(&mm, i * STRIDE, PAGE, SetSeq).unwrap());
    }
    let after = rss_bytes();
    let handle = size_of::<IntervalNotifier<SetSeq>>();
    eprintln!("memory per interval notifier (n = {n}, ops zero-sized):");
    match (before, after) {
        (Some(before), Some(after)) => {
            let per = (after - before) as f64 / n as f64;
            let vec_per = (notifiers.capacity() * handle) as f64 / n as f64;
            eprintln!(
                "  movable IntervalNotifier: RSS delta {:.1} MiB = {per:.1} B each, all told \
                 (the caller's Vec of {vec_per:.0} B handles, each node's malloc chunk, the tree)",
                (after - before) as f64 / (1 << 20) as f64,
            );
        }
        _ => eprintln!("  /proc/self/statm unreadable: no RSS figure"),
    }
    fixture_from(n, mm, notifiers)
}

/// 10^6 pinned nodes in one boxed slice the caller owns, the way a driver
/// embeds them, inserted like the handles.
struct NodeFixture {
    n: usize,
    mm: Arc<Mm>,
    nodes: Pin<Box<[IntervalNode<SetSeq>]>>,
}

/// Builds the pinned-node fixture while measuring what it costs in RSS.
fn build_nodes_measured(n: usize) -> NodeFixture {
    let before = rss_bytes();
    let mm = Mm::new();
    let mut nodes: Pin<Box<[IntervalNode<SetSeq>]>> =
        Box::into_pin((0..n).map(|_| IntervalNode::new(SetSeq)).collect());
    for (i, node) in IntervalNode::each_pinned(nodes.as_mut()).enumerate() {
        node.insert(&mm, i as u64 * STRIDE, PAGE).unwrap();
    }
    let after = rss_bytes();
    let node = size_of::<IntervalNode<SetSeq>>();
    if let (Some(before), Some(after)) = (before, after) {
        let per = (after - before) as f64 / n as f64;
        eprintln!(
            "  pinned IntervalNode in one boxed slice: RSS delta {:.1} MiB = {per:.1} B each, \
             all told (the caller's {node} B nodes, the tree)",
            (after - before) as f64 / (1 << 20) as f64,
        );
    }
    // The same shape as the subscriptions' index: no value, the key's id is
    // the node's address, keys inserted in ascending order.
    let mut shape = IntervalBTree::<()>::new();
    for i in 0..n as u64 {
        let start = i * STRIDE;
        let id = 0x7f00_0000_0000 + i * node as u64;
        shape.insert(Key { start, id }, start + PAGE - 1, ());
    }
    eprintln!(
        "  layout: B+-tree {:.1} B/entry owned by the subsystem; the node {node} B (header: seq \
         word, dispatch, start, mm; driver state zero-sized here); the handle {} B, its node a \
         malloc chunk",
        shape.bytes_per_entry(),
        size_of::<IntervalNotifier<SetSeq>>(),
    );
    NodeFixture { n, mm, nodes }
}

/// `Range` as it was when the speed targets were set (40 B: the mm, start,
/// end, owner, and flags/event/VMA hint in one word), frozen here so that
/// `baseline_frozen_range` keeps measuring the same thing when `Range`
/// changes shape.
#[derive(Clone, Copy)]
#[allow(dead_code, reason = "built only to be measured")]
struct FrozenRange<'mm> {
    mm: &'mm Mm,
    start: u64,
    end: u64,
    owner: Option<std::num::NonZeroUsize>,
    meta: u64,
}

impl<'mm> FrozenRange<'mm> {
    #[inline]
    fn new(mm: &'mm Mm, event: Event, start: u64, end: u64) -> FrozenRange<'mm> {
        if end < start {
            frozen_backwards(start, end);
        }
        FrozenRange {
            mm,
            start,
            end,
            owner: None,
            meta: (event as u64) << 32,
        }
    }
}

#[cold]
#[inline(never)]
fn frozen_backwards(start: u64, end: u64) -> ! {
    panic!("backwards range {start:#x}..{end:#x}");
}

fn bench_start_end(c: &mut Criterion, small: &Fixture, large: &Fixture, nodes: &NodeFixture) {
    let mut group = c.benchmark_group("start_end");

    let mm = Mm::new();
    let lock = mm.mmap_read();
    // The floor of this harness: building the range from black-boxed
    // arguments, with no invalidation at all. Subtract it from the others.
    group.bench_function("baseline_range_only", |b| {
        b.iter(|| {
            black_box(Range::new(
                &lock,
                Event::Clear,
                black_box(0),
                black_box(PAGE),
            ))
        })
    });
    // The same floor with the range frozen as it was when the targets were
    // set: the unit the targets are expressed in.
    group.bench_function("baseline_frozen_range", |b| {
        b.iter(|| {
            black_box(FrozenRange::new(
                &mm,
                Event::Clear,
                black_box(0),
                black_box(PAGE),
            ))
        })
    });
    group.bench_function("no_subscriptions", |b| {
        b.iter(|| {
            let range = Range::new(&lock, Event::Clear, black_box(0), black_box(PAGE));
            Invalidation::start(range).end();
        })
    });
    drop(lock);

    let mm = Mm::new();
    let notifier = Notifier::register(&mm, &EMPTY_START_END, ()).unwrap();
    let lock = mm.mmap_read();
    group.bench_function("one_list_notifier_empty_callbacks", |b| {
        b.iter(|| {
            let range = Range::new(&lock, Event::Clear, black_box(0), black_box(PAGE));
            Invalidation::start(range).end();
        })
    });
    drop(lock);
    notifier.unregister();

    for fx in [small, large] {
        let label = if fx.n == 1_000 { "1e3" } else { "1e6" };
        let lock = fx.mm.mmap_read();
        // Cold cache: a fresh random target every iteration (a few cycles
        // of xorshift), not a rotation the caches could learn.
        let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
        group.bench_function(format!("interval_{label}_hit_one"), |b| {
            b.iter(|| {
                let start = black_box(rng.below(fx.n) as u64 * STRIDE);
                let range = Range::new(&lock, Event::Clear, start, start + PAGE);
                Invalidation::start(range).end();
            })
        });
        let start = fx.hit_starts[0];
        group.bench_function(format!("interval_{label}_hit_same"), |b| {
            b.iter(|| {
                let start = black_box(start);
                let range = Range::new(&lock, Event::Clear, start, start + PAGE);
                Invalidation::start(range).end();
            })
        });
    }
    // The same cold hit on pinned nodes in one slice.
    let lock = nodes.mm.mmap_read();
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    group.bench_function("interval_1e6_nodes_hit_one", |b| {
        b.iter(|| {
            let start = black_box(rng.below(nodes.n) as u64 * STRIDE);
            let range = Range::new(&lock, Event::Clear, start, start + PAGE);
            Invalidation::start(range).end();
        })
    });
    drop(lock);
    group.finish();
}

/// The reference for a cold-cache lookup: one dependent load from a random
/// place of a 64 MiB array (a random cyclic permutation, each load giving
/// the next index), i.e. one cache and TLB miss to DRAM.
fn bench_reference(c: &mut Criterion) {
    const ENTRIES: usize = 64 << 20 >> 3;
    let mut rng = XorShift(0x1234_5678_9abc_def1);
    // Sattolo's algorithm: a single cycle through every entry.
    let mut next: Vec<u64> = (0..ENTRIES as u64).collect();
    for i in (1..ENTRIES).rev() {
        let j = rng.below(i);
        next.swap(i, j);
    }
    let mut group = c.benchmark_group("reference");
    let mut at = 0u64;
    group.bench_function("random_load_64mib", |b| {
        b.iter(|| {
            at = next[black_box(at) as usize];
            at
        })
    });
    group.finish();
}

fn bench_read_begin_retry(c: &mut Criterion, large: &Fixture) {
    let mut group = c.benchmark_group("read_begin_retry");
    let n = &large.notifiers[large.n / 2];
    group.bench_function("uncontended", |b| {
        b.iter(|| {
            let s = n.read_begin();
            black_box(n.read_retry(s))
        })
    });
    group.finish();
}

fn bench_insert_remove(c: &mut Criterion, fixtures: [&Fixture; 2]) {
    let mut group = c.benchmark_group("insert_remove");
    for fx in fixtures {
        let label = if fx.n == 1_000 { "1e3" } else { "1e6" };
        let mut i = 0;
        group.bench_function(BenchmarkId::new("notifier", label), |b| {
            b.iter(|| {
                i = (i + 1) % ROTATION;
                let start = black_box(fx.fresh_starts[i]);
                IntervalNotifier::insert(&fx.mm, start, PAGE, SetSeq)
                    .unwrap()
                    .remove();
            })
        });

        let mut tree = IntervalTree::with_capacity(fx.n + 1);
        for k in 0..fx.n {
            let s = k as u64 * STRIDE;
            tree.insert(s, s + PAGE - 1, k);
        }
        let mut i = 0;
        group.bench_function(BenchmarkId::new("interval_tree", label), |b| {
            b.iter(|| {
                i = (i + 1) % ROTATION;
                let s = black_box(fx.fresh_starts[i]);
                let id = tree.insert(s, s + PAGE - 1, usize::MAX);
                tree.remove(id)
            })
        });
        drop(tree);

        let mut map: IntervalMap<u64, usize> = IntervalMap::with_capacity(fx.n + 1);
        for k in 0..fx.n {
            let s = k as u64 * STRIDE;
            // iset is half-open: the closed [s, s + PAGE - 1] is s..s + PAGE.
            map.force_insert(s..s + PAGE, k);
        }
        let mut i = 0;
        group.bench_function(BenchmarkId::new("iset", label), |b| {
            b.iter(|| {
                i = (i + 1) % ROTATION;
                let s = black_box(fx.fresh_starts[i]);
                map.force_insert(s..s + PAGE, usize::MAX);
                // Match the value, so an existing equal key stays.
                map.remove_where(s..s + PAGE, |&v| v == usize::MAX)
            })
        });
        assert_eq!(map.len(), fx.n);
    }
    group.finish();
}

fn bench_srcu_young(c: &mut Criterion) {
    let mut group = c.benchmark_group("srcu_young");
    let mm = Mm::new();
    let notifier = Notifier::register(&mm, &NOT_YOUNG, ()).unwrap();
    group.bench_function("clear_young_one_notifier", |b| {
        b.iter(|| mm.clear_young(black_box(0), black_box(PAGE)))
    });
    group.finish();
    notifier.unregister();
}

fn main() {
    let large = build_measured(1_000_000);
    let nodes = build_nodes_measured(1_000_000);
    let small = build(1_000);
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
        .configure_from_args();
    bench_reference(&mut criterion);
    bench_start_end(&mut criterion, &small, &large, &nodes);
    bench_read_begin_retry(&mut criterion, &large);
    bench_insert_remove(&mut criterion, [&small, &large]);
    bench_srcu_young(&mut criterion);
    criterion.final_summary();
    for mm in [&small.mm, &large.mm, &nodes.mm] {
        assert!(mm.warnings().is_empty(), "{:?}", mm.warnings());
    }
    assert!(nodes.nodes.iter().all(|node| node.is_inserted()));
}
