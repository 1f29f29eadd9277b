//! The handler thread: waits on the context and the exit eventfd, reads
//! events in batches into a buffer on its stack, updates the armed book,
//! then delivers. Never allocates, never touches watched memory (WP mode:
//! nothing it could touch would fault to us anyway), blocks asynchronous
//! signals and restarts after EINTR.

use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;

use super::sys::{self, MSG_SIZE, Msg};
use super::{Inner, LateChange, lock};

/// Messages per `read()`.
const BATCH: usize = 64;

pub(super) fn run(inner: &Inner) {
    sys::block_async_signals();
    let tid = rustix::thread::gettid().as_raw_pid();
    inner.handler_tid.store(tid, Ordering::Release);
    let (uffd, exit) = (inner.uffd.as_raw_fd(), inner.exit.as_raw_fd());
    let mut buf = [0u8; BATCH * MSG_SIZE];
    loop {
        let Ok((events, quit)) = sys::poll2(uffd, exit) else {
            return; // EBADF/ENOMEM from poll: nothing sane left to do
        };
        if events {
            drain(inner, uffd, &mut buf);
        }
        if quit {
            return;
        }
    }
}

/// Reads until the context is empty, delivering each batch.
fn drain(inner: &Inner, uffd: i32, buf: &mut [u8]) {
    loop {
        inner.reading.store(true, Ordering::Release);
        let n = match sys::read_msgs(uffd, buf) {
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {
                inner.reading.store(false, Ordering::Release);
                continue;
            }
            Err(_) => 0,
        };
        if n > 0 {
            account(inner, buf, n);
        }
        inner.reading.store(false, Ordering::Release);
        if n == 0 {
            return;
        }
        inner.counters.batches.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            deliver(inner, uffd, sys::decode(buf, i));
        }
    }
}

/// The armed book follows the kernel: unmapped ranges lost their
/// registration, moved ones took it along.
fn account(inner: &Inner, buf: &[u8], n: usize) {
    let mut armed = lock(&inner.armed);
    for i in 0..n {
        match sys::decode(buf, i) {
            Msg::Unmap { start, end } => {
                armed.remove(start, end);
            }
            Msg::Remap { from, to, len } => armed.shift(from, to, len),
            Msg::Remove { .. } | Msg::Fault { .. } | Msg::Other(_) => {}
        }
    }
}

fn deliver(inner: &Inner, uffd: i32, msg: Msg) {
    let c = &inner.counters;
    let change = match msg {
        Msg::Unmap { start, end } => {
            c.unmaps.fetch_add(1, Ordering::Relaxed);
            LateChange::Unmap { start, end }
        }
        Msg::Remove { start, end } => {
            c.removes.fetch_add(1, Ordering::Relaxed);
            LateChange::Remove { start, end }
        }
        Msg::Remap { from, to, len } => {
            c.remaps.fetch_add(1, Ordering::Relaxed);
            LateChange::Remap { from, to, len }
        }
        Msg::Fault { address } => {
            // Someone write-protected a page of a range we registered WP
            // (not us): never leave the faulting thread waiting.
            c.faults.fetch_add(1, Ordering::Relaxed);
            sys::wake(uffd, address);
            return;
        }
        Msg::Other(_) => return,
    };
    (inner.deliver)(change);
}
