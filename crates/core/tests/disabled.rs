//! The `!CONFIG_MMU_NOTIFIER` build (`--features disabled`): the same API,
//! dispatch does nothing, registration is refused.
#![cfg(feature = "disabled")]

use std::sync::atomic::{AtomicUsize, Ordering};

use mmun_core::{
    Error, Event, IntervalNotifier, IntervalNotifierOps, IntervalSub, Invalidation, Mm, Notifier,
    NotifierOps, Range, Seq, SharedNotifier,
};

struct Nop;
impl IntervalNotifierOps for Nop {
    fn invalidate(&self, _: &IntervalSub, _: &Range<'_>, _: Seq) -> bool {
        true
    }
}

#[test]
fn everything_is_a_no_op_and_registration_is_refused() {
    let mm = Mm::new();
    assert_eq!(
        Notifier::register(&mm, &NotifierOps::<()>::EMPTY, ()).err(),
        Some(Error::Disabled)
    );
    assert_eq!(
        IntervalNotifier::insert(&mm, 0, 0x1000, Nop).err(),
        Some(Error::Disabled)
    );
    assert!(!mm.has_notifiers());
    let lock = mm.mmap_read();
    Invalidation::start(Range::new(&lock, Event::Unmap, 0, 0x1000)).end();
    assert!(Invalidation::start_nonblock(Range::new(&lock, Event::Unmap, 0, 0x1000)).is_ok());
    assert!(!mm.clear_flush_young(0, 0x1000) && !mm.clear_young(0, 0x1000) && !mm.test_young(0));
    drop(lock);
    assert!(mm.exit());
    mmun_core::synchronize();
}

/// `get` is refused before any driver callback runs: no `alloc_notifier`,
/// so no `free_notifier` either.
#[test]
fn get_is_refused_without_calling_the_driver() {
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    static OPS: NotifierOps<()> = NotifierOps {
        alloc_notifier: Some(|_| {
            CALLS.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }),
        free_notifier: Some(|_| {
            CALLS.fetch_add(100, Ordering::SeqCst);
        }),
        ..NotifierOps::EMPTY
    };
    let mm = Mm::new();
    assert_eq!(SharedNotifier::get(&mm, &OPS).err(), Some(Error::Disabled));
    assert_eq!(CALLS.load(Ordering::SeqCst), 0);
}
