//! The pinned interval notifier a driver embeds in its own structure.
//!
//! Kernel counterpart: `struct mmu_interval_notifier`, which drivers embed
//! and the interval tree links to. [`IntervalNode<O>`] is that node with
//! the driver state `O` inline: once pinned and inserted, the subsystem's
//! tree points at it, so an interval costs the node's header (32 B) and a
//! tree entry (about 26 B), with nothing allocated per interval. A driver
//! that holds many intervals keeps the nodes in one pinned slice:
//!
//! ```
//! use mmun_core::{IntervalNode, IntervalNotifierOps, IntervalSub, Mm, Range, Seq};
//!
//! struct Mirror;
//! impl IntervalNotifierOps for Mirror {
//!     fn invalidate(&self, sub: &IntervalSub, _: &Range<'_>, cur_seq: Seq) -> bool {
//!         sub.set_seq(cur_seq); // under the driver lock, in a real driver
//!         true
//!     }
//! }
//!
//! let mm = Mm::new();
//! let mut nodes = Box::into_pin((0..64).map(|_| IntervalNode::new(Mirror)).collect::<Box<[_]>>());
//! for (i, node) in IntervalNode::each_pinned(nodes.as_mut()).enumerate() {
//!     node.insert(&mm, i as u64 * 0x2000, 0x1000).unwrap();
//! }
//! let seq = nodes[3].read_begin();
//! assert!(!nodes[3].read_retry(seq));
//! drop(nodes); // each node removes itself
//! ```
//!
//! The movable [`IntervalNotifier`](crate::IntervalNotifier) is a box
//! around one node.

#![allow(unsafe_code)]

use std::fmt;
use std::marker::PhantomPinned;
use std::ops::Deref;
use std::pin::Pin;
use std::ptr::NonNull;

use crate::error::{Error, Result};
use crate::mm::MmapWriteGuard;
use crate::ops::IntervalNotifierOps;
use crate::seq_word::IntervalSub;
use crate::subscriptions::Subscriptions;
use crate::subscriptions::itree::WouldWaitOnSelf;
use crate::subscriptions::node::NodeHeader;
use crate::subscriptions::subscription::register_locked;
use crate::sync::Arc;
use crate::{Mm, Range, Seq};

/// `struct mmu_interval_notifier` embedded with its driver state `O`: a
/// node that is inserted through a pinned reference and removes itself
/// when dropped.
///
/// Dereferences to its [`IntervalSub`] (`read_retry`, `check_retry`,
/// `set_seq`). Build it with [`IntervalNode::new`], pin it (`Box::pin`, a
/// pinned slice, `std::pin::pin!`), then [`IntervalNode::insert`].
///
/// # Dropping
///
/// Drop removes the node and waits until no `invalidate` for it can be
/// running, as [`IntervalNode::remove`] does. Dropping an inserted node from
/// its address space's invalidate callback, or between a start and its end
/// on the same thread, would wait forever for this thread's own
/// invalidation, and the node cannot be freed while the tree may still call
/// it: the process aborts with a message naming the rule.
#[repr(C)]
pub struct IntervalNode<O: IntervalNotifierOps> {
    /// First, so that the tree's pointer to the header is a pointer to the
    /// node (`dispatch` casts it back).
    header: NodeHeader,
    ops: O,
    /// The tree points at the node: it must not move once inserted.
    _pinned: PhantomPinned,
}

/// What `Dispatch` is for nodes of type `O`: the header back to its node,
/// then the driver's callback with the node's seq word.
///
/// # Safety
///
/// `header` points at the header of a live `IntervalNode<O>`.
unsafe fn dispatch<O: IntervalNotifierOps>(
    header: NonNull<NodeHeader>,
    range: &Range<'_>,
    cur_seq: Seq,
) -> bool {
    // SAFETY: the header is the first field of the `#[repr(C)]`
    // `IntervalNode<O>` whose `new` installed this function for this `O`,
    // so its address is the node's; the caller guarantees the node is live
    // (pinned, and its removal waits for the epoch this call runs in). Only
    // shared references are made: the owner writes nothing a callback reads
    // while the node is linked.
    let node = unsafe { header.cast::<IntervalNode<O>>().as_ref() };
    node.ops.invalidate(&node.header.sub, range, cur_seq)
}

impl<O: IntervalNotifierOps> IntervalNode<O> {
    /// A node holding `ops`, not inserted yet.
    pub fn new(ops: O) -> IntervalNode<O> {
        IntervalNode {
            header: NodeHeader::new(dispatch::<O>),
            ops,
            _pinned: PhantomPinned,
        }
    }

    /// The nodes of a pinned slice, each pinned: how a driver that keeps
    /// its nodes in one allocation inserts or removes them.
    pub fn each_pinned(nodes: Pin<&mut [Self]>) -> impl Iterator<Item = Pin<&mut Self>> {
        // SAFETY: the elements of a pinned slice never move while it lives
        // (moving one would move the slice's contents), so re-pinning each
        // one promises nothing the slice's pin did not; none is moved here.
        let nodes = unsafe { nodes.get_unchecked_mut() };
        nodes.iter_mut().map(|node| {
            // SAFETY: as above, `node` is an element of the pinned slice.
            unsafe { Pin::new_unchecked(node) }
        })
    }

    /// `mmu_interval_notifier_insert`: subscribes `[start, start + length)`
    /// of `mm`. Takes the mmap write lock the first time the address space
    /// gets an interval notifier.
    ///
    /// # Errors
    ///
    /// [`Error::Overflow`] for a zero length or an interval past `u64::MAX`;
    /// [`Error::NoUsers`] after exit; [`Error::Disabled`] in the disabled
    /// build. The node stays uninserted.
    ///
    /// # Panics
    ///
    /// If the node is already inserted.
    pub fn insert(self: Pin<&mut Self>, mm: &Arc<Mm>, start: u64, length: u64) -> Result<()> {
        let last = checked_last(start, length)?;
        self.assert_not_inserted();
        let enabled = mm.subscriptions().is_some_and(|s| s.has_itree());
        if !enabled {
            mm.assert_not_registering_inside("mmu_interval_notifier_insert()");
            let guard = mm.mmap_write();
            register_locked(&guard, None)?;
        }
        self.insert_enabled(mm, start, last)
    }

    /// `mmu_interval_notifier_insert_locked`: the same, with the mmap write
    /// lock already held; the interval goes on that lock's address space.
    ///
    /// # Errors
    ///
    /// As [`IntervalNode::insert`].
    ///
    /// # Panics
    ///
    /// If the node is already inserted.
    pub fn insert_locked(
        self: Pin<&mut Self>,
        guard: &MmapWriteGuard<'_>,
        start: u64,
        length: u64,
    ) -> Result<()> {
        let last = checked_last(start, length)?;
        self.assert_not_inserted();
        register_locked(guard, None)?;
        self.insert_enabled(guard.mm_arc(), start, last)
    }

    fn assert_not_inserted(&self) {
        assert!(
            self.header.mm.is_none(),
            "IntervalNode::insert: the node is already inserted (remove it first)"
        );
    }

    fn insert_enabled(self: Pin<&mut Self>, mm: &Arc<Mm>, start: u64, last: u64) -> Result<()> {
        if !mm.is_live() {
            return Err(Error::NoUsers);
        }
        let subscriptions = mm.subscriptions().ok_or(Error::Disabled)?;
        let scope = mm.registration_scope();
        // SAFETY: only `start` and `mm` are written, in place: nothing is
        // moved out of the pinned node. It is not in the tree yet, so no
        // other thread reads them.
        let header = &mut unsafe { self.get_unchecked_mut() }.header;
        header.start = start;
        header.mm = Some(Arc::clone(mm));
        subscriptions.itree().insert(header, last);
        drop(scope);
        if let Some(observer) = mm.observer() {
            observer.interval_inserted(start, last);
        }
        Ok(())
    }

    /// `mmu_interval_notifier_remove`: unsubscribes, waiting until no
    /// `invalidate` for this interval can be running. Does nothing if the
    /// node is not inserted. Dropping the node does the same.
    ///
    /// # Panics
    ///
    /// When called from this address space's invalidate callback, or
    /// between a start and its end on this thread (it would wait for its
    /// own invalidation), in every build. The node then stays inserted.
    pub fn remove(self: Pin<&mut Self>) {
        if let Err(refused) = self.try_remove() {
            refused.panic_unless_panicking();
        }
    }

    /// [`IntervalNode::remove`] that reports the self-deadlock rule instead
    /// of panicking, leaving the node inserted.
    pub(crate) fn try_remove(self: Pin<&mut Self>) -> std::result::Result<(), RemoveRefused> {
        let Some(subscriptions) = self.subscriptions() else {
            return Ok(());
        };
        let mm = self.header.mm.as_ref().expect("inserted");
        let scope = mm.registration_scope();
        let last = subscriptions
            .itree()
            .remove(&self.header)
            .map_err(|WouldWaitOnSelf| RemoveRefused)?;
        drop(scope);
        // SAFETY: only `mm` is written, in place; the node is out of the
        // tree and no callback for it can be running any more.
        let header = &mut unsafe { self.get_unchecked_mut() }.header;
        let mm = header.mm.take().expect("inserted");
        if let Some(observer) = mm.observer() {
            observer.interval_removed(header.start, last);
        }
        Ok(())
    }

    /// Whether the node is inserted (between a successful insert and its
    /// removal).
    pub fn is_inserted(&self) -> bool {
        self.header.mm.is_some()
    }

    fn subscriptions(&self) -> Option<&Subscriptions> {
        let mm = self.header.mm.as_ref()?;
        Some(mm.subscriptions().expect("inserted, so present"))
    }

    fn inserted_subscriptions(&self) -> &Subscriptions {
        self.subscriptions()
            .expect("the interval node is not inserted")
    }

    /// `mmu_interval_read_begin`: a sequence number for
    /// [`IntervalSub::read_retry`]. If an invalidation that covers this
    /// interval is running, waits until every running invalidation of the
    /// address space has ended. The result may already be stale; callers
    /// loop (see [`crate::interval_notifier`]).
    ///
    /// # Panics
    ///
    /// If the node is not inserted. If it would have to wait while this
    /// thread has an invalidation of the same address space open (from a
    /// callback, or between start and end), in every build; in debug
    /// builds also inside a non-blockable callback (`might_sleep`).
    #[must_use = "pass the seq to read_retry"]
    pub fn read_begin(&self) -> Seq {
        let subscriptions = self.inserted_subscriptions();
        subscriptions.itree().read_begin(&self.header.sub)
    }

    /// [`IntervalNode::read_begin`] that returns `None` where that one
    /// panics on the self-deadlock rule.
    ///
    /// # Panics
    ///
    /// If the node is not inserted.
    #[must_use = "pass the seq to read_retry"]
    pub fn try_read_begin(&self) -> Option<Seq> {
        let subscriptions = self.inserted_subscriptions();
        subscriptions.itree().try_read_begin(&self.header.sub)
    }

    /// The two words [`IntervalNode::read_begin`]'s lock-free path and
    /// [`IntervalSub::read_retry`] read (see [`SeqWords`]); valid while the
    /// node stays inserted.
    ///
    /// # Panics
    ///
    /// If the node is not inserted.
    #[cfg(not(mmun_loom))]
    #[must_use]
    pub fn seq_words(&self) -> SeqWords {
        let subscriptions = self.inserted_subscriptions();
        SeqWords {
            interval: self.header.sub.word_ptr(),
            invalidating: subscriptions.published_seq.as_ptr(),
        }
    }

    /// First address of the interval (0 before the first insert).
    pub fn start(&self) -> u64 {
        self.header.start
    }

    /// Last address of the interval (inclusive), which only the tree keeps:
    /// looked up under the subscriptions lock.
    ///
    /// # Panics
    ///
    /// If the node is not inserted.
    pub fn last(&self) -> u64 {
        self.inserted_subscriptions().itree().last_of(&self.header)
    }

    /// The address space, while inserted.
    pub fn mm(&self) -> Option<&Arc<Mm>> {
        self.header.mm.as_ref()
    }

    /// The driver state.
    pub fn ops(&self) -> &O {
        &self.ops
    }
}

/// Where an interval's retry protocol lives, for code that inlines the
/// fast paths of `read_begin` and `read_retry` outside Rust:
///
/// * `read_begin`: `s` = `*interval` (acquire); if `s == *invalidating`
///   (acquire), an invalidation covering the interval is running: call
///   the real `read_begin` (which waits); otherwise `s` is the sequence.
/// * `read_retry(s)`, under the driver lock: `*interval != s` (relaxed:
///   the lock orders it after the callback's `set_seq`).
///
/// Only ever read the words, with atomic loads. The interval's word is in
/// its node, which is pinned: it stays at its address until the interval
/// is removed (reading it after that is the caller's bug, as using a
/// removed notifier is). The address space's word stays while it lives.
#[cfg(not(mmun_loom))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqWords {
    /// The interval's sequence word (`mmu_interval_notifier.invalidate_seq`).
    pub interval: *const u64,
    /// The address space's running invalidation's sequence
    /// (`mmu_notifier_subscriptions.invalidate_seq`), as the lock-free
    /// `read_begin` reads it.
    pub invalidating: *const u64,
}

/// A removal refused because it would wait for an invalidation this thread
/// has open.
#[derive(Debug)]
pub(crate) struct RemoveRefused;

impl RemoveRefused {
    const RULE: &'static str = "mmu_interval_notifier_remove() would wait for an invalidation of \
         the same mm that this thread has open (it must not be called from an invalidate callback \
         or between start and end)";

    /// Panics naming the rule, unless the thread is already unwinding (a
    /// second panic would abort).
    #[track_caller]
    pub(crate) fn panic_unless_panicking(self) {
        if !std::thread::panicking() {
            panic!("{}", Self::RULE);
        }
    }

    /// For a node that cannot outlive this call: it is still linked, so
    /// freeing it would leave the tree pointing at freed memory.
    fn abort(self) -> ! {
        eprintln!(
            "{}; an IntervalNode dropped there stays linked and cannot be freed: aborting",
            Self::RULE
        );
        std::process::abort()
    }
}

/// `[start, start + length - 1]`, or `EOVERFLOW`.
fn checked_last(start: u64, length: u64) -> Result<u64> {
    length
        .checked_sub(1)
        .and_then(|l| start.checked_add(l))
        .ok_or(Error::Overflow)
}

impl<O: IntervalNotifierOps> Deref for IntervalNode<O> {
    type Target = IntervalSub;
    #[inline]
    fn deref(&self) -> &IntervalSub {
        &self.header.sub
    }
}

impl<O: IntervalNotifierOps> Drop for IntervalNode<O> {
    fn drop(&mut self) {
        // SAFETY: `drop` is the last use of the node; re-pinning it for the
        // removal moves nothing (pinned values are dropped in place).
        let this = unsafe { Pin::new_unchecked(self) };
        if let Err(refused) = this.try_remove() {
            refused.abort();
        }
    }
}

impl<O: IntervalNotifierOps> fmt::Debug for IntervalNode<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IntervalNode")
            .field("start", &format_args!("{:#x}", self.header.start))
            .field("seq", &self.header.sub)
            .field("inserted", &self.is_inserted())
            .finish_non_exhaustive()
    }
}
