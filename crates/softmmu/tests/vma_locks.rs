//! Per-VMA locks: a fault takes its VMA's lock instead of the mmap lock
//! (Linux 6.4+, `lock_vma_under_rcu`), so it runs while an mmap writer is
//! busy with other VMAs; a fault in a VMA the writer changes (or one that
//! touches its range, which a merge may change) waits for it.
//!
//! Each test parks an mmap writer inside a notifier callback (it holds the
//! mmap lock for write there) and faults from other threads meanwhile.
//! Work that must not wait is given [`PATIENCE`]; nothing here measures
//! speed.

mod notify_log;

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use mmun_core::{Event, IntervalNotifier, IntervalNotifierOps, IntervalSub, Range, Seq};
use mmun_softmmu::{AddressSpace, Memory, Prot};
use parking_lot::Mutex;

const P: u64 = 0x1000;
const READ_ONLY: Prot = Prot {
    read: true,
    write: false,
    exec: false,
};
/// The VMA the writer works on, one far from it, and one right after it.
const WRITTEN: u64 = 0x1000_0000_0000;
const FAR: u64 = 0x1000_0100_0000;
const TOUCHING: u64 = WRITTEN + 16 * P;
/// How long the test waits for work that must not be blocked.
const PATIENCE: Duration = Duration::from_secs(10);
/// How long a fault that must wait is given to (wrongly) finish.
const SETTLE: Duration = Duration::from_millis(100);

/// Parks the first callback until the test releases it.
struct Park {
    parked: Mutex<Sender<Event>>,
    release: Mutex<Receiver<()>>,
}

impl IntervalNotifierOps for Park {
    fn invalidate(&self, sub: &IntervalSub, range: &Range<'_>, cur_seq: Seq) -> bool {
        sub.set_seq(cur_seq);
        if self.parked.lock().send(range.event()).is_ok() {
            // Later callbacks find the test gone and do not wait.
            let got = self.release.lock().recv_timeout(PATIENCE);
            assert_ne!(got, Err(RecvTimeoutError::Timeout), "never released");
        }
        true
    }
}

/// Three VMAs of 16 pages (`WRITTEN`, `TOUCHING` right after it with
/// other protection so that they stay apart, `FAR`), all written.
fn three_vmas() -> Arc<AddressSpace> {
    let space = Arc::new(AddressSpace::new(Arc::new(Memory::new())));
    notify_log::map(&space, WRITTEN, 16 * P, Prot::RW);
    notify_log::map(&space, TOUCHING, 16 * P, READ_ONLY);
    notify_log::map(&space, FAR, 16 * P, Prot::RW);
    for page in 0..16 {
        space.access(WRITTEN + page * P, true).expect("write fault");
        space
            .access(TOUCHING + page * P, false)
            .expect("read fault");
        space.access(FAR + page * P, true).expect("write fault");
    }
    assert_eq!(space.vmas().len(), 3, "three VMAs");
    space
}

/// An mmap writer parked inside its first callback over `WRITTEN`.
struct ParkedWriter {
    writer: JoinHandle<()>,
    release: Sender<()>,
    parked: Receiver<Event>,
    sub: IntervalNotifier<Park>,
}

impl ParkedWriter {
    fn start(space: &Arc<AddressSpace>, op: fn(&AddressSpace)) -> ParkedWriter {
        let (parked_tx, parked) = channel();
        let (release, release_rx) = channel();
        let ops = Park {
            parked: Mutex::new(parked_tx),
            release: Mutex::new(release_rx),
        };
        let sub = IntervalNotifier::insert(space.mm(), WRITTEN, 16 * P, ops).expect("insert");
        let writer = {
            let space = Arc::clone(space);
            thread::spawn(move || op(&space))
        };
        parked
            .recv_timeout(PATIENCE)
            .expect("the writer reached its callback");
        ParkedWriter {
            writer,
            release,
            parked,
            sub,
        }
    }

    fn finish(self) {
        drop(self.parked);
        self.release.send(()).expect("the writer waits");
        self.writer.join().expect("the writer panicked");
        self.sub.remove();
    }
}

/// A fault at `addr` on another thread, given [`SETTLE`] to (wrongly)
/// finish while the writer is parked.
fn fault_after_settle(
    space: &Arc<AddressSpace>,
    addr: u64,
    write: bool,
) -> JoinHandle<mmun_softmmu::SysResult> {
    let space = Arc::clone(space);
    let waiting = thread::spawn(move || space.access(addr, write));
    thread::sleep(SETTLE);
    waiting
}

fn mprotect_read_only(space: &AddressSpace) {
    space
        .mprotect(WRITTEN, 16 * P, READ_ONLY)
        .expect("mprotect");
}

#[test]
fn a_fault_in_another_vma_completes_while_munmap_holds_the_mmap_lock() {
    let space = three_vmas();
    let writer = ParkedWriter::start(&space, |s| s.munmap(WRITTEN, 16 * P).expect("munmap"));
    let far = notify_log::completes(&space, PATIENCE, "a fault in a far VMA", |s| {
        s.access(FAR + P, true).map(|()| s.translate_frame(FAR + P))
    });
    assert!(matches!(far, Ok(Some(t)) if t.writable), "{far:?}");
    writer.finish();
    assert_eq!(space.vmas().len(), 2);
}

#[test]
fn a_fault_in_the_vma_being_changed_waits_for_the_writer() {
    let space = three_vmas();
    let writer = ParkedWriter::start(&space, mprotect_read_only);
    let waiting = fault_after_settle(&space, WRITTEN + P, true);
    assert!(
        !waiting.is_finished(),
        "a write fault ran inside mprotect's VMA"
    );
    writer.finish();
    // It ran after the mprotect: the write is refused.
    assert_eq!(
        waiting.join().expect("the fault panicked"),
        Err(mmun_softmmu::Errno::Fault)
    );
}

/// The VMA right after the writer's range may be merged into (or out of):
/// a fault there waits too, as Linux write-locks the VMAs a merge changes.
#[test]
fn a_fault_in_a_vma_touching_the_writers_range_waits_for_the_writer() {
    let space = three_vmas();
    let writer = ParkedWriter::start(&space, mprotect_read_only);
    let waiting = fault_after_settle(&space, TOUCHING + 2 * P, false);
    assert!(
        !waiting.is_finished(),
        "a fault ran in a VMA the writer may merge"
    );
    writer.finish();
    waiting
        .join()
        .expect("the fault panicked")
        .expect("read fault");
}

/// A writer that does not name its VMAs (a fork) locks them all.
#[test]
fn a_fault_anywhere_waits_for_a_writer_that_locks_every_vma() {
    let space = three_vmas();
    let writer = ParkedWriter::start(&space, |s| {
        let _child = s.fork();
    });
    let waiting = fault_after_settle(&space, FAR + P, true);
    assert!(!waiting.is_finished(), "a fault ran beside a fork");
    writer.finish();
    waiting
        .join()
        .expect("the fault panicked")
        .expect("write fault");
}
