//! Running an address-space script on the software MMU, and the report of
//! what the notifiers saw (`mmun replay`).
//!
//! A recording list notifier plays the part of KVM in the kernel oracle:
//! it sees every `invalidate_range_start` (and the young callbacks), so
//! the report lists exactly what KVM's tracepoints show on Linux. The full
//! stream (events, flags, owners, ends, every callback) is kept too, for
//! `--events`.

#![forbid(unsafe_code)]

use std::fmt;
use std::sync::Arc;

use mmun_core::{Event, Mm, Notifier, NotifierOps, Owner, Range, StartFn};
use mmun_script::{
    Line, Op, Outcome, Report, Step, StepReport, WINDOW_BASE, WINDOW_SIZE, WindowError,
};
use parking_lot::Mutex;

use mmun_softmmu::frame::Memory;
use mmun_softmmu::layout::PAGE_SIZE;
use mmun_softmmu::shmem::ShmemObject;
use mmun_softmmu::{AddressSpace, Errno, MapRequest, MremapFlags, SysResult};

/// One notifier callback as the recorder saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Callback {
    /// `invalidate_range_start`.
    Start {
        /// Why.
        event: Event,
        /// Range start.
        start: u64,
        /// Range end.
        end: u64,
        /// Whether callbacks could sleep.
        blockable: bool,
        /// The owner, for `Migrate`/`Exclusive`.
        owner: Option<Owner>,
    },
    /// `invalidate_range_end`.
    End {
        /// Range start.
        start: u64,
        /// Range end.
        end: u64,
    },
    /// `invalidate_range` (secondary TLB flush).
    InvalidateRange {
        /// Start.
        start: u64,
        /// End.
        end: u64,
    },
    /// `clear_flush_young`.
    ClearFlushYoung {
        /// Start.
        start: u64,
        /// End.
        end: u64,
    },
    /// `clear_young`.
    ClearYoung {
        /// Start.
        start: u64,
        /// End.
        end: u64,
    },
    /// `test_young`.
    TestYoung {
        /// The address.
        addr: u64,
    },
    /// `change_pte`.
    ChangePte {
        /// The address.
        addr: u64,
        /// The new PTE value.
        pte: u64,
    },
    /// `release`.
    Release,
}

impl fmt::Display for Callback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let off = |a: u64| Off(a);
        match self {
            Callback::Start {
                event,
                start,
                end,
                blockable,
                owner,
            } => {
                write!(f, "start {event} {} {}", off(*start), off(*end))?;
                if !blockable {
                    f.write_str(" nonblock")?;
                }
                if let Some(o) = owner {
                    write!(f, " owner={:#x}", o.get())?;
                }
                Ok(())
            }
            Callback::End { start, end } => write!(f, "end {} {}", off(*start), off(*end)),
            Callback::InvalidateRange { start, end } => {
                write!(f, "invalidate_range {} {}", off(*start), off(*end))
            }
            Callback::ClearFlushYoung { start, end } => {
                write!(f, "clear_flush_young {} {}", off(*start), off(*end))
            }
            Callback::ClearYoung { start, end } => {
                write!(f, "clear_young {} {}", off(*start), off(*end))
            }
            Callback::TestYoung { addr } => write!(f, "test_young {}", off(*addr)),
            Callback::ChangePte { addr, pte } => write!(f, "change_pte {} {pte:#x}", off(*addr)),
            Callback::Release => f.write_str("release"),
        }
    }
}

/// An address relative to the window when inside it, absolute otherwise.
struct Off(u64);

impl fmt::Display for Off {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self
            .0
            .checked_sub(WINDOW_BASE)
            .filter(|o| *o <= WINDOW_SIZE)
        {
            Some(0) => f.write_str("0"),
            Some(o) => write!(f, "{o:#x}"),
            None if self.0 == u64::MAX => f.write_str("max"),
            None => write!(f, "abs:{:#x}", self.0),
        }
    }
}

/// The recording notifier's state.
#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<Callback>>,
}

impl Recorder {
    fn push(&self, call: Callback) {
        self.calls.lock().push(call);
    }
}

static RECORDER_OPS: NotifierOps<Recorder> = NotifierOps {
    release: Some(|r, _| r.push(Callback::Release)),
    clear_flush_young: Some(|r, _, start, end| {
        r.push(Callback::ClearFlushYoung { start, end });
        false
    }),
    clear_young: Some(|r, _, start, end| {
        r.push(Callback::ClearYoung { start, end });
        false
    }),
    test_young: Some(|r, _, addr| {
        r.push(Callback::TestYoung { addr });
        false
    }),
    change_pte: Some(|r, _, addr, pte| r.push(Callback::ChangePte { addr, pte })),
    invalidate_range_start: Some(StartFn::Infallible(|r, range: &Range<'_>| {
        r.push(Callback::Start {
            event: range.event(),
            start: range.start(),
            end: range.end(),
            blockable: range.is_blockable(),
            owner: range.owner(),
        })
    })),
    invalidate_range_end: Some(|r, range| {
        r.push(Callback::End {
            start: range.start(),
            end: range.end(),
        })
    }),
    invalidate_range: Some(|r, _, start, end| r.push(Callback::InvalidateRange { start, end })),
    alloc_notifier: None,
    free_notifier: None,
};

/// What one step did: its report (as the oracle prints it) and the full
/// callback stream.
#[derive(Debug, Clone)]
pub struct StepTrace {
    /// The oracle-format report of the step.
    pub report: StepReport,
    /// Every callback, in order.
    pub callbacks: Vec<Callback>,
}

/// The VMAs `mmun oracle` has outside the window while it runs a script:
/// its binary, libc, libm, libgcc_s and ld.so (4 or 5 each), heap, stack,
/// vvar, vvar_vclock, vdso and 7 anonymous mappings (`/proc/PID/maps` of a
/// release build on Linux 6.18, less `[vsyscall]`, which is no VMA). With
/// it, a script that splits the window into 65,530 pieces fails at the
/// step where it fails on Linux.
pub const ORACLE_OWN_VMAS: usize = 36;

/// Why a replay stopped before the end of its script.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// A step names a range outside the window (the kernel oracle refuses
    /// the same step with the same words).
    #[error(transparent)]
    OutsideWindow(#[from] WindowError),
    /// A CPU access found no free frame: on Linux the fault returns
    /// `VM_FAULT_OOM` and the OOM killer kills the process, so nothing
    /// after this step can run.
    #[error(
        "line {line}: `{text}`: out of memory: the page fault at offset {offset:#x} found none of the {memory_mib} MiB free; Linux's OOM killer would kill the process"
    )]
    OutOfMemory {
        /// The script line of the step.
        line: usize,
        /// The step's words.
        text: String,
        /// The faulting offset in the window.
        offset: u64,
        /// The machine's RAM.
        memory_mib: u64,
    },
}

/// A software MMU process running a script: an address space with a
/// KVM-like recording notifier, at the oracle's window.
pub struct Replayer {
    space: AddressSpace,
    recorder: Notifier<Recorder>,
}

impl Replayer {
    /// A fresh process on a machine with the default RAM
    /// ([`DEFAULT_MEMORY_BYTES`](mmun_softmmu::DEFAULT_MEMORY_BYTES)).
    pub fn new() -> Replayer {
        Replayer::with_memory(Arc::new(Memory::new()))
    }

    /// A fresh process on `memory`.
    pub fn with_memory(memory: Arc<Memory>) -> Replayer {
        let space = AddressSpace::new(memory);
        let recorder = Notifier::register(space.mm(), &RECORDER_OPS, Recorder::default())
            .expect("a live address space accepts a notifier");
        let replayer = Replayer { space, recorder };
        replayer.set_max_map_count(mmun_softmmu::DEFAULT_MAX_MAP_COUNT);
        replayer
    }

    /// Sets `vm.max_map_count` as the kernel oracle's process would meet
    /// it: that process has [`ORACLE_OWN_VMAS`] mappings of its own outside
    /// the window, which count against the limit too.
    pub fn set_max_map_count(&self, max: usize) {
        self.space
            .set_max_map_count(max.saturating_sub(ORACLE_OWN_VMAS));
    }

    /// The address space, for inspection.
    pub fn space(&self) -> &AddressSpace {
        &self.space
    }

    /// The notifier side of the address space.
    pub fn mm(&self) -> &Arc<Mm> {
        self.space.mm()
    }

    /// Runs one step.
    ///
    /// # Errors
    ///
    /// [`ReplayError`]: the step leaves the window (nothing ran), or a
    /// touch ran out of memory (the process would be dead).
    pub fn step(&self, step: &Step) -> Result<StepTrace, ReplayError> {
        step.check_window()?;
        let outcome = match run_op(&self.space, &step.op) {
            Ok(outcome) => outcome,
            Err(Failure::Errno(errno)) => Outcome::Rc(-i64::from(errno.code())),
            Err(Failure::OomKill { addr }) => {
                return Err(ReplayError::OutOfMemory {
                    line: step.line,
                    text: step.text.clone(),
                    offset: addr - WINDOW_BASE,
                    memory_mib: self.space.memory().total_bytes() >> 20,
                });
            }
        };
        let callbacks = std::mem::take(&mut *self.recorder.calls.lock());
        let lines = callbacks.iter().filter_map(report_line).collect();
        Ok(StepTrace {
            report: StepReport {
                number: step.number,
                text: step.text.clone(),
                lines,
                outcome,
            },
            callbacks,
        })
    }
}

impl fmt::Debug for Replayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replayer")
            .field("space", &self.space)
            .finish_non_exhaustive()
    }
}

impl Default for Replayer {
    fn default() -> Self {
        Replayer::new()
    }
}

/// Runs a whole script and returns what every step did.
///
/// # Errors
///
/// The first step's [`ReplayError`]; the window is checked for every step
/// before any runs, as the kernel oracle's run fails before it reports.
pub fn replay(steps: &[Step]) -> Result<Vec<StepTrace>, ReplayError> {
    mmun_script::check_window(steps)?;
    let replayer = Replayer::new();
    steps.iter().map(|s| replayer.step(s)).collect()
}

/// Runs a whole script and returns the oracle-format report.
///
/// # Errors
///
/// As [`replay`].
pub fn replay_report(steps: &[Step]) -> Result<Report, ReplayError> {
    Ok(Report {
        steps: replay(steps)?.into_iter().map(|t| t.report).collect(),
    })
}

/// How an op failed: an errno for the report, or the process killed.
enum Failure {
    Errno(Errno),
    /// A CPU access at `addr` could not get a page.
    OomKill {
        addr: u64,
    },
}

impl From<Errno> for Failure {
    fn from(errno: Errno) -> Failure {
        Failure::Errno(errno)
    }
}

fn report_line(call: &Callback) -> Option<Line> {
    match *call {
        Callback::Start { start, end, .. } => Line::invalidate(start, end),
        Callback::ClearFlushYoung { start, end } | Callback::ClearYoung { start, end } => {
            Line::age(start, end)
        }
        Callback::TestYoung { addr } => Line::test_age(addr),
        _ => None,
    }
}

fn run_op(space: &AddressSpace, op: &Op) -> Result<Outcome, Failure> {
    let at = |off: u64| WINDOW_BASE.wrapping_add(off);
    match *op {
        Op::Mmap {
            off,
            len,
            prot,
            flags,
        } => {
            let object = flags
                .memfd
                .then(|| Arc::new(ShmemObject::new(Arc::clone(space.memory()), len)));
            let req = MapRequest {
                addr: at(off),
                len,
                prot,
                shared: flags.shared,
                object,
                populate: flags.populate,
                fixed: flags.fixed,
                noreplace: !flags.fixed,
            };
            Ok(space.mmap(req).map(|_| Outcome::Rc(0))?)
        }
        Op::Touch { off, len, write } => {
            for page in pages(at(off), len) {
                let page = page?;
                match space.access(page, write) {
                    Err(Errno::NoMem) => return Err(Failure::OomKill { addr: page }),
                    result => result?,
                }
            }
            Ok(Outcome::Rc(0))
        }
        Op::Munmap { off, len } => Ok(space.munmap(at(off), len).map(|()| Outcome::Rc(0))?),
        Op::Mprotect { off, len, prot } => Ok(space
            .mprotect(at(off), len, prot)
            .map(|()| Outcome::Rc(0))?),
        Op::Madvise { off, len, advice } => Ok(space
            .madvise(at(off), len, advice)
            .map(|()| Outcome::Rc(0))?),
        Op::Mremap {
            off,
            old_len,
            new_len,
            may_move,
            dont_unmap,
            new_off,
        } => {
            let flags = MremapFlags {
                may_move,
                dont_unmap,
                fixed: new_off.map(at),
            };
            let new = space.mremap(at(off), old_len, new_len, flags)?;
            Ok(
                match new.checked_sub(WINDOW_BASE).filter(|o| *o <= WINDOW_SIZE) {
                    Some(o) => Outcome::Rc(o as i64),
                    None => Outcome::Moved,
                },
            )
        }
        Op::Fork => {
            space.fork().exit();
            Ok(Outcome::Rc(0))
        }
        Op::Mlock { off, len } => Ok(space.mlock(at(off), len).map(|()| Outcome::Rc(0))?),
        Op::Munlock { off, len } => Ok(space.munlock(at(off), len).map(|()| Outcome::Rc(0))?),
        Op::SoftDirty => {
            space.clear_soft_dirty();
            Ok(Outcome::Rc(0))
        }
        Op::Migrate { off, len } => count(space.migrate(at(off), end_of(at(off), len))),
        Op::MigrateDevice { off, len } => {
            count(space.migrate_device(at(off), end_of(at(off), len), device_owner()))
        }
        Op::Ksm { off, len } => count(space.ksm_merge(at(off), end_of(at(off), len))),
        Op::Exclusive { off, len } => {
            for page in pages(at(off), len) {
                space.make_device_exclusive(page?, device_owner())?;
            }
            Ok(Outcome::Rc(0))
        }
        Op::Age { off, len } => count(space.age(at(off), end_of(at(off), len))),
        Op::Reclaim { off, len } => count(space.reclaim(at(off), end_of(at(off), len))),
        Op::TestYoung { off } => Ok(Outcome::Rc(i64::from(space.test_young(at(off))))),
        Op::OomReap => Ok(Outcome::Rc(if space.oom_reap() {
            0
        } else {
            -i64::from(Errno::Again.code())
        })),
        Op::Exit => {
            space.exit();
            Ok(Outcome::Rc(0))
        }
    }
}

/// The end of `[start, start + len)`, clamped to the top of memory.
fn end_of(start: u64, len: u64) -> u64 {
    start.saturating_add(len)
}

/// The page addresses a byte-per-page walk of `[start, start + len)` visits;
/// an address past the top of memory faults, as it would on a CPU.
fn pages(start: u64, len: u64) -> impl Iterator<Item = SysResult<u64>> {
    (0..len.div_ceil(PAGE_SIZE)).map(move |i| start.checked_add(i * PAGE_SIZE).ok_or(Errno::Fault))
}

/// The RC of the software-MMU-only ops that act on many pages: how many.
fn count(n: usize) -> Result<Outcome, Failure> {
    Ok(Outcome::Rc(i64::try_from(n).unwrap_or(i64::MAX)))
}

/// The device that `migrate_device` and `exclusive` act for in a replay.
pub fn device_owner() -> Owner {
    static DEVICE: std::sync::OnceLock<Owner> = std::sync::OnceLock::new();
    *DEVICE.get_or_init(Owner::unique)
}
