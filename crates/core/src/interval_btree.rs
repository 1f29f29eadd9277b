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
//! Entries are ordered by start; entries with equal starts stay in the
//! order they were inserted, a new one going after the others. That is the
//! kernel's rule (its interval tree sends an equal start to the right, so
//! an in-order walk meets the earlier insertion first), and it costs no
//! field: the position is the order. Each entry carries a [`Key`]: the
//! start and a caller-chosen id, unique among equal starts, which names the
//! entry for removal (the interval notifiers use their node's address,
//! which the entry then needs no value for). Finding a key scans the
//! entries sharing its start: O(log n + k) for k equal starts, where the
//! kernel's removal through the node is O(log n).
//!
//! Underfull nodes are not merged; empty ones are freed, and the root
//! shrinks when it has one child.

use std::fmt;

/// Entries per leaf and children per inner node.
const FANOUT: usize = 16;

/// Names an entry: its start and an id unique among the entries with that
/// start. Only the start orders entries (equal starts: insertion order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    /// First address of the interval.
    pub start: u64,
    /// The caller's id of the entry, unique among equal starts; it does not
    /// order them.
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

/// Children of one inner node: the first start and the largest `last` of
/// each child's subtree, and the child's index (a leaf at height 1).
/// `len` first, as in [`Leaf`].
#[derive(Clone)]
#[repr(C)]
struct Inner {
    len: usize,
    firsts: [u64; FANOUT],
    maxes: [u64; FANOUT],
    children: [u32; FANOUT],
}

/// How many of the sorted `starts` are `<= start`. A branch-free count
/// beats a binary search over 16 entries: no mispredicted branch per step.
#[inline]
fn count_not_greater(starts: impl Iterator<Item = u64>, start: u64) -> usize {
    starts.map(|s| usize::from(s <= start)).sum()
}

/// How many of the sorted `starts` are `< start`.
#[inline]
fn count_less(starts: impl Iterator<Item = u64>, start: u64) -> usize {
    starts.map(|s| usize::from(s < start)).sum()
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

    /// Index of the first entry starting after `start`: where a new entry
    /// with that start goes, after the ones already there.
    fn upper_bound(&self, start: u64) -> usize {
        count_not_greater(self.keys[..self.len].iter().map(|k| k.start), start)
    }

    /// Index of the first entry starting at or after `start`.
    fn lower_bound(&self, start: u64) -> usize {
        count_less(self.keys[..self.len].iter().map(|k| k.start), start)
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
            firsts: [0; FANOUT],
            maxes: [0; FANOUT],
            children: [0; FANOUT],
        }
    }

    fn max_last(&self) -> u64 {
        self.maxes[..self.len].iter().copied().max().unwrap_or(0)
    }

    /// The child a new entry starting at `start` goes into: the last one
    /// whose first start is not greater (the first child for smaller
    /// starts), which puts it after every entry with the same start.
    fn child_to_append(&self, start: u64) -> usize {
        count_not_greater(self.firsts[..self.len].iter().copied(), start).saturating_sub(1)
    }

    /// The child holding the first entry starting at or after `start`, if
    /// any: the last one whose first start is smaller (equal starts may
    /// end it), or the first child.
    fn child_to_search(&self, start: u64) -> usize {
        count_less(self.firsts[..self.len].iter().copied(), start).saturating_sub(1)
    }

    fn insert_at(&mut self, at: usize, first: u64, max: u64, child: u32) {
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
    /// Counts the changes, so that a [`Cursor`] can tell that the tree it
    /// walked has changed since.
    version: u64,
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

/// Where an entry is: the path to its leaf and its index there.
struct Found {
    path: Path,
    leaf: u32,
    at: usize,
}

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
            version: 0,
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

    /// Inserts `[key.start, last]` with `value` after every entry with the
    /// same start, in O(log n).
    ///
    /// # Panics
    /// If `key.start > last`; in debug builds also if an entry with the
    /// same key exists (keys must be unique; release builds do not look).
    pub fn insert(&mut self, key: Key, last: u64, value: V) {
        assert!(
            key.start <= last,
            "IntervalBTree::insert: start {:#x} > last {last:#x}",
            key.start
        );
        debug_assert!(
            self.find(key).is_none(),
            "IntervalBTree::insert: duplicate key {key:?}"
        );
        self.version = self.version.wrapping_add(1);
        let (path, leaf) = self.descend_to_append(key.start);
        let node = &mut self.leaves.nodes[leaf as usize];
        let at = node.upper_bound(key.start);
        if node.len < FANOUT {
            node.insert_at(at, key, last, value);
            self.len += 1;
            self.raise_path(&path, key.start, last);
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
        let (first, max) = (right.keys[0].start, right.max_last());
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
    /// O(log n + k) for k entries with its start; `None` if there is none.
    /// The other entries keep their order.
    pub fn remove(&mut self, key: Key) -> Option<(u64, V)> {
        let Found { mut path, leaf, at } = self.find(key)?;
        self.version = self.version.wrapping_add(1);
        let node = &mut self.leaves.nodes[leaf as usize];
        let removed = node.remove_at(at);
        self.len -= 1;
        if node.len > 0 || path.is_empty() {
            // Only a removed first entry or a removed maximum changes what
            // the ancestors cache.
            let cached = path.last().map(|s| {
                let parent = &self.inners.nodes[s.inner as usize];
                (parent.firsts[s.slot], parent.maxes[s.slot])
            });
            if cached.is_some_and(|(first, max)| first == key.start || max == removed.0) {
                self.refresh_path(&path, leaf);
            }
            return Some(removed);
        }
        self.leaves.release(leaf);
        self.remove_child(&mut path);
        Some(removed)
    }

    /// The `last` and value of the entry with `key`, in O(log n + k) for k
    /// entries with its start.
    pub fn get(&self, key: Key) -> Option<(u64, V)> {
        let Found { leaf, at, .. } = self.find(key)?;
        let node = &self.leaves.nodes[leaf as usize];
        Some((node.lasts[at], node.values[at]))
    }

    /// The entries overlapping `[start, last]` (`entry.start <= last &&
    /// start <= entry.last`), in order (by start, equal starts in insertion
    /// order), in O(log n + k) for k results when intervals do not nest
    /// deeply. Allocation-free.
    pub fn overlapping(&self, start: u64, last: u64) -> Overlapping<'_, V> {
        let mut stack = Stack::new();
        stack.push((self.root, self.height, 0));
        Overlapping {
            tree: self,
            cursor: Cursor {
                start,
                last,
                stack,
                done: false,
                version: self.version,
            },
        }
    }

    /// Continues a walk that [`Overlapping::into_cursor`] paused, in O(1):
    /// the entries after the last one it returned.
    ///
    /// # Panics
    /// If the tree changed since the walk was paused (the interval
    /// notifiers resume only while their tree is frozen).
    pub fn resume(&self, cursor: Cursor) -> Overlapping<'_, V> {
        assert_eq!(
            cursor.version, self.version,
            "IntervalBTree::resume: the tree changed since the walk was paused"
        );
        Overlapping { tree: self, cursor }
    }

    /// Every entry in order, as `(key, last, value)`.
    pub fn iter(&self) -> impl Iterator<Item = (Key, u64, &V)> + '_ {
        self.overlapping(0, u64::MAX)
    }

    /// Checks the structure and panics naming the first broken invariant:
    /// start order within and across nodes, unique keys, cached first
    /// starts and maxima, uniform leaf depth, no empty node below the
    /// root, and `len`.
    #[doc(hidden)]
    pub fn check_invariants(&self) {
        let mut count = 0;
        let mut previous = None;
        self.check_node(self.root, self.height, &mut count, &mut previous);
        assert_eq!(count, self.len, "len disagrees with the entries reachable");
        let mut keys: Vec<(u64, u64)> = self.iter().map(|(k, _, _)| (k.start, k.id)).collect();
        keys.sort_unstable();
        assert!(
            keys.windows(2).all(|w| w[0] != w[1]),
            "two entries with the same key"
        );
    }
}

// Paths and structural updates.
impl<V: Copy + Default> IntervalBTree<V> {
    /// The path to the leaf where a new entry starting at `start` goes.
    fn descend_to_append(&self, start: u64) -> (Path, u32) {
        let mut path = Path::new();
        let mut node = self.root;
        for _ in 0..self.height {
            let inner = &self.inners.nodes[node as usize];
            let slot = inner.child_to_append(start);
            path.push(Step { inner: node, slot });
            node = inner.children[slot];
        }
        (path, node)
    }

    /// Where the entry with `key` is: from the first entry with its start,
    /// through the entries sharing that start (which may span leaves).
    fn find(&self, key: Key) -> Option<Found> {
        let mut path = Path::new();
        let mut leaf = self.root;
        for _ in 0..self.height {
            let inner = &self.inners.nodes[leaf as usize];
            let slot = inner.child_to_search(key.start);
            path.push(Step { inner: leaf, slot });
            leaf = inner.children[slot];
        }
        let mut at = self.leaves.nodes[leaf as usize].lower_bound(key.start);
        loop {
            let node = &self.leaves.nodes[leaf as usize];
            while at < node.len {
                match node.keys[at] {
                    k if k == key => return Some(Found { path, leaf, at }),
                    k if k.start > key.start => return None,
                    _ => at += 1,
                }
            }
            leaf = self.next_leaf(&mut path)?;
            at = 0;
        }
    }

    /// Moves `path` to the leaf after the one it ends at and returns that
    /// leaf; `None` after the last leaf.
    fn next_leaf(&self, path: &mut Path) -> Option<u32> {
        let mut step = path.pop()?;
        while step.slot + 1 == self.inners.nodes[step.inner as usize].len {
            step = path.pop()?;
        }
        step.slot += 1;
        path.push(step);
        let mut node = self.inners.nodes[step.inner as usize].children[step.slot];
        while path.len() < self.height {
            path.push(Step {
                inner: node,
                slot: 0,
            });
            node = self.inners.nodes[node as usize].children[0];
        }
        Some(node)
    }

    /// Recomputes the cached first key and maximum of every node on `path`
    /// after the subtree at its end (`leaf`) changed, stopping where they
    /// come out unchanged.
    fn refresh_path(&mut self, path: &[Step], leaf: u32) {
        let node = &self.leaves.nodes[leaf as usize];
        let (mut first, mut max) = (node.keys[0].start, node.max_last());
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

    /// The cheap form of `refresh_path` after adding `[start, last]`
    /// without a split: maxima can only grow, first starts only get smaller.
    fn raise_path(&mut self, path: &[Step], start: u64, last: u64) {
        for step in path.iter().rev() {
            let inner = &mut self.inners.nodes[step.inner as usize];
            let raise_max = inner.maxes[step.slot] < last;
            let lower_first = start < inner.firsts[step.slot];
            if !raise_max && !lower_first {
                return;
            }
            if raise_max {
                inner.maxes[step.slot] = last;
            }
            if lower_first {
                inner.firsts[step.slot] = start;
            }
        }
    }

    /// Hangs a new right sibling (`first`, `max`, `child`) after the node at
    /// the end of `path`, splitting inner nodes upwards as needed.
    fn insert_child(&mut self, mut path: Path, mut first: u64, mut max: u64, mut child: u32) {
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
    fn grow_root(&mut self, first: u64, max: u64, sibling: u32) {
        let (old_first, old_max) = if self.height == 0 {
            let leaf = &self.leaves.nodes[self.root as usize];
            (leaf.keys[0].start, leaf.max_last())
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
    /// Checks the subtree at `node` (of `height`); returns its first start
    /// and maximum `last`.
    fn check_node(
        &self,
        node: u32,
        height: usize,
        count: &mut usize,
        previous: &mut Option<u64>,
    ) -> (Option<u64>, u64) {
        if height == 0 {
            let leaf = &self.leaves.nodes[node as usize];
            assert!(
                leaf.len > 0 || node == self.root,
                "empty leaf {node} below the root"
            );
            for i in 0..leaf.len {
                let start = leaf.keys[i].start;
                assert!(start <= leaf.lasts[i], "leaf {node}: start > last");
                assert!(
                    previous.is_none_or(|p| p <= start),
                    "starts out of order at leaf {node}"
                );
                *previous = Some(start);
            }
            *count += leaf.len;
            let first = leaf.keys[..leaf.len].first().map(|k| k.start);
            return (first, leaf.max_last());
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
                "inner {node}: stale first start"
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

/// Depth-first frames of a walk: node, its height, next slot to look at.
/// At most one frame per level plus one: the inline room covers every
/// height a tree of `u32`-indexed nodes can reach, so it never spills to
/// the heap.
type Stack = smallvec::SmallVec<[(u32, usize, usize); 12]>;

/// A paused overlap query: where [`IntervalBTree::resume`] picks it up.
/// It names positions in the tree, not keys, so resuming costs nothing
/// however many entries share a start; it is only valid while the tree is
/// unchanged, which `resume` checks.
#[derive(Clone)]
pub struct Cursor {
    start: u64,
    last: u64,
    stack: Stack,
    /// Set once an entry or subtree starting after `last` is seen: every
    /// later one starts later still.
    done: bool,
    /// The tree's version when the walk began.
    version: u64,
}

impl fmt::Debug for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cursor")
            .field("start", &self.start)
            .field("last", &self.last)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

/// Iterator over the entries overlapping a query; see
/// [`IntervalBTree::overlapping`].
pub struct Overlapping<'a, V> {
    tree: &'a IntervalBTree<V>,
    cursor: Cursor,
}

impl<'a, V: Copy + Default> Iterator for Overlapping<'a, V> {
    type Item = (Key, u64, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        while !self.cursor.done {
            let (node, height, slot) = self.cursor.stack.pop()?;
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
    /// Pauses the walk: [`IntervalBTree::resume`] continues it after the
    /// last entry returned, as long as the tree does not change.
    pub fn into_cursor(self) -> Cursor {
        self.cursor
    }

    /// Looks at the entries of `leaf` from `slot` on; returns the first
    /// overlap and leaves a frame to resume after it.
    fn scan_leaf(&mut self, leaf: u32, slot: usize) -> Option<(Key, u64, &'a V)> {
        let node = &self.tree.leaves.nodes[leaf as usize];
        let cursor = &mut self.cursor;
        for i in slot..node.len {
            if node.keys[i].start > cursor.last {
                cursor.done = true;
                return None;
            }
            if node.lasts[i] >= cursor.start {
                cursor.stack.push((leaf, 0, i + 1));
                return Some((node.keys[i], node.lasts[i], &node.values[i]));
            }
        }
        None
    }

    /// Pushes the next child of `inner` (from `slot` on) whose subtree
    /// reaches the query, with a frame to come back for the rest.
    fn descend_inner(&mut self, inner: u32, height: usize, slot: usize) {
        let node = &self.tree.inners.nodes[inner as usize];
        let cursor = &mut self.cursor;
        for i in slot..node.len {
            if node.firsts[i] > cursor.last {
                cursor.done = true;
                return;
            }
            if node.maxes[i] >= cursor.start {
                cursor.stack.push((inner, height, i + 1));
                cursor.stack.push((node.children[i], height - 1, 0));
                return;
            }
        }
    }
}

impl<V> fmt::Debug for Overlapping<'_, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Overlapping")
            .field("cursor", &self.cursor)
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
    fn equal_starts_keep_insertion_order_across_leaves_and_removals() {
        // The kernel's rule: an equal start goes after the ones already
        // there. Ids descend, so an order by id would reverse the result;
        // 100 equal starts span several leaves, among other starts.
        let mut tree = IntervalBTree::new();
        for i in 0..100u32 {
            tree.insert(key(50, 1_000 - i), 60 + u64::from(i % 7), i);
            let odd = u64::from(i) * 2 + 1;
            tree.insert(key(odd, 5_000 + i), odd, 1_000 + i);
            tree.insert(key(100 + u64::from(i), 9_000 + i), 200, 2_000 + i);
        }
        tree.check_invariants();
        let at_50 = |tree: &IntervalBTree<u32>| -> Vec<u32> {
            tree.overlapping(50, 50)
                .filter(|(k, _, _)| k.start == 50)
                .map(|(_, _, v)| *v)
                .collect()
        };
        assert_eq!(at_50(&tree), (0..100).collect::<Vec<_>>());
        // Removal finds each among its equal starts; the rest keep order.
        for i in (0..100u32).step_by(3) {
            assert_eq!(
                tree.remove(key(50, 1_000 - i)),
                Some((60 + u64::from(i % 7), i))
            );
        }
        tree.check_invariants();
        let left: Vec<u32> = (0..100).filter(|i| i % 3 != 0).collect();
        assert_eq!(at_50(&tree), left);
        // A re-inserted entry goes last, as in the kernel.
        tree.insert(key(50, 1_000), 60, 0);
        assert_eq!(at_50(&tree).last(), Some(&0));
        assert_eq!(tree.get(key(50, 1_000 - 3)), None);
        assert_eq!(tree.get(key(50, 1_000 - 4)), Some((64, 4)));
    }

    #[test]
    fn a_paused_walk_resumes_where_it_stopped() {
        let mut tree = IntervalBTree::new();
        for i in 0..300u32 {
            tree.insert(key(u64::from(i / 10), i), 1_000, i);
        }
        let all = ids(&tree, 5, 5);
        let mut walk = tree.overlapping(5, 5);
        let first: Vec<u32> = walk.by_ref().take(37).map(|(_, _, v)| *v).collect();
        let rest: Vec<u32> = tree
            .resume(walk.into_cursor())
            .map(|(_, _, v)| *v)
            .collect();
        assert_eq!([first, rest].concat(), all);
    }

    #[test]
    #[should_panic(expected = "the tree changed since the walk was paused")]
    fn resuming_after_a_change_is_refused() {
        let mut tree = IntervalBTree::new();
        tree.insert(key(1, 1), 2, 0);
        let cursor = tree.overlapping(0, 9).into_cursor();
        tree.insert(key(1, 2), 2, 0);
        let _ = tree.resume(cursor).count();
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "duplicate key")]
    fn duplicate_keys_are_refused() {
        let mut tree = IntervalBTree::new();
        tree.insert(key(1, 1), 2, 0);
        tree.insert(key(1, 1), 3, 0);
    }
}
