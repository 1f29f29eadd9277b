//! Threads map, unmap, advise, remap and free while reader threads use
//! translations through interval notifiers (read_begin → the PFN from
//! `/proc/self/pagemap` → driver lock → read_retry → program). Every use
//! re-reads pagemap under the driver lock: a programmed translation that
//! differs from the page table is a stale use, and there must be none.
//! Buffers are mlocked (MAP_LOCKED) so that kernel reclaim (DAMON pageout
//! here) cannot move pages behind the hooks' back. Needs root for PFNs.

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mmun_core::{IntervalNotifier, IntervalNotifierOps, IntervalSub, Range, Seq};

const PAGE: u64 = 4096;
const PAGES: usize = 4;
const SLOTS: usize = 8;

/// A device page table for one slot: the PFN programmed per page, 0 = none.
struct Mirror {
    base: u64,
    ptes: Mutex<[u64; PAGES]>,
}

impl IntervalNotifierOps for Mirror {
    fn invalidate(&self, sub: &IntervalSub, range: &Range<'_>, cur_seq: Seq) -> bool {
        let mut ptes = self.ptes.lock().unwrap();
        sub.set_seq(cur_seq);
        for (i, pte) in ptes.iter_mut().enumerate() {
            let va = self.base + i as u64 * PAGE;
            if range.overlaps(va, va + PAGE) {
                *pte = 0;
            }
        }
        true
    }
}

fn pfn(pagemap: &std::fs::File, va: u64) -> u64 {
    let mut entry = [0u8; 8];
    if pagemap.read_exact_at(&mut entry, va / PAGE * 8).is_err() {
        return 0;
    }
    let e = u64::from_le_bytes(entry);
    if e >> 63 == 1 { e & ((1 << 55) - 1) } else { 0 }
}

/// Where slot `i` lives: far below everything else in the address space.
/// The kernel places `mmap(NULL)` top-down, in the highest gap that fits,
/// so a hole the mutators leave down here is never handed to another
/// thread's mapping (malloc's, a thread stack) before the mutator maps it
/// again, which `MAP_FIXED_NOREPLACE` then checks.
fn low_slot(i: usize) -> u64 {
    const LOW_BASE: u64 = 0x1000_0000_0000;
    LOW_BASE + i as u64 * 16 * PAGES as u64 * PAGE
}

fn map_slot(at: u64, fixed: bool) -> u64 {
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_LOCKED | libc::MAP_POPULATE;
    // SAFETY: maps (or replaces, MAP_FIXED) the test's own slot.
    let p = unsafe {
        libc::mmap(
            at as *mut _,
            PAGES * PAGE as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            if fixed {
                flags | libc::MAP_FIXED
            } else {
                flags | libc::MAP_FIXED_NOREPLACE
            },
            -1,
            0,
        )
    };
    assert_eq!(p as u64, at, "mapped where asked");
    p as u64
}

fn mutate(slot: u64, scratch: u64, op: u64) {
    let len = PAGES * PAGE as usize;
    // SAFETY: every call changes only the test's own slot and scratch area,
    // which no other mutator touches.
    unsafe {
        match op % 6 {
            0 => {
                assert_eq!(libc::munmap(slot as *mut _, len), 0);
                // NOREPLACE: if another thread's mapping took the hole
                // meanwhile, fail instead of replacing it.
                let p = libc::mmap(
                    slot as *mut _,
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE
                        | libc::MAP_ANONYMOUS
                        | libc::MAP_LOCKED
                        | libc::MAP_POPULATE
                        | libc::MAP_FIXED_NOREPLACE,
                    -1,
                    0,
                );
                assert_eq!(p as u64, slot, "the slot was taken while unmapped");
            }
            1 => {
                assert_eq!(
                    libc::madvise(slot as *mut _, len, libc::MADV_DONTNEED_LOCKED),
                    0
                );
                libc::madvise(slot as *mut _, len, libc::MADV_POPULATE_WRITE);
            }
            2 => {
                map_slot(slot, true);
            }
            3 => {
                let moved = libc::mremap(
                    slot as *mut _,
                    len,
                    len,
                    libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                    scratch as *mut libc::c_void,
                );
                assert_eq!(moved as u64, scratch);
                let back = libc::mremap(
                    scratch as *mut _,
                    len,
                    len,
                    libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                    slot as *mut libc::c_void,
                );
                assert_eq!(back as u64, slot);
            }
            4 => {
                assert_eq!(libc::mprotect(slot as *mut _, len, libc::PROT_READ), 0);
                assert_eq!(
                    libc::mprotect(slot as *mut _, len, libc::PROT_READ | libc::PROT_WRITE),
                    0
                );
            }
            _ => drop(std::hint::black_box(vec![op as u8; 1 << 20])),
        }
    }
}

#[test]
fn no_stale_use_while_threads_map_unmap_advise_and_free() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: pagemap PFNs need root");
        return;
    }
    mmun_linux::install().expect("libc patched");
    let pagemap = Arc::new(std::fs::File::open("/proc/self/pagemap").unwrap());
    let slots: Vec<u64> = (0..SLOTS).map(|i| map_slot(low_slot(i), false)).collect();
    let scratch: Vec<u64> = (0..SLOTS)
        .map(|i| map_slot(low_slot(SLOTS + i), false))
        .collect();
    if pfn(&pagemap, slots[0]) == 0 {
        eprintln!("SKIPPED: pagemap shows no PFNs");
        return;
    }
    let mm = mmun_linux::process_mm();
    let mirrors: Arc<Vec<IntervalNotifier<Mirror>>> = Arc::new(
        slots
            .iter()
            .map(|&base| {
                let mirror = Mirror {
                    base,
                    ptes: Mutex::new([0; PAGES]),
                };
                IntervalNotifier::insert(mm, base, PAGES as u64 * PAGE, mirror).unwrap()
            })
            .collect(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let (uses, stale, retries) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let readers: Vec<_> = (0..2)
        .map(|r| {
            let (mirrors, pagemap, stop, uses, stale, retries) = (
                mirrors.clone(),
                pagemap.clone(),
                stop.clone(),
                uses.clone(),
                stale.clone(),
                retries.clone(),
            );
            std::thread::spawn(move || {
                let mut i = r;
                while !stop.load(Ordering::Relaxed) {
                    i = (i + 1) % (SLOTS * PAGES);
                    let m = &mirrors[i / PAGES];
                    let page = i % PAGES;
                    let va = m.ops().base + page as u64 * PAGE;
                    // Fault: read_begin, walk the primary, lock, retry check.
                    let seq = m.read_begin();
                    let frame = pfn(&pagemap, va);
                    let mut ptes = m.ops().ptes.lock().unwrap();
                    if m.read_retry(seq) {
                        retries.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    ptes[page] = frame;
                    drop(ptes);
                    // Use: under the driver lock, a valid entry must match.
                    let ptes = m.ops().ptes.lock().unwrap();
                    if ptes[page] != 0 {
                        uses.fetch_add(1, Ordering::Relaxed);
                        if pfn(&pagemap, va) != ptes[page] {
                            stale.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    let mutators: Vec<_> = (0..2)
        .map(|t| {
            let (slots, scratch, stop) = (slots.clone(), scratch.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut op = t as u64;
                while !stop.load(Ordering::Relaxed) {
                    op += 1;
                    let s = t + 2 * (op as usize % (SLOTS / 2));
                    mutate(slots[s], scratch[s], op / 4);
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    for t in readers.into_iter().chain(mutators) {
        t.join().unwrap();
    }
    let (uses, stale, retries) = (
        uses.load(Ordering::Relaxed),
        stale.load(Ordering::Relaxed),
        retries.load(Ordering::Relaxed),
    );
    eprintln!("uses {uses}, stale {stale}, retries {retries}");
    assert!(uses > 1000, "the readers made progress: {uses}");
    assert_eq!(stale, 0, "stale uses out of {uses}");
}
