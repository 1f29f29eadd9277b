//! The seam to the userfaultfd safety net (`crate::uffd`, another branch):
//! interval ranges are watched and unwatched as notifiers come and go,
//! replaced ranges are re-armed, a fork child forgets everything.
//!
//! Until the net is started (or where it cannot start: no permission, a
//! kernel without userfaultfd) every call here is a no-op and the hooks
//! alone cover the process.

use std::sync::OnceLock;

/// What the hook side needs from the net.
#[derive(Debug, Clone, Copy)]
pub struct NetOps {
    /// Watch `[start, end)`; refcounted and coalesced by the net.
    pub watch: fn(u64, u64),
    /// Drop one watch of `[start, end)`.
    pub unwatch: fn(u64, u64),
    /// `[start, end)` was replaced (MAP_FIXED, SHM_REMAP): register again.
    pub rearm: fn(u64, u64),
    /// In a fork child: no registrations, no thread.
    pub forget_in_child: fn(),
}

static NET: OnceLock<NetOps> = OnceLock::new();

/// Connects the net. Only the first call counts.
pub fn connect(ops: NetOps) {
    let _ = NET.set(ops);
}

/// Whether a net is connected.
pub fn connected() -> bool {
    NET.get().is_some()
}

pub(crate) fn watch(start: u64, end: u64) {
    if let Some(net) = NET.get() {
        (net.watch)(start, end);
    }
}

pub(crate) fn unwatch(start: u64, end: u64) {
    if let Some(net) = NET.get() {
        (net.unwatch)(start, end);
    }
}

pub(crate) fn rearm(start: u64, end: u64) {
    if let Some(net) = NET.get() {
        (net.rearm)(start, end);
    }
}

pub(crate) fn forget_in_child() {
    if let Some(net) = NET.get() {
        (net.forget_in_child)();
    }
}
