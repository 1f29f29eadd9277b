//! `Range`, `Event`, flags and owners (spec §1.1).

use mmun_core::{Event, Invalidation, Mm, Owner, Range, RangeFlags};

#[test]
fn events_have_the_kernel_values_and_names() {
    let expected = [
        (0, "UNMAP"),
        (1, "CLEAR"),
        (2, "PROTECTION_VMA"),
        (3, "PROTECTION_PAGE"),
        (4, "SOFT_DIRTY"),
        (5, "RELEASE"),
        (6, "MIGRATE"),
        (7, "EXCLUSIVE"),
    ];
    for (event, (value, name)) in Event::ALL.into_iter().zip(expected) {
        assert_eq!(event as u8, value);
        assert_eq!(event.name(), name);
        assert_eq!(Event::try_from(value), Ok(event));
        assert_eq!(format!("MMU_NOTIFY_{name}").parse::<Event>(), Ok(event));
        assert_eq!(
            event.carries_owner(),
            matches!(event, Event::Migrate | Event::Exclusive)
        );
    }
    assert_eq!(Event::try_from(8), Err(8));
    assert!("BOGUS".parse::<Event>().is_err());
}

#[test]
fn range_init_has_no_flags_and_no_owner() {
    let mm = Mm::new();
    let lock = mm.mmap_read();
    let r = Range::new(&lock, Event::Clear, 0x1000, 0x3000);
    assert_eq!(
        (r.start(), r.end(), r.last()),
        (0x1000, 0x3000, Some(0x2fff))
    );
    assert_eq!(r.flags(), RangeFlags::NONE);
    assert!(!r.is_blockable());
    assert_eq!(r.owner(), None);
    assert!(std::ptr::eq(r.mm(), &*mm));
    assert!(r.overlaps(0x2fff, 0x4000) && !r.overlaps(0x3000, 0x4000) && !r.overlaps(0, 0x1000));
    assert_eq!(Range::new(&lock, Event::Clear, 5, 5).last(), None);
}

#[test]
fn init_owner_sets_the_owner_and_owners_are_distinct() {
    let mm = Mm::new();
    let (a, b) = (Owner::unique(), Owner::unique());
    assert_ne!(a, b);
    let device = 0u64;
    assert_eq!(Owner::from_ref(&device), Owner::from_ref(&device));
    let lock = mm.mmap_read();
    let r = Range::new(&lock, Event::Migrate, 0, 0x1000).with_owner(a);
    assert_eq!(r.owner(), Some(a));
}

#[test]
fn entry_points_set_and_clear_blockable() {
    let mm = Mm::new();
    let lock = mm.mmap_read();
    let base = Range::new(&lock, Event::Unmap, 0, 0x1000);
    let blocking = Invalidation::start(base);
    assert!(blocking.range().is_blockable());
    blocking.end();
    let nonblock = Invalidation::start_nonblock(base.with_flags(RangeFlags::BLOCKABLE)).unwrap();
    assert!(!nonblock.range().is_blockable());
    nonblock.end();
}

#[test]
#[should_panic(expected = "end 0x1000 is below start 0x2000")]
fn a_backwards_range_is_refused() {
    let mm = Mm::new();
    let lock = mm.mmap_read();
    let _ = Range::new(&lock, Event::Unmap, 0x2000, 0x1000);
}

/// A range is of its lock's address space, whichever lock that is.
#[test]
fn a_range_is_of_the_address_space_of_its_lock() {
    let mm = Mm::new();
    let (read, rmap) = (mm.mmap_read(), mm.rmap_lock());
    assert!(std::ptr::eq(
        Range::new(&read, Event::Unmap, 0, 1).mm(),
        &*mm
    ));
    assert!(std::ptr::eq(
        Range::new(&rmap, Event::Unmap, 0, 1).mm(),
        &*mm
    ));
    drop((read, rmap));
    let write = mm.mmap_write();
    assert!(std::ptr::eq(
        Range::new(&write, Event::Unmap, 0, 1).mm(),
        &*mm
    ));
}

#[test]
#[allow(deprecated)]
fn update_to_read_only_is_a_write_protect_downgrade_of_a_readable_vma() {
    let mm = Mm::new();
    let lock = mm.mmap_read();
    let r = Range::new(&lock, Event::ProtectionVma, 0, 0x1000);
    assert!(!r.update_to_read_only(), "no VMA information");
    assert!(r.with_vma_readable(true).update_to_read_only());
    assert!(!r.with_vma_readable(false).update_to_read_only());
    let other = Range::new(&lock, Event::ProtectionPage, 0, 0x1000).with_vma_readable(true);
    assert!(!other.update_to_read_only());
}

#[test]
fn the_subscriptions_types_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Mm>();
    send_sync::<mmun_core::Notifier<u8>>();
    send_sync::<mmun_core::SharedNotifier<u8>>();
    send_sync::<mmun_core::Error>();
}
