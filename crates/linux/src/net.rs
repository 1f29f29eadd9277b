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

/// The userfaultfd net of this process, once started.
static UFFD: OnceLock<crate::uffd::UffdNet> = OnceLock::new();

/// How many interval notifiers armed each range (the net counts armed
/// watches; an unwatchable or busy one must not be unwatched).
static ARMED: std::sync::Mutex<Vec<(u64, u64, u32)>> = std::sync::Mutex::new(Vec::new());

/// Starts the userfaultfd net and connects it: interval notifiers' ranges
/// are watched from now on, and what it reports reaches the process `Mm` as
/// late start+end pairs ([`Source::Uffd`](crate::Source::Uffd)).
///
/// # Errors
///
/// Why userfaultfd is unavailable; the hooks work without it.
pub fn start_uffd() -> Result<&'static crate::uffd::UffdNet, String> {
    if let Some(net) = UFFD.get() {
        return Ok(net);
    }
    let net = crate::uffd::UffdNet::start(deliver).map_err(|e| e.to_string())?;
    let net = match UFFD.set(net) {
        Ok(()) => UFFD.get().expect("just set"),
        Err(ours) => {
            drop(ours);
            return UFFD.get().ok_or_else(|| "raced".to_owned());
        }
    };
    connect(NetOps {
        watch: uffd_watch,
        unwatch: uffd_unwatch,
        rearm: |s, e| {
            if let Some(net) = UFFD.get() {
                net.rearm(s, e);
            }
        },
        forget_in_child: || {
            if let Some(net) = UFFD.get() {
                net.forget_in_child();
            }
            // The child's copy of the table describes the parent's
            // registrations; a fork child has none.
            if let Ok(mut armed) = ARMED.try_lock() {
                armed.clear();
            }
        },
    });
    Ok(net)
}

/// Before a hooked call unmaps `[start, end)`: takes the armed part off
/// the net (see `uffd::disarm`), so the kernel neither holds the call for
/// the handler nor reports the change a second time.
pub(crate) fn disarm_for_unmap(start: u64, end: u64) -> crate::uffd::Disarmed {
    UFFD.get()
        .map_or_else(Default::default, |net| net.disarm_for_unmap(start, end))
}

/// The unmap that [`disarm_for_unmap`] prepared failed: watch again.
pub(crate) fn rearm_after_failure(disarmed: &crate::uffd::Disarmed) {
    if let Some(net) = UFFD.get()
        && !disarmed.pieces().is_empty()
    {
        net.rearm_after_failure(disarmed);
    }
}

/// The started net, if any.
pub fn uffd() -> Option<&'static crate::uffd::UffdNet> {
    UFFD.get()
}

fn uffd_watch(start: u64, end: u64) {
    let Some(net) = UFFD.get() else { return };
    // Unwatchable (file-backed, SysV shm) and busy (the application's own
    // uffd) ranges stay covered by the hooks alone.
    if let Ok(crate::uffd::Watch::Armed) = net.watch(start, end) {
        let mut armed = ARMED.lock().unwrap_or_else(|e| e.into_inner());
        match armed.iter_mut().find(|(s, e, _)| (*s, *e) == (start, end)) {
            Some(entry) => entry.2 += 1,
            None => armed.push((start, end, 1)),
        }
    }
}

fn uffd_unwatch(start: u64, end: u64) {
    let Some(net) = UFFD.get() else { return };
    let mut armed = ARMED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(i) = armed.iter().position(|&(s, e, _)| (s, e) == (start, end)) {
        armed[i].2 -= 1;
        if armed[i].2 == 0 {
            armed.swap_remove(i);
        }
        drop(armed);
        net.unwatch(start, end);
    }
}

/// The net's `deliver`: a late start+end on the process `Mm`, with the
/// event Linux uses (an mremap's source is unmapped).
fn deliver(change: crate::uffd::LateChange) {
    use crate::dispatch::{Change, deliver_late};
    use crate::record::{Call, Source};
    use crate::uffd::LateChange;
    use mmun_core::Event;
    let (event, start, end, call) = match change {
        LateChange::Unmap { start, end } => (Event::Unmap, start, end, Call::UffdUnmap),
        LateChange::Remove { start, end } => (Event::Clear, start, end, Call::UffdRemove),
        LateChange::Remap { from, len, .. } => (
            Event::Unmap,
            from,
            from.saturating_add(len),
            Call::UffdRemap,
        ),
    };
    deliver_late(&Change { event, start, end }, call, Source::Uffd);
}
