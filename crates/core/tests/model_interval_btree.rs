//! Model tests for `IntervalBTree`: random operation sequences checked
//! against a naive `Vec`, with small coordinates so intervals nest and
//! overlap often and leaves split, empty and collapse.

use mmun_core::interval_btree::{IntervalBTree, Key};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Insert { start: u64, len: u64 },
    Remove { pick: usize },
    Query { start: u64, len: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..2_000u64, 0..300u64).prop_map(|(start, len)| Op::Insert { start, len }),
        1 => any::<usize>().prop_map(|pick| Op::Remove { pick }),
        2 => (0..2_300u64, 0..400u64).prop_map(|(start, len)| Op::Query { start, len }),
    ]
}

/// Live entries of the model (kept in insertion order) overlapping the
/// query, as `(key, last)`: by start, equal starts in insertion order (a
/// stable sort), the kernel's interval tree order.
fn expected(model: &[(Key, u64)], start: u64, last: u64) -> Vec<(Key, u64)> {
    let mut hits: Vec<(Key, u64)> = model
        .iter()
        .filter(|(k, l)| k.start <= last && start <= *l)
        .copied()
        .collect();
    hits.sort_by_key(|(k, _)| k.start);
    hits
}

fn actual(tree: &IntervalBTree<u64>, start: u64, last: u64) -> Vec<(Key, u64)> {
    tree.overlapping(start, last)
        .map(|(key, last, value)| {
            assert_eq!(*value, key.id, "value travels with its key");
            (key, last)
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn matches_a_naive_model(ops in prop::collection::vec(op(), 1..1500)) {
        let mut tree = IntervalBTree::new();
        let mut model: Vec<(Key, u64)> = Vec::new();
        let mut next = 0u64;
        for op in ops {
            match op {
                Op::Insert { start, len } => {
                    // Equal starts are common; the id keeps keys unique and
                    // is scrambled as node addresses are, so an order by id
                    // would differ from insertion order.
                    let key = Key { start, id: next.wrapping_mul(0x9e37_79b9_7f4a_7c15) };
                    next += 1;
                    tree.insert(key, start + len, key.id);
                    model.push((key, start + len));
                }
                Op::Remove { pick } => {
                    if model.is_empty() {
                        continue;
                    }
                    // `remove`, not `swap_remove`: the model's order is the
                    // insertion order.
                    let (key, last) = model.remove(pick % model.len());
                    prop_assert_eq!(tree.get(key), Some((last, key.id)));
                    prop_assert_eq!(tree.remove(key), Some((last, key.id)));
                    prop_assert_eq!(tree.remove(key), None);
                    prop_assert_eq!(tree.get(key), None);
                }
                Op::Query { start, len } => {
                    let last = start + len;
                    let hits = expected(&model, start, last);
                    prop_assert_eq!(actual(&tree, start, last), hits.clone());
                    // A walk paused after any hit resumes with exactly the
                    // rest (what a start's batched walk relies on).
                    for i in (0..=hits.len()).step_by(7) {
                        let mut walk = tree.overlapping(start, last);
                        prop_assert_eq!(walk.by_ref().take(i).count(), i);
                        let rest: Vec<_> = tree
                            .resume(walk.into_cursor())
                            .map(|(key, last, _)| (key, last))
                            .collect();
                        prop_assert_eq!(&rest[..], &hits[i..]);
                    }
                }
            }
            prop_assert_eq!(tree.len(), model.len());
            // Cached maxima and first keys must be right after every
            // operation, not only healed by a later one on the same path.
            tree.check_invariants();
        }
        tree.check_invariants();
        prop_assert_eq!(actual(&tree, 0, u64::MAX), expected(&model, 0, u64::MAX));
    }
}

#[test]
fn extreme_bounds_are_supported() {
    let mut tree = IntervalBTree::new();
    let key = |start, id| Key { start, id };
    tree.insert(key(0, 0), u64::MAX, 0u64);
    tree.insert(key(u64::MAX, 1), u64::MAX, 1);
    assert_eq!(actual(&tree, u64::MAX, u64::MAX).len(), 2);
    assert_eq!(actual(&tree, 0, 0).len(), 1);
    tree.check_invariants();
}
