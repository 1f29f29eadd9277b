//! Runs scripts on this kernel and prints or records the reports.
//!
//! ```text
//! record --probe                      say whether this machine can run the oracle
//! record SCRIPT...                    print each report (like oracle.c)
//! record --out DIR [--runs N] SCRIPT... run each N times (default 3); if
//!                                      every run agrees, save the script as
//!                                      DIR/scripts/NAME.txt and the report as
//!                                      DIR/expected/NAME.out
//! ```
//!
//! Except with `--probe`, mounts tracefs if it is not mounted.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use mmun_oracle::{Options, run_script};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (mut out, mut runs, mut scripts) = (None::<PathBuf>, 3usize, Vec::new());
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--out" => out = args.next().map(PathBuf::from),
            "--probe" => {
                return match mmun_oracle::probe() {
                    Ok(()) => {
                        println!("available");
                        ExitCode::SUCCESS
                    }
                    Err(why) => {
                        println!("unavailable: {why}");
                        ExitCode::FAILURE
                    }
                };
            }
            "--runs" => runs = args.next().and_then(|n| n.parse().ok()).unwrap_or(3),
            _ => scripts.push(PathBuf::from(arg)),
        }
    }
    let opts = Options {
        mount_tracefs: true,
        ..Options::default()
    };
    let (mut kept, mut dropped) = (0, 0);
    for path in &scripts {
        let text =
            std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let steps =
            mmun_script::parse_script(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let Some(dir) = &out else {
            match run_script(&steps, &opts) {
                Ok(report) => print!("{report}"),
                Err(e) => {
                    eprintln!("{}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            }
            continue;
        };
        let reports: Vec<String> = (0..runs)
            .map(|_| {
                run_script(&steps, &opts)
                    .map(|r| r.to_string())
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            })
            .collect();
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("script name");
        if reports.iter().all(|r| *r == reports[0]) {
            save(dir, name, &text, &reports[0]);
            kept += 1;
            eprintln!("{name}: kept ({runs} runs agree)");
        } else {
            dropped += 1;
            eprintln!("{name}: dropped (runs disagree)");
        }
    }
    if out.is_some() {
        eprintln!("kept {kept}, dropped {dropped}");
    }
    ExitCode::SUCCESS
}

fn save(dir: &Path, name: &str, script: &str, report: &str) {
    for sub in ["scripts", "expected"] {
        std::fs::create_dir_all(dir.join(sub)).expect("create output directory");
    }
    std::fs::write(dir.join("scripts").join(format!("{name}.txt")), script).expect("write script");
    std::fs::write(dir.join("expected").join(format!("{name}.out")), report).expect("write report");
}
