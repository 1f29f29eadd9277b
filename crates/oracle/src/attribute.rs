//! Which of the kernel's own invalidations a userspace source delivered.
//!
//! The input is a tree trace ([`crate::TreeTrace`]): `kvm_unmap_hva_range`
//! lines (the kernel's notifier, first thing in `invalidate_range_start`),
//! `raw_syscalls` enter/exit lines, and the marks `mmun trace`'s processes
//! write for every delivered start and end (`mmun PHASE SOURCE CALL EVENT
//! START END`), each line carrying its thread id and thread-group id.
//! Every kernel invalidation gets one [`Class`]:
//!
//! * [`Class::Covered`]: a hook's start for a range containing it was open
//!   (started, not yet ended) in the same process when the kernel made it;
//! * [`Class::Late`]: only a late delivery (userfaultfd, or a deferred
//!   change) covered it, after the fact;
//! * [`Class::Fault`]: raised while the thread was in no system call (a
//!   page fault, COW, NUMA hinting...): invisible to userspace by design;
//! * [`Class::Missed`]: raised inside a system call of the traced process
//!   and covered by nothing delivered.
//!
//! Invalidations raised by kernel threads (reclaim, khugepaged, the OOM
//! reaper, the flusher threads' writeback of dirty shared file pages —
//! also the writeback `sync`/`syncfs` hand them) or by another process (`process_madvise`) run in *their* task,
//! which the tree trace does not follow: they are not in the input.

use std::collections::HashMap;

use crate::error::TraceError;
use crate::trace::parse_entry;

/// How one kernel invalidation was delivered (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Class {
    /// A hook's start covering it was open when the kernel made it.
    Covered,
    /// Covered only by a late delivery (userfaultfd or deferred).
    Late,
    /// Raised outside any system call: invisible by design.
    Fault,
    /// Raised in a system call, covered by nothing.
    Missed,
}

impl Class {
    /// `covered`, `late`, `invisible (fault)`, `MISSED`.
    pub fn name(self) -> &'static str {
        match self {
            Class::Covered => "covered",
            Class::Late => "late",
            Class::Fault => "invisible (fault)",
            Class::Missed => "MISSED",
        }
    }
}

/// One kernel invalidation and its class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelInvalidation {
    /// The thread.
    pub tid: i32,
    /// Its process.
    pub tgid: i32,
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// The system call the thread was in (x86_64 number), if any.
    pub syscall: Option<u32>,
    /// How it was delivered.
    pub class: Class,
}

/// Every kernel invalidation of the trace, in trace order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attribution {
    /// The invalidations.
    pub calls: Vec<KernelInvalidation>,
    /// Delivered starts seen (marks), by source name.
    pub delivered: HashMap<String, u64>,
}

impl Attribution {
    /// How many invalidations are of `class`.
    pub fn count(&self, class: Class) -> usize {
        self.calls.iter().filter(|c| c.class == class).count()
    }
}

/// A delivered start still open (a hook's, until its end).
#[derive(Debug, Clone, Copy)]
struct Open {
    tid: i32,
    start: u64,
    end: u64,
}

/// Classifies every `kvm_unmap_hva_range` of `text`.
///
/// # Errors
///
/// [`TraceError::Lost`] if the ring buffer dropped events (the answer
/// would be a guess), [`TraceError::Line`] for a line of ours that does
/// not parse.
pub fn attribute(text: &str) -> Result<Attribution, TraceError> {
    let mut out = Attribution::default();
    let mut inside: HashMap<i32, u32> = HashMap::new();
    let mut open: HashMap<i32, Vec<Open>> = HashMap::new();
    // Indices into `out.calls` not yet covered, per process.
    let mut pending: HashMap<i32, Vec<usize>> = HashMap::new();
    for raw in text.lines() {
        let line = raw.trim_end();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.contains("[LOST") {
            return Err(TraceError::Lost(line.to_string()));
        }
        let Some(entry) = parse_entry(line) else {
            continue;
        };
        let tid = entry.pid;
        let tgid = tgid_of(line).unwrap_or(tid);
        match entry.event {
            "sys_enter" => {
                if let Some(nr) = syscall_nr(entry.text) {
                    inside.insert(tid, nr);
                }
            }
            "sys_exit" => {
                inside.remove(&tid);
            }
            "kvm_unmap_hva_range" => {
                let (start, end) = unmap_range(entry.text)
                    .ok_or_else(|| bad(line, "bad kvm_unmap_hva_range range"))?;
                let syscall = inside.get(&tid).copied();
                let covered = open
                    .get(&tgid)
                    .is_some_and(|v| v.iter().any(|o| o.start <= start && end <= o.end));
                let class = match (syscall, covered) {
                    (_, true) => Class::Covered,
                    (None, false) => Class::Fault,
                    (Some(_), false) => Class::Missed,
                };
                if class == Class::Missed {
                    pending.entry(tgid).or_default().push(out.calls.len());
                }
                out.calls.push(KernelInvalidation {
                    tid,
                    tgid,
                    start,
                    end,
                    syscall,
                    class,
                });
            }
            "tracing_mark_write" => {
                let Some(mark) = entry.text.strip_prefix("mmun ") else {
                    continue;
                };
                let m = parse_mark(mark).ok_or_else(|| bad(line, "bad mmun mark"))?;
                let opens = open.entry(tgid).or_default();
                match (m.phase, m.source) {
                    ("start", source) => {
                        *out.delivered.entry(source.to_string()).or_default() += 1;
                        if source == "hook" {
                            opens.push(Open {
                                tid,
                                start: m.start,
                                end: m.end,
                            });
                        } else if let Some(waiting) = pending.get_mut(&tgid) {
                            waiting.retain(|&i| {
                                let c = &mut out.calls[i];
                                let hit = m.start <= c.start && c.end <= m.end;
                                if hit {
                                    c.class = Class::Late;
                                }
                                !hit
                            });
                        }
                    }
                    ("end", "hook") => {
                        if let Some(i) = opens
                            .iter()
                            .position(|o| o.tid == tid && o.start == m.start && o.end == m.end)
                        {
                            opens.swap_remove(i);
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

fn bad(line: &str, why: &'static str) -> TraceError {
    TraceError::Line {
        line: line.to_string(),
        why,
    }
}

/// `comm-TID (  TGID) [CPU] ...`: the number in the parentheses before the
/// CPU column (the `record-tgid` option).
fn tgid_of(line: &str) -> Option<i32> {
    let cpu = line.find("] ")?;
    let head = &line[..line[..cpu].rfind('[')?];
    let close = head.rfind(')')?;
    let open = head[..close].rfind('(')?;
    head[open + 1..close].trim().parse().ok()
}

/// `NR 9 (...)` or `NR 9 = 0`.
fn syscall_nr(text: &str) -> Option<u32> {
    text.strip_prefix("NR ")?
        .split([' ', '('])
        .next()?
        .parse()
        .ok()
}

/// `mmu notifier unmap range: 0x... -- 0x...`.
fn unmap_range(text: &str) -> Option<(u64, u64)> {
    let (s, e) = text
        .strip_prefix("mmu notifier unmap range: ")?
        .split_once(" -- ")?;
    Some((hex(s)?, hex(e)?))
}

fn hex(word: &str) -> Option<u64> {
    let word = word.trim();
    u64::from_str_radix(word.strip_prefix("0x").unwrap_or(word), 16).ok()
}

/// A parsed `mmun PHASE SOURCE CALL EVENT START END` mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mark<'a> {
    phase: &'a str,
    source: &'a str,
    start: u64,
    end: u64,
}

fn parse_mark(text: &str) -> Option<Mark<'_>> {
    let mut w = text.split_whitespace();
    let (phase, source, _call, _event) = (w.next()?, w.next()?, w.next()?, w.next()?);
    let (start, end) = (hex(w.next()?)?, hex(w.next()?)?);
    Some(Mark {
        phase,
        source,
        start,
        end,
    })
}

/// The x86_64 name of a system call number, for reports.
pub fn syscall_name(nr: u32) -> String {
    let name = match nr {
        0 => "read",
        1 => "write",
        9 => "mmap",
        10 => "mprotect",
        11 => "munmap",
        12 => "brk",
        16 => "ioctl",
        25 => "mremap",
        28 => "madvise",
        30 => "shmat",
        56 => "clone",
        57 => "fork",
        58 => "vfork",
        59 => "execve",
        60 => "exit",
        67 => "shmdt",
        77 => "ftruncate",
        149 => "mlock",
        150 => "munlock",
        151 => "mlockall",
        231 => "exit_group",
        285 => "fallocate",
        322 => "execveat",
        329 => "pkey_mprotect",
        426 => "io_uring_enter",
        435 => "clone3",
        440 => "process_madvise",
        _ => return format!("syscall {nr}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "\
  prog-100   (    100) [001] ..... 1.000: sys_enter: NR 11 (7f0000000000, 10000)
  prog-100   (    100) [001] ..... 1.001: tracing_mark_write: mmun start hook munmap UNMAP 0x7f0000000000 0x7f0000010000
  prog-100   (    100) [001] ..... 1.002: kvm_unmap_hva_range: mmu notifier unmap range: 0x7f0000000000 -- 0x7f0000010000
  prog-100   (    100) [001] ..... 1.003: tracing_mark_write: mmun end hook munmap UNMAP 0x7f0000000000 0x7f0000010000
  prog-100   (    100) [001] ..... 1.004: sys_exit: NR 11 = 0
  prog-100   (    100) [001] ..... 1.005: kvm_unmap_hva_range: mmu notifier unmap range: 0x7f0000020000 -- 0x7f0000021000
  prog-101   (    100) [000] ..... 1.006: sys_enter: NR 28 (7f0000030000, 1000, 4)
  prog-101   (    100) [000] ..... 1.007: kvm_unmap_hva_range: mmu notifier unmap range: 0x7f0000030000 -- 0x7f0000031000
  prog-101   (    100) [000] ..... 1.008: sys_exit: NR 28 = 0
  mmun-uffd-102 (    100) [001] ..... 1.009: tracing_mark_write: mmun start uffd uffd-remove CLEAR 0x7f0000030000 0x7f0000031000
  prog-100   (    100) [001] ..... 1.010: sys_enter: NR 11 (7f0000040000, 1000)
  prog-100   (    100) [001] ..... 1.011: kvm_unmap_hva_range: mmu notifier unmap range: 0x7f0000040000 -- 0x7f0000041000
  prog-100   (    100) [001] ..... 1.012: sys_exit: NR 11 = 0
  child-200  (    200) [000] ..... 1.013: tracing_mark_write: mmun start hook munmap UNMAP 0x7f0000040000 0x7f0000041000
";

    #[test]
    fn each_kind_is_classified() {
        let a = attribute(TRACE).unwrap();
        let classes: Vec<Class> = a.calls.iter().map(|c| c.class).collect();
        assert_eq!(
            classes,
            [Class::Covered, Class::Fault, Class::Late, Class::Missed],
            "{a:#?}"
        );
        assert_eq!(a.calls[2].tid, 101);
        assert_eq!(a.calls[2].tgid, 100);
        assert_eq!(a.calls[3].syscall, Some(11));
        assert_eq!(a.count(Class::Missed), 1);
        assert_eq!(a.delivered.get("hook"), Some(&2));
        assert_eq!(a.delivered.get("uffd"), Some(&1));
    }

    #[test]
    fn an_ended_start_covers_nothing_later() {
        let trace = "\
  p-1 (      1) [0] ..... 1.0: sys_enter: NR 11 (0, 0)
  p-1 (      1) [0] ..... 1.1: tracing_mark_write: mmun start hook munmap UNMAP 0x1000 0x2000
  p-1 (      1) [0] ..... 1.2: tracing_mark_write: mmun end hook munmap UNMAP 0x1000 0x2000
  p-1 (      1) [0] ..... 1.3: kvm_unmap_hva_range: mmu notifier unmap range: 0x1000 -- 0x2000
";
        assert_eq!(attribute(trace).unwrap().calls[0].class, Class::Missed);
        // A start that covers only part of the kernel's range does not count.
        let partial = trace
            .replace(
                "1.2: tracing_mark_write: mmun end hook munmap UNMAP 0x1000 0x2000\n",
                "",
            )
            .replace("0x1000 -- 0x2000", "0x1000 -- 0x3000");
        assert_eq!(attribute(&partial).unwrap().calls[0].class, Class::Missed);
    }

    #[test]
    fn lost_events_are_an_error() {
        assert!(matches!(
            attribute("CPU:1 [LOST 3 EVENTS]\n"),
            Err(TraceError::Lost(_))
        ));
    }

    #[test]
    fn tgids_and_numbers_parse() {
        assert_eq!(tgid_of("  a (b)-5 (   77) [001] ..... 1.0: x: y"), Some(77));
        assert_eq!(tgid_of("  a-5 [001] ..... 1.0: x: y"), None);
        assert_eq!(syscall_nr("NR 231 (0, 0)"), Some(231));
        assert_eq!(syscall_nr("NR 9 = 140000"), Some(9));
        assert_eq!(syscall_name(11), "munmap");
        assert_eq!(syscall_name(999), "syscall 999");
    }
}
