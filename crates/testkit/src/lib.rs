//! Test helpers shared by the workspace's tests (a dev-dependency only):
//!
//! * [`Call`] and [`Log`]: one ordered log of every callback the
//!   subscribers of a test saw, tagged with who saw it;
//! * [`Recorder`]: an interval notifier that records and follows the
//!   `set_seq` contract through a [`DriverLock`](mmun_core::DriverLock);
//! * [`ListRec`] with the ops tables [`FULL`], [`FALLIBLE`] and
//!   [`YOUNG_ONLY`]: list notifiers that record;
//! * [`Rng`]: a seeded xorshift64* generator for stress tests.

mod calls;
mod list;
mod recorder;
mod rng;

pub use calls::{Call, Log, start_call, who_of};
pub use list::{FALLIBLE, FULL, ListRec, YOUNG_ONLY};
pub use recorder::Recorder;
pub use rng::Rng;
