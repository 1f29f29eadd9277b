//! Deferred calls: the queue and worker behind [`Srcu::call`]
//! (`call_srcu()`) and [`Srcu::barrier`] (`srcu_barrier()`).
//!
//! Callbacks are queued under a mutex and run in batches (the worker lets
//! them gather for `GATHER` first, unless a barrier waits): whoever runs a
//! batch takes the whole queue, waits one full grace period (which therefore
//! starts after every `call` of the batch), runs the callbacks in queue
//! order, then publishes how many callbacks have finished. `barrier` records
//! how many had been queued when it began and waits until that many have
//! finished.
//!
//! With the std backend the batches run on one lazily spawned worker thread
//! per domain, named `mmun-srcu`, so a callback never runs on the thread that
//! queued it and `call` never waits for a grace period. Under loom there is
//! no background worker (a model must be able to finish every thread it
//! started): `barrier` runs the pending batches itself, on its own thread,
//! after their grace period.

use super::srcu::Inner;
#[cfg(doc)]
use super::srcu::Srcu;
use crate::sync::{Arc, Condvar, Mutex, MutexGuard};

/// A deferred call, as queued by [`Srcu::call`].
type Callback = Box<dyn FnOnce() + Send + 'static>;

/// The callback queue of one domain, behind `Deferred::callbacks`.
#[derive(Default)]
pub(super) struct Callbacks {
    /// Callbacks queued and not yet taken by a batch, oldest first.
    queue: Vec<Callback>,
    /// How many callbacks were ever queued.
    queued: u64,
    /// How many callbacks have finished running; always a prefix of the
    /// queue order, because batches are taken and finished one at a time.
    done: u64,
    /// A batch has been taken and has not finished yet.
    busy: bool,
    /// The worker thread has been spawned (std backend only).
    #[cfg(not(mmun_loom))]
    worker: bool,
    /// The `Srcu` handle was dropped: the worker exits once idle.
    #[cfg(not(mmun_loom))]
    shutdown: bool,
    /// The worker sleeps with an empty queue: the next `call` wakes it.
    /// While it gathers a batch or runs one, `call` has no one to wake.
    #[cfg(not(mmun_loom))]
    idle: bool,
    /// `barrier` callers waiting: the worker runs what is queued at once.
    #[cfg(not(mmun_loom))]
    hurry: usize,
}

/// How long the worker lets callbacks gather before it runs a batch: every
/// batch costs a grace period (two `membarrier(2)` calls, each an
/// interrupt on every CPU running one of our threads) and a wake-up of the
/// worker, and `call`s come in bursts (a round of `mmun stress` unregisters
/// and frees a handful of notifiers at once). Linux's SRCU likewise starts
/// grace periods from delayed work. `barrier` does not wait for it.
#[cfg(not(mmun_loom))]
const GATHER: std::time::Duration = std::time::Duration::from_millis(2);

#[cfg(all(unix, not(mmun_loom)))]
impl Callbacks {
    /// In a fork child: forgets the parent's deferred work, so that the
    /// next `call` spawns a worker of the child's own and `barrier` waits
    /// only for the child's callbacks.
    ///
    /// The callbacks the parent queued (and the batch its worker was
    /// running, which lives on that thread's stack) belong to the parent,
    /// which runs them: running them here too, or even dropping them, would
    /// repeat their side effects (a `free_notifier` closing a device, a
    /// destructor writing to a shared pipe). They are leaked unrun, and
    /// counted as done. Not called when the forking thread is the worker
    /// itself (fork from a callback): that thread goes on in the child,
    /// finishes its batch and stays the worker.
    pub(super) fn forget_parent_work(&mut self) {
        std::mem::forget(std::mem::take(&mut self.queue));
        self.done = self.queued;
        self.busy = false;
        self.worker = false;
        self.idle = false;
    }
}

/// The deferred-call state of one domain (`Inner::deferred`).
pub(super) struct Deferred {
    /// Deferred callbacks queued by `call`.
    pub(super) callbacks: Mutex<Callbacks>,
    /// Wakes the worker when callbacks are queued or the domain is dropped.
    #[cfg_attr(mmun_loom, allow(dead_code, reason = "no worker under loom"))]
    work_cv: Condvar,
    /// Wakes `barrier` callers when a batch of callbacks has finished.
    done_cv: Condvar,
}

impl Deferred {
    pub(super) fn new() -> Deferred {
        Deferred {
            callbacks: Mutex::new(Callbacks::default()),
            work_cv: Condvar::new(),
            done_cv: Condvar::new(),
        }
    }

    /// [`Srcu::call`] on the domain `inner` (this is `inner.deferred`).
    pub(super) fn call(&self, inner: &Arc<Inner>, f: Callback) {
        let mut cbs = self.callbacks.lock();
        cbs.queue.push(f);
        cbs.queued += 1;
        #[cfg(not(mmun_loom))]
        {
            if cbs.idle {
                self.work_cv.notify_all();
            } else if !cbs.worker {
                // The worker starts with a non-empty queue, so it needs no
                // wake-up.
                cbs.worker = true;
                drop(cbs);
                let inner = Arc::clone(inner);
                crate::sync::thread::Builder::new()
                    .name("mmun-srcu".into())
                    .spawn(move || worker_main(&inner))
                    .expect("cannot spawn the mmun-srcu callback worker thread");
            }
        }
        #[cfg(mmun_loom)]
        let _ = inner;
    }

    /// [`Srcu::barrier`] on the domain `inner`, once its misuse checks
    /// passed.
    pub(super) fn barrier(&self, inner: &Inner) {
        let mut cbs = self.callbacks.lock();
        let target = cbs.queued;
        #[cfg(not(mmun_loom))]
        {
            cbs.hurry += 1;
            // Ends a gathering wait: the batch runs now.
            self.work_cv.notify_all();
        }
        while cbs.done < target {
            #[cfg(mmun_loom)]
            if !cbs.busy {
                // Nothing running but work outstanding: the queue holds it.
                cbs = self.run_batch(inner, cbs);
                continue;
            }
            cbs = self.done_cv.wait(cbs);
        }
        #[cfg(not(mmun_loom))]
        {
            cbs.hurry -= 1;
            let _ = inner;
        }
    }

    /// Lets the worker exit once it has run what is queued (the `Srcu`
    /// handle was dropped).
    #[cfg(not(mmun_loom))]
    pub(super) fn shutdown(&self) {
        let mut cbs = self.callbacks.lock();
        cbs.shutdown = true;
        self.work_cv.notify_all();
    }

    /// Takes the whole queue, waits a grace period of `inner`, runs it, and
    /// records it as done. Called with the queue lock held and a non-empty
    /// queue; the lock is released meanwhile and held again on return.
    fn run_batch<'a>(
        &'a self,
        inner: &Inner,
        mut cbs: MutexGuard<'a, Callbacks>,
    ) -> MutexGuard<'a, Callbacks> {
        debug_assert!(!cbs.busy && !cbs.queue.is_empty());
        cbs.busy = true;
        let batch = std::mem::take(&mut cbs.queue);
        let end = cbs.queued;
        drop(cbs);
        // Every `call` of this batch pushed under the queue lock before we
        // took it, so this grace period starts after all of them.
        inner.synchronize();
        for f in batch {
            // A panicking callback must not kill the worker (later barriers
            // would hang); the panic hook has already reported it.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        }
        let mut cbs = self.callbacks.lock();
        cbs.done = end;
        cbs.busy = false;
        self.done_cv.notify_all();
        cbs
    }
}

/// The body of a domain's `mmun-srcu` worker thread: run batches while there
/// are any, sleep otherwise, exit once the domain is dropped and idle.
#[cfg(not(mmun_loom))]
fn worker_main(inner: &Inner) {
    super::local::set_worker_of(inner.id);
    let deferred = &inner.deferred;
    let mut cbs = deferred.callbacks.lock();
    let mut gathered = false;
    loop {
        if !cbs.queue.is_empty() {
            if !gathered && cbs.hurry == 0 && !cbs.shutdown {
                gathered = true;
                cbs = deferred.work_cv.wait_timeout(cbs, GATHER);
                continue;
            }
            gathered = false;
            cbs = deferred.run_batch(inner, cbs);
        } else if cbs.shutdown {
            return;
        } else {
            cbs.idle = true;
            cbs = deferred.work_cv.wait(cbs);
            cbs.idle = false;
        }
    }
}
