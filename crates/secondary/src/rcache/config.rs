//! The sizing, fault injection and counters of a registration cache.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;

use crate::bug::Bug;

/// Sizing and fault injection of a [`RegistrationCache`](super::RegistrationCache).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RcacheConfig {
    /// Live registrations kept before the least recently used idle ones
    /// are evicted (`FI_MR_CACHE_MAX_COUNT`).
    pub max_regions: usize,
    /// Registered bytes kept before eviction (`FI_MR_CACHE_MAX_SIZE`).
    pub max_bytes: u64,
    /// The most pages a [`Secondary::fault`](crate::Secondary::fault)
    /// registers: 1 registers the page alone; more registers a buffer
    /// around it, of 1 to this many pages, its ends unaligned at times
    /// (chosen by a counter, so a run is repeatable), as an application
    /// registers its buffers. A buffer that reaches unmapped memory falls
    /// back to the page alone. [`Secondary::access`](crate::Secondary::access)
    /// then uses up to this many pages of the registration it finds.
    pub fault_pages: u64,
    /// A registration-cache bug to inject; bugs of other secondaries are
    /// ignored.
    pub bug: Option<Bug>,
}

impl Default for RcacheConfig {
    /// Unbounded, single-page faults, no bug.
    fn default() -> RcacheConfig {
        RcacheConfig {
            max_regions: usize::MAX,
            max_bytes: u64::MAX,
            fault_pages: 1,
            bug: None,
        }
    }
}

impl RcacheConfig {
    /// This configuration, with `bug` to inject.
    pub const fn with_bug(self, bug: Option<Bug>) -> RcacheConfig {
        RcacheConfig { bug, ..self }
    }
}

/// What a [`RegistrationCache`](super::RegistrationCache) has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RcacheStats {
    /// Registrations published.
    pub registrations: u64,
    /// Walks started over because an invalidation collided with them.
    pub retries: u64,
    /// Invalidation callbacks received (refused ones included).
    pub invalidations: u64,
    /// Registrations evicted to stay within the bound.
    pub evictions: u64,
    /// Dead registrations whose deferred removal finished (notifier
    /// removed, pins dropped).
    pub reaped: u64,
    /// [`Secondary::fault`](crate::Secondary::fault) calls that succeeded.
    pub faults: u64,
    /// [`Secondary::access`](crate::Secondary::access) calls that used a registration.
    pub hits: u64,
    /// [`Secondary::access`](crate::Secondary::access) calls that found none usable.
    pub misses: u64,
}

/// The counters behind [`RcacheStats`], bumped with relaxed atomics.
#[derive(Debug, Default)]
pub(super) struct Stats {
    pub(super) registrations: AtomicU64,
    pub(super) retries: AtomicU64,
    pub(super) invalidations: AtomicU64,
    pub(super) evictions: AtomicU64,
    pub(super) reaped: AtomicU64,
    pub(super) faults: AtomicU64,
    pub(super) hits: AtomicU64,
    pub(super) misses: AtomicU64,
}

pub(super) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Relaxed);
}
