//! Slow walks: now and then a device-mirror fault waits, between its walk
//! of the primary and its device lock, for the next mutator operation; and
//! slow uses: now and then a registration-cache use waits, holding its use
//! reference, for the next one.
//!
//! On Linux that window lasts as long as `hmm_range_fault` takes, which
//! may sleep; here it is a few instructions, and an invalidation rarely
//! lands in it. Waiting (briefly: at most [`WAIT`]) for a mutator to
//! change something there is what a slow walk would see, and it is exactly
//! where a mirror that skips `set_seq` or `read_retry` goes wrong.
//!
//! A slow walk also says which page it holds ([`SlowWalks::walked_page`]),
//! so that the mutator's next migration to the mirror's own device can
//! move exactly that page, as a second thread issuing test_hmm's
//! `MIGRATE_TO_DEV` over a buffer the device is faulting would. The
//! device skips its own `Migrate` range (no `set_seq`), so only its own
//! bookkeeping of the remapping tells the fault to retry; a random target
//! lands on the walked page too rarely to judge that.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mmun_secondary::device_mirror::WalkHook;
use mmun_secondary::rcache::UseHook;
use parking_lot::{Condvar, Mutex};

/// The longest a slow walk waits.
const WAIT: Duration = Duration::from_micros(300);

/// [`SlowWalks::walking`] when no slow mirror walk holds a page.
const NO_PAGE: u64 = u64::MAX;

/// Mutator steps so far, and the slow walks and uses waiting for the next.
///
/// They sleep rather than yield: on two cores a yielding waiter takes the
/// processor from the mutator it waits for. The state is under the mutex,
/// so a step between a waiter's read and its sleep still wakes it.
#[derive(Debug, Default)]
struct Mutations {
    state: Mutex<Steps>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct Steps {
    /// Steps so far, and invalidations found waiting for a slow use.
    count: u64,
    /// No step comes until the accessors have run on: the main thread
    /// waits for them after the OOM reaper.
    settling: bool,
}

/// Counts mutator operations, and makes one fault attempt in `every` wait
/// for the next one.
#[derive(Debug, Clone)]
pub(crate) struct SlowWalks {
    mutations: Arc<Mutations>,
    /// The page a slow device-mirror walk holds ([`NO_PAGE`]: none); with
    /// two walks at once, the later one.
    walking: Arc<AtomicU64>,
    every: u64,
    uses_every: u64,
}

impl SlowWalks {
    /// One walk in `every` and one use in `uses_every` waits (0: none).
    pub(crate) fn new(every: u64, uses_every: u64) -> SlowWalks {
        SlowWalks {
            mutations: Arc::new(Mutations::default()),
            walking: Arc::new(AtomicU64::new(NO_PAGE)),
            every,
            uses_every,
        }
    }

    /// A mutator (or the main thread's OOM reaper or exit) finished a
    /// step; or an invalidation waits for a slow use, which has then seen
    /// what it waited for. Either ends every wait under way.
    pub(crate) fn mutated(&self) {
        self.mutations.state.lock().count += 1;
        self.mutations.changed.notify_all();
    }

    /// While `settling`, no slow walk or use waits: the main thread waits
    /// for the accessors, so the next step would never come.
    pub(crate) fn set_settling(&self, settling: bool) {
        self.mutations.state.lock().settling = settling;
        self.mutations.changed.notify_all();
    }

    /// The registration cache's drain hook: a drain about to sleep on a
    /// slow use ends its wait (see [`SlowWalks::use_hook`]).
    pub(crate) fn drain_hook(&self) -> UseHook {
        let slow = self.clone();
        Box::new(move || slow.mutated())
    }

    /// The page a slow device-mirror walk holds now, if any.
    pub(crate) fn walked_page(&self) -> Option<u64> {
        Some(self.walking.load(Ordering::Relaxed)).filter(|&page| page != NO_PAGE)
    }

    /// The device mirror's walk hook: a slow walk publishes its page while
    /// it waits.
    pub(crate) fn hook(&self) -> WalkHook {
        let wait = self.waiter(self.every);
        let walking = Arc::clone(&self.walking);
        Arc::new(move |page, _attempt| {
            if wait(&|| walking.store(page, Ordering::Relaxed)) {
                // Unless a later slow walk has published its own page since.
                let relaxed = Ordering::Relaxed;
                let _ = walking.compare_exchange(page, NO_PAGE, relaxed, relaxed);
            }
        })
    }

    /// The registration cache's use hook: one use in `every` waits, with
    /// its use reference held, for the next mutator step, as a slow DMA
    /// transfer would. A correct cache's invalidation waits for it (and
    /// says so through [`SlowWalks::drain_hook`], which ends the wait); one
    /// that does not lets the step change the pages under the use.
    ///
    /// The shadow MMU's walk hook is the same: one fault in `uses_every`
    /// waits at the end of its walk, before taking `mmu_lock`.
    pub(crate) fn use_hook(&self) -> UseHook {
        let wait = self.waiter(self.uses_every);
        Box::new(move || {
            wait(&|| ());
        })
    }

    /// One call in `every` waits for the next mutation (at most [`WAIT`]),
    /// calling its argument first when it does; returns whether it waited.
    fn waiter(&self, every: u64) -> impl Fn(&dyn Fn()) -> bool + Send + Sync + 'static {
        let mutations = Arc::clone(&self.mutations);
        let tickets = AtomicU64::new(0);
        move |before_waiting: &dyn Fn()| {
            if every == 0
                || !tickets
                    .fetch_add(1, Ordering::Relaxed)
                    .is_multiple_of(every)
            {
                return false;
            }
            let mut steps = mutations.state.lock();
            let seen = steps.count;
            before_waiting();
            let deadline = Instant::now() + WAIT;
            while steps.count == seen && !steps.settling {
                if mutations
                    .changed
                    .wait_until(&mut steps, deadline)
                    .timed_out()
                {
                    break;
                }
            }
            true
        }
    }
}
