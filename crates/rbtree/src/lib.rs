//! An augmented red-black interval tree over closed `u64` intervals.
//!
//! **Bench-only.** `mmun-core` indexes its interval notifiers with a
//! B+-tree (`mmun_core::interval_btree`, see DESIGN.md, "The interval
//! index"); this tree, the shape Linux uses, stays as a peer in the core's
//! benches (`interval_tree`, `invalidate`) and is not published.
//!
//! This is the userspace counterpart of the kernel's `interval_tree_generic.h`:
//! every node holds a closed interval `[start, last]` (so `last` may be
//! `u64::MAX`), nodes are ordered by `start`, and each node caches the largest
//! `last` of its subtree so overlap queries can skip whole subtrees. Queries
//! follow the kernel's `iter_first` / `iter_next` protocol: a walk can be
//! resumed later from nothing but the id of the node it stopped at.
//!
//! Nodes live in an arena (`Vec`) with a free list and are addressed by a
//! [`NodeId`], which stays valid and unique for as long as its node is in the
//! tree. Once a node is removed its slot may be reused by a later insert.
//!
//! Among nodes with equal `start`, a newer insert sorts after the older ones,
//! so in-order iteration is "ascending start, then insertion order".

use std::fmt;
use std::iter::FusedIterator;

/// Index value meaning "no node" in child, parent and free-list links.
const NIL: u32 = u32::MAX;

/// Which child of a node: `LEFT` holds smaller starts, `RIGHT` holds larger
/// or equal ones. Kept as an index so mirror-image cases share one code path.
const LEFT: usize = 0;
const RIGHT: usize = 1;

/// The other side: the mirror image of `dir`.
const fn flip(dir: usize) -> usize {
    dir ^ 1
}

/// A stable handle to a node of an [`IntervalTree`].
///
/// The handle is valid from [`IntervalTree::insert`] until the matching
/// [`IntervalTree::remove`]; no other live node ever has the same id. After
/// removal the slot (and so the id) may be handed out again by a later insert.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(u32);

impl NodeId {
    /// The raw arena index of this handle, e.g. for storing it compactly.
    pub fn index(self) -> u32 {
        self.0
    }

    /// Rebuilds a handle from a raw index obtained from [`NodeId::index`].
    ///
    /// Any `u32` is accepted; operations on an id that does not name a live
    /// node either return `None` or panic, as each method documents.
    pub fn from_index(index: u32) -> NodeId {
        NodeId(index)
    }
}

/// Node colour. An enum (not a `bool` flag in a wider field) so the unused
/// byte values give `Slot` a niche and free slots cost no extra space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Color {
    Red,
    Black,
}

/// One tree node: the interval, the augmented subtree maximum, the links and
/// the caller's value.
#[derive(Clone, Debug)]
struct Node<V> {
    start: u64,
    last: u64,
    /// Largest `last` in the subtree rooted here (including this node).
    subtree_last: u64,
    child: [u32; 2],
    parent: u32,
    color: Color,
    value: V,
}

/// An arena slot: either a live node or a link in the free list.
#[derive(Clone, Debug)]
enum Slot<V> {
    Live(Node<V>),
    Free { next_free: u32 },
}

/// An augmented red-black tree of closed intervals `[start, last]` with
/// values of type `V`; see the [module documentation](self).
#[derive(Clone)]
pub struct IntervalTree<V> {
    slots: Vec<Slot<V>>,
    root: u32,
    free_head: u32,
    len: usize,
}

impl<V> Default for IntervalTree<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V: fmt::Debug> fmt::Debug for IntervalTree<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.iter()
                    .map(|(_, start, last, value)| (start..=last, value)),
            )
            .finish()
    }
}

impl<V> IntervalTree<V> {
    /// Bytes of arena storage one node occupies (interval, subtree maximum,
    /// links, colour and the value). Free slots take the same space.
    pub const NODE_BYTES: usize = size_of::<Slot<V>>();

    /// Creates an empty tree without allocating.
    pub fn new() -> Self {
        Self::with_capacity(0)
    }

    /// Creates an empty tree with room for `n` nodes before reallocating.
    pub fn with_capacity(n: usize) -> Self {
        IntervalTree {
            slots: Vec::with_capacity(n),
            root: NIL,
            free_head: NIL,
            len: 0,
        }
    }

    /// Number of nodes in the tree.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the tree has no nodes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Inserts the closed interval `[start, last]` with `value`, in
    /// O(log n), and returns the new node's handle.
    ///
    /// Duplicate intervals are allowed; the new node sorts after existing
    /// nodes with the same `start`.
    ///
    /// # Panics
    /// If `start > last`, or if the tree already holds `u32::MAX` slots.
    pub fn insert(&mut self, start: u64, last: u64, value: V) -> NodeId {
        assert!(
            start <= last,
            "IntervalTree::insert: start {start:#x} > last {last:#x}"
        );
        let id = self.alloc(Node {
            start,
            last,
            subtree_last: last,
            child: [NIL, NIL],
            parent: NIL,
            color: Color::Red,
            value,
        });
        self.link_as_leaf(id);
        self.fix_after_insert(id);
        self.len += 1;
        NodeId(id)
    }

    /// Removes the node `id` in O(log n) and returns its value.
    ///
    /// # Panics
    /// With "stale NodeId" if `id` does not name a live node.
    pub fn remove(&mut self, id: NodeId) -> V {
        assert!(self.contains(id), "stale NodeId {id:?} passed to remove");
        self.unlink(id.0);
        self.len -= 1;
        self.release(id.0)
    }

    /// The value of node `id`, or `None` if `id` is not live.
    pub fn get(&self, id: NodeId) -> Option<&V> {
        self.live(id).map(|node| &node.value)
    }

    /// Mutable access to the value of node `id`, or `None` if `id` is not
    /// live. The interval itself cannot be changed in place.
    pub fn get_mut(&mut self, id: NodeId) -> Option<&mut V> {
        match self.slots.get_mut(id.0 as usize) {
            Some(Slot::Live(node)) => Some(&mut node.value),
            _ => None,
        }
    }

    /// The interval `(start, last)` of node `id`, or `None` if not live.
    pub fn interval(&self, id: NodeId) -> Option<(u64, u64)> {
        self.live(id).map(|node| (node.start, node.last))
    }

    /// Whether `id` names a live node of this tree.
    pub fn contains(&self, id: NodeId) -> bool {
        self.live(id).is_some()
    }

    /// The first node (lowest start; earliest inserted among equal starts)
    /// whose interval overlaps `[start, last]`, in O(log n).
    ///
    /// Overlap means `node.start <= last && start <= node.last`.
    pub fn iter_first(&self, start: u64, last: u64) -> Option<NodeId> {
        if self.root == NIL || self.node(self.root).subtree_last < start {
            return None;
        }
        to_id(self.first_overlap_in(self.root, start, last))
    }

    /// The next node after `id` in in-order whose interval overlaps
    /// `[start, last]`, in amortised O(log n).
    ///
    /// Needs no state besides `id`, so a walk begun with
    /// [`iter_first`](Self::iter_first) can be resumed later, as long as `id`
    /// is still live. `id` itself need not overlap the query.
    ///
    /// # Panics
    /// With "stale NodeId" if `id` does not name a live node.
    pub fn iter_next(&self, id: NodeId, start: u64, last: u64) -> Option<NodeId> {
        assert!(self.contains(id), "stale NodeId {id:?} passed to iter_next");
        let mut cur = id.0;
        loop {
            let right = self.node(cur).child[RIGHT];
            if right != NIL && self.node(right).subtree_last >= start {
                // Any overlap after `cur` that exists is the first one in
                // this subtree; if it has none, nothing later overlaps.
                return to_id(self.first_overlap_in(right, start, last));
            }
            cur = self.first_ancestor_to_the_right(cur)?;
            let node = self.node(cur);
            if node.start > last {
                return None;
            }
            if node.last >= start {
                return Some(NodeId(cur));
            }
        }
    }

    /// All nodes overlapping `[start, last]`, in in-order, in
    /// O(log n + k) overall for k results.
    pub fn overlapping(&self, start: u64, last: u64) -> Overlapping<'_, V> {
        Overlapping {
            tree: self,
            next: self.iter_first(start, last),
            start,
            last,
        }
    }

    /// All nodes in in-order (ascending start, then insertion order) as
    /// `(id, start, last, value)`.
    pub fn iter(&self) -> Iter<'_, V> {
        let first = if self.root == NIL {
            NIL
        } else {
            self.leftmost(self.root)
        };
        Iter {
            tree: self,
            next: first,
            remaining: self.len,
        }
    }

    /// Checks every structural invariant and panics with a description of
    /// the first one broken: red-black colouring and black heights, BST
    /// order, cached subtree maxima, parent links, `len` and the free list.
    #[doc(hidden)]
    pub fn check_invariants(&self) {
        if self.root != NIL {
            assert_eq!(self.node(self.root).parent, NIL, "root has a parent");
            assert_eq!(self.node(self.root).color, Color::Black, "root is red");
            let (_, count) = self.check_subtree(self.root);
            assert_eq!(count, self.len, "len disagrees with reachable nodes");
        } else {
            assert_eq!(self.len, 0, "empty tree with nonzero len");
        }
        self.check_in_order();
        self.check_free_list();
    }
}

// Arena management.
impl<V> IntervalTree<V> {
    fn live(&self, id: NodeId) -> Option<&Node<V>> {
        match self.slots.get(id.0 as usize) {
            Some(Slot::Live(node)) => Some(node),
            _ => None,
        }
    }

    /// The node at arena index `i`, which the tree structure says is live.
    fn node(&self, i: u32) -> &Node<V> {
        match &self.slots[i as usize] {
            Slot::Live(node) => node,
            Slot::Free { .. } => unreachable!("tree link to free slot {i}"),
        }
    }

    fn node_mut(&mut self, i: u32) -> &mut Node<V> {
        match &mut self.slots[i as usize] {
            Slot::Live(node) => node,
            Slot::Free { .. } => unreachable!("tree link to free slot {i}"),
        }
    }

    /// Stores `node` in a free slot (or a new one) and returns its index.
    fn alloc(&mut self, node: Node<V>) -> u32 {
        if self.free_head != NIL {
            let i = self.free_head;
            let slot = std::mem::replace(&mut self.slots[i as usize], Slot::Live(node));
            match slot {
                Slot::Free { next_free } => self.free_head = next_free,
                Slot::Live(_) => unreachable!("free list points at live slot {i}"),
            }
            return i;
        }
        // NIL itself must never become a valid index.
        let i = u32::try_from(self.slots.len())
            .ok()
            .filter(|&i| i != NIL)
            .expect("IntervalTree is full (u32::MAX nodes)");
        self.slots.push(Slot::Live(node));
        i
    }

    /// Turns the (already unlinked) slot `i` into a free-list entry and
    /// returns the value it held.
    fn release(&mut self, i: u32) -> V {
        let free = Slot::Free {
            next_free: self.free_head,
        };
        self.free_head = i;
        match std::mem::replace(&mut self.slots[i as usize], free) {
            Slot::Live(node) => node.value,
            Slot::Free { .. } => unreachable!("released free slot {i}"),
        }
    }
}

// Small structural helpers.
impl<V> IntervalTree<V> {
    fn is_red(&self, i: u32) -> bool {
        i != NIL && self.node(i).color == Color::Red
    }

    fn set_color(&mut self, i: u32, color: Color) {
        self.node_mut(i).color = color;
    }

    /// Sets `i`'s parent link, ignoring NIL so callers need not check.
    fn set_parent(&mut self, i: u32, parent: u32) {
        if i != NIL {
            self.node_mut(i).parent = parent;
        }
    }

    /// Which side of its parent `i` hangs on. `i` may be NIL, in which case
    /// the NIL side of `parent` is meant; red-black removal guarantees the
    /// other side is non-NIL whenever this is asked.
    fn side_in_parent(&self, parent: u32, i: u32) -> usize {
        if self.node(parent).child[LEFT] == i {
            LEFT
        } else {
            RIGHT
        }
    }

    /// Makes `new` take `old`'s place under `parent` (or as the root).
    fn replace_child(&mut self, parent: u32, old: u32, new: u32) {
        if parent == NIL {
            self.root = new;
        } else {
            let side = self.side_in_parent(parent, old);
            self.node_mut(parent).child[side] = new;
        }
    }

    fn leftmost(&self, mut i: u32) -> u32 {
        while self.node(i).child[LEFT] != NIL {
            i = self.node(i).child[LEFT];
        }
        i
    }

    /// The nearest ancestor of `i` that has `i` in its left subtree, i.e.
    /// the in-order successor of `i` when `i` has no right child.
    fn first_ancestor_to_the_right(&self, mut i: u32) -> Option<u32> {
        loop {
            let parent = self.node(i).parent;
            if parent == NIL {
                return None;
            }
            if self.node(parent).child[LEFT] == i {
                return Some(parent);
            }
            i = parent;
        }
    }

    fn successor(&self, i: u32) -> u32 {
        let right = self.node(i).child[RIGHT];
        if right != NIL {
            self.leftmost(right)
        } else {
            self.first_ancestor_to_the_right(i).unwrap_or(NIL)
        }
    }

    /// The subtree maximum of `i` computed from its own `last` and its
    /// children's cached maxima.
    fn computed_subtree_last(&self, i: u32) -> u64 {
        let node = self.node(i);
        node.child
            .iter()
            .filter(|&&c| c != NIL)
            .map(|&c| self.node(c).subtree_last)
            .fold(node.last, u64::max)
    }

    /// Rotates `x` down towards `dir`; its child on the other side takes its
    /// place. The node set under that position is unchanged, so the riser
    /// inherits `x`'s cached maximum and only `x` needs recomputing.
    fn rotate(&mut self, x: u32, dir: usize) {
        let y = self.node(x).child[flip(dir)];
        let inner = self.node(y).child[dir];
        let x_parent = self.node(x).parent;
        self.node_mut(x).child[flip(dir)] = inner;
        self.set_parent(inner, x);
        self.replace_child(x_parent, x, y);
        self.node_mut(y).parent = x_parent;
        self.node_mut(y).child[dir] = x;
        self.node_mut(x).parent = y;
        self.node_mut(y).subtree_last = self.node(x).subtree_last;
        self.node_mut(x).subtree_last = self.computed_subtree_last(x);
    }

    /// Recomputes cached maxima from `from` upwards, stopping before `stop`
    /// or as soon as a node's value is unchanged: then no ancestor's
    /// subtree maximum can have changed either.
    fn propagate_subtree_last(&mut self, from: u32, stop: u32) {
        let mut i = from;
        while i != stop {
            let fresh = self.computed_subtree_last(i);
            if fresh == self.node(i).subtree_last {
                return;
            }
            self.node_mut(i).subtree_last = fresh;
            i = self.node(i).parent;
        }
    }
}

// Insertion.
impl<V> IntervalTree<V> {
    /// Hangs the fresh node `id` as a leaf in BST position, raising the
    /// cached maxima on the way down. Equal starts descend right so newer
    /// nodes follow older ones in in-order.
    fn link_as_leaf(&mut self, id: u32) {
        let (start, last) = (self.node(id).start, self.node(id).last);
        let mut parent = NIL;
        let mut side = LEFT;
        let mut cur = self.root;
        while cur != NIL {
            let node = self.node_mut(cur);
            node.subtree_last = node.subtree_last.max(last);
            side = if start < node.start { LEFT } else { RIGHT };
            parent = cur;
            cur = node.child[side];
        }
        self.node_mut(id).parent = parent;
        if parent == NIL {
            self.root = id;
        } else {
            self.node_mut(parent).child[side] = id;
        }
    }

    /// Restores the red-black properties after linking the red leaf `z`.
    fn fix_after_insert(&mut self, mut z: u32) {
        loop {
            let parent = self.node(z).parent;
            if !self.is_red(parent) {
                break;
            }
            // A red parent is never the root, so the grandparent exists.
            let grand = self.node(parent).parent;
            let side = self.side_in_parent(grand, parent);
            let uncle = self.node(grand).child[flip(side)];
            if self.is_red(uncle) {
                // Push the grandparent's blackness down; retry two levels up.
                self.set_color(parent, Color::Black);
                self.set_color(uncle, Color::Black);
                self.set_color(grand, Color::Red);
                z = grand;
                continue;
            }
            let mut top = parent;
            if self.node(parent).child[flip(side)] == z {
                // Inner grandchild: straighten into the outer case first.
                self.rotate(parent, side);
                top = z;
            }
            self.set_color(top, Color::Black);
            self.set_color(grand, Color::Red);
            self.rotate(grand, flip(side));
            break;
        }
        let root = self.root;
        self.set_color(root, Color::Black);
    }
}

// Removal.
impl<V> IntervalTree<V> {
    /// Takes node `z` out of the tree structure (its slot stays live).
    fn unlink(&mut self, z: u32) {
        let [left, right] = self.node(z).child;
        let removed_color;
        let (x, x_parent);
        if left == NIL || right == NIL {
            x = if left == NIL { right } else { left };
            x_parent = self.node(z).parent;
            removed_color = self.node(z).color;
            self.transplant(z, x);
            self.propagate_subtree_last(x_parent, NIL);
        } else {
            let y = self.leftmost(right);
            removed_color = self.node(y).color;
            x = self.node(y).child[RIGHT];
            x_parent = if y == right { y } else { self.node(y).parent };
            self.move_successor_into_place(z, y);
            // The path below y lost y; y's position lost z's own `last`, so
            // y is always recomputed even if the lower walk stopped early.
            self.propagate_subtree_last(x_parent, y);
            self.propagate_subtree_last(y, NIL);
        }
        if removed_color == Color::Black {
            self.fix_after_remove(x, x_parent);
        }
    }

    /// Puts `v` (possibly NIL) where `u` hangs.
    fn transplant(&mut self, u: u32, v: u32) {
        let parent = self.node(u).parent;
        self.replace_child(parent, u, v);
        self.set_parent(v, parent);
    }

    /// Replaces `z` (which has two children) by its in-order successor `y`,
    /// which takes over `z`'s links, colour and cached maximum.
    fn move_successor_into_place(&mut self, z: u32, y: u32) {
        let [left, right] = self.node(z).child;
        if y != right {
            let y_right = self.node(y).child[RIGHT];
            self.transplant(y, y_right);
            self.node_mut(y).child[RIGHT] = right;
            self.node_mut(right).parent = y;
        }
        self.transplant(z, y);
        self.node_mut(y).child[LEFT] = left;
        self.node_mut(left).parent = y;
        let (color, subtree_last) = (self.node(z).color, self.node(z).subtree_last);
        let y_node = self.node_mut(y);
        y_node.color = color;
        y_node.subtree_last = subtree_last;
    }

    /// Restores the red-black properties after a black node was removed
    /// above `x` (possibly NIL), whose parent is `parent`: `x`'s side is
    /// one black short.
    fn fix_after_remove(&mut self, mut x: u32, mut parent: u32) {
        while x != self.root && !self.is_red(x) {
            let side = self.side_in_parent(parent, x);
            let mut sibling = self.node(parent).child[flip(side)];
            if self.is_red(sibling) {
                // Make the sibling black so the cases below apply.
                self.set_color(sibling, Color::Black);
                self.set_color(parent, Color::Red);
                self.rotate(parent, side);
                sibling = self.node(parent).child[flip(side)];
            }
            let [near, far] = self.node(sibling).child;
            let (near, far) = if side == LEFT {
                (near, far)
            } else {
                (far, near)
            };
            if !self.is_red(near) && !self.is_red(far) {
                // Shorten the sibling's side too; the deficit moves up.
                self.set_color(sibling, Color::Red);
                x = parent;
                parent = self.node(x).parent;
                continue;
            }
            self.borrow_from_sibling(parent, side, sibling, far);
            x = self.root;
        }
        if x != NIL {
            self.set_color(x, Color::Black);
        }
    }

    /// The terminal removal case: the black `sibling` of the short `side`
    /// has a red child, which one or two rotations turn into the missing
    /// black node.
    fn borrow_from_sibling(&mut self, parent: u32, side: usize, mut sibling: u32, far: u32) {
        if !self.is_red(far) {
            // Only the near child is red: rotate it outwards first.
            let near = self.node(sibling).child[side];
            self.set_color(near, Color::Black);
            self.set_color(sibling, Color::Red);
            self.rotate(sibling, flip(side));
            sibling = self.node(parent).child[flip(side)];
        }
        let parent_color = self.node(parent).color;
        self.set_color(sibling, parent_color);
        self.set_color(parent, Color::Black);
        let far = self.node(sibling).child[flip(side)];
        self.set_color(far, Color::Black);
        self.rotate(parent, side);
    }
}

// Queries.
impl<V> IntervalTree<V> {
    /// The first node in in-order within the subtree `i` overlapping
    /// `[start, last]`, or NIL.
    fn first_overlap_in(&self, mut i: u32, start: u64, last: u64) -> u32 {
        loop {
            let node = self.node(i);
            let [left, right] = node.child;
            // Both children's maxima are loaded before either is needed, so
            // on a cold tree their cache misses overlap: one miss latency per
            // level instead of two on every step to the right.
            let left_reach = self.subtree_last_or_none(left);
            let right_reach = self.subtree_last_or_none(right);
            if left_reach.is_some_and(|reach| reach >= start) {
                // The left subtree reaches `start`: either it holds the
                // first overlap, or its reaching node starts after `last`
                // and so does everything from here on.
                i = left;
                continue;
            }
            if node.start > last {
                return NIL;
            }
            if node.last >= start {
                return i;
            }
            if right_reach.is_none_or(|reach| reach < start) {
                return NIL;
            }
            i = right;
        }
    }

    /// The cached maximum of the subtree at `i`, `None` for NIL.
    #[inline]
    fn subtree_last_or_none(&self, i: u32) -> Option<u64> {
        (i != NIL).then(|| self.node(i).subtree_last)
    }
}

/// Converts an arena index that may be NIL into an optional handle.
fn to_id(i: u32) -> Option<NodeId> {
    (i != NIL).then_some(NodeId(i))
}

// Invariant checking (for tests).
impl<V> IntervalTree<V> {
    /// Checks the subtree at `i`; returns its black height and node count.
    fn check_subtree(&self, i: u32) -> (usize, usize) {
        let node = self.node(i);
        assert!(node.start <= node.last, "node {i}: start > last");
        assert_eq!(
            node.subtree_last,
            self.computed_subtree_last(i),
            "node {i}: stale subtree_last"
        );
        let mut heights = [0; 2];
        let mut count = 1;
        for (side, &c) in node.child.iter().enumerate() {
            if c == NIL {
                continue;
            }
            assert_eq!(self.node(c).parent, i, "node {c}: bad parent link");
            assert!(
                !(self.is_red(i) && self.is_red(c)),
                "red node {i} has red child {c}"
            );
            let (height, n) = self.check_subtree(c);
            heights[side] = height;
            count += n;
        }
        assert_eq!(heights[LEFT], heights[RIGHT], "node {i}: black heights");
        let own = usize::from(node.color == Color::Black);
        (heights[LEFT] + own, count)
    }

    fn check_in_order(&self) {
        let mut previous_start = 0;
        let mut count = 0;
        for (_, start, _, _) in self.iter() {
            assert!(start >= previous_start, "in-order starts decrease");
            previous_start = start;
            count += 1;
        }
        assert_eq!(count, self.len, "in-order walk length disagrees with len");
    }

    fn check_free_list(&self) {
        let mut free = 0;
        let mut i = self.free_head;
        while i != NIL {
            match self.slots.get(i as usize) {
                Some(Slot::Free { next_free }) => i = *next_free,
                _ => panic!("free list reaches a non-free slot {i}"),
            }
            free += 1;
            assert!(free <= self.slots.len(), "free list has a cycle");
        }
        assert_eq!(free + self.len, self.slots.len(), "slots leak");
    }
}

/// Iterator over the nodes overlapping a query, built on
/// [`IntervalTree::iter_first`] / [`IntervalTree::iter_next`]; see
/// [`IntervalTree::overlapping`].
#[derive(Debug)]
pub struct Overlapping<'a, V> {
    tree: &'a IntervalTree<V>,
    next: Option<NodeId>,
    start: u64,
    last: u64,
}

impl<'a, V> Iterator for Overlapping<'a, V> {
    type Item = (NodeId, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        let id = self.next?;
        self.next = self.tree.iter_next(id, self.start, self.last);
        Some((id, &self.tree.node(id.0).value))
    }
}

impl<V> FusedIterator for Overlapping<'_, V> {}

/// In-order iterator over all nodes; see [`IntervalTree::iter`].
#[derive(Debug)]
pub struct Iter<'a, V> {
    tree: &'a IntervalTree<V>,
    next: u32,
    remaining: usize,
}

impl<'a, V> Iterator for Iter<'a, V> {
    type Item = (NodeId, u64, u64, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        if self.next == NIL {
            return None;
        }
        let i = self.next;
        let node = self.tree.node(i);
        self.next = self.tree.successor(i);
        self.remaining -= 1;
        Some((NodeId(i), node.start, node.last, &node.value))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl<V> ExactSizeIterator for Iter<'_, V> {}
impl<V> FusedIterator for Iter<'_, V> {}

#[cfg(all(test, not(mmun_loom)))]
mod tests {
    use super::*;

    fn ids_of(tree: &IntervalTree<u32>, start: u64, last: u64) -> Vec<u32> {
        tree.overlapping(start, last).map(|(_, &v)| v).collect()
    }

    #[test]
    fn empty_tree_has_no_overlaps() {
        let tree: IntervalTree<u32> = IntervalTree::new();
        assert!(tree.is_empty());
        assert_eq!(tree.iter_first(0, u64::MAX), None);
        assert_eq!(tree.iter().count(), 0);
        tree.check_invariants();
    }

    #[test]
    fn closed_interval_endpoints_overlap() {
        let mut tree = IntervalTree::new();
        tree.insert(10, 20, 1);
        assert_eq!(ids_of(&tree, 20, 30), [1]);
        assert_eq!(ids_of(&tree, 0, 10), [1]);
        assert_eq!(ids_of(&tree, 21, 30), [] as [u32; 0]);
        assert_eq!(ids_of(&tree, 0, 9), [] as [u32; 0]);
        assert_eq!(ids_of(&tree, 15, 15), [1]);
    }

    #[test]
    fn extreme_bounds_are_supported() {
        let mut tree = IntervalTree::new();
        tree.insert(0, 0, 1);
        tree.insert(u64::MAX, u64::MAX, 2);
        tree.insert(0, u64::MAX, 3);
        tree.check_invariants();
        assert_eq!(ids_of(&tree, 0, u64::MAX), [1, 3, 2]);
        assert_eq!(ids_of(&tree, u64::MAX, u64::MAX), [3, 2]);
        assert_eq!(ids_of(&tree, 0, 0), [1, 3]);
    }

    #[test]
    fn equal_starts_keep_insertion_order() {
        let mut tree = IntervalTree::new();
        for v in 0..50 {
            tree.insert(5, 5 + u64::from(v % 7), v);
        }
        tree.check_invariants();
        assert_eq!(ids_of(&tree, 0, 100), (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn remove_returns_value_and_reuses_slot() {
        let mut tree = IntervalTree::new();
        let a = tree.insert(1, 2, "a");
        let b = tree.insert(3, 4, "b");
        assert_eq!(tree.remove(a), "a");
        assert!(!tree.contains(a));
        assert_eq!(tree.get(a), None);
        tree.check_invariants();
        let c = tree.insert(5, 6, "c");
        assert_eq!(c, a, "freed slot is reused");
        assert_eq!(tree.interval(c), Some((5, 6)));
        assert_eq!(tree.get(b), Some(&"b"));
        assert_eq!(tree.len(), 2);
    }

    #[test]
    #[should_panic(expected = "stale NodeId")]
    fn removing_twice_panics() {
        let mut tree = IntervalTree::new();
        let a = tree.insert(1, 2, ());
        tree.remove(a);
        tree.remove(a);
    }

    #[test]
    #[should_panic(expected = "start")]
    fn inverted_interval_panics() {
        IntervalTree::new().insert(2, 1, ());
    }

    #[test]
    fn foreign_ids_are_not_contained() {
        let tree: IntervalTree<()> = IntervalTree::new();
        assert!(!tree.contains(NodeId::from_index(7)));
        assert!(!tree.contains(NodeId::from_index(u32::MAX)));
        assert_eq!(NodeId::from_index(7).index(), 7);
    }

    #[test]
    fn iter_next_resumes_after_unrelated_removals() {
        let mut tree = IntervalTree::new();
        let ids: Vec<_> = (0..100u64)
            .map(|i| tree.insert(i * 10, i * 10 + 15, i))
            .collect();
        let first = tree.iter_first(200, 400).unwrap();
        assert_eq!(tree.get(first), Some(&19));
        for &id in &ids[25..35] {
            tree.remove(id);
        }
        tree.check_invariants();
        let next = tree.iter_next(first, 200, 400).unwrap();
        assert_eq!(tree.get(next), Some(&20));
    }

    #[test]
    fn many_inserts_and_removes_keep_invariants() {
        let mut tree = IntervalTree::new();
        let mut ids = Vec::new();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for round in 0..2000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x.is_multiple_of(3) && !ids.is_empty() {
                let id = ids.swap_remove((x as usize / 3) % ids.len());
                tree.remove(id);
            } else {
                let start = x % 1000;
                ids.push(tree.insert(start, start + (x >> 40) % 50, round));
            }
            if round % 97 == 0 {
                tree.check_invariants();
            }
        }
        tree.check_invariants();
        assert_eq!(tree.len(), ids.len());
    }

    #[test]
    fn node_is_small() {
        // A free-list entry fits in the colour niche: no tag word.
        assert_eq!(size_of::<Slot<u64>>(), size_of::<Node<u64>>());
        assert_eq!(size_of::<Slot<[usize; 2]>>(), size_of::<Node<[usize; 2]>>());
        const { assert!(IntervalTree::<u64>::NODE_BYTES <= 48) };
        const { assert!(IntervalTree::<Box<u8>>::NODE_BYTES <= 48) };
    }

    #[test]
    fn debug_lists_intervals_in_order() {
        let mut tree = IntervalTree::new();
        tree.insert(5, 6, 'b');
        tree.insert(1, 2, 'a');
        assert_eq!(format!("{tree:?}"), "{1..=2: 'a', 5..=6: 'b'}");
    }
}
