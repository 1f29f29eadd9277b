//! The secondaries of a round: the device mirror, the shadow MMU and the
//! registration cache, one of them possibly built with an injected bug.

use std::sync::Arc;

use mmun_secondary::device_mirror::DeviceMirror;
use mmun_secondary::rcache::{RcacheConfig, RegistrationCache};
use mmun_secondary::shadow_mmu::ShadowMmu;
use mmun_secondary::{Bug, Coherence, Counters, Secondary};
use mmun_softmmu::AddressSpace;
use mmun_softmmu::layout::PAGE_SIZE;

use crate::StressError;
use crate::racer::Racer;
use crate::slow::SlowWalks;

/// The registration cache's sizing: buffers of up to 8 pages (so that
/// invalidations cover registrations in part, overlapping buffers merge and
/// replace each other), and a bound small enough that eviction runs.
const RCACHE_BOUNDS: RcacheConfig = RcacheConfig {
    max_regions: 16,
    max_bytes: 48 * PAGE_SIZE,
    fault_pages: 8,
    bug: None,
};

/// The secondaries attached to one address space.
pub(crate) struct Fleet {
    all: Vec<Arc<dyn Secondary>>,
    mirror: Arc<DeviceMirror>,
    shadow: Arc<ShadowMmu>,
    racer: Racer,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.all.iter().map(|s| s.name()).collect();
        f.debug_struct("Fleet")
            .field("secondaries", &names)
            .finish()
    }
}

impl Fleet {
    /// Attaches every secondary to `space`, mirroring `[span.0, span.1)`;
    /// only the one `inject` belongs to is built with it.
    pub(crate) fn build(
        space: &Arc<AddressSpace>,
        coherence: &Arc<Coherence>,
        inject: Option<Bug>,
        span: (u64, u64),
        slow: SlowWalks,
    ) -> Result<Fleet, StressError> {
        let attach = |secondary| {
            move |why: &dyn std::fmt::Display| StressError::Attach {
                secondary,
                reason: why.to_string(),
            }
        };
        let mirror = DeviceMirror::new(Arc::clone(space), Arc::clone(coherence), inject);
        mirror
            .mirror_range(span.0, span.1 - span.0)
            .map_err(|e| attach("device-mirror")(&e))?;
        mirror.set_walk_hook(Some(slow.hook()));
        // Before the shadow MMU, so that its callbacks run after the shadow
        // MMU's (the newest notifier is called first).
        let racer = Racer::register(space.mm()).map_err(|e| attach("racer")(&e))?;
        let shadow = ShadowMmu::new(Arc::clone(space), Arc::clone(coherence), inject)
            .map_err(|e| attach("shadow-mmu")(&e))?;
        racer.attach(&shadow);
        // Cannot fail: the shadow MMU is new.
        let _ = shadow.set_walk_hook(slow.use_hook());
        let rcache = RegistrationCache::new(
            Arc::clone(space),
            Arc::clone(coherence),
            RCACHE_BOUNDS.with_bug(inject),
        );
        // Cannot fail: the cache is new.
        let _ = rcache.set_use_hook(slow.use_hook());
        let _ = rcache.set_drain_hook(slow.drain_hook());
        Ok(Fleet {
            all: vec![mirror.clone(), shadow.clone(), Arc::new(rcache)],
            mirror,
            shadow,
            racer,
        })
    }

    /// The shadow MMU.
    pub(crate) fn shadow(&self) -> &Arc<ShadowMmu> {
        &self.shadow
    }

    /// The racer feeding the shadow MMU walks that race invalidations.
    pub(crate) fn racer(&self) -> &Racer {
        &self.racer
    }

    /// Every secondary, in report order.
    pub(crate) fn secondaries(&self) -> &[Arc<dyn Secondary>] {
        &self.all
    }

    /// The device mirror migrates `[start, end)` to its own memory; says
    /// how it went.
    pub(crate) fn migrate_to_device(&self, start: u64, end: u64) -> String {
        match self.mirror.migrate_to_device(start, end) {
            Ok(moved) => format!("{moved} pages moved"),
            Err(e) => format!("{e:?}"),
        }
    }

    /// The device mirror takes the page at `va` exclusively; says how it
    /// went.
    pub(crate) fn make_exclusive(&self, va: u64) -> String {
        match self.mirror.make_exclusive(va) {
            Ok(()) => "ok".to_owned(),
            Err(e) => format!("{e:?}"),
        }
    }

    /// The `pick`-th page (modulo their number) the device mirror maps
    /// now, if it maps any.
    pub(crate) fn mirrored_page(&self, pick: u64) -> Option<u64> {
        self.mirror.with_table(|table| {
            let n = u64::try_from(table.len()).ok().filter(|&n| n > 0)?;
            let k = usize::try_from(pick % n).ok()?;
            table.keys().nth(k).copied()
        })
    }

    /// Every secondary's counters.
    pub(crate) fn counters(&self) -> Vec<(&'static str, Counters)> {
        self.all.iter().map(|s| (s.name(), s.counters())).collect()
    }
}
