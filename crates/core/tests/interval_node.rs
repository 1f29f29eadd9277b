//! The pinned interval node (`IntervalNode<O>`): the same protocol as the
//! movable handle, plus what only a caller-owned node can get wrong:
//! dropping it while a callback runs, dropping it uninserted, holding many
//! in one pinned slice, and dropping it where its removal could never end.

mod common;

use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::*;
use mmun_core::{
    Error, Event, HeldMmLock, IntervalNode, IntervalNotifierOps, IntervalSub, Invalidation, Mm,
    Range, Seq,
};

fn clear(held: &impl HeldMmLock, start: u64, end: u64) -> Range<'_> {
    Range::new(held, Event::Clear, start, end)
}

fn invalidate(mm: &Mm, start: u64, end: u64) {
    let lock = mm.mmap_read();
    Invalidation::start(clear(&lock, start, end)).end();
}

/// Counts its calls and acknowledges them.
#[derive(Default)]
struct Count(Arc<AtomicUsize>);

impl IntervalNotifierOps for Count {
    fn invalidate(&self, sub: &IntervalSub, _: &Range<'_>, cur_seq: Seq) -> bool {
        sub.set_seq(cur_seq);
        self.0.fetch_add(1, Ordering::SeqCst);
        true
    }
}

#[test]
fn the_retry_protocol_works_on_a_node() {
    let mm = Mm::new();
    let mut node = pin!(IntervalNode::new(Count::default()));
    node.as_mut().insert(&mm, 0x4000, 0x2000).unwrap();
    assert!(node.is_inserted());
    assert_eq!((node.start(), node.last()), (0x4000, 0x5fff));
    let seq = node.read_begin();
    invalidate(&mm, 0x8000, 0x9000);
    assert!(!node.read_retry(seq), "a range that misses leaves it valid");
    invalidate(&mm, 0x5000, 0x5001);
    assert!(node.read_retry(seq), "a range that hits forces a retry");
    assert_eq!(node.ops().0.load(Ordering::SeqCst), 1);
    let again = node.read_begin();
    assert!(!node.read_retry(again));
    let words = node.seq_words();
    assert_eq!(
        words.interval,
        std::ptr::from_ref::<IntervalSub>(&node).cast()
    );
    node.as_mut().remove();
    assert!(!node.is_inserted());
    invalidate(&mm, 0x5000, 0x5001);
    assert_eq!(
        node.ops().0.load(Ordering::SeqCst),
        1,
        "removed: not called"
    );
}

#[test]
fn a_node_can_be_inserted_again_after_remove_and_not_twice() {
    let mm = Mm::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let mut node = Box::pin(IntervalNode::new(Count(Arc::clone(&calls))));
    node.as_mut().insert(&mm, 0, 0x1000).unwrap();
    node.as_mut().remove();
    node.as_mut().insert(&mm, 0x2000, 0x1000).unwrap();
    invalidate(&mm, 0, 0x1000);
    invalidate(&mm, 0x2000, 0x3000);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "only the new interval");
    let twice = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        node.as_mut().insert(&mm, 0x8000, 0x1000)
    }));
    assert!(twice.is_err(), "inserting an inserted node panics");
    assert_eq!(node.last(), 0x2fff, "and leaves it as it was");
}

#[test]
fn a_node_never_inserted_or_refused_drops_without_touching_anything() {
    let mm = Mm::new();
    drop(IntervalNode::new(Count::default()));
    let mut node = Box::pin(IntervalNode::new(Count::default()));
    assert_eq!(
        node.as_mut().insert(&mm, 0x1000, 0),
        Err(Error::Overflow),
        "a zero length is refused"
    );
    assert!(!node.is_inserted());
    let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| node.read_begin()));
    assert!(read.is_err(), "read_begin needs an inserted node");
    node.as_mut().remove();
    drop(node);
    assert!(mm.warnings().is_empty(), "{:?}", mm.warnings());
}

#[test]
fn many_nodes_in_one_pinned_slice() {
    const N: u64 = 1_000;
    let mm = Mm::new();
    let calls: Vec<_> = (0..N).map(|_| Arc::new(AtomicUsize::new(0))).collect();
    let mut nodes: Pin<Box<[IntervalNode<Count>]>> = Box::into_pin(
        calls
            .iter()
            .map(|c| IntervalNode::new(Count(Arc::clone(c))))
            .collect(),
    );
    for (i, node) in IntervalNode::each_pinned(nodes.as_mut()).enumerate() {
        node.insert(&mm, i as u64 * 0x2000, 0x1000).unwrap();
    }
    for i in (0..N).step_by(7) {
        invalidate(&mm, i * 0x2000 + 0x800, i * 0x2000 + 0x801);
    }
    for (i, c) in calls.iter().enumerate() {
        let expected = usize::from(i % 7 == 0);
        assert_eq!(c.load(Ordering::SeqCst), expected, "node {i}");
        assert_eq!(nodes[i].last(), i as u64 * 0x2000 + 0xfff);
    }
    drop(nodes);
    invalidate(&mm, 0, N * 0x2000);
    let total: usize = calls.iter().map(|c| c.load(Ordering::SeqCst)).sum();
    assert_eq!(
        total,
        N.div_ceil(7) as usize,
        "dropped nodes are not called"
    );
    assert!(mm.warnings().is_empty(), "{:?}", mm.warnings());
}

/// The kernel's order for equal starts: its interval tree sends an equal
/// start to the right of the nodes already there, so an in-order walk calls
/// them in insertion order. Nodes of one slice inserted in a scrambled order
/// make that differ from address order (what the tree key also holds).
#[test]
fn equal_starts_are_called_in_insertion_order_not_address_order() {
    const N: usize = 40;
    let mm = Mm::new();
    let log = Log::default();
    let names: Vec<&'static str> = (0..N)
        .map(|i| &*Box::leak(format!("n{i}").into_boxed_str()))
        .collect();
    let mut nodes: Pin<Box<[IntervalNode<Recorder>]>> = Box::into_pin(
        names
            .iter()
            .map(|who| IntervalNode::new(Recorder::new(who, &log)))
            .collect(),
    );
    // Slot i is inserted at step (i * 7) % N: neither address order nor
    // its reverse.
    let mut steps: Vec<usize> = (0..N).collect();
    steps.sort_by_key(|&i| (i * 7) % N);
    let mut pinned: Vec<Option<Pin<&mut IntervalNode<Recorder>>>> =
        IntervalNode::each_pinned(nodes.as_mut())
            .map(Some)
            .collect();
    for &i in &steps {
        let node = pinned[i].as_mut().unwrap();
        node.as_mut()
            .insert(&mm, 0x4000, 0x1000 * (1 + i as u64 % 3))
            .unwrap();
    }
    let called = |log: &Log| -> Vec<&'static str> {
        invalidate(&mm, 0x4000, 0x4001);
        log.take().iter().map(who_of).collect()
    };
    let expected: Vec<_> = steps.iter().map(|&i| names[i]).collect();
    let by_address = names.clone();
    let by_address_reversed: Vec<_> = names.iter().rev().copied().collect();
    assert!(expected != by_address && expected != by_address_reversed);
    assert_eq!(called(&log), expected, "insertion order");

    // Removing one keeps the others' order; inserting it again puts it
    // last, as re-linking a node does in the kernel.
    let again = steps[3];
    pinned[again].as_mut().unwrap().as_mut().remove();
    let mut expected: Vec<_> = expected
        .into_iter()
        .filter(|w| *w != names[again])
        .collect();
    assert_eq!(called(&log), expected, "after a removal");
    let node = pinned[again].as_mut().unwrap();
    node.as_mut().insert(&mm, 0x4000, 0x1000).unwrap();
    expected.push(names[again]);
    assert_eq!(called(&log), expected, "re-inserted: last");
    drop(pinned);
    drop(nodes);
    assert!(mm.warnings().is_empty(), "{:?}", mm.warnings());
}

/// Inserts deferred while the tree is frozen are linked when the epoch
/// closes in the kernel's order: `mn_itree_inv_end` walks its deferred list
/// from the head and each deferral was added at the head, so the last one
/// queued is linked first, and among equal starts called first. A cancelled
/// one (removed before the end) leaves the others' order alone.
#[test]
fn deferred_inserts_are_linked_last_queued_first() {
    let mm = Mm::new();
    let log = Log::default();
    let mut hit = Box::pin(IntervalNode::new(Recorder::new("hit", &log)));
    hit.as_mut().insert(&mm, 0x1000, 0x1000).unwrap();
    let lock = mm.mmap_read();
    let full = Invalidation::start(clear(&lock, 0x1000, 0x2000));
    let mut queued: Vec<_> = ["a", "b", "c", "d"]
        .into_iter()
        .map(|who| {
            let mut node = Box::pin(IntervalNode::new(Recorder::new(who, &log)));
            node.as_mut().insert(&mm, 0x1000, 0x1000).unwrap();
            node
        })
        .collect();
    queued[1].as_mut().remove(); // "b": still pending, cancelled
    full.end();
    log.take();
    Invalidation::start(clear(&lock, 0x1000, 0x2000)).end();
    let who: Vec<_> = log.take().iter().map(who_of).collect();
    assert_eq!(who, ["hit", "d", "c", "a"]);
    drop(lock);
    drop(queued);
    assert!(mm.warnings().is_empty(), "{:?}", mm.warnings());
}

/// §1.5 on nodes: an insert during a fully excluded epoch joins the tree at
/// its end; removing it before then does not wait; removing a linked node
/// during the epoch waits for the epoch's end.
#[test]
fn insert_and_remove_during_a_running_invalidation_are_deferred() {
    within(10, || {
        let mm = Mm::new();
        let log = Log::default();
        let mut hit = Box::pin(IntervalNode::new(Recorder::new("hit", &log)));
        hit.as_mut().insert(&mm, 0x1000, 0x1000).unwrap();
        let lock = mm.mmap_read();
        let full = Invalidation::start(clear(&lock, 0x1000, 0x2000));
        let mut late = Box::pin(IntervalNode::new(Recorder::new("late", &log)));
        late.as_mut().insert(&mm, 0x1000, 0x1000).unwrap();
        assert_eq!(late.last(), 0x1fff, "a pending insert knows its last");
        let mut cancelled = Box::pin(IntervalNode::new(Recorder::new("cancelled", &log)));
        cancelled.as_mut().insert(&mm, 0x1000, 0x1000).unwrap();
        cancelled.as_mut().remove(); // pending: returns without waiting
        log.take();
        let nested = Invalidation::start(clear(&lock, 0x1000, 0x2000));
        let who: Vec<_> = log.take().iter().map(who_of).collect();
        assert_eq!(who, ["hit"], "the frozen tree has only the linked node");
        nested.end();

        // Removing the linked node from another thread waits for the end.
        let removed = Arc::new(AtomicBool::new(false));
        let remover = std::thread::spawn({
            let removed = Arc::clone(&removed);
            move || {
                hit.as_mut().remove();
                removed.store(true, Ordering::SeqCst);
                hit
            }
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !removed.load(Ordering::SeqCst),
            "remove returned inside the epoch"
        );
        full.end();
        let hit = remover.join().unwrap();
        assert!(!hit.is_inserted());
        Invalidation::start(clear(&lock, 0x1000, 0x2000)).end();
        let who: Vec<_> = log.take().iter().map(who_of).collect();
        assert_eq!(
            who,
            ["late"],
            "the deferred updates were applied at the end"
        );
        assert!(mm.warnings().is_empty(), "{:?}", mm.warnings());
    });
}

/// Blocks in its callback until told to go on, then records that it
/// finished; counts how many of its calls were still running when the node
/// was freed.
struct Slow {
    entered: mpsc::SyncSender<()>,
    go: Arc<Barrier>,
    running: Arc<AtomicUsize>,
}

impl IntervalNotifierOps for Slow {
    fn invalidate(&self, sub: &IntervalSub, _: &Range<'_>, cur_seq: Seq) -> bool {
        self.running.fetch_add(1, Ordering::SeqCst);
        self.entered.send(()).unwrap();
        self.go.wait();
        std::thread::sleep(Duration::from_millis(20));
        sub.set_seq(cur_seq);
        self.running.fetch_sub(1, Ordering::SeqCst);
        true
    }
}

/// A node's own drop of its state.
struct FreedWhile(Arc<AtomicUsize>, Arc<AtomicUsize>);

impl Drop for FreedWhile {
    fn drop(&mut self) {
        self.1
            .store(self.0.load(Ordering::SeqCst) + 1, Ordering::SeqCst);
    }
}

struct SlowState {
    slow: Slow,
    _freed: FreedWhile,
}

impl IntervalNotifierOps for SlowState {
    fn invalidate(&self, sub: &IntervalSub, range: &Range<'_>, cur_seq: Seq) -> bool {
        self.slow.invalidate(sub, range, cur_seq)
    }
}

#[test]
fn dropping_a_node_waits_for_its_running_callback_before_freeing_it() {
    within(10, || {
        let mm = Mm::new();
        let (entered_tx, entered) = mpsc::sync_channel(1);
        let go = Arc::new(Barrier::new(2));
        let running = Arc::new(AtomicUsize::new(0));
        // 1 + the number of callbacks running when the state was dropped.
        let freed = Arc::new(AtomicUsize::new(0));
        let state = SlowState {
            slow: Slow {
                entered: entered_tx,
                go: Arc::clone(&go),
                running: Arc::clone(&running),
            },
            _freed: FreedWhile(Arc::clone(&running), Arc::clone(&freed)),
        };
        let mut node = Box::pin(IntervalNode::new(state));
        node.as_mut().insert(&mm, 0, 0x1000).unwrap();
        let invalidator = std::thread::spawn({
            let mm = Arc::clone(&mm);
            move || invalidate(&mm, 0, 0x1000)
        });
        entered.recv().unwrap();
        let dropper = std::thread::spawn(move || drop(node));
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(
            freed.load(Ordering::SeqCst),
            0,
            "freed under a running callback"
        );
        go.wait();
        dropper.join().unwrap();
        invalidator.join().unwrap();
        assert_eq!(
            freed.load(Ordering::SeqCst),
            1,
            "the state was freed only after its callback returned"
        );
    });
}

/// Removing a node from its own callback would wait for itself: the
/// explicit `remove` panics and leaves the node inserted (so it may still
/// be called and freed later, normally).
#[test]
fn remove_from_the_callback_panics_and_leaves_the_node_inserted() {
    struct RemovesItself(AtomicUsize);
    static NODE: std::sync::Mutex<Option<Pin<Box<IntervalNode<RemovesItself>>>>> =
        std::sync::Mutex::new(None);
    impl IntervalNotifierOps for RemovesItself {
        fn invalidate(&self, sub: &IntervalSub, _: &Range<'_>, cur_seq: Seq) -> bool {
            sub.set_seq(cur_seq);
            if self.0.fetch_add(1, Ordering::SeqCst) == 0 {
                let mut slot = NODE.lock().unwrap();
                let node = slot.as_mut().unwrap();
                let removed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    node.as_mut().remove()
                }));
                let message = removed.expect_err("remove from the callback must panic");
                let text = message
                    .downcast_ref::<String>()
                    .cloned()
                    .unwrap_or_default();
                assert!(text.contains("mmu_interval_notifier_remove()"), "{text}");
            }
            true
        }
    }
    within(10, || {
        let mm = Mm::new();
        let mut node = Box::pin(IntervalNode::new(RemovesItself(AtomicUsize::new(0))));
        node.as_mut().insert(&mm, 0, 0x1000).unwrap();
        *NODE.lock().unwrap() = Some(node);
        let remote = Arc::clone(&mm);
        // The slot's lock is taken inside the callback: run the
        // invalidations without holding it.
        std::thread::spawn(move || invalidate(&remote, 0, 0x1000))
            .join()
            .unwrap();
        invalidate(&mm, 0, 0x1000);
        let node = NODE.lock().unwrap().take().unwrap();
        assert!(node.is_inserted(), "the refused removal changed nothing");
        assert_eq!(node.ops().0.load(Ordering::SeqCst), 2, "still called");
        drop(node);
        invalidate(&mm, 0, 0x1000);
    });
}

/// The child half of the next test: drops an inserted node between a
/// start and its end on the same thread, which must abort the process.
#[test]
#[ignore = "run as a child process by dropping_a_node_inside_its_own_invalidation_aborts"]
fn child_drops_a_node_inside_its_own_invalidation() {
    let mm = Mm::new();
    let mut node = Box::pin(IntervalNode::new(Count::default()));
    node.as_mut().insert(&mm, 0, 0x1000).unwrap();
    let lock = mm.mmap_read();
    let inv = Invalidation::start(clear(&lock, 0, 0x1000));
    drop(node);
    inv.end();
}

#[test]
fn dropping_a_node_inside_its_own_invalidation_aborts() {
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "child_drops_a_node_inside_its_own_invalidation",
            "--nocapture",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "the child went on: {stderr}");
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(output.status.signal(), Some(libc_sigabrt()), "{stderr}");
    }
    assert!(
        stderr.contains("mmu_interval_notifier_remove()"),
        "{stderr}"
    );
    assert!(stderr.contains("aborting"), "{stderr}");
}

#[cfg(unix)]
fn libc_sigabrt() -> i32 {
    6
}
