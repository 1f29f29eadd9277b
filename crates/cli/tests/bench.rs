//! `mmun bench --quick`: every section runs (or says why it cannot), every
//! row carries medians, and `--json` is one object per line.

use std::process::Command;

fn bench(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mmun"))
        .arg("bench")
        .args(args)
        .output()
        .expect("run mmun bench");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_row_has_medians_and_every_skip_a_reason() {
    let (ok, stdout, stderr) = bench(&["--quick", "--json"]);
    assert!(ok, "{stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let munmap: Vec<_> = lines
        .iter()
        .filter(|v| v["group"] == "munmap of 16 populated pages")
        .collect();
    assert!(
        !munmap.is_empty(),
        "the munmap section ran or was skipped: {stdout}"
    );
    for v in &lines {
        if let Some(reason) = v.get("skipped") {
            assert!(!reason.as_str().unwrap_or("").is_empty(), "{v}");
            eprintln!("skipped: {v}");
            continue;
        }
        let ours = v["ours_ns"].as_f64().unwrap_or(f64::NAN);
        assert!(ours > 0.0 && ours < 1e9, "a plausible median: {v}");
        if v["group"] == "munmap of 16 populated pages" {
            let reference = v["reference_ns"].as_f64().unwrap_or(f64::NAN);
            assert!(reference > 0.0, "a reference median: {v}");
            assert!(v["met"].is_boolean(), "a target verdict: {v}");
        }
    }
    let ucx = lines
        .iter()
        .filter(|v| v["group"].as_str().is_some_and(|g| g.starts_with("UCX")));
    assert!(
        ucx.count() > 0,
        "the UCX section ran or says why not: {stdout}"
    );
}

#[test]
fn the_table_names_its_rounds_and_no_ucx_leaves_ucx_out() {
    let (ok, stdout, stderr) = bench(&["--quick", "--no-ucx"]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.starts_with("mmun bench: medians of 200 interleaved rounds"),
        "{stdout}"
    );
    assert!(stdout.contains("munmap of 16 populated pages"), "{stdout}");
    assert!(!stdout.contains("UCX"), "{stdout}");
}

#[test]
fn rounds_out_of_range_are_refused_with_the_reason() {
    let (ok, _, stderr) = bench(&["--rounds", "0"]);
    assert!(!ok);
    assert!(stderr.contains("--rounds"), "{stderr}");
}
