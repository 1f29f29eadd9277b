//! The generic cache with the user-callback registrar (UCX's `mem_reg` /
//! `mem_dereg`) on the software MMU: one `mem_reg` per miss, none per hit,
//! exactly one `mem_dereg` per registration, called by an invalidation
//! before the primary frees the pages, and `mem_reg`'s error returned.

use std::sync::{Arc, Mutex};

use mmun_secondary::Coherence;
use mmun_secondary::FaultError;
use mmun_secondary::rcache::{Callbacks, Rcache, RcacheConfig, SoftPrimary};
use mmun_softmmu::frame::FrameKind;
use mmun_softmmu::layout::PAGE_SIZE;
use mmun_softmmu::{AddressSpace, MapRequest, Memory, Translation};

const A: u64 = 0x4000_0000;

/// What the callbacks saw: registrations made, and for each deregistration
/// whether the frame registered was still allocated in the same life.
#[derive(Default)]
struct Log {
    registered: Vec<(u64, u64)>,
    deregistered: Vec<(u64, bool)>,
}

fn space(pages: u64) -> Arc<AddressSpace> {
    let space = Arc::new(AddressSpace::new(Arc::new(Memory::new())));
    assert_eq!(space.mmap(anon_fixed(A, pages)), Ok(A));
    space
}

/// The handle `mem_reg` returns: the key and the frame of the first page.
struct Key {
    key: u64,
    first: Translation,
}

#[allow(clippy::type_complexity)]
fn cache(
    space: &Arc<AddressSpace>,
    log: &Arc<Mutex<Log>>,
    refuse_above: u64,
) -> Rcache<
    SoftPrimary,
    Callbacks<
        Key,
        impl Fn(u64, u64) -> Result<Key, FaultError> + Send + Sync + 'static,
        impl Fn(&Key) + Send + Sync + 'static,
    >,
> {
    let (reg_log, reg_space) = (Arc::clone(log), Arc::clone(space));
    let mem_reg = move |addr: u64, len: u64| {
        if addr + len > refuse_above {
            return Err(FaultError::Denied);
        }
        let mut log = reg_log.lock().unwrap();
        log.registered.push((addr, len));
        let first = reg_space.translate_frame(addr).expect("walked");
        Ok(Key {
            key: log.registered.len() as u64,
            first,
        })
    };
    let (dereg_log, memory) = (Arc::clone(log), Arc::clone(space.memory()));
    let mem_dereg = move |key: &Key| {
        // The primary's page-table lock may be held here: look at the
        // frame itself, not the page tables.
        let t = key.first;
        let alive = memory.update(memory.head(t.pfn), |f| {
            f.kind != FrameKind::Free && f.serial == t.serial
        });
        dereg_log
            .lock()
            .unwrap()
            .deregistered
            .push((key.key, alive));
    };
    let primary = SoftPrimary::new(Arc::clone(space), Arc::new(Coherence::new()));
    Rcache::with_backend(
        primary,
        Callbacks::new(mem_reg, mem_dereg),
        RcacheConfig::default(),
    )
}

#[test]
fn mem_reg_once_per_miss_and_mem_dereg_before_the_pages_go() {
    let space = space(4);
    let log = Arc::new(Mutex::new(Log::default()));
    let cache = cache(&space, &log, u64::MAX);
    let first = cache.get(A + 10, 100).expect("miss").id();
    let again = cache.get(A + 200, 300).expect("hit").id();
    assert_eq!(first, again, "the second get hits");
    assert_eq!(log.lock().unwrap().registered, vec![(A, PAGE_SIZE)]);
    {
        let handle = cache.get(A, 1).unwrap();
        assert_eq!(handle.registration().key, 1);
        assert!(handle.enter().is_some());
    }
    space.munmap(A, PAGE_SIZE).unwrap();
    assert_eq!(
        log.lock().unwrap().deregistered,
        vec![(1, true)],
        "mem_dereg ran once, while the frame was still the registered one"
    );
    assert!(cache.lookup(A, 1).is_none(), "invalidated");
    cache.get(A + PAGE_SIZE, 1).expect("a second registration");
    drop(cache);
    let log = log.lock().unwrap();
    assert_eq!(log.registered.len(), 2);
    assert_eq!(log.deregistered.len(), 2, "one mem_dereg per mem_reg");
}

#[test]
fn mem_reg_errors_reach_the_caller_and_nothing_is_cached() {
    let space = space(4);
    let log = Arc::new(Mutex::new(Log::default()));
    let cache = cache(&space, &log, A + PAGE_SIZE);
    assert_eq!(cache.get(A + PAGE_SIZE, 1).unwrap_err(), FaultError::Denied);
    assert_eq!(cache.len(), 0);
    assert_eq!(
        cache.notifiers(),
        0,
        "the failed registration's notifier is removed"
    );
    assert!(log.lock().unwrap().deregistered.is_empty());
}

/// `acquire` (get + enter in one step, through the cache's per-thread
/// snapshot): a hit calls no `mem_reg`, and a registration invalidated
/// since the thread's snapshot was taken (no publication, so the snapshot
/// still counts as current) is never handed out: the next `acquire`
/// registers again.
#[test]
fn acquire_hits_and_never_hands_out_an_invalidated_registration() {
    let space = space(4);
    let log = Arc::new(Mutex::new(Log::default()));
    let cache = cache(&space, &log, u64::MAX);
    let first = cache.acquire(A + 10, 100).expect("miss");
    assert_eq!(first.registration().key, 1);
    assert_eq!((first.start(), first.end()), (A, A + PAGE_SIZE));
    drop(first);
    for _ in 0..3 {
        let hit = cache.acquire(A, PAGE_SIZE).expect("hit");
        assert_eq!(hit.registration().key, 1);
    }
    assert_eq!(
        log.lock().unwrap().registered.len(),
        1,
        "hits register nothing"
    );
    space.munmap(A, PAGE_SIZE).unwrap();
    assert_eq!(log.lock().unwrap().deregistered, vec![(1, true)]);
    assert!(cache.acquire_hit(A + PAGE_SIZE, 1).is_none(), "not cached");
    space.mmap(anon_fixed(A, 1)).unwrap();
    let again = cache.acquire(A, 1).expect("registered again");
    assert_eq!(again.registration().key, 2, "not the invalidated one");
}

/// An acquired use holds off a blockable invalidation until it ends, and
/// may end on another thread; the cache's teardown of a registration
/// (here a purge) waits for it too: the use keeps the registration alive
/// without a handle.
#[test]
fn an_acquired_use_holds_off_invalidation_and_teardown_until_it_ends() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    let space = space(2);
    let log = Arc::new(Mutex::new(Log::default()));
    let cache = cache(&space, &log, u64::MAX);
    let in_use = cache.acquire(A, PAGE_SIZE).expect("miss");
    let unmapped = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            space.munmap(A, PAGE_SIZE).unwrap();
            unmapped.store(true, Ordering::SeqCst);
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !unmapped.load(Ordering::SeqCst),
            "munmap went ahead of a use"
        );
        assert!(log.lock().unwrap().deregistered.is_empty());
        // Ended on another thread.
        s.spawn(move || drop(in_use)).join().unwrap();
    });
    assert!(unmapped.load(Ordering::SeqCst));
    assert_eq!(log.lock().unwrap().deregistered, vec![(1, true)]);

    let in_use = cache.acquire(A + PAGE_SIZE, 1).expect("miss");
    let purged = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            cache.purge();
            purged.store(true, Ordering::SeqCst);
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(!purged.load(Ordering::SeqCst), "purge tore down a use");
        assert_eq!(in_use.registration().key, 2);
        drop(in_use);
    });
    assert!(purged.load(Ordering::SeqCst));
    assert_eq!(log.lock().unwrap().deregistered.len(), 2);
}

/// A populated private read-write mapping of `pages` pages at `addr`.
fn anon_fixed(addr: u64, pages: u64) -> MapRequest {
    let mut req = MapRequest {
        addr,
        len: pages * PAGE_SIZE,
        fixed: true,
        populate: true,
        ..MapRequest::default()
    };
    req.prot.read = true;
    req.prot.write = true;
    req
}
