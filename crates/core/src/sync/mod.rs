//! One synchronisation API over two backends: std for real use,
//! loom when the crate is built with `--cfg mmun_loom` for model checking.
//!
//! Every other module imports its `Arc`, atomics, `Mutex` and `Condvar` from
//! here and nowhere else, so a loom model explores the very code that ships.
//! The cfg is crate-prefixed so that it does not switch dependencies (which
//! read the bare `loom` cfg) into their own loom mode.

#[cfg(not(mmun_loom))]
mod std_backend;
#[cfg(not(mmun_loom))]
pub(crate) use std_backend::*;

#[cfg(mmun_loom)]
mod loom_backend;
#[cfg(mmun_loom)]
pub(crate) use loom_backend::*;
