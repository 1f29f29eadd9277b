//! Racing walks for the shadow MMU.
//!
//! On Linux a fault's walk of the primary (GUP) can run after an
//! invalidation's start and still see the old PTE, until the primary
//! updates it; the shadow MMU's sequence and in-progress count exist for
//! that window. The software MMU holds its page-table lock from the start
//! to the update, so a real walk never lands there and a shadow MMU that
//! does all its bookkeeping in the start ([`Bug::MissingRangeEnd`]) would
//! never be caught. The racer opens the window honestly: a mutator walks a
//! page of the range it is about to change (no invalidation of the page
//! can come between, since every change of a present page starts one),
//! and the racer's own notifier — registered before the shadow MMU, so
//! called after it — hands that walk to the shadow MMU inside the first
//! start that covers the page, as a walk racing the invalidation would
//! be. The fault is committed right there (racing the update), at a
//! preemption point after it — the racer is the shadow MMU's preempt hook,
//! run after each release of `mmu_lock`; on the invalidating thread, once
//! the walk is prepared, the n-th release commits it, inside whatever
//! callback released the lock (an end that drops `mmu_lock` between its
//! steps is caught there) — or after the operation (racing the end). A
//! correct shadow MMU refuses all three.
//!
//! [`Bug::MissingRangeEnd`]: mmun_secondary::Bug::MissingRangeEnd

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::thread::{self, ThreadId};

use mmun_core::{Mm, Notifier, NotifierOps, Range, StartFn};
use mmun_secondary::FaultError;
use mmun_secondary::shadow_mmu::{Commit, PreparedFault, ShadowMmu};
use mmun_softmmu::Translation;
use parking_lot::Mutex;

/// The racer: a notifier on the address space, and the walk it holds.
pub(crate) struct Racer {
    notifier: Notifier<Arc<Slot>>,
}

/// What the racer's callbacks see.
struct Slot {
    shadow: OnceLock<Weak<ShadowMmu>>,
    armed: Mutex<Option<Armed>>,
    /// Whether a walk waits for a preemption point: the preempt hook runs
    /// at every release of `mmu_lock` on every thread, and reads only
    /// this unless it is set (it is set and read by the invalidating
    /// thread, so Relaxed suffices).
    preempt_pending: Arc<AtomicBool>,
}

/// A walk waiting for an invalidation of its page.
#[derive(Debug, Clone, Copy)]
struct Armed {
    page: u64,
    walked: Translation,
    when: When,
    /// The thread that armed it, whose operation it races.
    thread: ThreadId,
    state: State,
}

/// Where a racing walk is committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum When {
    /// Inside the first start that covers the page.
    Inside,
    /// At the release of `mmu_lock` after this many more on the
    /// invalidating thread, once prepared.
    Preempted(u8),
    /// After the operation.
    After,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Waiting,
    Prepared(PreparedFault),
    Committed(&'static str, Result<Commit, FaultError>),
}

/// What became of a racing walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Race {
    /// No invalidation covered the page.
    Missed,
    /// The fault was committed inside the start, at a preemption point,
    /// or after the end; the shadow MMU said this.
    Committed {
        /// Where.
        when: &'static str,
        /// The shadow MMU's answer.
        result: Result<Commit, FaultError>,
    },
}

static OPS: NotifierOps<Arc<Slot>> = NotifierOps {
    invalidate_range_start: Some(StartFn::Infallible(|slot, range| slot.start(range))),
    release: Some(|slot, _mm: &Mm| *slot.armed.lock() = None),
    ..NotifierOps::EMPTY
};

impl Racer {
    /// Registers the racer on `mm`; register it before the shadow MMU and
    /// [`Racer::attach`] the shadow MMU afterwards.
    pub(crate) fn register(mm: &Arc<Mm>) -> Result<Racer, mmun_core::Error> {
        let slot = Arc::new(Slot {
            shadow: OnceLock::new(),
            armed: Mutex::new(None),
            preempt_pending: Arc::new(AtomicBool::new(false)),
        });
        let notifier = Notifier::register(mm, &OPS, slot)?;
        Ok(Racer { notifier })
    }

    /// The shadow MMU the racer feeds.
    pub(crate) fn attach(&self, shadow: &Arc<ShadowMmu>) {
        let _ = self.notifier.shadow.set(Arc::downgrade(shadow));
        let slot = Arc::downgrade(&*self.notifier);
        let pending = Arc::clone(&self.notifier.preempt_pending);
        let hook = Box::new(move || {
            if !pending.load(Ordering::Relaxed) {
                return;
            }
            if let Some(slot) = slot.upgrade() {
                slot.preempted();
            }
        });
        // Cannot fail: the shadow MMU is new.
        let _ = shadow.set_preempt_hook(hook);
    }

    /// Holds `walked`, the primary's translation of `page` just read, for
    /// the next start that covers the page.
    pub(crate) fn arm(&self, page: u64, walked: Translation, when: When) {
        *self.notifier.armed.lock() = Some(Armed {
            page,
            walked,
            when,
            thread: thread::current().id(),
            state: State::Waiting,
        });
    }

    /// Ends the race: commits a fault prepared in a start (now after its
    /// end, or at least after its update) and says what happened.
    pub(crate) fn finish(&self) -> Race {
        let armed = self.notifier.armed.lock().take();
        self.notifier
            .preempt_pending
            .store(false, Ordering::Relaxed);
        let Some(armed) = armed else {
            return Race::Missed;
        };
        match armed.state {
            State::Waiting => Race::Missed,
            State::Committed(when, result) => Race::Committed { when, result },
            State::Prepared(fault) => {
                let result = match self.notifier.shadow.get().and_then(Weak::upgrade) {
                    Some(shadow) => shadow.commit_fault(fault),
                    None => Err(FaultError::Released),
                };
                Race::Committed {
                    when: "after the end",
                    result,
                }
            }
        }
    }
}

impl Slot {
    /// In a start: hand the held walk to the shadow MMU if the range
    /// covers its page (the shadow MMU's own start has run already).
    fn start(&self, range: &Range<'_>) {
        let mut armed = self.armed.lock();
        let Some(a) = armed.as_mut() else {
            return;
        };
        if !matches!(a.state, State::Waiting) || !(range.start()..range.end()).contains(&a.page) {
            return;
        }
        let Some(shadow) = self.shadow.get().and_then(Weak::upgrade) else {
            return;
        };
        a.state = match shadow.prepare_fault_from_walk(a.page, a.walked.writable, a.walked) {
            Ok(fault) if a.when == When::Inside => {
                State::Committed("inside the start", shadow.commit_fault(fault))
            }
            Ok(fault) => {
                self.preempt_pending
                    .store(matches!(a.when, When::Preempted(_)), Ordering::Relaxed);
                State::Prepared(fault)
            }
            Err(e) => State::Committed("inside the start", Err(e)),
        };
    }

    /// The shadow MMU released `mmu_lock`: commit a prepared walk here if
    /// this is the invalidating thread's chosen release. Never waits for
    /// the slot (its holder may be the one releasing `mmu_lock`).
    fn preempted(&self) {
        let Some(mut armed) = self.armed.try_lock() else {
            return;
        };
        let Some(a) = armed.as_mut() else {
            return;
        };
        let (State::Prepared(fault), When::Preempted(skip)) = (a.state, a.when) else {
            return;
        };
        if a.thread != thread::current().id() {
            return;
        }
        if skip > 0 {
            a.when = When::Preempted(skip - 1);
            return;
        }
        let Some(shadow) = self.shadow.get().and_then(Weak::upgrade) else {
            return;
        };
        // Its own releases of `mmu_lock` find the slot locked: no nesting.
        a.state = State::Committed("at a preemption point", shadow.commit_fault(fault));
        self.preempt_pending.store(false, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Racer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Racer")
            .field("armed", &*self.notifier.armed.lock())
            .finish()
    }
}
