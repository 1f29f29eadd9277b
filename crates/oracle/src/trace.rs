//! The text of `/sys/kernel/tracing/trace` → a [`Report`].
//!
//! Markers (`tracing_mark_write: STEP n ...`, `RC ...`, `END`) delimit the
//! steps; the three KVM events between them become the step's lines through
//! the `mmun_script` window filters.

use mmun_script::{Line, Outcome, Report, StepReport};

use crate::error::TraceError;

/// One entry of the trace: who wrote it and what it says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry<'a> {
    pub(crate) pid: i32,
    /// The event name, e.g. `tracing_mark_write` or `kvm_age_hva`.
    pub(crate) event: &'a str,
    /// What follows `event: `.
    pub(crate) text: &'a str,
}

/// Builds the report from the text of the `trace` file.
///
/// With `pid`, only entries of that task (thread id) count, markers
/// included; without, every entry does. Notifier calls outside the window
/// are dropped, as the oracle does; events other than the three KVM
/// notifier events and markers other than `STEP`/`RC`/`END` are ignored.
///
/// # Errors
///
/// A [`TraceError`] if the buffer lost entries, a line does not parse, a
/// notifier call in the window falls outside every step, or a step has no
/// `RC` marker.
pub fn parse_trace(text: &str, pid: Option<i32>) -> Result<Report, TraceError> {
    let mut report = Report::default();
    // Whether the current (last) step still collects lines.
    let mut open = false;
    let mut rc_seen = true;
    for raw in text.lines() {
        let line = raw.trim_end();
        if line.is_empty() {
            continue;
        }
        if let Some(header) = line.strip_prefix('#') {
            check_header(header)?;
            continue;
        }
        if line.starts_with("CPU:") && line.contains("[LOST") {
            return Err(TraceError::Lost(line.to_string()));
        }
        let entry = parse_entry(line).ok_or_else(|| bad(line, "not a trace entry"))?;
        if pid.is_some_and(|p| p != entry.pid) {
            continue;
        }
        let shown = match entry.event {
            "tracing_mark_write" => {
                if let Some(rest) = entry.text.strip_prefix("STEP ") {
                    if !rc_seen {
                        return Err(TraceError::MissingRc(
                            report.steps.last().map_or(0, |s| s.number),
                        ));
                    }
                    let (number, words) = rest.split_once(' ').unwrap_or((rest, ""));
                    let number = number.parse().map_err(|_| bad(line, "bad step number"))?;
                    report.steps.push(StepReport {
                        number,
                        text: words.to_string(),
                        lines: Vec::new(),
                        outcome: Outcome::Rc(0),
                    });
                    (open, rc_seen) = (true, false);
                } else if let Some(rc) = entry.text.strip_prefix("RC ") {
                    let step = report.steps.last_mut().filter(|_| open && !rc_seen);
                    let step = step.ok_or_else(|| bad(line, "RC outside a step"))?;
                    step.outcome = match rc {
                        "moved" => Outcome::Moved,
                        rc => Outcome::Rc(rc.parse().map_err(|_| bad(line, "bad RC"))?),
                    };
                    rc_seen = true;
                } else if entry.text == "END" {
                    open = false;
                }
                continue;
            }
            "kvm_unmap_hva_range" => {
                let (start, end) = range(entry.text, "mmu notifier unmap range: ")
                    .ok_or_else(|| bad(line, "bad range"))?;
                Line::invalidate(start, end)
            }
            "kvm_age_hva" => {
                let (start, end) = range(entry.text, "mmu notifier age hva: ")
                    .ok_or_else(|| bad(line, "bad range"))?;
                Line::age(start, end)
            }
            "kvm_test_age_hva" => {
                let addr = entry
                    .text
                    .strip_prefix("mmu notifier test age hva: ")
                    .and_then(hex);
                Line::test_age(addr.ok_or_else(|| bad(line, "bad address"))?)
            }
            _ => continue,
        };
        if let Some(shown) = shown {
            match report.steps.last_mut() {
                // Between a step's RC and the next STEP the oracle still
                // prints under the step, after its RC.
                Some(step) if open => step.lines.push(shown),
                _ => return Err(TraceError::Stray(line.to_string())),
            }
        }
    }
    if !rc_seen {
        return Err(TraceError::MissingRc(
            report.steps.last().map_or(0, |s| s.number),
        ));
    }
    Ok(report)
}

/// Checks the `# entries-in-buffer/entries-written: A/B   #P:n` header.
fn check_header(header: &str) -> Result<(), TraceError> {
    let Some(counts) = header
        .trim_start()
        .strip_prefix("entries-in-buffer/entries-written:")
    else {
        return Ok(());
    };
    let counts = counts.split_whitespace().next().unwrap_or("");
    let parsed = counts
        .split_once('/')
        .and_then(|(k, w)| Some((k.parse().ok()?, w.parse().ok()?)));
    match parsed {
        Some((kept, written)) if kept < written => Err(TraceError::Overflow { kept, written }),
        Some(_) => Ok(()),
        None => Err(bad(header, "bad entry counts")),
    }
}

fn bad(line: &str, why: &'static str) -> TraceError {
    TraceError::Line {
        line: line.to_string(),
        why,
    }
}

/// Splits `<comm>-<pid> [(<tgid>)] [<cpu>] [<flags>] <timestamp>: <event>:
/// <text>`. The comm may contain spaces, dashes and brackets, so the entry
/// is anchored on the `[cpu]` field followed by a timestamp.
pub(crate) fn parse_entry(line: &str) -> Option<Entry<'_>> {
    let mut from = 0;
    while let Some(found) = line[from..].find("] ") {
        let close = from + found;
        from = close + 1;
        let Some(open) = line[..close].rfind('[') else {
            continue;
        };
        let cpu = &line[open + 1..close];
        if cpu.is_empty() || !cpu.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Some(body) = after_timestamp(&line[close + 2..]) else {
            continue;
        };
        let mut task = line[..open].trim();
        if task.ends_with(')')
            && let Some(paren) = task.rfind('(')
        {
            task = task[..paren].trim_end();
        }
        let pid = task.rsplit_once('-')?.1.parse().ok()?;
        let (event, text) = body.split_once(": ").unwrap_or((body, ""));
        return Some(Entry { pid, event, text });
    }
    None
}

/// `[<flags>] <timestamp>: rest` → `rest`. The flags column is absent when
/// the `irq-info` option is off; the timestamp is digits and dots.
fn after_timestamp(s: &str) -> Option<&str> {
    let is_timestamp =
        |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    let s = s.trim_start();
    let (first, rest) = s.split_once(' ').unwrap_or((s, ""));
    if let Some(ts) = first.strip_suffix(':')
        && is_timestamp(ts)
    {
        return Some(rest);
    }
    let rest = rest.trim_start();
    let (second, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    let ts = second.strip_suffix(':')?;
    is_timestamp(ts).then_some(rest)
}

/// `PREFIX<hex> -- <hex>`.
fn range(text: &str, prefix: &str) -> Option<(u64, u64)> {
    let (start, end) = text.strip_prefix(prefix)?.split_once(" -- ")?;
    Some((hex(start)?, hex(end)?))
}

/// `%#016lx`: `0x00300000000000`; zero prints as `0x00000000000000` in the
/// kernel (C libraries print `0000000000000000`), both accepted.
fn hex(word: &str) -> Option<u64> {
    let word = word.trim();
    let digits = word.strip_prefix("0x").unwrap_or(word);
    u64::from_str_radix(digits, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "# tracer: nop
#
# entries-in-buffer/entries-written: 11/11   #P:2
#
#                                _-----=> irqs-off/BH-disabled
#                               / _----=> need-resched
#                              | / _---=> hardirq/softirq
#                              || / _--=> preempt-depth
#                              ||| / _-=> migrate-disable
#                              |||| /     delay
#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION
#              | |         |   |||||     |         |
";

    #[test]
    fn entries_split_on_cpu_and_timestamp() {
        let e = parse_entry(
            "     my-test [1]-4242    [001] ..... 12345.678901: tracing_mark_write: STEP 1 fork",
        )
        .unwrap();
        assert_eq!(
            e,
            Entry {
                pid: 4242,
                event: "tracing_mark_write",
                text: "STEP 1 fork"
            }
        );
        let e = parse_entry(
            "  <...>-17 (   16) [000] d..1. 9.5: kvm_age_hva: mmu notifier age hva: 0x1 -- 0x2",
        )
        .unwrap();
        assert_eq!(
            (e.pid, e.event, e.text),
            (17, "kvm_age_hva", "mmu notifier age hva: 0x1 -- 0x2")
        );
        let e = parse_entry(
            "a-b-99 [003] 7.25: kvm_test_age_hva: mmu notifier test age hva: 0x0000300000001000",
        )
        .unwrap();
        assert_eq!((e.pid, e.event), (99, "kvm_test_age_hva"));
        assert_eq!(parse_entry("garbage"), None);
        assert_eq!(hex("0000000000000000"), Some(0));
        assert_eq!(hex("0x0000300000001000"), Some(0x3000_0000_1000));
        assert_eq!(hex("ffffffffffffffff"), Some(u64::MAX));
    }

    #[test]
    fn sample_trace_becomes_the_oracle_report() {
        let trace = format!(
            "{HEADER}\
 live-123 [001] ..... 10.000001: tracing_mark_write: STEP 1 mmap 0 0x2000 rw populate
 live-123 [001] ..... 10.000002: tracing_mark_write: RC 0
 live-123 [001] ..... 10.000003: tracing_mark_write: STEP 2 munmap 0 0x1000
 live-123 [001] ..... 10.000004: kvm_unmap_hva_range: mmu notifier unmap range: 0x0000300000000000 -- 0x0000300000001000
 other-77 [000] ..... 10.000005: kvm_unmap_hva_range: mmu notifier unmap range: 0x0000300000000000 -- 0x0000300000009000
 other-77 [000] ..... 10.000005: tracing_mark_write: STEP 9 not ours
 live-123 [000] ..... 10.000006: kvm_unmap_hva_range: mmu notifier unmap range: 0x00007f0000000000 -- 0x00007f0000001000
 live-123 [000] ..... 10.000007: kvm_age_hva: mmu notifier age hva: 0x0000300000001000 -- 0x0000300000002000
 live-123 [000] ..... 10.000008: kvm_test_age_hva: mmu notifier test age hva: 0x0000300000001000
 live-123 [000] ..... 10.000009: tracing_mark_write: RC -22
 live-123 [000] ..... 10.000010: tracing_mark_write: STEP 3 softdirty
 live-123 [000] ..... 10.000011: kvm_unmap_hva_range: mmu notifier unmap range: 0000000000000000 -- ffffffffffffffff
 live-123 [000] ..... 10.000012: tracing_mark_write: RC 0
 live-123 [000] ..... 10.000013: tracing_mark_write: STEP 4 mremap 0x1000 0x1000 0x9000 maymove
 live-123 [000] ..... 10.000014: tracing_mark_write: RC moved
 live-123 [000] ..... 10.000015: tracing_mark_write: END
"
        );
        let report = parse_trace(&trace, Some(123)).unwrap();
        assert_eq!(
            report.to_string(),
            "STEP 1 mmap 0 0x2000 rw populate
  RC 0
STEP 2 munmap 0 0x1000
  invalidate 0 0x1000
  age 0x1000 0x2000
  test_age 0x1000
  RC -22
STEP 3 softdirty
  invalidate all
  RC 0
STEP 4 mremap 0x1000 0x1000 0x9000 maymove
  RC moved
"
        );
    }

    #[test]
    fn lines_as_linux_6_18_prints_them() {
        // Verbatim from /sys/kernel/tracing/trace (comm unknown: `<...>`;
        // the kernel's `%#016lx` prints zero as `0x00000000000000`).
        let trace = "\
           <...>-27678   [001] ...1.  4025.826711: tracing_mark_write: STEP 3 softdirty
           <...>-27678   [001] .....  4025.826742: kvm_unmap_hva_range: mmu notifier unmap range: 0x00000000000000 -- 0xffffffffffffffff
           <...>-27678   [001] ...1.  4025.826768: tracing_mark_write: RC 0
           <...>-27678   [001] ...1.  4025.826769: tracing_mark_write: STEP 4 munmap 0 0x40000000
           <...>-27678   [001] .....  4025.826799: kvm_unmap_hva_range: mmu notifier unmap range: 0x00300000000000 -- 0x00300040000000
           <...>-27678   [001] ...1.  4025.826800: tracing_mark_write: RC 0
           <...>-27678   [001] ...1.  4025.826801: tracing_mark_write: END
";
        let report = parse_trace(trace, Some(27678)).unwrap();
        assert_eq!(
            report.to_string(),
            "STEP 3 softdirty\n  invalidate all\n  RC 0\nSTEP 4 munmap 0 0x40000000\n  invalidate 0 0x40000000\n  RC 0\n"
        );
        assert_eq!(parse_trace(trace, Some(1)).unwrap(), Report::default());
    }

    #[test]
    fn losses_and_strays_are_errors() {
        let overflow = HEADER.replace("11/11", "10/12");
        assert_eq!(
            parse_trace(&overflow, None),
            Err(TraceError::Overflow {
                kept: 10,
                written: 12
            })
        );
        assert!(matches!(
            parse_trace("CPU:1 [LOST 3 EVENTS]\n", None),
            Err(TraceError::Lost(_))
        ));
        let stray = " t-1 [0] ..... 1.0: kvm_unmap_hva_range: mmu notifier unmap range: 0x0000300000000000 -- 0x0000300000001000\n";
        assert!(matches!(
            parse_trace(stray, None),
            Err(TraceError::Stray(_))
        ));
        let no_rc = " t-1 [0] ..... 1.0: tracing_mark_write: STEP 1 fork\n";
        assert_eq!(parse_trace(no_rc, None), Err(TraceError::MissingRc(1)));
        let bad_range = " t-1 [0] ..... 1.0: kvm_age_hva: mmu notifier age hva: zz\n";
        assert!(matches!(
            parse_trace(bad_range, None),
            Err(TraceError::Line {
                why: "bad range",
                ..
            })
        ));
    }
}
