//! A B+-tree of closed `u64` intervals, augmented with the largest `last`
//! of every subtree, for overlap queries that touch few cache lines.
//!
//! A red-black interval tree (the shape of the kernel's
//! `interval_tree_generic.h`; ours is the bench-only `mmun-rbtree` crate,
//! the peer of this one in the benches) follows one pointer per
//! level: about 20 dependent cache misses to reach one of 10^6 intervals.
//! Here a node holds up to 16 children or entries in parallel arrays, so the
//! same lookup follows 5 pointers, and the top levels stay in cache. Linux
//! made the same move for VMAs when it replaced their rbtree with the maple
//! tree.
//!
//! Entries are ordered by their [`Key`]: the interval's start, then a
//! caller-chosen id that makes the key unique (the interval notifiers use
//! the address of their node, which the entry then needs no value for).
//! Removal is by key. Underfull nodes are not merged; empty ones
//! are freed, and the root shrinks when it has one child.

use std::fmt;

/// Entries per leaf and children per inner node.
const FANOUT: usize = 16;

/// Where an entry sorts: `(start, id)`, unique per entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    /// First address of the interval.
    pub start: u64,
    /// The caller's unique id of the entry; orders equal starts.
    pub id: u64,
}

/// Entries of one leaf, in key order, as parallel arrays: a query scans
/// `lasts` and `keys` without touching the values (zero-sized when the key
/// says everything, as for the interval notifiers). `len` comes first (C
/// layout): a query reads it first, and there it shares its cache line with
/// the first keys instead of sitting alone past the values.
#[derive(Clone)]
#[repr(C)]
struct Leaf<V> {
    len: usize,
    keys: [Key; FANOUT],
    lasts: [u64; FANOUT],
    values: [V; FANOUT],
}

/// Children of one inner node: the smallest key and the largest `last` of
/// each child's subtree, and the child's index (a leaf at height 1).
/// `len` first, as in [`Leaf`].
#[derive(Clone)]
#[repr(C)]
struct Inner {
    len: usize,
    firsts: [Key; FANOUT],
    maxes: [u64; FANOUT],
    children: [u32; FANOUT],
}

/// How many of the sorted `keys` are `<= key`. A branch-free count beats
/// a binary search over 16 entries: no mispredicted branch per step.
#[inline]
fn count_not_greater(keys: &[Key], key: Key) -> usize {
    keys.iter().map(|k| usize::from(*k <= key)).sum()
}

const NO_KEY: Key = Key { start: 0, id: 0 };

impl<V: Copy + Default> Leaf<V> {
    fn new() -> Leaf<V> {
        Leaf {
            len: 0,
            keys: [NO_KEY; FANOUT],
            lasts: [0; FANOUT],
            values: [V::default(); FANOUT],
        }
    }

    fn max_last(&self) -> u64 {
        self.lasts[..self.len].iter().copied().max().unwrap_or(0)
    }

    /// Index of the first entry whose key is greater than `key`.
    fn upper_bound(&self, key: Key) -> usize {
        count_not_greater(&self.keys[..self.len], key)
    }

    fn insert_at(&mut self, at: usize, key: Key, last: u64, value: V) {
        let n = self.len;
        self.keys.copy_within(at..n, at + 1);
        self.lasts.copy_within(at..n, at + 1);
        self.values.copy_within(at..n, at + 1);
        self.keys[at] = key;
        self.lasts[at] = last;
        self.values[at] = value;
        self.len += 1;
    }

    fn remove_at(&mut self, at: usize) -> (u64, V) {
        let n = self.len;
        let removed = (self.lasts[at], self.values[at]);
        self.keys.copy_within(at + 1..n, at);
        self.lasts.copy_within(at + 1..n, at);
        self.values.copy_within(at + 1..n, at);
        self.len -= 1;
        removed
    }

    /// Moves the entries from `from` on into a new leaf.
    fn split_off(&mut self, from: usize) -> Leaf<V> {
        let mut right = Leaf::new();
        let moved = self.len - from;
        right.keys[..moved].copy_from_slice(&self.keys[from..self.len]);
        right.lasts[..moved].copy_from_slice(&self.lasts[from..self.len]);
        right.values[..moved].copy_from_slice(&self.values[from..self.len]);
        right.len = moved;
        self.len = from;
        right
    }
}

impl Inner {
    fn new() -> Inner {
        Inner {
            len: 0,
            firsts: [NO_KEY; FANOUT],
            maxes: [0; FANOUT],
            children: [0; FANOUT],
        }
    }

    fn max_last(&self) -> u64 {
        self.maxes[..self.len].iter().copied().max().unwrap_or(0)
    }

    /// The child whose subtree `key` belongs in: the last one whose first
    /// key is not greater than `key` (the first child for smaller keys).
    fn child_for(&self, key: Key) -> usize {
        count_not_greater(&self.firsts[..self.len], key).saturating_sub(1)
    }

    fn insert_at(&mut self, at: usize, first: Key, max: u64, child: u32) {
        let n = self.len;
        self.firsts.copy_within(at..n, at + 1);
        self.maxes.copy_within(at..n, at + 1);
        self.children.copy_within(at..n, at + 1);
        self.firsts[at] = first;
        self.maxes[at] = max;
        self.children[at] = child;
        self.len += 1;
    }

    fn remove_at(&mut self, at: usize) {
        let n = self.len;
        self.firsts.copy_within(at + 1..n, at);
        self.maxes.copy_within(at + 1..n, at);
        self.children.copy_within(at + 1..n, at);
        self.len -= 1;
    }

    fn split_off(&mut self, from: usize) -> Inner {
        let mut right = Inner::new();
        let moved = self.len - from;
        right.firsts[..moved].copy_from_slice(&self.firsts[from..self.len]);
        right.maxes[..moved].copy_from_slice(&self.maxes[from..self.len]);
        right.children[..moved].copy_from_slice(&self.children[from..self.len]);
        right.len = moved;
        self.len = from;
        right
    }
}

/// Nodes of one kind in a `Vec`, with a free list of indices.
#[derive(Clone)]
struct Pool<T> {
    nodes: Vec<T>,
    free: Vec<u32>,
}

impl<T> Pool<T> {
    fn new() -> Pool<T> {
        Pool {
            nodes: Vec::new(),
            free: Vec::new(),
        }
    }

    /// Takes a free node or appends one; appends allocate only past the
    /// room [`Pool::reserve`] made.
    fn alloc(&mut self, node: T) -> u32 {
        if let Some(i) = self.free.pop() {
            self.nodes[i as usize] = node;
            return i;
        }
        let i = u32::try_from(self.nodes.len()).expect("IntervalBTree: too many nodes");
        if self.nodes.len() == self.nodes.capacity() {
            self.reserve(1);
        }
        self.nodes.push(node);
        i
    }

    /// Never allocates: the free list always has room for every node.
    fn release(&mut self, i: u32) {
        debug_assert!(self.free.len() < self.free.capacity());
        self.free.push(i);
    }

    /// Makes room for `n` more `alloc`s without allocating, keeping the
    /// free list's capacity at least the node count's.
    fn reserve(&mut self, n: usize) {
        let available = self.free.len() + (self.nodes.capacity() - self.nodes.len());
        if available < n {
            self.nodes.reserve(n - available);
        }
        let need = self.nodes.capacity();
        if self.free.capacity() < need {
            self.free.reserve_exact(need - self.free.len());
        }
    }

    fn live(&self) -> usize {
        self.nodes.len() - self.free.len()
    }
}

/// A B+-tree of closed intervals `[start, last]` with values `V`; see the
/// [module documentation](self).
#[derive(Clone)]
pub struct IntervalBTree<V> {
    leaves: Pool<Leaf<V>>,
    inners: Pool<Inner>,
    /// Index of the root: a leaf when `height == 0`, else an inner node.
    root: u32,
    height: usize,
    len: usize,
}

impl<V: Copy + Default> Default for IntervalBTree<V> {
    fn default() -> Self {
        Self::new()
    }
}

/// One step of a root-to-leaf path: an inner node and the child taken.
#[derive(Clone, Copy)]
struct Step {
    inner: u32,
    slot: usize,
}

/// A root-to-leaf path; a tree of `u32`-indexed nodes is never deeper than
/// this, so it never spills to the heap.
type Path = smallvec::SmallVec<[Step; 10]>;

impl<V: Copy + Default> IntervalBTree<V> {
    /// An empty tree (one empty leaf).
    pub fn new() -> Self {
        let mut leaves = Pool::new();
        let root = leaves.alloc(Leaf::new());
        IntervalBTree {
            leaves,
            inners: Pool::new(),
            root,
            height: 0,
            len: 0,
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of node storage in use per entry (leaves and inner nodes,
    /// free ones excluded), for memory reports.
    pub fn bytes_per_entry(&self) -> f64 {
        let bytes =
            self.leaves.live() * size_of::<Leaf<V>>() + self.inners.live() * size_of::<Inner>();
        bytes as f64 / self.len.max(1) as f64
    }

    /// Inserts `[key.start, last]` with `value`, in O(log n).
    ///
    /// # Panics
    /// If `key.start > last`, or if an entry with the same key exists.
    pub fn insert(&mut self, key: Key, last: u64, value: V) {
        assert!(
            key.start <= last,
            "IntervalBTree::insert: start {:#x} > last {last:#x}",
            key.start
        );
        let (path, leaf) = self.descend(key);
        let node = &mut self.leaves.nodes[leaf as usize];
        let at = node.upper_bound(key);
        assert!(
            at == 0 || node.keys[at - 1] != key,
            "IntervalBTree::insert: duplicate key {key:?}"
        );
        if node.len < FANOUT {
            node.insert_at(at, key, last, value);
            self.len += 1;
            self.raise_path(&path, key, last);
            return;
        }
        // Appending at the end keeps the full leaf full (sequential inserts
        // then fill every leaf); otherwise split in the middle.
        let from = if at == FANOUT { FANOUT } else { FANOUT / 2 };
        let mut right = node.split_off(from);
        if at >= from {
            right.insert_at(at - from, key, last, value);
        } else {
            node.insert_at(at, key, last, value);
        }
        let (first, max) = (right.keys[0], right.max_last());
        let right = self.leaves.alloc(right);
        self.len += 1;
        self.refresh_path(&path, leaf);
        self.insert_child(path, first, max, right);
    }

    /// Makes room for `inserts` more inserts, and any number of removes,
    /// that allocate nothing (the interval notifiers reserve for the
    /// updates they defer to an invalidation's end, which must not allocate).
    pub fn reserve(&mut self, inserts: usize) {
        // An insert splits at most one leaf and one inner node per level,
        // and may add a root.
        self.leaves.reserve(inserts);
        self.inners.reserve(inserts.saturating_mul(self.height + 2));
    }

    /// Removes the entry with `key`, returning its `last` and value, in
    /// O(log n); `None` if there is none.
    pub fn remove(&mut self, key: Key) -> Option<(u64, V)> {
        let (mut path, leaf) = self.descend(key);
        let node = &mut self.leaves.nodes[leaf as usize];
        let at = node.upper_bound(key).checked_sub(1)?;
        if node.keys[at] != key {
            return None;
        }
        let removed = node.remove_at(at);
        self.len -= 1;
        if node.len > 0 || path.is_empty() {
            // Only a removed first entry or a removed maximum changes what
            // the ancestors cache.
            let cached = path.last().map(|s| {
                let parent = &self.inners.nodes[s.inner as usize];
                (parent.firsts[s.slot], parent.maxes[s.slot])
            });
            if cached.is_some_and(|(first, max)| first == key || max == removed.0) {
                self.refresh_path(&path, leaf);
            }
            return Some(removed);
        }
        self.leaves.release(leaf);
        self.remove_child(&mut path);
        Some(removed)
    }

    /// The `last` and value of the entry with `key`, in O(log n).
    pub fn get(&self, key: Key) -> Option<(u64, V)> {
        let (_, leaf) = self.descend(key);
        let node = &self.leaves.nodes[leaf as usize];
        let at = node.upper_bound(key).checked_sub(1)?;
        (node.keys[at] == key).then(|| (node.lasts[at], node.values[at]))
    }

    /// The entries overlapping `[start, last]` (`entry.start <= last &&
    /// start <= entry.last`), in key order, in O(log n + k) for k results
    /// when intervals do not nest deeply.
    pub fn overlapping(&self, start: u64, last: u64) -> Overlapping<'_, V> {
        self.overlapping_after(start, last, None)
    }

    /// As [`IntervalBTree::overlapping`], but only the entries whose key is
    /// greater than `after` (when given): resumes an earlier query that
    /// stopped at `after`, skipping whole subtrees before it, in
    /// O(log n + k). Allocation-free, like `overlapping`.
    pub fn overlapping_after(
        &self,
        start: u64,
        last: u64,
        after: Option<Key>,
    ) -> Overlapping<'_, V> {
        let mut it = Overlapping {
            tree: self,
            start,
            last,
            after,
            stack: smallvec::SmallVec::new(),
            done: false,
        };
        it.stack.push((self.root, self.height, 0));
        it
    }

    /// Every entry in key order, as `(key, last, value)`.
    pub fn iter(&self) -> impl Iterator<Item = (Key, u64, &V)> + '_ {
        self.overlapping(0, u64::MAX)
    }

    /// Checks the structure and panics naming the first broken invariant:
    /// key order within and across nodes, cached first keys and maxima,
    /// uniform leaf depth, no empty node below the root, and `len`.
    #[doc(hidden)]
    pub fn check_invariants(&self) {
        let mut count = 0;
        let mut previous = None;
        self.check_node(self.root, self.height, &mut count, &mut previous);
        assert_eq!(count, self.len, "len disagrees with the entries reachable");
    }
}

// Paths and structural updates.
impl<V: Copy + Default> IntervalBTree<V> {
    /// The path to the leaf where `key` belongs.
    fn descend(&self, key: Key) -> (Path, u32) {
        let mut path = Path::new();
        let mut node = self.root;
        for _ in 0..self.height {
            let inner = &self.inners.nodes[node as usize];
            let slot = inner.child_for(key);
            path.push(Step { inner: node, slot });
            node = inner.children[slot];
        }
        (path, node)
    }

    /// Recomputes the cached first key and maximum of every node on `path`
    /// after the subtree at its end (`leaf`) changed, stopping where they
    /// come out unchanged.
    fn refresh_path(&mut self, path: &[Step], leaf: u32) {
        let node = &self.leaves.nodes[leaf as usize];
        let (mut first, mut max) = (node.keys[0], node.max_last());
        for step in path.iter().rev() {
            let inner = &mut self.inners.nodes[step.inner as usize];
            if inner.firsts[step.slot] == first && inner.maxes[step.slot] == max {
                return;
            }
            inner.firsts[step.slot] = first;
            inner.maxes[step.slot] = max;
            first = inner.firsts[0];
            max = inner.max_last();
        }
    }

    /// The cheap form of `refresh_path` after adding `(key, last)` without
    /// a split: maxima can only grow, first keys can only get smaller.
    fn raise_path(&mut self, path: &[Step], key: Key, last: u64) {
        for step in path.iter().rev() {
            let inner = &mut self.inners.nodes[step.inner as usize];
            let raise_max = inner.maxes[step.slot] < last;
            let lower_first = key < inner.firsts[step.slot];
            if !raise_max && !lower_first {
                return;
            }
            if raise_max {
                inner.maxes[step.slot] = last;
            }
            if lower_first {
                inner.firsts[step.slot] = key;
            }
        }
    }

    /// Hangs a new right sibling (`first`, `max`, `child`) after the node at
    /// the end of `path`, splitting inner nodes upwards as needed.
    fn insert_child(&mut self, mut path: Path, mut first: Key, mut max: u64, mut child: u32) {
        loop {
            let Some(step) = path.pop() else {
                self.grow_root(first, max, child);
                return;
            };
            let at = step.slot + 1;
            let inner = &mut self.inners.nodes[step.inner as usize];
            if inner.len < FANOUT {
                inner.insert_at(at, first, max, child);
                // The ancestors' maxima were refreshed before the new
                // sibling was linked; it may hold the new entry.
                self.refresh_inner_path(&path, step.inner);
                return;
            }
            let from = if at == FANOUT { FANOUT } else { FANOUT / 2 };
            let mut right = inner.split_off(from);
            if at >= from {
                right.insert_at(at - from, first, max, child);
            } else {
                inner.insert_at(at, first, max, child);
            }
            (first, max) = (right.firsts[0], right.max_last());
            // The left half lost children: its parent's maximum may drop.
            let left_max = inner.max_last();
            if let Some(parent) = path.last() {
                self.inners.nodes[parent.inner as usize].maxes[parent.slot] = left_max;
            }
            child = self.inners.alloc(right);
        }
    }

    /// A new root above the old one and its new sibling.
    fn grow_root(&mut self, first: Key, max: u64, sibling: u32) {
        let (old_first, old_max) = if self.height == 0 {
            let leaf = &self.leaves.nodes[self.root as usize];
            (leaf.keys[0], leaf.max_last())
        } else {
            let inner = &self.inners.nodes[self.root as usize];
            (inner.firsts[0], inner.max_last())
        };
        let mut root = Inner::new();
        root.insert_at(0, old_first, old_max, self.root);
        root.insert_at(1, first, max, sibling);
        self.root = self.inners.alloc(root);
        self.height += 1;
    }

    /// Removes the (now empty, already released) child at the end of `path`
    /// from its parent, freeing parents that become empty, then refreshes
    /// the cached keys above and shrinks the root.
    fn remove_child(&mut self, path: &mut Path) {
        while let Some(step) = path.pop() {
            let inner = &mut self.inners.nodes[step.inner as usize];
            inner.remove_at(step.slot);
            if inner.len > 0 {
                self.refresh_inner_path(path, step.inner);
                self.shrink_root();
                return;
            }
            if path.is_empty() {
                // The root itself emptied: start over with one empty leaf.
                self.inners.release(step.inner);
                self.root = self.leaves.alloc(Leaf::new());
                self.height = 0;
                return;
            }
            self.inners.release(step.inner);
        }
    }

    /// `refresh_path` for a path ending at an inner node.
    fn refresh_inner_path(&mut self, path: &[Step], inner: u32) {
        let node = &self.inners.nodes[inner as usize];
        let (mut first, mut max) = (node.firsts[0], node.max_last());
        for step in path.iter().rev() {
            let parent = &mut self.inners.nodes[step.inner as usize];
            parent.firsts[step.slot] = first;
            parent.maxes[step.slot] = max;
            first = parent.firsts[0];
            max = parent.max_last();
        }
    }

    /// While the root is an inner node with one child, make that child
    /// the root.
    fn shrink_root(&mut self) {
        while self.height > 0 && self.inners.nodes[self.root as usize].len == 1 {
            let only = self.inners.nodes[self.root as usize].children[0];
            self.inners.release(self.root);
            self.root = only;
            self.height -= 1;
        }
    }
}

// Invariant checking.
impl<V: Copy + Default> IntervalBTree<V> {
    /// Checks the subtree at `node` (of `height`); returns its first key
    /// and maximum `last`.
    fn check_node(
        &self,
        node: u32,
        height: usize,
        count: &mut usize,
        previous: &mut Option<Key>,
    ) -> (Option<Key>, u64) {
        if height == 0 {
            let leaf = &self.leaves.nodes[node as usize];
            assert!(
                leaf.len > 0 || node == self.root,
                "empty leaf {node} below the root"
            );
            for i in 0..leaf.len {
                assert!(
                    leaf.keys[i].start <= leaf.lasts[i],
                    "leaf {node}: start > last"
                );
                assert!(
                    previous.is_none_or(|p| p < leaf.keys[i]),
                    "keys out of order at leaf {node}"
                );
                *previous = Some(leaf.keys[i]);
            }
            *count += leaf.len;
            return (leaf.keys[..leaf.len].first().copied(), leaf.max_last());
        }
        let inner = &self.inners.nodes[node as usize];
        assert!(inner.len > 0, "empty inner node {node}");
        assert!(
            node != self.root || inner.len > 1,
            "root with a single child"
        );
        for i in 0..inner.len {
            let (first, max) = self.check_node(inner.children[i], height - 1, count, previous);
            assert_eq!(
                Some(inner.firsts[i]),
                first,
                "inner {node}: stale first key"
            );
            assert_eq!(inner.maxes[i], max, "inner {node}: stale maximum");
        }
        (Some(inner.firsts[0]), inner.max_last())
    }
}

impl<V: Copy + Default + fmt::Debug> fmt::Debug for IntervalBTree<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.iter()
                    .map(|(key, last, value)| (key.start..=last, value)),
            )
            .finish()
    }
}

/// Iterator over the entries overlapping a query; see
/// [`IntervalBTree::overlapping`].
pub struct Overlapping<'a, V> {
    tree: &'a IntervalBTree<V>,
    start: u64,
    last: u64,
    /// Only keys greater than this one, if set.
    after: Option<Key>,
    /// Depth-first frames: node, its height, next slot to look at. At most
    /// one frame per level plus one: the inline room covers every height a
    /// tree of `u32`-indexed nodes can reach, so it never spills to the heap.
    stack: smallvec::SmallVec<[(u32, usize, usize); 12]>,
    /// Set once an entry or subtree starting after `last` is seen: every
    /// later one starts later still.
    done: bool,
}

impl<'a, V: Copy + Default> Iterator for Overlapping<'a, V> {
    type Item = (Key, u64, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            let (node, height, slot) = self.stack.pop()?;
            if height == 0 {
                if let Some(hit) = self.scan_leaf(node, slot) {
                    return Some(hit);
                }
            } else {
                self.descend_inner(node, height, slot);
            }
        }
        None
    }
}

impl<'a, V: Copy + Default> Overlapping<'a, V> {
    /// Looks at the entries of `leaf` from `slot` on; returns the first
    /// overlap and leaves a frame to resume after it.
    fn scan_leaf(&mut self, leaf: u32, slot: usize) -> Option<(Key, u64, &'a V)> {
        let node = &self.tree.leaves.nodes[leaf as usize];
        for i in slot..node.len {
            if node.keys[i].start > self.last {
                self.done = true;
                return None;
            }
            if node.lasts[i] >= self.start && self.after.is_none_or(|after| node.keys[i] > after) {
                self.stack.push((leaf, 0, i + 1));
                return Some((node.keys[i], node.lasts[i], &node.values[i]));
            }
        }
        None
    }

    /// Pushes the next child of `inner` (from `slot` on) whose subtree
    /// reaches the query, with a frame to come back for the rest.
    fn descend_inner(&mut self, inner: u32, height: usize, slot: usize) {
        let node = &self.tree.inners.nodes[inner as usize];
        for i in slot..node.len {
            if node.firsts[i].start > self.last {
                self.done = true;
                return;
            }
            // Child i holds only keys below child i + 1's first key.
            let before_after = self
                .after
                .is_some_and(|after| i + 1 < node.len && node.firsts[i + 1] <= after);
            if node.maxes[i] >= self.start && !before_after {
                self.stack.push((inner, height, i + 1));
                self.stack.push((node.children[i], height - 1, 0));
                return;
            }
        }
    }
}

impl<V> fmt::Debug for Overlapping<'_, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Overlapping")
            .field("start", &self.start)
            .field("last", &self.last)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(start: u64, id: u32) -> Key {
        Key {
            start,
            id: u64::from(id),
        }
    }

    fn ids(tree: &IntervalBTree<u32>, start: u64, last: u64) -> Vec<u32> {
        tree.overlapping(start, last).map(|(_, _, v)| *v).collect()
    }

    #[test]
    fn sequential_inserts_fill_leaves_and_queries_find_each() {
        let mut tree = IntervalBTree::new();
        for i in 0..10_000u32 {
            tree.insert(key(u64::from(i) * 10, i), u64::from(i) * 10 + 4, i);
        }
        tree.check_invariants();
        assert_eq!(tree.len(), 10_000);
        assert!(tree.bytes_per_entry() < 45.0, "{}", tree.bytes_per_entry());
        assert_eq!(ids(&tree, 55_553, 55_553), vec![5555]);
        assert_eq!(ids(&tree, 55_555, 55_559), Vec::<u32>::new());
        assert_eq!(ids(&tree, 44, 70), vec![4, 5, 6, 7]);
    }

    #[test]
    fn nested_intervals_are_found_past_non_overlapping_ones() {
        let mut tree = IntervalBTree::new();
        tree.insert(key(0, 0), 1_000, 0);
        for i in 1..100u32 {
            tree.insert(key(u64::from(i), i), u64::from(i), i);
        }
        tree.check_invariants();
        assert_eq!(ids(&tree, 500, 600), vec![0]);
        assert_eq!(ids(&tree, 50, 51), vec![0, 50, 51]);
    }

    #[test]
    fn removing_everything_leaves_an_empty_valid_tree() {
        let mut tree = IntervalBTree::new();
        for i in 0..2_000u32 {
            tree.insert(
                key(u64::from(i * 7919 % 2_000), i),
                u64::from(i * 7919 % 2_000) + 3,
                i,
            );
        }
        tree.check_invariants();
        for i in (0..2_000u32).rev() {
            let start = u64::from(i * 7919 % 2_000);
            assert_eq!(tree.remove(key(start, i)), Some((start + 3, i)));
            if i % 97 == 0 {
                tree.check_invariants();
            }
        }
        assert!(tree.is_empty());
        tree.check_invariants();
        assert_eq!(tree.remove(key(0, 0)), None);
    }

    #[test]
    #[should_panic(expected = "duplicate key")]
    fn duplicate_keys_are_refused() {
        let mut tree = IntervalBTree::new();
        tree.insert(key(1, 1), 2, 0);
        tree.insert(key(1, 1), 3, 0);
    }
}
