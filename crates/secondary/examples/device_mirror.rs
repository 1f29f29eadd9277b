//! A device mirror following a software-MMU address space.
//!
//! ```text
//! cargo run -p mmun-secondary --example device_mirror
//! ```
//!
//! The device faults pages of an anonymous mapping into its own page
//! table, then the process unmaps part of it, write-protects the rest,
//! migrates a page to the device and exits. After each step the example
//! prints what the device holds; every device access is checked by the
//! coherence oracle, which must find nothing stale.

use std::sync::Arc;

use mmun_script::Prot;
use mmun_secondary::device_mirror::DeviceMirror;
use mmun_secondary::{Access, Coherence, Secondary};
use mmun_softmmu::layout::PAGE_SIZE;
use mmun_softmmu::{AddressSpace, MapRequest, Memory};

const BASE: u64 = 0x1000_0000_0000;
const PAGES: u64 = 8;

fn main() {
    let space = Arc::new(AddressSpace::new(Arc::new(Memory::new())));
    let coherence = Arc::new(Coherence::new());
    let device = DeviceMirror::new(Arc::clone(&space), Arc::clone(&coherence), None);
    map(&space);
    populate(&device);
    follow_munmap(&space, &device);
    follow_mprotect(&space, &device);
    migrate(&space, &device);
    space.exit();
    show(&device, "exit (RELEASE, then UNMAP)");
    say("", &format!("released: {}", device.is_released()));
    report(&device, &coherence);
}

fn map(space: &AddressSpace) {
    let request = MapRequest {
        addr: BASE,
        len: PAGES * PAGE_SIZE,
        prot: Prot::RW,
        fixed: true,
        ..MapRequest::default()
    };
    space.mmap(request).expect("mmap");
    say("mmap", &format!("{PAGES} pages at {BASE:#x}, read-write"));
}

fn populate(device: &DeviceMirror) {
    for i in 0..PAGES {
        device.fault(page(i), true).expect("device write fault");
        assert_eq!(device.access(page(i), true), Access::Hit);
    }
    show(device, "device write-faults every page");
}

fn follow_munmap(space: &AddressSpace, device: &DeviceMirror) {
    space.munmap(page(0), 2 * PAGE_SIZE).expect("munmap");
    show(device, "munmap pages 0-1");
    let refused = device.fault(page(0), false).unwrap_err();
    say("", &format!("device fault of page 0: {refused}"));
}

fn follow_mprotect(space: &AddressSpace, device: &DeviceMirror) {
    let read_only = Prot {
        read: true,
        write: false,
        exec: false,
    };
    space
        .mprotect(page(2), 6 * PAGE_SIZE, read_only)
        .expect("mprotect");
    show(device, "mprotect pages 2-7 read-only");
    device.fault(page(2), false).expect("read fault");
    show(device, "device read-faults page 2");
    let write = device.access(page(2), true);
    let fault = device.fault(page(2), true).unwrap_err();
    say(
        "",
        &format!("a device write is a {write:?}; its fault: {fault}"),
    );
    space
        .mprotect(page(2), 6 * PAGE_SIZE, Prot::RW)
        .expect("mprotect");
    show(device, "mprotect pages 2-7 read-write");
}

fn migrate(space: &AddressSpace, device: &DeviceMirror) {
    device.fault(page(3), true).expect("write fault");
    let pfn = |device: &DeviceMirror| device.entry(page(3)).expect("mapped").translation.pfn;
    let before = pfn(device);
    let moved = device.migrate_to_device(page(3), page(4)).expect("migrate");
    let after = pfn(device);
    assert_eq!(space.translate(page(3)).map(|(p, _)| p), Some(after));
    assert_eq!(device.access(page(3), true), Access::Hit);
    let what = format!("{moved} page: pfn {before:#x} -> {after:#x} in both tables");
    say("migrate page 3 to the device", &what);
}

fn report(device: &DeviceMirror, coherence: &Coherence) {
    say("counters", &device.counters().to_string());
    let stats = device.stats();
    let zaps = format!(
        "{} PTEs zapped, {} own ranges skipped",
        stats.zapped, stats.skipped
    );
    say("", &zaps);
    let violations = coherence.violation_count();
    let checks = coherence.checks();
    say(
        "oracle",
        &format!("{checks} checked uses, {violations} stale"),
    );
    assert_eq!(violations, 0, "{:#?}", coherence.violations());
}

fn page(i: u64) -> u64 {
    BASE + i * PAGE_SIZE
}

fn say(step: &str, what: &str) {
    println!("{step:<32} {what}");
}

/// Prints which pages the device maps, and how.
fn show(device: &DeviceMirror, step: &str) {
    let entries = device.entries(BASE, BASE + PAGES * PAGE_SIZE);
    let table: Vec<String> = entries
        .iter()
        .map(|(va, pte)| {
            let mode = if pte.translation.writable { "rw" } else { "ro" };
            format!("{}:{mode}", (va - BASE) / PAGE_SIZE)
        })
        .collect();
    say(step, &format!("device maps [{}]", table.join(" ")));
}
