//! Address-space scripts: what a process does to its own address space, one
//! step a line, and the report of the notifier ranges each step caused.
//!
//! The format is `../shared/spec/address-space-scripts.md`; the same script
//! runs on the real kernel (`mmun oracle`) and on the software MMU
//! (`mmun replay`), and both print a [`Report`] in the same text form, so
//! they compare line by line.

#![forbid(unsafe_code)]

mod format;
mod parse;
mod report;
mod step;
mod text;
mod window;

pub use parse::{ParseError, parse_script};
pub use report::{Line, Outcome, Report, StepReport};
pub use step::{Advice, MmapFlags, Op, Prot, Step, WINDOW_BASE, WINDOW_SIZE};
pub use text::decode;
pub use window::{WindowError, check_window};
