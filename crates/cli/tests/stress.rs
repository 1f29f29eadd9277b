//! `mmun stress`, end to end.

use std::process::{Command, Output};

fn mmun(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mmun"))
        .args(args)
        .output()
        .expect("run mmun")
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

#[test]
fn a_bounded_run_prints_the_table_and_exits_0() {
    let out = mmun(&["stress", "--ops", "100000", "--seed", "3", "--quiet"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    for word in [
        "seed 3",
        "operation",
        "ops/s",
        "munmap",
        "exit",
        "secondary",
        "retry%",
        "invalidations",
        "coherence checks",
        "violations       0",
    ] {
        assert!(stdout.contains(word), "no {word:?} in\n{stdout}");
    }
}

#[test]
fn an_injected_bug_exits_1_with_the_seed_and_a_trace() {
    let dir = std::env::temp_dir().join(format!("mmun-cli-stress-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let trace = dir.join("trace.txt");
    let out = mmun(&[
        "stress",
        "--inject",
        "no-set-seq",
        "--seconds",
        "30",
        "--seed",
        "9",
        "--trace-out",
        trace.to_str().unwrap(),
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("injected bug no-set-seq"), "{stdout}");
    assert!(stdout.contains("seed 9"), "{stdout}");
    assert!(
        stdout.contains("# reproduce: mmun stress --seed 9 --inject no-set-seq"),
        "{stdout}"
    );
    assert!(
        stdout.contains("# violation: device-mirror: stale"),
        "{stdout}"
    );
    assert!(stdout.contains("\nmmap 0 0x200000 rw fixed\n"), "{stdout}");
    let written = std::fs::read_to_string(&trace).unwrap();
    assert!(
        written.contains("# violation: device-mirror: stale"),
        "{written}"
    );
    let steps = mmun_script::parse_script(&written).expect("the trace file is a script");
    assert!(!steps.is_empty());
    // And `mmun replay` runs it.
    let replay = mmun(&["replay", trace.to_str().unwrap()]);
    assert_eq!(replay.status.code(), Some(0), "{}", text(&replay.stderr));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn an_unknown_bug_is_a_usage_error_listing_the_bugs() {
    let out = mmun(&["stress", "--inject", "bogus"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("bogus"), "{stderr}");
    for bug in mmun_secondary::Bug::ALL {
        assert!(stderr.contains(bug.name()), "no {bug} in\n{stderr}");
    }
    assert!(out.stdout.is_empty());
}

#[test]
fn bad_numbers_are_usage_errors() {
    let out = mmun(&["stress", "--accessors", "0"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("accessors"));
}

#[test]
fn help_lists_every_bug_with_its_description() {
    let out = mmun(&["stress", "--help"]);
    assert!(out.status.success());
    let stdout = text(&out.stdout);
    for bug in mmun_secondary::Bug::ALL {
        assert!(
            stdout.contains(bug.name()) && stdout.contains(bug.describe()),
            "no {bug} in\n{stdout}"
        );
    }
    assert!(stdout.contains("--seconds") && stdout.contains("--ops") && stdout.contains("--seed"));
}

#[test]
fn ctrl_c_prints_what_was_measured_and_exits_130() {
    let child = Command::new(env!("CARGO_BIN_EXE_mmun"))
        .args(["stress", "--seconds", "120", "--quiet"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run mmun");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let started = std::time::Instant::now();
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(130),
        "{stdout}{}",
        text(&out.stderr)
    );
    assert!(
        started.elapsed().as_secs() < 30,
        "the run stops soon after Ctrl-C"
    );
    for word in ["# interrupted", "operation", "ops/s", "coherence checks"] {
        assert!(stdout.contains(word), "no {word:?} in\n{stdout}");
    }
}

#[test]
fn an_absurd_round_ops_is_refused_clearly() {
    let out = mmun(&[
        "stress",
        "--ops",
        "10",
        "--round-ops",
        "1000000000",
        "--quiet",
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("round_ops must be 1 to 1000000"),
        "{stderr}"
    );
    let out = mmun(&[
        "stress",
        "--ops",
        "300",
        "--round-ops",
        "1000000",
        "--quiet",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}
