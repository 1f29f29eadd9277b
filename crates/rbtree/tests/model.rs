//! Model tests for `IntervalTree`: random operation sequences checked against
//! a naive `Vec` model, plus fixed-seed bulk checks in the spirit of Linux's
//! `lib/interval_tree_test.c` (random intervals, random queries, compare the
//! matches with a linear scan).

use mmun_rbtree::{IntervalTree, NodeId};
use proptest::prelude::*;

/// One live interval in the model, remembering when it was inserted so the
/// expected order among equal starts can be derived.
#[derive(Clone, Debug)]
struct ModelEntry {
    seq: u64,
    start: u64,
    last: u64,
    id: NodeId,
}

/// The naive reference: a flat list scanned linearly.
#[derive(Default)]
struct Model {
    entries: Vec<ModelEntry>,
    next_seq: u64,
}

impl Model {
    fn insert(&mut self, start: u64, last: u64, id: NodeId) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.entries.push(ModelEntry {
            seq,
            start,
            last,
            id,
        });
        seq
    }

    fn remove_at(&mut self, index: usize) -> ModelEntry {
        self.entries.swap_remove(index)
    }

    /// Expected query result: overlapping entries in ascending start, then
    /// insertion order, as `(id, value)` where the value is the seq.
    fn overlapping(&self, start: u64, last: u64) -> Vec<(NodeId, u64)> {
        let mut hits: Vec<&ModelEntry> = self
            .entries
            .iter()
            .filter(|e| e.start <= last && start <= e.last)
            .collect();
        hits.sort_by_key(|e| (e.start, e.seq));
        hits.iter().map(|e| (e.id, e.seq)).collect()
    }

    fn all_in_order(&self) -> Vec<(NodeId, u64, u64, u64)> {
        let mut all: Vec<&ModelEntry> = self.entries.iter().collect();
        all.sort_by_key(|e| (e.start, e.seq));
        all.iter().map(|e| (e.id, e.start, e.last, e.seq)).collect()
    }
}

fn tree_overlapping(tree: &IntervalTree<u64>, start: u64, last: u64) -> Vec<(NodeId, u64)> {
    tree.overlapping(start, last)
        .map(|(id, &v)| (id, v))
        .collect()
}

/// The same query done by hand with the resumable `iter_first`/`iter_next`.
fn tree_walk(tree: &IntervalTree<u64>, start: u64, last: u64) -> Vec<NodeId> {
    let mut out = Vec::new();
    let mut cur = tree.iter_first(start, last);
    while let Some(id) = cur {
        out.push(id);
        cur = tree.iter_next(id, start, last);
    }
    out
}

#[derive(Clone, Debug)]
enum Op {
    Insert(u64, u64),
    /// Remove the live entry at this index modulo the live count.
    Remove(usize),
    Query(u64, u64),
}

/// Endpoints biased towards a small range (many overlaps and duplicate
/// intervals) and towards both ends of the `u64` domain.
fn endpoint() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0u64..64,
        1 => Just(0u64),
        1 => Just(u64::MAX),
        1 => (u64::MAX - 64)..=u64::MAX,
        1 => any::<u64>(),
    ]
}

fn interval() -> impl Strategy<Value = (u64, u64)> {
    (endpoint(), endpoint()).prop_map(|(a, b)| (a.min(b), a.max(b)))
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => interval().prop_map(|(s, l)| Op::Insert(s, l)),
        2 => any::<usize>().prop_map(Op::Remove),
        2 => interval().prop_map(|(s, l)| Op::Query(s, l)),
    ]
}

fn apply(tree: &mut IntervalTree<u64>, model: &mut Model, op: &Op) {
    match *op {
        Op::Insert(start, last) => {
            let seq = model.next_seq;
            let id = tree.insert(start, last, seq);
            assert!(!model.entries.iter().any(|e| e.id == id), "live id reused");
            model.insert(start, last, id);
        }
        Op::Remove(pick) => {
            if model.entries.is_empty() {
                return;
            }
            let entry = model.remove_at(pick % model.entries.len());
            assert_eq!(tree.interval(entry.id), Some((entry.start, entry.last)));
            assert_eq!(tree.remove(entry.id), entry.seq);
            assert!(!tree.contains(entry.id));
        }
        Op::Query(start, last) => {
            let expected = model.overlapping(start, last);
            assert_eq!(tree_overlapping(tree, start, last), expected);
            let ids: Vec<NodeId> = expected.iter().map(|&(id, _)| id).collect();
            assert_eq!(tree_walk(tree, start, last), ids);
        }
    }
}

fn check_whole_tree(tree: &IntervalTree<u64>, model: &Model) {
    tree.check_invariants();
    assert_eq!(tree.len(), model.entries.len());
    assert_eq!(tree.is_empty(), model.entries.is_empty());
    let listed: Vec<_> = tree.iter().map(|(id, s, l, &v)| (id, s, l, v)).collect();
    assert_eq!(listed, model.all_in_order());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(192))]

    /// Random insert/remove/query sequences agree with the model after
    /// every step, and the tree's invariants hold throughout.
    #[test]
    fn random_ops_match_vec_model(ops in prop::collection::vec(op(), 1..200)) {
        let mut tree = IntervalTree::new();
        let mut model = Model::default();
        for op in &ops {
            apply(&mut tree, &mut model, op);
            tree.check_invariants();
        }
        check_whole_tree(&tree, &model);
        // Every point query over the interesting endpoints agrees too.
        for &(s, l) in &[(0, 0), (u64::MAX, u64::MAX), (0, u64::MAX), (31, 31)] {
            prop_assert_eq!(tree_overlapping(&tree, s, l), model.overlapping(s, l));
        }
    }

    /// Building up then draining the tree completely in random order keeps
    /// it valid at every size, including back to empty.
    #[test]
    fn fill_then_drain(
        intervals in prop::collection::vec(interval(), 1..120),
        picks in prop::collection::vec(any::<usize>(), 120),
    ) {
        let mut tree = IntervalTree::new();
        let mut model = Model::default();
        for &(s, l) in &intervals {
            apply(&mut tree, &mut model, &Op::Insert(s, l));
        }
        check_whole_tree(&tree, &model);
        for &pick in picks.iter().take(intervals.len()) {
            apply(&mut tree, &mut model, &Op::Remove(pick));
            check_whole_tree(&tree, &model);
        }
        prop_assert!(tree.is_empty());
        prop_assert_eq!(tree.iter_first(0, u64::MAX), None);
    }
}

/// xorshift64: deterministic, dependency-free randomness for the fixed-seed
/// tests.
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

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

/// Interval with both endpoints below `max_endpoint`, like the kernel test's
/// `init()` (which draws two points and orders them).
fn kernel_style_interval(rng: &mut XorShift, max_endpoint: u64) -> (u64, u64) {
    let a = rng.below(max_endpoint);
    let b = rng.below(max_endpoint);
    (a.min(b), a.max(b))
}

fn count_matches(tree: &IntervalTree<u64>, start: u64, last: u64) -> usize {
    tree.overlapping(start, last).count()
}

fn naive_count(intervals: &[(u64, u64)], start: u64, last: u64) -> usize {
    intervals
        .iter()
        .filter(|&&(s, l)| s <= last && start <= l)
        .count()
}

/// Port of the kernel test's shape: 100 nodes in [0, 1000), repeated
/// insert-all/remove-all rounds, then 1000 point and range searches whose
/// match counts are compared with a linear scan.
#[test]
fn kernel_style_small_endpoint_range() {
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    let intervals: Vec<(u64, u64)> = (0..100)
        .map(|_| kernel_style_interval(&mut rng, 1000))
        .collect();
    let mut tree = IntervalTree::new();
    for _round in 0..10 {
        let ids: Vec<NodeId> = intervals
            .iter()
            .enumerate()
            .map(|(i, &(s, l))| tree.insert(s, l, i as u64))
            .collect();
        tree.check_invariants();
        for id in ids {
            tree.remove(id);
        }
        tree.check_invariants();
        assert!(tree.is_empty());
    }
    for (i, &(s, l)) in intervals.iter().enumerate() {
        tree.insert(s, l, i as u64);
    }
    for _ in 0..1000 {
        let point = rng.below(1000);
        assert_eq!(
            count_matches(&tree, point, point),
            naive_count(&intervals, point, point)
        );
        let (s, l) = kernel_style_interval(&mut rng, 1000);
        assert_eq!(count_matches(&tree, s, l), naive_count(&intervals, s, l));
    }
}

/// Address-space-shaped load: 10,000 intervals of 4 KiB..2 MiB in a 2^47
/// space, 1,000 random queries checked against the naive scan (exact ids and
/// order), then again after removing every other node.
#[test]
fn fixed_seed_large_tree_matches_naive_scan() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut tree = IntervalTree::with_capacity(10_000);
    let mut model = Model::default();
    for _ in 0..10_000 {
        let (s, l) = address_interval(&mut rng);
        apply(&mut tree, &mut model, &Op::Insert(s, l));
    }
    check_whole_tree(&tree, &model);
    run_address_queries(&mut rng, &mut tree, &mut model, 1000);

    let mut index = 0;
    while index < model.entries.len() {
        apply(&mut tree, &mut model, &Op::Remove(index));
        index += 1;
    }
    check_whole_tree(&tree, &model);
    run_address_queries(&mut rng, &mut tree, &mut model, 1000);
}

fn address_interval(rng: &mut XorShift) -> (u64, u64) {
    let start = rng.below(1 << 47) & !0xfff;
    let len = 4096 + rng.below(2 << 20);
    (start, start + len - 1)
}

fn run_address_queries(
    rng: &mut XorShift,
    tree: &mut IntervalTree<u64>,
    model: &mut Model,
    n: usize,
) {
    for _ in 0..n {
        let (s, l) = if rng.below(2) == 0 {
            let p = rng.below(1 << 47);
            (p, p)
        } else {
            // Wide queries so that many results come back.
            let s = rng.below(1 << 47);
            (s, s + rng.below(1 << 40))
        };
        apply(tree, model, &Op::Query(s, l));
    }
}

/// Intervals touching 0 and `u64::MAX` (including the full range and many
/// exact duplicates) answer queries at both ends of the domain.
#[test]
fn domain_edges_and_duplicates() {
    let mut tree = IntervalTree::new();
    let mut model = Model::default();
    let shapes = [
        (0, 0),
        (0, u64::MAX),
        (u64::MAX, u64::MAX),
        (u64::MAX - 1, u64::MAX),
        (0, 1),
        (5, 5),
    ];
    for _ in 0..8 {
        for &(s, l) in &shapes {
            apply(&mut tree, &mut model, &Op::Insert(s, l));
        }
    }
    check_whole_tree(&tree, &model);
    for &(s, l) in &shapes {
        apply(&mut tree, &mut model, &Op::Query(s, l));
    }
    apply(&mut tree, &mut model, &Op::Query(2, 4));
    apply(&mut tree, &mut model, &Op::Query(6, u64::MAX - 2));
    for pick in (0..20).rev() {
        apply(&mut tree, &mut model, &Op::Remove(pick * 2));
        check_whole_tree(&tree, &model);
    }
    apply(&mut tree, &mut model, &Op::Query(0, u64::MAX));
}

/// `iter_next` needs only the node id: a walk paused at some node resumes
/// correctly after unrelated inserts and removals elsewhere in the tree.
#[test]
fn paused_walk_resumes_after_mutation() {
    let mut rng = XorShift(0x1234_5678_9abc_def1);
    let mut tree = IntervalTree::new();
    let mut model = Model::default();
    for _ in 0..2000 {
        let (s, l) = kernel_style_interval(&mut rng, 100_000);
        apply(&mut tree, &mut model, &Op::Insert(s, l));
    }
    let (qs, ql) = (40_000, 60_000);
    let paused = tree.iter_first(qs, ql).expect("query has hits");
    // Mutate far away from the query window, keeping `paused` live.
    for i in (0..model.entries.len()).rev() {
        let e = &model.entries[i];
        if e.last < 30_000 && e.id != paused && rng.below(2) == 0 {
            apply(&mut tree, &mut model, &Op::Remove(i));
        }
    }
    for _ in 0..200 {
        let s = 70_000 + rng.below(20_000);
        apply(&mut tree, &mut model, &Op::Insert(s, s + 50));
    }
    tree.check_invariants();
    let expected: Vec<NodeId> = model
        .overlapping(qs, ql)
        .into_iter()
        .map(|(id, _)| id)
        .skip_while(|&id| id != paused)
        .skip(1)
        .collect();
    let mut resumed = Vec::new();
    let mut cur = tree.iter_next(paused, qs, ql);
    while let Some(id) = cur {
        resumed.push(id);
        cur = tree.iter_next(id, qs, ql);
    }
    assert_eq!(resumed, expected);
}
