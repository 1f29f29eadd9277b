//! The `!CONFIG_MMU_NOTIFIER` build (`--features disabled`): the same API,
//! dispatch does nothing, registration is refused.
#![cfg(feature = "disabled")]

use mmun_core::{
    Error, Event, IntervalNotifier, IntervalNotifierOps, IntervalSub, Invalidation, Mm, Notifier,
    NotifierOps, Range, Seq,
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
    Invalidation::start(&lock, Range::new(&mm, Event::Unmap, 0, 0x1000)).end();
    assert!(Invalidation::start_nonblock(&lock, Range::new(&mm, Event::Unmap, 0, 0x1000)).is_ok());
    assert!(!mm.clear_flush_young(0, 0x1000) && !mm.clear_young(0, 0x1000) && !mm.test_young(0));
    drop(lock);
    assert!(mm.exit());
    mmun_core::synchronize();
}
