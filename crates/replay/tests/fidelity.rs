//! Fidelity to Linux 6.18: every step of every recorded script must print
//! what the kernel printed (`tests/kernel-traces/`, recorded with the
//! kernel oracle). The figure is the share of matching steps.

use std::fs;
use std::path::{Path, PathBuf};

use mmun_replay::replay_report;
use mmun_script::{Report, parse_script};

struct ScriptResult {
    name: String,
    steps: usize,
    matching: usize,
    first_divergence: Option<String>,
}

fn trace_dirs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kernel-traces");
    [root.clone(), root.join("recorded")]
        .into_iter()
        .filter(|d| d.join("scripts").is_dir())
        .collect()
}

fn run_one(dir: &Path, name: &str) -> ScriptResult {
    let script =
        fs::read_to_string(dir.join("scripts").join(format!("{name}.txt"))).expect("script");
    let expected = fs::read_to_string(dir.join("expected").join(format!("{name}.out")))
        .expect("expected output");
    let expected = Report::parse(&expected).expect("recorded report parses");
    let steps = parse_script(&script).expect("recorded script parses");
    let actual = replay_report(&steps).expect("recorded scripts replay to the end");
    let mut matching = 0;
    let mut first_divergence = None;
    for (want, got) in expected.steps.iter().zip(&actual.steps) {
        if want == got {
            matching += 1;
        } else if first_divergence.is_none() {
            first_divergence = Some(format!("--- linux\n{want}--- softmmu\n{got}"));
        }
    }
    ScriptResult {
        name: name.to_string(),
        steps: expected.steps.len(),
        matching,
        first_divergence,
    }
}

#[test]
fn every_recorded_step_matches_linux() {
    let mut results = Vec::new();
    for dir in trace_dirs() {
        let mut names: Vec<String> = fs::read_dir(dir.join("scripts"))
            .expect("scripts dir")
            .filter_map(|e| {
                e.ok()?
                    .file_name()
                    .into_string()
                    .ok()?
                    .strip_suffix(".txt")
                    .map(String::from)
            })
            .collect();
        names.sort();
        for name in names {
            results.push(run_one(&dir, &name));
        }
    }
    let total: usize = results.iter().map(|r| r.steps).sum();
    let matching: usize = results.iter().map(|r| r.matching).sum();
    for r in results.iter().filter(|r| r.matching < r.steps) {
        eprintln!(
            "{}: {}/{} steps match; first divergence:\n{}",
            r.name,
            r.matching,
            r.steps,
            r.first_divergence.as_deref().unwrap_or("")
        );
    }
    let scripts_ok = results.iter().filter(|r| r.matching == r.steps).count();
    eprintln!(
        "fidelity: {matching}/{total} steps ({:.2}%), {scripts_ok}/{} scripts fully matching",
        100.0 * matching as f64 / total.max(1) as f64,
        results.len()
    );
    assert!(
        total >= 2700,
        "the recorded traces are missing ({total} steps found)"
    );
    assert_eq!(
        matching, total,
        "steps that differ from Linux 6.18 (first divergences above)"
    );
}
