//! What `mmun trace` prints: a line (or JSON object) per record, the
//! summary by event and source, and the kernel verdict.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::Path;

use anyhow::Context;
use mmun_linux::trace_sink::{call_name, phase_name, source_name};
use mmun_linux::{Phase, Source, TraceRecord};
use mmun_oracle::attribute::{Attribution, Class, syscall_name};
use serde_json::json;

/// Sources in column order.
const SOURCES: [Source; 3] = [Source::Hook, Source::Uffd, Source::Deferred];

/// Where and how to print, and the counts for the summary.
pub(crate) struct Printer {
    out: Box<dyn Write>,
    json: bool,
    quiet: bool,
    /// `CLOCK_MONOTONIC` at the command's start, ns.
    t0: u64,
    /// Delivered invalidations (start records) by event name and source.
    starts: BTreeMap<&'static str, [u64; 3]>,
    releases: u64,
    bad: u64,
}

fn now_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Printer {
    pub(crate) fn new(path: Option<&Path>, json: bool, quiet: bool) -> anyhow::Result<Printer> {
        let out: Box<dyn Write> = match path {
            Some(p) => Box::new(io::BufWriter::new(
                std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
            )),
            None => Box::new(io::stderr()),
        };
        Ok(Printer {
            out,
            json,
            quiet,
            t0: now_ns(),
            starts: BTreeMap::new(),
            releases: 0,
            bad: 0,
        })
    }

    pub(crate) fn started(&mut self, _pid: i32) {
        self.t0 = now_ns();
    }

    pub(crate) fn record(&mut self, r: &TraceRecord) -> anyhow::Result<()> {
        match r.phase {
            Phase::Start => {
                let col = SOURCES.iter().position(|&s| s == r.source).unwrap_or(0);
                self.starts.entry(r.event.name()).or_default()[col] += 1;
            }
            Phase::Release => self.releases += 1,
            Phase::End => {}
        }
        if self.quiet {
            return Ok(());
        }
        let t = r.time_ns.saturating_sub(self.t0) as f64 / 1e9;
        if self.json {
            let v = json!({
                "time": t,
                "pid": r.pid,
                "tid": r.tid,
                "phase": phase_name(r.phase),
                "event": r.event.name(),
                "start": format!("{:#x}", r.start),
                "end": format!("{:#x}", r.end),
                "source": source_name(r.source),
                "call": call_name(r.call),
            });
            writeln!(self.out, "{v}")?;
        } else {
            writeln!(
                self.out,
                "{t:12.6} {:>7}/{:<7} {:<7} {:<15} {:<8} {:#x}-{:#x} {}",
                r.pid,
                r.tid,
                phase_name(r.phase),
                r.event.name(),
                source_name(r.source),
                r.start,
                r.end,
                call_name(r.call),
            )?;
        }
        Ok(())
    }

    pub(crate) fn note(&mut self, text: &str) -> anyhow::Result<()> {
        self.bad += 1;
        if self.json {
            writeln!(self.out, "{}", json!({ "note": text }))?;
        } else {
            writeln!(self.out, "mmun trace: {text}")?;
        }
        Ok(())
    }

    pub(crate) fn summary(&mut self) -> anyhow::Result<()> {
        let total: u64 = self.starts.values().flatten().sum();
        if self.json {
            let by_event: BTreeMap<&str, serde_json::Value> = self
                .starts
                .iter()
                .map(|(e, c)| (*e, json!({ "hook": c[0], "uffd": c[1], "deferred": c[2] })))
                .collect();
            let v = json!({ "summary": { "invalidations": total, "releases": self.releases, "by_event": by_event } });
            writeln!(self.out, "{v}")?;
            return Ok(());
        }
        writeln!(
            self.out,
            "\nmmun trace: {total} invalidations delivered, {} releases",
            self.releases
        )?;
        writeln!(
            self.out,
            "  {:<16} {:>9} {:>9} {:>9} {:>9}",
            "event", "hook", "uffd", "deferred", "total"
        )?;
        for (event, c) in &self.starts {
            let sum: u64 = c.iter().sum();
            writeln!(
                self.out,
                "  {event:<16} {:>9} {:>9} {:>9} {sum:>9}",
                c[0], c[1], c[2]
            )?;
        }
        Ok(())
    }

    /// Prints the kernel verdict; returns how many were missed.
    pub(crate) fn verdict(&mut self, a: &Attribution) -> anyhow::Result<usize> {
        let classes = [Class::Covered, Class::Late, Class::Fault, Class::Missed];
        let missed: Vec<_> = a
            .calls
            .iter()
            .filter(|c| c.class == Class::Missed)
            .collect();
        if self.json {
            let counts: BTreeMap<&str, usize> =
                classes.iter().map(|&c| (c.name(), a.count(c))).collect();
            let list: Vec<_> = missed
                .iter()
                .map(|c| {
                    json!({
                        "tid": c.tid, "pid": c.tgid,
                        "start": format!("{:#x}", c.start), "end": format!("{:#x}", c.end),
                        "syscall": c.syscall.map(syscall_name),
                    })
                })
                .collect();
            let v = json!({ "kernel": { "invalidations": a.calls.len(), "classes": counts, "missed": list } });
            writeln!(self.out, "{v}")?;
            return Ok(missed.len());
        }
        writeln!(
            self.out,
            "\nkernel: {} invalidations (kvm_unmap_hva_range)",
            a.calls.len()
        )?;
        for class in classes {
            writeln!(self.out, "  {:<18} {:>9}", class.name(), a.count(class))?;
        }
        let mut by_syscall: BTreeMap<String, [usize; 4]> = BTreeMap::new();
        for c in &a.calls {
            let name = c
                .syscall
                .map_or_else(|| "(fault)".to_string(), syscall_name);
            by_syscall.entry(name).or_default()
                [classes.iter().position(|&k| k == c.class).unwrap_or(3)] += 1;
        }
        writeln!(
            self.out,
            "  {:<18} {:>9} {:>9} {:>9} {:>9}",
            "in", "covered", "late", "fault", "MISSED"
        )?;
        for (name, n) in &by_syscall {
            writeln!(
                self.out,
                "  {name:<18} {:>9} {:>9} {:>9} {:>9}",
                n[0], n[1], n[2], n[3]
            )?;
        }
        for c in &missed {
            writeln!(
                self.out,
                "  MISSED: pid {} tid {} in {} [{:#x}, {:#x})",
                c.tgid,
                c.tid,
                c.syscall.map_or_else(|| "?".to_string(), syscall_name),
                c.start,
                c.end
            )?;
        }
        Ok(missed.len())
    }

    pub(crate) fn flush(&mut self) -> anyhow::Result<()> {
        self.out.flush()?;
        Ok(())
    }
}
