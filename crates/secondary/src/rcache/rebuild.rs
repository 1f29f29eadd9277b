//! The state under the cache lock, and the rebuild of the lock-free index
//! that every change of the set of registrations goes through.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use mmun_core::IntervalNotifier;

use super::backend::{Primary, Registrar};
use super::config::RcacheConfig;
use super::index::Index;
use super::registration::{RegionOps, Registration, State};

/// What the cache lock guards.
pub(super) struct Locked<P: Primary, R: Registrar<P>> {
    /// The notifier of every registration in the index, by id. Removed
    /// only outside the lock (removal waits for running callbacks, which
    /// take the lock).
    pub(super) notifiers: HashMap<u64, IntervalNotifier<RegionOps<P, R>>>,
    pub(super) live_regions: usize,
    pub(super) live_bytes: u64,
}

impl<P: Primary, R: Registrar<P>> Default for Locked<P, R> {
    fn default() -> Self {
        Locked {
            notifiers: HashMap::new(),
            live_regions: 0,
            live_bytes: 0,
        }
    }
}

impl<P: Primary, R: Registrar<P>> Locked<P, R> {
    /// Kills `reg` and keeps the live totals.
    pub(super) fn kill(&mut self, reg: &Registration<P, R>) {
        if reg.kill() {
            self.live_regions -= 1;
            self.live_bytes -= reg.len();
        }
    }

    pub(super) fn over(&self, config: &RcacheConfig) -> bool {
        self.live_regions > config.max_regions || self.live_bytes > config.max_bytes
    }
}

/// A registration that left the index, with its notifier, for
/// `RegistrationCache::finish` to tear down once the lock is dropped.
pub(super) type Retired<P, R> = (
    Arc<Registration<P, R>>,
    Option<IntervalNotifier<RegionOps<P, R>>>,
);

/// An index snapshot replaced by a publication, dropped after the unlock.
pub(super) type Old<P, R> = Arc<Index<P, R>>;

/// The index rebuilt under the cache lock, and the registrations leaving it.
pub(super) struct Rebuild<'l, P: Primary, R: Registrar<P>> {
    locked: &'l mut Locked<P, R>,
    regs: Vec<Arc<Registration<P, R>>>,
    retired: Vec<Retired<P, R>>,
}

impl<'l, P: Primary, R: Registrar<P>> Rebuild<'l, P, R> {
    pub(super) fn new(locked: &'l mut Locked<P, R>, current: &Index<P, R>) -> Self {
        Rebuild {
            locked,
            regs: current.regs().to_vec(),
            retired: Vec::new(),
        }
    }

    /// Keeps the registrations `keep` accepts; kills and retires the rest.
    pub(super) fn retain(&mut self, keep: impl Fn(&Registration<P, R>) -> bool) {
        let (kept, gone): (Vec<_>, Vec<_>) = self.regs.drain(..).partition(|r| keep(r));
        self.regs = kept;
        for reg in gone {
            self.retire(reg);
        }
    }

    fn retire(&mut self, reg: Arc<Registration<P, R>>) {
        self.locked.kill(&reg);
        let notifier = self.locked.notifiers.remove(&reg.id);
        self.retired.push((reg, notifier));
    }

    /// Adds a walked registration, live from now.
    pub(super) fn insert(
        &mut self,
        reg: Arc<Registration<P, R>>,
        notifier: IntervalNotifier<RegionOps<P, R>>,
        now: u64,
    ) {
        reg.go_live(now);
        self.locked.live_regions += 1;
        self.locked.live_bytes += reg.len();
        self.locked.notifiers.insert(reg.id, notifier);
        let at = self.regs.partition_point(|r| r.start < reg.start);
        self.regs.insert(at, reg);
    }

    /// Evicts least recently used idle registrations, never `keep`, until
    /// within `config`'s bound or nothing idle is left. Returns how many.
    ///
    /// Idle means no use in flight. Handles do not count: they hold off
    /// no invalidation either, and a registration being used is stamped
    /// recent by each use, so it is not the least recently used.
    pub(super) fn evict(&mut self, keep: &Arc<Registration<P, R>>, config: &RcacheConfig) -> u64 {
        let mut evicted = 0;
        while self.locked.over(config) {
            let Some(at) = self.lru_idle(keep) else { break };
            let reg = self.regs.remove(at);
            self.retire(reg);
            evicted += 1;
        }
        evicted
    }

    fn lru_idle(&self, keep: &Arc<Registration<P, R>>) -> Option<usize> {
        let idle = |r: &Arc<Registration<P, R>>| {
            r.state() == State::Live && !Arc::ptr_eq(r, keep) && r.idle()
        };
        (0..self.regs.len())
            .filter(|&i| idle(&self.regs[i]))
            .min_by_key(|&i| self.regs[i].last_used())
    }

    /// Publishes the new index; returns what left it and the old index,
    /// for the caller to drop once the cache lock is released (freeing
    /// memory may reach a hooked `munmap`, whose callback takes the lock).
    pub(super) fn store(self, index: &ArcSwap<Index<P, R>>) -> (Vec<Retired<P, R>>, Old<P, R>) {
        let old = index.swap(Arc::new(Index::new(self.regs)));
        (self.retired, old)
    }
}
