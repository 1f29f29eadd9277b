//! `IntervalBTree` (what the subscriptions use) and the red-black
//! `IntervalTree` against `iset::IntervalMap`, side by side: overlap queries
//! that hit about one node, and one insert+remove, at n = 10^3 and 10^6.
//!
//! Intervals look like mappings in an address space: 4 KiB-aligned starts in
//! 2^47 bytes, lengths 4 KiB..2 MiB. iset keys are half-open, so `[s, l]` is
//! stored as `s..l + 1` (the generator never produces `u64::MAX`).

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkGroup, Criterion, measurement::WallTime};
use iset::IntervalMap;
use mmun_core::interval_btree::{IntervalBTree, Key};
use mmun_rbtree::IntervalTree;

/// Number of precomputed queries / new intervals cycled through per bench,
/// so each iteration touches a different part of the tree.
const ROTATION: usize = 1024;

/// xorshift64: fixed-seed and dependency-free, so runs are comparable.
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

    /// A closed interval shaped like a memory mapping.
    fn interval(&mut self) -> (u64, u64) {
        let start = (self.next() % (1 << 47)) & !0xfff;
        let len = 4096 + self.next() % (2 << 20);
        (start, start + len - 1)
    }
}

struct Fixture {
    btree: IntervalBTree<u64>,
    ours: IntervalTree<u64>,
    theirs: IntervalMap<u64, u64>,
    /// Midpoints of existing intervals: each stabs its own interval and,
    /// the space being sparse, rarely anything else.
    stab_points: Vec<u64>,
    /// Fresh intervals for the insert+remove benches.
    fresh: Vec<(u64, u64)>,
}

fn build(n: usize) -> Fixture {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15 ^ n as u64);
    let intervals: Vec<(u64, u64)> = (0..n).map(|_| rng.interval()).collect();
    let mut ours = IntervalTree::with_capacity(n + 1);
    let mut theirs = IntervalMap::with_capacity(n + 1);
    let mut btree = IntervalBTree::new();
    for (value, &(s, l)) in intervals.iter().enumerate() {
        btree.insert(key(s, value as u32), l, value as u64);
        ours.insert(s, l, value as u64);
        theirs.force_insert(s..l + 1, value as u64);
    }
    let stab_points = (0..ROTATION)
        .map(|_| {
            let (s, l) = intervals[(rng.next() % n as u64) as usize];
            s + (l - s) / 2
        })
        .collect();
    let fresh = (0..ROTATION).map(|_| rng.interval()).collect();
    Fixture {
        btree,
        ours,
        theirs,
        stab_points,
        fresh,
    }
}

fn report_hits(fx: &Fixture, n: usize) {
    let hits: usize = fx
        .stab_points
        .iter()
        .map(|&p| fx.ours.overlapping(p, p).count())
        .sum();
    let iset_hits: usize = fx
        .stab_points
        .iter()
        .map(|&p| fx.theirs.iter(p..=p).count())
        .sum();
    let btree_hits: usize = fx
        .stab_points
        .iter()
        .map(|&p| fx.btree.overlapping(p, p).count())
        .sum();
    assert_eq!(hits, iset_hits, "implementations disagree");
    assert_eq!(hits, btree_hits, "implementations disagree");
    eprintln!(
        "n={n}: mean hits per stabbing query = {:.3}",
        hits as f64 / ROTATION as f64
    );
}

/// Keys for the B+-tree: the value doubles as the unique id.
fn key(start: u64, id: u32) -> Key {
    Key {
        start,
        id: u64::from(id),
    }
}

fn bench_stab(group: &mut BenchmarkGroup<'_, WallTime>, fx: &Fixture) {
    let mut i = 0;
    group.bench_function("btree", |b| {
        b.iter(|| {
            i = (i + 1) % ROTATION;
            let p = black_box(fx.stab_points[i]);
            fx.btree.overlapping(p, p).map(|(_, _, &v)| v).sum::<u64>()
        })
    });
    let mut i = 0;
    group.bench_function("ours", |b| {
        b.iter(|| {
            i = (i + 1) % ROTATION;
            let p = black_box(fx.stab_points[i]);
            fx.ours.overlapping(p, p).map(|(_, &v)| v).sum::<u64>()
        })
    });
    let mut i = 0;
    group.bench_function("iset", |b| {
        b.iter(|| {
            i = (i + 1) % ROTATION;
            let p = black_box(fx.stab_points[i]);
            fx.theirs.iter(p..=p).map(|(_, &v)| v).sum::<u64>()
        })
    });
}

fn bench_insert_remove(group: &mut BenchmarkGroup<'_, WallTime>, fx: &mut Fixture) {
    const MARKER: u64 = u64::MAX;
    let mut i = 0;
    let fresh = fx.fresh.clone();
    let btree = &mut fx.btree;
    group.bench_function("btree", |b| {
        b.iter(|| {
            i = (i + 1) % ROTATION;
            let (s, l) = black_box(fresh[i]);
            let key = key(s, u32::MAX);
            btree.insert(key, l, MARKER);
            btree.remove(key)
        })
    });
    let mut i = 0;
    let ours = &mut fx.ours;
    group.bench_function("ours", |b| {
        b.iter(|| {
            i = (i + 1) % ROTATION;
            let (s, l) = black_box(fresh[i]);
            let id = ours.insert(s, l, MARKER);
            ours.remove(id)
        })
    });
    let mut i = 0;
    let theirs = &mut fx.theirs;
    group.bench_function("iset", |b| {
        b.iter(|| {
            i = (i + 1) % ROTATION;
            let (s, l) = black_box(fresh[i]);
            theirs.force_insert(s..l + 1, MARKER);
            // Match the value too, so a pre-existing equal key is left alone.
            theirs.remove_where(s..l + 1, |&v| v == MARKER)
        })
    });
}

fn bench_size(c: &mut Criterion, n: usize) {
    let mut fx = build(n);
    report_hits(&fx, n);
    let mut group = c.benchmark_group(format!("stab_n{n}"));
    bench_stab(&mut group, &fx);
    group.finish();
    let mut group = c.benchmark_group(format!("insert_remove_n{n}"));
    bench_insert_remove(&mut group, &mut fx);
    group.finish();
    assert_eq!(fx.ours.len(), n);
    assert_eq!(fx.btree.len(), n);
    assert_eq!(fx.theirs.len(), n);
}

/// Removing and re-inserting the last of `k` intervals with one start: the
/// B+-tree finds a key by scanning the entries sharing its start (they are
/// kept in insertion order, not by id), O(log n + k); the red-black tree
/// removes through its node, O(log n).
fn bench_equal_starts(c: &mut Criterion) {
    let mut group = c.benchmark_group("equal_starts_remove_reinsert");
    for k in [16u32, 1_000] {
        let mut btree = IntervalBTree::new();
        let mut ours = IntervalTree::with_capacity(k as usize + 1);
        for id in 0..k - 1 {
            btree.insert(key(0x1000, id), 0x1fff, u64::from(id));
            ours.insert(0x1000, 0x1fff, u64::from(id));
        }
        btree.insert(key(0x1000, k - 1), 0x1fff, u64::from(k - 1));
        let mut last_id = ours.insert(0x1000, 0x1fff, u64::from(k - 1));
        let last = key(0x1000, k - 1);
        group.bench_function(format!("btree_k{k}"), |b| {
            b.iter(|| {
                let (l, v) = btree.remove(black_box(last)).unwrap();
                btree.insert(last, l, v);
            })
        });
        group.bench_function(format!("ours_k{k}"), |b| {
            b.iter(|| {
                let v = ours.remove(black_box(last_id));
                last_id = ours.insert(0x1000, 0x1fff, v);
            })
        });
    }
    group.finish();
}

fn interval_tree_benches(c: &mut Criterion) {
    bench_size(c, 1_000);
    bench_size(c, 1_000_000);
    bench_equal_starts(c);
}

fn main() {
    eprintln!(
        "IntervalTree::<u64>::NODE_BYTES = {}, IntervalTree::<[usize; 2]>::NODE_BYTES = {}",
        IntervalTree::<u64>::NODE_BYTES,
        IntervalTree::<[usize; 2]>::NODE_BYTES
    );
    let mut criterion = Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(30)
        .configure_from_args();
    interval_tree_benches(&mut criterion);
    criterion.final_summary();
}
