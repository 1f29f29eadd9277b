//! The seam to the trace sink (`crate::trace_sink`, another branch): every
//! delivered start, end and release is emitted as a [`TraceRecord`].

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::record::TraceRecord;

/// A sink: called with every record; must not allocate.
pub type Sink = fn(&TraceRecord);

static SINK: AtomicUsize = AtomicUsize::new(0);

/// Sends every record to `sink` from now on.
pub fn set_sink(sink: Sink) {
    SINK.store(sink as usize, Ordering::Release);
}

/// Whether a sink is set.
#[inline]
pub fn enabled() -> bool {
    SINK.load(Ordering::Relaxed) != 0
}

/// Emits one record to the sink, if any.
pub fn emit(record: &TraceRecord) {
    let raw = SINK.load(Ordering::Acquire);
    if raw != 0 {
        // SAFETY: only `set_sink` stores here, always a `Sink`.
        let sink: Sink = unsafe { std::mem::transmute::<usize, Sink>(raw) };
        sink(record);
    }
}
