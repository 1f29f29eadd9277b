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

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mmun_secondary::device_mirror::WalkHook;
use mmun_secondary::rcache::UseHook;

/// The longest a slow walk waits.
const WAIT: Duration = Duration::from_micros(300);

/// Counts mutator operations, and makes one fault attempt in `every` wait
/// for the next one.
#[derive(Debug, Clone)]
pub(crate) struct SlowWalks {
    mutations: Arc<AtomicU64>,
    every: u64,
    uses_every: u64,
}

impl SlowWalks {
    /// One walk in `every` and one use in `uses_every` waits (0: none).
    pub(crate) fn new(every: u64, uses_every: u64) -> SlowWalks {
        SlowWalks {
            mutations: Arc::new(AtomicU64::new(0)),
            every,
            uses_every,
        }
    }

    /// A mutator finished an operation.
    pub(crate) fn mutated(&self) {
        self.mutations.fetch_add(1, Ordering::Relaxed);
    }

    /// The device mirror's walk hook.
    pub(crate) fn hook(&self) -> WalkHook {
        let wait = self.waiter(self.every);
        Arc::new(move |_page, _attempt| wait())
    }

    /// The registration cache's use hook: one use in `every` waits, with
    /// its use reference held, for the next mutator step, as a slow DMA
    /// transfer would. A correct cache's invalidation waits for it; one
    /// that does not lets the step change the pages under the use.
    ///
    /// The shadow MMU's walk hook is the same: one fault in `uses_every`
    /// waits at the end of its walk, before taking `mmu_lock`.
    pub(crate) fn use_hook(&self) -> UseHook {
        Box::new(self.waiter(self.uses_every))
    }

    /// One call in `every` waits for the next mutation (at most [`WAIT`]).
    fn waiter(&self, every: u64) -> impl Fn() + Send + Sync + 'static {
        let mutations = Arc::clone(&self.mutations);
        let tickets = AtomicU64::new(0);
        move || {
            if every == 0
                || !tickets
                    .fetch_add(1, Ordering::Relaxed)
                    .is_multiple_of(every)
            {
                return;
            }
            let seen = mutations.load(Ordering::Relaxed);
            let deadline = Instant::now() + WAIT;
            while mutations.load(Ordering::Relaxed) == seen && Instant::now() < deadline {
                std::thread::yield_now();
            }
        }
    }
}
