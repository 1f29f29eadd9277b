//! The trace sink: every delivered invalidation, as a fixed-size binary
//! record, to the pipe `mmun trace` created (and, when asked, as a text mark
//! into tracefs' `trace_marker`, ordered with the kernel's own events).
//!
//! Configured from the environment by [`init_from_env`] (the preload
//! library's constructor, and the child after `fork`):
//!
//! | variable | value | effect |
//! |---|---|---|
//! | `MMUN_TRACE_FD` | `FD:INODE` | records go to `FD` if it is still the pipe with that inode |
//! | `MMUN_TRACE_MARKER` | `1` or a path | also a text mark per record to `/sys/kernel/tracing/trace_marker`, or to the `trace_marker` named (a tracefs instance's) |
//! | `MMUN_TRACE_KVM` | `1` | create a KVM VM in this process, so that its mm carries the kernel's own notifier (`--verify-with-kernel`) |
//!
//! [`emit`] never allocates and takes no lock (hooks run inside libc calls,
//! possibly under malloc's locks): the state is a few atomics, the record
//! is encoded on the stack and written with one `write(2)` of
//! [`RECORD_SIZE`] ≤ `PIPE_BUF` bytes, atomic even with many writer
//! processes.

use std::sync::atomic::{AtomicI32, Ordering};

use mmun_core::Event;

use crate::record::{Call, Phase, Source, TraceRecord};

/// Bytes per record on the pipe.
pub const RECORD_SIZE: usize = 48;
const _: () = assert!(RECORD_SIZE <= libc::PIPE_BUF);

/// First four bytes of every record (`"MMUT"` little-endian), checked on
/// decode so that a stray writer is detected rather than misread.
pub const MAGIC: u32 = u32::from_le_bytes(*b"MMUT");

/// The environment variable naming the record pipe (`FD:INODE`).
pub const ENV_FD: &str = "MMUN_TRACE_FD";
/// The environment variable asking for `trace_marker` marks (`1`).
pub const ENV_MARKER: &str = "MMUN_TRACE_MARKER";
/// The environment variable asking for a KVM VM per process (`1`).
pub const ENV_KVM: &str = "MMUN_TRACE_KVM";

/// Where `trace_marker` lives.
const TRACE_MARKER: &core::ffi::CStr = c"/sys/kernel/tracing/trace_marker";
/// `KVM_CREATE_VM` = `_IO(KVMIO, 0x01)`.
const KVM_CREATE_VM: libc::c_ulong = 0xAE01;

static FD: AtomicI32 = AtomicI32::new(-1);
static MARKER: AtomicI32 = AtomicI32::new(-1);
static VM: AtomicI32 = AtomicI32::new(-1);
/// The process that created `VM` (a fork child must create its own).
static VM_PID: AtomicI32 = AtomicI32::new(0);

/// Every [`Call`], indexed by its discriminant.
pub const CALLS: [Call; 25] = [
    Call::Mmap,
    Call::Munmap,
    Call::Mremap,
    Call::Madvise,
    Call::Mprotect,
    Call::PkeyMprotect,
    Call::Brk,
    Call::Sbrk,
    Call::Shmat,
    Call::Shmdt,
    Call::Fork,
    Call::Clone,
    Call::Ftruncate,
    Call::Fallocate,
    Call::Execve,
    Call::Exit,
    Call::UffdUnmap,
    Call::UffdRemove,
    Call::UffdRemap,
    Call::Fsync,
    Call::Fdatasync,
    Call::Msync,
    Call::SyncFileRange,
    Call::Syncfs,
    Call::Sync,
];

/// The call's name as printed by `mmun trace`. The match is exhaustive on
/// purpose: a new [`Call`] variant does not compile until it is named here
/// and added to [`CALLS`].
pub fn call_name(call: Call) -> &'static str {
    match call {
        Call::Mmap => "mmap",
        Call::Munmap => "munmap",
        Call::Mremap => "mremap",
        Call::Madvise => "madvise",
        Call::Mprotect => "mprotect",
        Call::PkeyMprotect => "pkey_mprotect",
        Call::Brk => "brk",
        Call::Sbrk => "sbrk",
        Call::Shmat => "shmat",
        Call::Shmdt => "shmdt",
        Call::Fork => "fork",
        Call::Clone => "clone",
        Call::Ftruncate => "ftruncate",
        Call::Fallocate => "fallocate",
        Call::Execve => "execve",
        Call::Exit => "exit",
        Call::UffdUnmap => "uffd-unmap",
        Call::UffdRemove => "uffd-remove",
        Call::UffdRemap => "uffd-remap",
        Call::Fsync => "fsync",
        Call::Fdatasync => "fdatasync",
        Call::Msync => "msync",
        Call::SyncFileRange => "sync_file_range",
        Call::Syncfs => "syncfs",
        Call::Sync => "sync",
    }
}

/// `hook`, `uffd` or `deferred`.
pub fn source_name(source: Source) -> &'static str {
    match source {
        Source::Hook => "hook",
        Source::Uffd => "uffd",
        Source::Deferred => "deferred",
    }
}

/// `start`, `end` or `release`.
pub fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Start => "start",
        Phase::End => "end",
        Phase::Release => "release",
    }
}

/// Why bytes are not a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The first four bytes are not [`MAGIC`].
    #[error("not a trace record (magic {0:#010x})")]
    Magic(u32),
    /// A field holds a value no variant has.
    #[error("trace record: bad {field} {value}")]
    Field {
        /// `event`, `source`, `call` or `phase`.
        field: &'static str,
        /// The byte.
        value: u8,
    },
}

/// The record as the bytes written to the pipe (little-endian):
/// magic u32, event u8, source u8, call u8, phase u8, pid u32, tid u32,
/// time_ns u64, start u64, end u64, 8 bytes zero.
pub fn encode(r: &TraceRecord) -> [u8; RECORD_SIZE] {
    let mut b = [0u8; RECORD_SIZE];
    b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    b[4] = r.event as u8;
    b[5] = r.source as u8;
    b[6] = r.call as u8;
    b[7] = r.phase as u8;
    b[8..12].copy_from_slice(&r.pid.to_le_bytes());
    b[12..16].copy_from_slice(&r.tid.to_le_bytes());
    b[16..24].copy_from_slice(&r.time_ns.to_le_bytes());
    b[24..32].copy_from_slice(&r.start.to_le_bytes());
    b[32..40].copy_from_slice(&r.end.to_le_bytes());
    b
}

/// The inverse of [`encode`].
///
/// # Errors
///
/// [`DecodeError`] if the magic or a field is wrong.
pub fn decode(b: &[u8; RECORD_SIZE]) -> Result<TraceRecord, DecodeError> {
    let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
    let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
    let magic = u32_at(0);
    if magic != MAGIC {
        return Err(DecodeError::Magic(magic));
    }
    let bad = |field, value| DecodeError::Field { field, value };
    let event = Event::try_from(b[4]).map_err(|v| bad("event", v))?;
    let source = match b[5] {
        0 => Source::Hook,
        1 => Source::Uffd,
        2 => Source::Deferred,
        v => return Err(bad("source", v)),
    };
    let call = *CALLS.get(usize::from(b[6])).ok_or(bad("call", b[6]))?;
    let phase = match b[7] {
        0 => Phase::Start,
        1 => Phase::End,
        2 => Phase::Release,
        v => return Err(bad("phase", v)),
    };
    Ok(TraceRecord {
        time_ns: u64_at(16),
        pid: u32_at(8),
        tid: u32_at(12),
        event,
        start: u64_at(24),
        end: u64_at(32),
        source,
        call,
        phase,
    })
}

/// Whether records are being written (an `mmun trace` is listening).
pub fn enabled() -> bool {
    FD.load(Ordering::Relaxed) >= 0
}

/// `CLOCK_MONOTONIC` now, in nanoseconds (the records' clock).
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec on our stack.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Writes `record` to the trace pipe (and `trace_marker` if asked); a
/// no-op unless [`init_from_env`] found a listener. Never allocates, takes
/// no lock. If the pipe is gone (`mmun trace` exited, or the program closed
/// the fd), tracing stops for this process.
pub fn emit(record: &TraceRecord) {
    let fd = FD.load(Ordering::Relaxed);
    if fd < 0 {
        return;
    }
    let bytes = encode(record);
    if !write_all(fd, &bytes) {
        FD.store(-1, Ordering::Relaxed);
    }
    let marker = MARKER.load(Ordering::Relaxed);
    if marker >= 0 {
        let mut text = [0u8; 128];
        let n = format_mark(record, &mut text);
        if !write_all(marker, &text[..n]) {
            MARKER.store(-1, Ordering::Relaxed);
        }
    }
}

/// One `write`, restarted after EINTR; `false` if the fd is unusable.
///
/// A raw system call, not libc's `write`: that one is a cancellation
/// point, and a thread with a cancellation pending would act on it here,
/// inside a hook, between a start it already reported and its end (and
/// unwind through the hook's `extern "C"` frames, which aborts); it would
/// also overwrite the application's `errno` on failure.
fn write_all(fd: i32, bytes: &[u8]) -> bool {
    loop {
        // SAFETY: `bytes` is valid for reads of its length.
        let n = unsafe {
            crate::sys::syscall6(
                libc::SYS_write as usize,
                [fd as usize, bytes.as_ptr() as usize, bytes.len(), 0, 0, 0],
            )
        };
        if n == bytes.len() as isize {
            return true;
        }
        if n == -(libc::EINTR as isize) {
            continue;
        }
        return false;
    }
}

/// The text mark: `mmun PHASE SOURCE CALL EVENT START END`, e.g.
/// `mmun start hook munmap unmap 0x7f0000000000 0x7f0000010000`. The
/// writer's pid and tgid come from the trace line itself.
pub fn format_mark(r: &TraceRecord, out: &mut [u8; 128]) -> usize {
    let mut w = Cursor { buf: out, len: 0 };
    w.put(b"mmun ");
    w.put(phase_name(r.phase).as_bytes());
    w.put(b" ");
    w.put(source_name(r.source).as_bytes());
    w.put(b" ");
    w.put(call_name(r.call).as_bytes());
    w.put(b" ");
    w.put(r.event.name().as_bytes());
    w.put(b" ");
    w.hex(r.start);
    w.put(b" ");
    w.hex(r.end);
    w.len
}

struct Cursor<'a> {
    buf: &'a mut [u8; 128],
    len: usize,
}

impl Cursor<'_> {
    fn put(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }

    fn hex(&mut self, v: u64) {
        let mut digits = [0u8; 18];
        digits[0] = b'0';
        digits[1] = b'x';
        let mut n = 2;
        let mut started = false;
        for shift in (0..16).rev() {
            let d = ((v >> (shift * 4)) & 0xf) as u8;
            if d != 0 || started || shift == 0 {
                started = true;
                digits[n] = if d < 10 { b'0' + d } else { b'a' + d - 10 };
                n += 1;
            }
        }
        self.put(&digits[..n]);
    }
}

/// Reads the environment (see the [module docs](self)) and opens what it
/// asks for. Call it in the preload constructor and in the child after
/// `fork` (the child keeps the inherited pipe, and creates its own KVM VM:
/// the parent's VM watches the parent's mm). Uses `getenv`, `fstat`,
/// `open` and `ioctl` only: no allocation.
pub fn init_from_env() {
    FD.store(pipe_from_env().unwrap_or(-1), Ordering::Relaxed);
    if enabled() {
        hook_up();
    }
    if MARKER.load(Ordering::Relaxed) < 0 {
        open_marker();
    }
    if env_is_one(c"MMUN_TRACE_KVM") {
        create_vm();
    }
}

/// The process whose `Mm` carries the tracing notifier.
static TRACER_PID: AtomicI32 = AtomicI32::new(0);

/// The tracing subscription: its presence makes the hooks dispatch (they
/// skip an `Mm` nobody subscribed to), and every dispatch emits a record.
/// An interval notifier over the whole user address space rather than a
/// list notifier: releasing a list notifier at exit goes through the
/// global SRCU domain's callback queue, which a fork child used to inherit
/// as the parent's threads left it (a hang at the child's exit seen with
/// bash; `mmun_core::fork` now repairs it in the child).
#[derive(Debug)]
struct Tracer;

impl mmun_core::IntervalNotifierOps for Tracer {
    fn invalidate(
        &self,
        sub: &mmun_core::IntervalSub,
        _range: &mmun_core::Range<'_>,
        cur_seq: mmun_core::Seq,
    ) -> bool {
        sub.set_seq(cur_seq);
        true
    }
}

/// The user half of x86_64's 47-bit address space.
const USER_SPACE: u64 = 1 << 47;

/// Sends the hooks' records here and subscribes the tracing notifier to
/// this process's `Mm` (once per process: a fork child has a fresh `Mm`).
fn hook_up() {
    crate::trace::set_sink(emit);
    // SAFETY: getpid cannot fail.
    let pid = unsafe { libc::getpid() };
    if TRACER_PID.swap(pid, Ordering::AcqRel) == pid {
        return;
    }
    if let Ok(tracer) = mmun_core::IntervalNotifier::insert(
        crate::process_mm(),
        PAGE_ZERO,
        USER_SPACE - PAGE_ZERO,
        Tracer,
    ) {
        // Lives as long as the process (until exit releases the Mm).
        std::mem::forget(tracer);
    }
}

/// Page 0 is never mapped; starting above it keeps the range valid.
const PAGE_ZERO: u64 = 4096;

/// Opens the `trace_marker` that `MMUN_TRACE_MARKER` names (`1`: the
/// global one; an absolute path: that file).
fn open_marker() {
    let name = c"MMUN_TRACE_MARKER";
    // SAFETY: `name` is NUL-terminated; the value is read at once.
    let value = unsafe { libc::getenv(name.as_ptr()) };
    let path = match getenv(name) {
        Some(b"1") => TRACE_MARKER.as_ptr(),
        Some(v) if v.first() == Some(&b'/') => value.cast_const(),
        _ => return,
    };
    // SAFETY: `path` is a NUL-terminated C string (a constant, or the
    // environment's); the fd is ours for the process's life.
    let fd = unsafe { libc::open(path, libc::O_WRONLY | libc::O_CLOEXEC) };
    MARKER.store(fd, Ordering::Relaxed);
}

/// `MMUN_TRACE_FD=FD:INODE`, if FD is still a FIFO with that inode.
fn pipe_from_env() -> Option<i32> {
    let value = getenv(c"MMUN_TRACE_FD")?;
    let colon = value.iter().position(|&b| b == b':')?;
    let fd = parse_u64(&value[..colon])? as i32;
    let ino = parse_u64(&value[colon + 1..])?;
    // SAFETY: fstat writes one `stat` on our stack.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above; an invalid fd only makes fstat fail.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return None;
    }
    let is_fifo = st.st_mode & libc::S_IFMT == libc::S_IFIFO;
    (is_fifo && st.st_ino == ino).then_some(fd)
}

/// A KVM VM for this process (once per process; a fork child drops its
/// copy of the parent's).
fn create_vm() {
    // SAFETY: getpid cannot fail.
    let pid = unsafe { libc::getpid() };
    if VM_PID.load(Ordering::Relaxed) == pid {
        return;
    }
    let inherited = VM.swap(-1, Ordering::Relaxed);
    if inherited >= 0 {
        // SAFETY: our copy of the parent's VM fd; the parent keeps its own.
        unsafe { libc::close(inherited) };
    }
    // SAFETY: a constant path; the fd is closed below.
    let kvm = unsafe { libc::open(c"/dev/kvm".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if kvm < 0 {
        return;
    }
    // SAFETY: KVM_CREATE_VM takes the machine type (0) as its argument.
    let vm = unsafe { libc::ioctl(kvm, KVM_CREATE_VM, 0) };
    // SAFETY: our fd; the VM keeps its own reference to KVM.
    unsafe { libc::close(kvm) };
    if vm >= 0 {
        VM.store(vm, Ordering::Relaxed);
        VM_PID.store(pid, Ordering::Relaxed);
    }
}

/// Whether this process carries a KVM VM made by [`init_from_env`].
pub fn has_kvm_vm() -> bool {
    // SAFETY: getpid cannot fail.
    VM.load(Ordering::Relaxed) >= 0 && VM_PID.load(Ordering::Relaxed) == unsafe { libc::getpid() }
}

fn env_is_one(name: &core::ffi::CStr) -> bool {
    getenv(name) == Some(b"1")
}

/// `getenv` as bytes, without allocating.
fn getenv(name: &core::ffi::CStr) -> Option<&'static [u8]> {
    // SAFETY: `name` is NUL-terminated; the returned pointer, if any, points
    // into the environment, which nobody here modifies (the value is only
    // read right away).
    let p = unsafe { libc::getenv(name.as_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: getenv returns a NUL-terminated string.
    Some(unsafe { core::ffi::CStr::from_ptr(p) }.to_bytes())
}

fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &d| {
        d.is_ascii_digit()
            .then(|| acc.checked_mul(10)?.checked_add(u64::from(d - b'0')))?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> TraceRecord {
        TraceRecord {
            time_ns: 123_456_789,
            pid: 42,
            tid: 43,
            event: Event::Clear,
            start: 0x7f00_0000_0000,
            end: 0x7f00_0001_0000,
            source: Source::Uffd,
            call: Call::UffdRemove,
            phase: Phase::End,
        }
    }

    #[test]
    fn records_round_trip() {
        for (i, &call) in CALLS.iter().enumerate() {
            assert_eq!(call as usize, i, "CALLS is indexed by discriminant");
            let r = TraceRecord { call, ..sample() };
            assert_eq!(decode(&encode(&r)), Ok(r));
        }
    }

    #[test]
    fn bad_bytes_are_named() {
        let mut b = encode(&sample());
        b[5] = 9;
        assert_eq!(
            decode(&b),
            Err(DecodeError::Field {
                field: "source",
                value: 9
            })
        );
        let mut b = encode(&sample());
        b[6] = 200;
        assert_eq!(
            decode(&b),
            Err(DecodeError::Field {
                field: "call",
                value: 200
            })
        );
        let mut b = encode(&sample());
        b[0] = 0;
        assert!(matches!(decode(&b), Err(DecodeError::Magic(_))));
    }

    #[test]
    fn marks_are_text_without_allocation() {
        let mut out = [0u8; 128];
        let n = format_mark(&sample(), &mut out);
        assert_eq!(
            std::str::from_utf8(&out[..n]).unwrap(),
            "mmun end uffd uffd-remove CLEAR 0x7f0000000000 0x7f0000010000"
        );
        let r = TraceRecord {
            start: 0,
            end: u64::MAX,
            ..sample()
        };
        let n = format_mark(&r, &mut out);
        assert!(
            std::str::from_utf8(&out[..n])
                .unwrap()
                .ends_with(" 0x0 0xffffffffffffffff")
        );
    }

    #[test]
    fn numbers_parse_strictly() {
        assert_eq!(parse_u64(b"123"), Some(123));
        assert_eq!(parse_u64(b""), None);
        assert_eq!(parse_u64(b"1x"), None);
        assert_eq!(parse_u64(b"99999999999999999999999"), None);
    }
}
