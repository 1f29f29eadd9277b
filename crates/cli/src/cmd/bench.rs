//! `mmun bench`: the headline measurements side by side in one run, as a
//! table of medians and ratios, each against its reference and target.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use mmun_bench::{Row, Section, Target};

/// Arguments of `mmun bench`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Interleaved rounds per comparison (each round times every variant
    /// once; the table shows medians).
    #[arg(long, default_value_t = 5000, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    rounds: u64,
    /// 200 rounds: a quick look (and what CI runs to check that every
    /// section still works), not figures to quote.
    #[arg(long, conflicts_with = "rounds")]
    quick: bool,
    /// One JSON object per row (and per skipped section) instead of the table.
    #[arg(long)]
    json: bool,
    /// Leave out UCX even where libucx-dev is installed.
    #[arg(long)]
    no_ucx: bool,
}

impl Args {
    fn rounds(&self) -> usize {
        if self.quick {
            200
        } else {
            self.rounds as usize
        }
    }
}

pub(crate) fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let rounds = args.rounds();
    // UCX first, in its own process: its figures are the cache rows'
    // references.
    let ucx = (!args.no_ucx).then(|| mmun_bench::ucx::measure(rounds));
    let ucx_cache = ucx.as_ref().and_then(|u| u.as_ref().ok()).and_then(|f| {
        Some(mmun_bench::cache::UcxCache {
            hit_ns: f.get("rcache_hit")?,
            miss_ns: f.get("rcache_miss")?,
        })
    });
    // Order matters: the no-subscriber row before anything inserts a
    // notifier, and the net (started by the last munmap row) after the
    // caches, whose every registration it would tax.
    let mut sections = vec![mmun_bench::munmap::unsubscribed(rounds)];
    sections.push(mmun_bench::cache::hits(rounds, ucx_cache));
    sections.extend(mmun_bench::cache::reads(rounds));
    sections.extend(mmun_bench::munmap::subscribed(rounds));
    if let Some(ucx) = ucx {
        sections.push(ucx_section(ucx));
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        print_json(&mut out, &sections)
    } else {
        print_table(&mut out, rounds, &sections)
    }
    .context("writing the results")?;
    Ok(ExitCode::SUCCESS)
}

const UCX_GROUP: &str = "UCX (libucm, ucs_rcache) on the same work, its own process";

fn ucx_section(ucx: Result<mmun_bench::ucx::UcxFigures, String>) -> Section {
    match ucx {
        Err(reason) => Section::Skipped(mmun_bench::Skipped {
            group: UCX_GROUP,
            reason,
        }),
        Ok(f) => {
            let get = |name: &str| f.get(name).unwrap_or(f64::NAN);
            let row = |ours: &str, ours_ns: f64, reference: &str, reference_ns: f64| Row {
                group: UCX_GROUP,
                ours: ours.to_owned(),
                ours_ns,
                reference: reference.to_owned(),
                reference_ns,
                target: Target::None,
            };
            Section::Rows(vec![
                row(
                    "UCM-hooked munmap (VM_UNMAPPED handler)",
                    get("ucm_munmap_hooked"),
                    "raw munmap, unwatched",
                    get("ucm_munmap_bare"),
                ),
                row(
                    "ucs_rcache hit (get + put)",
                    get("rcache_hit"),
                    "",
                    f64::NAN,
                ),
                row(
                    "ucs_rcache miss (register, get + put)",
                    get("rcache_miss"),
                    "",
                    f64::NAN,
                ),
            ])
        }
    }
}

/// `4.77 µs`, `44.6 ns`.
fn time(ns: f64) -> String {
    if ns.is_nan() {
        String::new()
    } else if ns >= 1000.0 {
        format!("{:.2} µs", ns / 1000.0)
    } else {
        format!("{ns:.1} ns")
    }
}

fn print_table(out: &mut impl Write, rounds: usize, sections: &[Section]) -> std::io::Result<()> {
    writeln!(
        out,
        "mmun bench: medians of {rounds} interleaved rounds per comparison, measured in this run"
    )?;
    let mut group = "";
    for section in sections {
        match section {
            Section::Skipped(s) => writeln!(out, "\n{}\n  skipped: {}", s.group, s.reason)?,
            Section::Rows(rows) => {
                for r in rows {
                    if r.group != group {
                        group = r.group;
                        writeln!(out, "\n{group}")?;
                        let (median, reference, ratio, target) =
                            ("median", "reference", "ratio", "target");
                        writeln!(
                            out,
                            "  {:<44} {median:>10}  {reference:<28} {median:>10}  {ratio:>7}  {target}",
                            ""
                        )?;
                    }
                    let ratio = r.ratio();
                    let verdict = match r.met() {
                        Some(true) => "met",
                        Some(false) => "NOT MET",
                        None => "",
                    };
                    writeln!(
                        out,
                        "  {:<44} {:>10}  {:<28} {:>10}  {:>7}  {:<10} {verdict}",
                        r.ours,
                        time(r.ours_ns),
                        r.reference,
                        time(r.reference_ns),
                        if ratio.is_nan() {
                            String::new()
                        } else {
                            format!("{ratio:.2}×")
                        },
                        r.target_text(),
                    )?;
                }
            }
        }
    }
    Ok(())
}

fn print_json(out: &mut impl Write, sections: &[Section]) -> std::io::Result<()> {
    let number = |v: f64| {
        if v.is_nan() {
            serde_json::Value::Null
        } else {
            serde_json::json!(v)
        }
    };
    for section in sections {
        match section {
            Section::Skipped(s) => writeln!(
                out,
                "{}",
                serde_json::json!({"group": s.group, "skipped": s.reason})
            )?,
            Section::Rows(rows) => {
                for r in rows {
                    let line = serde_json::json!({
                        "group": r.group,
                        "ours": r.ours,
                        "ours_ns": number(r.ours_ns),
                        "reference": r.reference,
                        "reference_ns": number(r.reference_ns),
                        "ratio": number(r.ratio()),
                        "target": r.target_text(),
                        "met": r.met(),
                    });
                    writeln!(out, "{line}")?;
                }
            }
        }
    }
    Ok(())
}
