//! Device-private memory (`MEMORY_DEVICE_PRIVATE`) as Linux 6.18 handles
//! it: a migration to a device registered as private leaves device-private
//! entries the CPU cannot reach; a CPU touch calls the owner's
//! `migrate_to_ram` (`do_swap_page`), which migrates the page back under a
//! `Migrate` range carrying the owner; fork shares the page and makes a
//! writable entry readable on both sides (`copy_nonpresent_pte`);
//! `mprotect` makes every writable entry readable (`change_pte_range`);
//! zap frees the device page with its last mapping.

mod notify_log;

use std::sync::Arc;

use mmun_core::{Event, Owner};
use mmun_softmmu::Prot;
use mmun_softmmu::page_table::SwapKind;
use mmun_softmmu::{AddressSpace, DevicePagemap, Pfn, Translation};
use notify_log::{Ev, Log, list_notifier, map, new_space};
use parking_lot::Mutex;

const B: u64 = 0x1000_0000_0000;
const P: u64 = 0x1000;
const READ: Prot = Prot {
    read: true,
    write: false,
    exec: false,
};

/// A driver's `migrate_to_ram` step that records what it is told.
#[derive(Default)]
struct Driver {
    told: Mutex<Vec<(u64, Pfn, Option<Translation>)>>,
}

impl DevicePagemap for Driver {
    fn page_to_ram(&self, va: u64, old: Pfn, new: Option<Translation>) {
        self.told.lock().push((va, old, new));
    }
}

/// `pages` written pages at `B` of a fresh space, migrated to a private
/// device. Returns the space, the device, its ops and the device pages.
fn on_private_device(pages: u64) -> (AddressSpace, Owner, Arc<Driver>, Vec<Pfn>) {
    let space = new_space();
    map(&space, B, pages * P, Prot::RW);
    for i in 0..pages {
        space.access(B + i * P, true).unwrap();
    }
    let owner = Owner::unique();
    let driver = Arc::new(Driver::default());
    let ops: Arc<dyn DevicePagemap> = Arc::clone(&driver) as Arc<dyn DevicePagemap>;
    space.memory().register_device_private(owner, &ops);
    assert_eq!(
        space.migrate_device(B, B + pages * P, owner),
        pages as usize
    );
    let frames = (0..pages).map(|i| space.pte(B + i * P).pfn()).collect();
    (space, owner, driver, frames)
}

#[test]
fn migration_to_a_private_device_leaves_entries_the_cpu_cannot_reach() {
    let (space, owner, _driver, frames) = on_private_device(2);
    for (i, &pfn) in frames.iter().enumerate() {
        let va = B + i as u64 * P;
        let pte = space.pte(va);
        assert_eq!(pte.swap_kind(), Some(SwapKind::DevicePrivate));
        assert!(pte.swap_was_writable(), "the VMA is writable");
        assert_eq!(space.translate(va), None, "the CPU cannot address it");
        let frame = space.memory().frame(pfn);
        assert_eq!(frame.device, Some(owner));
        assert_eq!(frame.mapcount, 1, "a device-private entry maps the page");
        let view = space.device_view(va, Some(owner)).unwrap();
        assert!(view.device_private && !view.exclusive);
        assert_eq!(view.translation.pfn, pfn);
        assert!(view.translation.writable);
        assert_eq!(space.device_view(va, Some(Owner::unique())), None);
        assert_eq!(space.device_view(va, None), None);
    }
}

#[test]
fn a_cpu_touch_migrates_the_page_back_under_the_owners_migrate_range() {
    let (space, owner, driver, frames) = on_private_device(1);
    let log = Log::default();
    let _n = list_notifier(space.mm(), "L", &log);
    space.access(B, false).unwrap();
    let (pfn, writable) = space.translate(B).unwrap();
    assert_ne!(pfn, frames[0], "a system page now");
    assert!(writable, "writable as the entry was");
    assert_eq!(space.memory().frame(pfn).device, None);
    assert_eq!(
        space.memory().frame(frames[0]).kind,
        mmun_softmmu::frame::FrameKind::Free,
        "the device page is freed with its last mapping"
    );
    let told = driver.told.lock().clone();
    assert_eq!(told.len(), 1);
    assert_eq!((told[0].0, told[0].1), (B, frames[0]));
    assert_eq!(told[0].2.map(|t| t.pfn), Some(pfn));
    let starts: Vec<_> = log
        .take()
        .into_iter()
        .filter_map(|ev| match ev {
            Ev::Start {
                event,
                start,
                end,
                owner,
                ..
            } => Some((event, start, end, owner)),
            _ => None,
        })
        .collect();
    assert_eq!(starts, vec![(Event::Migrate, B, B + P, Some(owner))]);
}

#[test]
fn migration_to_system_selects_only_the_owners_device_private_entries() {
    let (space, owner, _driver, frames) = on_private_device(2);
    let other = Owner::unique();
    let none = space.migrate_device_to_system(B, B + 2 * P, other, |_, _| ());
    assert_eq!(none, Ok(0), "another owner's pages stay");
    let mut seen = Vec::new();
    let moved = space.migrate_device_to_system(B, B + 2 * P, owner, |va, new| seen.push((va, new)));
    assert_eq!(moved, Ok(2));
    for (i, (va, new)) in seen.into_iter().enumerate() {
        assert_eq!(va, B + i as u64 * P);
        let new = new.unwrap();
        assert_ne!(new.pfn, frames[i]);
        assert_eq!(space.translate(va), Some((new.pfn, true)));
    }
    assert_eq!(space.migrate_device(B, B + 2 * P, owner), 2, "and back");
    assert_eq!(space.migrate_device(B, B + 2 * P, other), 0, "never again");
}

#[test]
fn fork_shares_the_device_page_read_only_on_both_sides() {
    let (parent, owner, _driver, frames) = on_private_device(1);
    let child = parent.fork();
    for space in [&parent, &child] {
        let pte = space.pte(B);
        assert_eq!(pte.swap_kind(), Some(SwapKind::DevicePrivate));
        assert_eq!(pte.pfn(), frames[0]);
        assert!(!pte.swap_was_writable(), "copy-on-write: readable");
    }
    let frame = parent.memory().frame(frames[0]);
    assert_eq!((frame.mapcount, frame.refcount), (2, 2));
    assert!(!frame.anon_exclusive);
    // The child's write migrates its copy back and copies on write; the
    // parent keeps the device page.
    child.access(B, true).unwrap();
    let (pfn, writable) = child.translate(B).unwrap();
    assert!(writable && pfn != frames[0]);
    assert_eq!(parent.pte(B).pfn(), frames[0]);
    assert_eq!(parent.memory().frame(frames[0]).mapcount, 1);
    assert!(parent.device_view(B, Some(owner)).is_some());
    child.exit();
}

#[test]
fn mprotect_makes_writable_device_private_entries_readable() {
    let (space, owner, _driver, _frames) = on_private_device(2);
    space.mprotect(B, P, READ).unwrap();
    assert!(!space.pte(B).swap_was_writable());
    assert!(space.pte(B + P).swap_was_writable(), "outside the range");
    // Writable again, the entry stays readable: unlike an exclusive
    // anonymous present page, it is not made writable without a fault.
    space.mprotect(B, P, Prot::RW).unwrap();
    assert!(!space.pte(B).swap_was_writable());
    let view = space.device_view(B, Some(owner)).unwrap();
    assert!(!view.translation.writable);
}

#[test]
fn munmap_frees_the_device_page() {
    let (space, _owner, driver, frames) = on_private_device(1);
    let before = space.memory().allocated();
    space.munmap(B, P).unwrap();
    assert_eq!(
        space.memory().frame(frames[0]).kind,
        mmun_softmmu::frame::FrameKind::Free
    );
    assert_eq!(space.memory().allocated(), before - 1);
    assert!(
        driver.told.lock().is_empty(),
        "no migration: the page is gone"
    );
}
