//! The report a run prints: per step, the notifier activity in the window,
//! then the return code. The text form is the kernel oracle's, byte for byte.

use std::fmt;

use crate::step::{WINDOW_BASE, WINDOW_SIZE};
use crate::text::quote;

/// One reported notifier call, offsets relative to the window base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// `invalidate_range_start` of `[start, end)`.
    Invalidate {
        /// Start offset.
        start: u64,
        /// End offset.
        end: u64,
    },
    /// An invalidation covering the whole window (e.g. `[0, ULONG_MAX)`).
    InvalidateAll,
    /// `clear_flush_young` or `clear_young` of `[start, end)`.
    Age {
        /// Start offset.
        start: u64,
        /// End offset.
        end: u64,
    },
    /// `test_young` of one address.
    TestAge {
        /// The offset.
        addr: u64,
    },
}

impl Line {
    /// The line for an invalidation of the absolute range `[start, end)`, or
    /// `None` if the oracle would not show it (it starts outside the window).
    pub fn invalidate(start: u64, end: u64) -> Option<Line> {
        if start <= WINDOW_BASE && end >= WINDOW_BASE + WINDOW_SIZE {
            Some(Line::InvalidateAll)
        } else {
            in_window(start).map(|s| Line::Invalidate {
                start: s,
                end: end.wrapping_sub(WINDOW_BASE),
            })
        }
    }

    /// The line for an aging call of the absolute range, if shown.
    pub fn age(start: u64, end: u64) -> Option<Line> {
        in_window(start).map(|s| Line::Age {
            start: s,
            end: end.wrapping_sub(WINDOW_BASE),
        })
    }

    /// The line for `test_young` of an absolute address, if shown.
    pub fn test_age(addr: u64) -> Option<Line> {
        in_window(addr).map(|a| Line::TestAge { addr: a })
    }
}

fn in_window(addr: u64) -> Option<u64> {
    (WINDOW_BASE..=WINDOW_BASE + WINDOW_SIZE)
        .contains(&addr)
        .then(|| addr - WINDOW_BASE)
}

/// C's `%#lx`: `0` for zero, `0x…` otherwise.
struct Hex(u64);

impl fmt::Display for Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            f.write_str("0")
        } else {
            write!(f, "{:#x}", self.0)
        }
    }
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Line::Invalidate { start, end } => write!(f, "invalidate {} {}", Hex(start), Hex(end)),
            Line::InvalidateAll => f.write_str("invalidate all"),
            Line::Age { start, end } => write!(f, "age {} {}", Hex(start), Hex(end)),
            Line::TestAge { addr } => write!(f, "test_age {}", Hex(addr)),
        }
    }
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 0, `-errno`, or for `mremap` the new offset.
    Rc(i64),
    /// `mremap` moved the mapping outside the window.
    Moved,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Rc(rc) => write!(f, "RC {rc}"),
            Outcome::Moved => f.write_str("RC moved"),
        }
    }
}

/// What one step printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepReport {
    /// 1-based step number.
    pub number: usize,
    /// The step's words.
    pub text: String,
    /// Notifier calls, in call order.
    pub lines: Vec<Line>,
    /// The return code.
    pub outcome: Outcome,
}

impl fmt::Display for StepReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "STEP {} {}", self.number, self.text)?;
        for line in &self.lines {
            writeln!(f, "  {line}")?;
        }
        writeln!(f, "  {}", self.outcome)
    }
}

/// A whole run's report.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Report {
    /// One entry per step, in order.
    pub steps: Vec<StepReport>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.steps.iter().try_for_each(|s| write!(f, "{s}"))
    }
}

impl Report {
    /// Parses the text form (what the oracle printed).
    ///
    /// Every step must end with its `RC` line and nothing may follow it
    /// within the step; addresses are bare hex (with or without `0x`),
    /// return codes decimal with an optional `-`.
    ///
    /// # Errors
    ///
    /// A message naming the line that is not part of the format (for a
    /// step without `RC`, the line of its `STEP`).
    pub fn parse(text: &str) -> Result<Report, String> {
        let mut parser = Parser::default();
        for (index, raw) in text.lines().enumerate() {
            if raw.starts_with("STEP ") {
                parser.close()?;
            }
            parser
                .line(index + 1, raw)
                .map_err(|e| format!("line {}: {e}", index + 1))?;
        }
        parser.close()?;
        Ok(parser.report)
    }
}

/// The report being parsed, and where its open step started.
#[derive(Default)]
struct Parser {
    report: Report,
    /// The line of the last `STEP` while its `RC` line is still missing.
    open_step: Option<usize>,
}

impl Parser {
    fn line(&mut self, line: usize, raw: &str) -> Result<(), String> {
        if raw.trim().is_empty() {
            return Ok(());
        }
        if let Some(rest) = raw.strip_prefix("STEP ") {
            let (number, text) = rest.split_once(' ').unwrap_or((rest, ""));
            if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("bad step number {}", quote(number)));
            }
            let number = number
                .parse()
                .map_err(|_| format!("step number {} is too large", quote(number)))?;
            self.report.steps.push(StepReport {
                number,
                text: text.to_string(),
                lines: Vec::new(),
                outcome: Outcome::Rc(0),
            });
            self.open_step = Some(line);
            return Ok(());
        }
        let step = self
            .report
            .steps
            .last_mut()
            .ok_or("a report line before the first STEP")?;
        if self.open_step.is_none() {
            return Err(format!(
                "{} after the RC line that ended step {}",
                quote(raw.trim()),
                step.number
            ));
        }
        let words: Vec<&str> = raw.split_whitespace().collect();
        match words.as_slice() {
            ["invalidate", "all"] => step.lines.push(Line::InvalidateAll),
            ["invalidate", s, e] => step.lines.push(Line::Invalidate {
                start: hex(s)?,
                end: hex(e)?,
            }),
            ["age", s, e] => step.lines.push(Line::Age {
                start: hex(s)?,
                end: hex(e)?,
            }),
            ["test_age", a] => step.lines.push(Line::TestAge { addr: hex(a)? }),
            ["RC", "moved"] => step.outcome = Outcome::Moved,
            ["RC", rc] => step.outcome = Outcome::Rc(return_code(rc)?),
            _ => return Err(format!("not a report line: {}", quote(raw.trim()))),
        }
        if words[0] == "RC" {
            self.open_step = None;
        }
        Ok(())
    }

    /// Checks that the open step, if any, got its `RC` line; the error
    /// names the step's line.
    fn close(&self) -> Result<(), String> {
        match (self.open_step, self.report.steps.last()) {
            (Some(line), Some(step)) => {
                Err(format!("line {line}: step {} has no RC line", step.number))
            }
            _ => Ok(()),
        }
    }
}

/// An address as the oracle prints it (`%#lx`): hex digits only, `0x`
/// optional; no sign, no spaces.
fn hex(word: &str) -> Result<u64, String> {
    let digits = word.strip_prefix("0x").unwrap_or(word);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("bad address {}", quote(word)));
    }
    u64::from_str_radix(digits, 16).map_err(|_| format!("address {} overflows", quote(word)))
}

/// A return code as the oracle prints it (`%ld`): decimal, `-` allowed.
fn return_code(word: &str) -> Result<i64, String> {
    let digits = word.strip_prefix('-').unwrap_or(word);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("bad RC {}", quote(word)));
    }
    word.parse()
        .map_err(|_| format!("RC {} overflows", quote(word)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips_and_zero_prints_like_c() {
        let text = "STEP 1 mmap 0 0x1000 rw\n  invalidate 0 0x1000\n  invalidate all\n  age 0x2000 0x3000\n  test_age 0\n  RC -12\nSTEP 2 mremap 0 1 2 maymove\n  RC moved\n";
        let report = Report::parse(text).unwrap();
        assert_eq!(report.to_string(), text);
        assert_eq!(report.steps[1].outcome, Outcome::Moved);
    }

    #[test]
    fn lines_outside_the_window_are_not_shown() {
        assert_eq!(Line::invalidate(0, u64::MAX), Some(Line::InvalidateAll));
        assert_eq!(Line::invalidate(WINDOW_BASE - 1, WINDOW_BASE + 5), None);
        assert_eq!(
            Line::invalidate(WINDOW_BASE, WINDOW_BASE + 0x1000),
            Some(Line::Invalidate {
                start: 0,
                end: 0x1000
            })
        );
        assert_eq!(Line::test_age(WINDOW_BASE + WINDOW_SIZE + 1), None);
    }

    #[test]
    fn malformed_reports_name_the_line() {
        let err = Report::parse("STEP 1 fork\n  bogus 1\n").unwrap_err();
        assert!(err.starts_with("line 2: not a report line"), "{err}");
        assert!(
            Report::parse("  RC 0\n")
                .unwrap_err()
                .contains("before the first STEP")
        );
    }

    #[test]
    fn signed_or_spaced_numbers_are_not_addresses() {
        for bad in [
            "+2000",
            "-2000",
            "0x",
            "0x+1",
            "2000g",
            "0x10000000000000000",
        ] {
            let text = format!("STEP 1 fork\n  invalidate {bad} 0x3000\n  RC 0\n");
            let err = Report::parse(&text).unwrap_err();
            assert!(err.starts_with("line 2: "), "{bad}: {err}");
        }
        for bad in ["+0", "--1", "0x10", "", "1e3", "99999999999999999999"] {
            let text = format!("STEP 1 fork\n  RC {bad}\n");
            assert!(Report::parse(&text).is_err(), "RC {bad:?} accepted");
        }
        let ok = Report::parse("STEP 1 fork\n  invalidate 2000 0x3000\n  RC -12\n").unwrap();
        assert_eq!(ok.steps[0].outcome, Outcome::Rc(-12));
    }

    #[test]
    fn every_step_ends_with_its_rc_line() {
        let err =
            Report::parse("STEP 1 fork\n  RC 0\nSTEP 2 fork\n  invalidate 0 0x1000\n").unwrap_err();
        assert_eq!(err, "line 3: step 2 has no RC line");
        let err = Report::parse("STEP 1 fork\nSTEP 2 fork\n  RC 0\n").unwrap_err();
        assert_eq!(err, "line 1: step 1 has no RC line");
        let err = Report::parse("STEP 1 fork\n  RC 0\n  invalidate 0 0x1000\n").unwrap_err();
        assert!(
            err.starts_with("line 3: ") && err.contains("after the RC line"),
            "{err}"
        );
    }

    #[test]
    fn a_huge_word_is_not_echoed_whole() {
        let text = format!("STEP 1 fork\n  RC {}\n", "7".repeat(10_000_000));
        let err = Report::parse(&text).unwrap_err();
        assert!(
            err.len() < 200 && err.starts_with("line 2: "),
            "{}",
            &err[..200.min(err.len())]
        );
    }
}
