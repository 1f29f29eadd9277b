//! What the subsystem knows of an interval notifier: the header at the
//! front of the caller's pinned node (`IntervalNode<O>`), and the tree's
//! pointer to it.
//!
//! This is the kernel's arrangement: `struct mmu_interval_notifier` is
//! embedded in the driver's structure and the interval tree links to it;
//! `mmu_interval_notifier_remove` waits until no callback can be running
//! before the driver may free it. Here the node is pinned and removes
//! itself in `Drop` (which also waits), so the memory the tree points at
//! cannot be reused before it is out of the tree and no callback can be
//! running on it (`DESIGN.md`, "Memory per interval notifier").
//!
//! The rule every `unsafe` here rests on: a [`NodePtr`] is dereferenced only
//! while the epoch in which it was collected from the tree is still open
//! (proved by borrowing that epoch's guard), and a node leaves the tree only
//! through `Itree::remove`, which defers the removal to the end of an open
//! epoch and waits for it.

#![allow(unsafe_code)]

use std::fmt;
use std::ptr::NonNull;

use super::itree::EpochGuard;
use crate::interval_btree::Key;
use crate::seq_word::IntervalSub;
use crate::sync::Arc;
use crate::{Mm, Range, Seq};

/// Calls the driver's `invalidate` of the node whose header this is: the
/// node's type knows how to cast the header back to itself.
///
/// # Safety
///
/// `header` must point at the header of a live node of the type that
/// installed this function, and stay valid for the call.
pub(crate) type Dispatch = unsafe fn(NonNull<NodeHeader>, &Range<'_>, Seq) -> bool;

/// The front of every interval notifier's node (`#[repr(C)]`, first field
/// of `IntervalNode<O>`): what a callback, `read_retry` and removal need.
/// The seq word and the dispatch pointer share the first cache line a hit
/// touches after the tree's leaf.
#[repr(C)]
pub(crate) struct NodeHeader {
    /// The seq word (`invalidate_seq`): written by callbacks and inserts,
    /// read by `read_begin` / `read_retry`, from any thread.
    pub(crate) sub: IntervalSub,
    /// Set once, when the node is built.
    pub(crate) dispatch: Dispatch,
    /// First address. Written only while the node is out of the tree (by
    /// the owner, through its `Pin<&mut>`); with the node's address it is
    /// the tree key.
    pub(crate) start: u64,
    /// The address space while inserted (`mmgrab`: it outlives the
    /// subscription), `None` before insert and after remove. Written only
    /// while out of the tree, like `start`.
    pub(crate) mm: Option<Arc<Mm>>,
}

impl NodeHeader {
    pub(crate) fn new(dispatch: Dispatch) -> NodeHeader {
        NodeHeader {
            sub: IntervalSub::new(),
            dispatch,
            start: 0,
            mm: None,
        }
    }

    /// The tree key: the start, then the header's address, which is unique
    /// while the node is inserted (it is pinned); it names the entry and
    /// does not order equal starts (the order they were linked in does).
    /// The address is exposed so that [`NodePtr::from_key`] may turn it
    /// back into a pointer.
    pub(crate) fn key(&self) -> Key {
        Key {
            start: self.start,
            id: std::ptr::from_ref(self).expose_provenance() as u64,
        }
    }
}

impl fmt::Debug for NodeHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeHeader")
            .field("start", &format_args!("{:#x}", self.start))
            .field("sub", &self.sub)
            .field("inserted", &self.mm.is_some())
            .finish_non_exhaustive()
    }
}

/// The tree's pointer to a node's header, rebuilt from a key's id.
#[derive(Clone, Copy)]
pub(crate) struct NodePtr(NonNull<NodeHeader>);

// SAFETY: a node is `Send + Sync` (its driver state is, and the header is
// atomics plus data written only while no other thread can reach it), and
// the pointer is only read.
unsafe impl Send for NodePtr {}
// SAFETY: as above.
unsafe impl Sync for NodePtr {}

impl NodePtr {
    /// The node of a tree entry's key (see [`NodeHeader::key`]).
    pub(crate) fn from_key(key: Key) -> NodePtr {
        let ptr = std::ptr::with_exposed_provenance_mut::<NodeHeader>(key.id as usize);
        NodePtr(NonNull::new(ptr).expect("a node's address is not null"))
    }

    /// The header, for as long as `epoch` (the epoch in which the caller
    /// collected this pointer from the tree) stays open.
    pub(crate) fn get<'e>(self, _epoch: &'e EpochGuard<'_>) -> &'e NodeHeader {
        // SAFETY: the key was collected from the tree while `epoch` was
        // open; an `EpochGuard` lives only between a start and the point
        // where its range is counted for `end`, and the epoch closes no
        // earlier. While it is open a linked node's removal is deferred to
        // its end and waits for it (`Itree::remove`), and the node is pinned
        // and removes itself before its memory can be reused (its `Drop`
        // removes, and aborts rather than unwind with the node linked; a
        // handle whose removal was refused leaks its node). So the header is
        // alive for `'e`. Its address was exposed by `NodeHeader::key`.
        unsafe { self.0.as_ref() }
    }

    /// Calls the driver's `invalidate` with the node's seq word, while the
    /// epoch that collected the pointer is open.
    pub(crate) fn invalidate(
        self,
        epoch: &EpochGuard<'_>,
        range: &Range<'_>,
        cur_seq: Seq,
    ) -> bool {
        let dispatch = self.get(epoch).dispatch;
        // SAFETY: `dispatch` was installed by the node's own type when it
        // was built, and the node is alive for the whole call (see `get`:
        // the epoch is open until `epoch` drops, after this returns).
        unsafe { dispatch(self.0, range, cur_seq) }
    }
}

impl fmt::Debug for NodePtr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodePtr({:p})", self.0)
    }
}
