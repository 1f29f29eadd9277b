//! How the main thread waits for the others: for the mutators to finish
//! their quota, then, after the OOM reaper and after exit, for every
//! accessor to run a number of operations into what the step left.
//!
//! Nobody yields or spins here. On two cores a waiter that yields takes
//! turns with the threads it waits for, and an accessor spinning on a
//! released secondary while `exit` runs takes the processor from the exit
//! for a whole time slice. So the main thread sleeps until the accessors
//! have paid, and an accessor whose secondary was released during exit
//! sleeps until the exit's settle begins.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// Accessor operations to wait for, per accessor.
pub(crate) const SETTLE_OPS: u64 = 500;
/// The longest a settle, or a wait for one, lasts (an accessor may have
/// stopped: the run was interrupted or found a violation).
const SETTLE_TIME: Duration = Duration::from_millis(50);

/// One settle at a time, numbered; the accessors owe each one operations.
#[derive(Debug, Default)]
pub(crate) struct Settle {
    state: Mutex<State>,
    /// The accessors have all paid.
    paid: Condvar,
    /// The exit's settle has begun.
    last_began: Condvar,
    /// `State::epoch`, for the accessors to read on every operation
    /// without the lock. Written under the lock after `owing`, and `arrive`
    /// compares epochs under the lock, so a stale read only delays a debt.
    epoch: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    /// The current settle's number (0: none yet).
    epoch: u64,
    /// Accessors that have not yet run their operations for it.
    owing: usize,
    /// Whether it is the exit's, the round's last.
    last: bool,
}

impl Settle {
    /// Starts a settle that `accessors` accessors owe [`SETTLE_OPS`] each
    /// (`last`: the exit's), and waits until they have run them, at most
    /// [`SETTLE_TIME`].
    pub(crate) fn run(&self, accessors: usize, last: bool) {
        let deadline = Instant::now() + SETTLE_TIME;
        let mut state = self.state.lock();
        state.epoch += 1;
        state.owing = accessors;
        state.last = last;
        self.epoch.store(state.epoch, Ordering::Relaxed);
        if last {
            self.last_began.notify_all();
        }
        while state.owing > 0 {
            if self.paid.wait_until(&mut state, deadline).timed_out() {
                break;
            }
        }
    }

    /// The current settle's number, for [`Debt::track`].
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Relaxed)
    }

    /// Sleeps until the exit's settle begins (at most [`SETTLE_TIME`]).
    pub(crate) fn wait_for_last(&self) {
        let deadline = Instant::now() + SETTLE_TIME;
        let mut state = self.state.lock();
        while !state.last {
            if self.last_began.wait_until(&mut state, deadline).timed_out() {
                break;
            }
        }
    }

    /// An accessor has run its operations for settle `epoch`; returns
    /// whether that settle is the last.
    fn arrive(&self, epoch: u64) -> bool {
        let mut state = self.state.lock();
        if state.epoch != epoch {
            return false;
        }
        if state.owing > 0 {
            state.owing -= 1;
            if state.owing == 0 {
                self.paid.notify_one();
            }
        }
        state.last
    }
}

/// What one accessor owes the settles.
#[derive(Debug, Default)]
pub(crate) struct Debt {
    epoch: u64,
    left: u64,
}

impl Debt {
    /// Notes `ops` operations just run; `epoch` is the settle's number read
    /// before they started. Returns true once the accessor has paid the
    /// exit's settle: there is nothing left for it to run into.
    pub(crate) fn track(&mut self, settle: &Settle, epoch: u64, ops: u64) -> bool {
        if epoch != self.epoch {
            self.epoch = epoch;
            self.left = SETTLE_OPS;
        }
        if self.left == 0 {
            return false;
        }
        self.left = self.left.saturating_sub(ops);
        self.left == 0 && settle.arrive(epoch)
    }
}

/// Threads still running, for the main thread to wait on without polling
/// (it still wakes every so often to beat and report).
#[derive(Debug)]
pub(crate) struct Countdown {
    left: Mutex<usize>,
    zero: Condvar,
}

impl Countdown {
    pub(crate) fn new(threads: usize) -> Countdown {
        Countdown {
            left: Mutex::new(threads),
            zero: Condvar::new(),
        }
    }

    /// One thread is done.
    pub(crate) fn count_down(&self) {
        let mut left = self.left.lock();
        *left = left.saturating_sub(1);
        if *left == 0 {
            self.zero.notify_all();
        }
    }

    /// Waits at most `timeout` for every thread to be done; returns
    /// whether they are.
    pub(crate) fn wait_for_zero(&self, timeout: Duration) -> bool {
        let mut left = self.left.lock();
        if *left > 0 {
            let _ = self.zero.wait_for(&mut left, timeout);
        }
        *left == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::thread;

    /// Runs `ops` single operations as one accessor, reading the epoch
    /// before each; returns whether one paid the last settle.
    fn pay(settle: &Settle, debt: &mut Debt, ops: u64) -> bool {
        (0..ops).any(|_| {
            let epoch = settle.epoch();
            debt.track(settle, epoch, 1)
        })
    }

    #[test]
    fn a_settle_ends_once_every_accessor_has_paid_and_only_the_last_frees_them() {
        let settle = Arc::new(Settle::default());
        let accessors: Vec<_> = (0..2)
            .map(|_| {
                let settle = Arc::clone(&settle);
                thread::spawn(move || {
                    let mut debt = Debt::default();
                    let mut ops = 0u64;
                    while !pay(&settle, &mut debt, 1) {
                        ops += 1;
                    }
                    ops
                })
            })
            .collect();
        let started = Instant::now();
        settle.run(2, false);
        settle.run(2, false);
        settle.run(2, true);
        assert!(started.elapsed() < 3 * SETTLE_TIME, "a settle timed out");
        for accessor in accessors {
            let ops = accessor.join().unwrap();
            assert!(
                ops >= 2 * SETTLE_OPS,
                "{ops} operations before the last settle was paid"
            );
        }
    }

    #[test]
    fn a_settle_nobody_pays_ends_at_its_bound() {
        let settle = Settle::default();
        let started = Instant::now();
        settle.run(1, true);
        assert!(started.elapsed() >= SETTLE_TIME);
        // An accessor that arrives late pays a settle that is over: nothing
        // happens, except that it learns it was the last.
        let mut debt = Debt::default();
        assert!(pay(&settle, &mut debt, SETTLE_OPS));
    }

    #[test]
    fn operations_before_any_settle_pay_nothing() {
        let settle = Settle::default();
        let mut debt = Debt::default();
        assert!(!pay(&settle, &mut debt, 10 * SETTLE_OPS));
    }

    #[test]
    fn waiting_for_the_last_settle_ends_when_it_begins() {
        let settle = Arc::new(Settle::default());
        let waiter = {
            let settle = Arc::clone(&settle);
            thread::spawn(move || settle.wait_for_last())
        };
        settle.run(0, false);
        settle.run(0, true);
        waiter.join().unwrap();
    }

    #[test]
    fn a_countdown_reaches_zero_when_every_thread_is_done() {
        let countdown = Arc::new(Countdown::new(2));
        assert!(!countdown.wait_for_zero(Duration::from_millis(1)));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let countdown = Arc::clone(&countdown);
                thread::spawn(move || countdown.count_down())
            })
            .collect();
        while !countdown.wait_for_zero(Duration::from_secs(10)) {}
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert!(countdown.wait_for_zero(Duration::ZERO));
    }
}
