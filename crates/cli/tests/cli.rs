//! The `mmun` binary, end to end.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn mmun(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mmun"))
        .args(args)
        .output()
        .expect("run mmun")
}

fn traces() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../replay/tests/kernel-traces")
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

#[test]
fn replay_prints_what_linux_printed() {
    let script = traces().join("scripts/thp.txt");
    let out = mmun(&["replay", script.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let expected = std::fs::read_to_string(traces().join("expected/thp.out")).unwrap();
    assert_eq!(text(&out.stdout), expected);
}

#[test]
fn replay_events_shows_the_whole_stream() {
    let script = traces().join("scripts/cow.txt");
    let out = mmun(&["replay", "--events", script.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("    | start CLEAR 0 0x1000"), "{stdout}");
    assert!(stdout.contains("    | change_pte 0 "), "{stdout}");
    assert!(stdout.contains("    | end 0 0x1000"), "{stdout}");
}

#[test]
fn a_malformed_script_is_an_error_naming_file_and_line() {
    let dir = scratch_dir().join(format!("mmun-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.txt");
    std::fs::write(&bad, "mmap 0 0x1000 rw\n# fine\nmprotect 0 0x1000 rq\n").unwrap();
    let out = mmun(&["replay", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("bad.txt") && stderr.contains("line 3") && stderr.contains("`rq`"),
        "{stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "nothing runs before the whole script parses"
    );
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let out = mmun(&["replay", "/nonexistent/script.txt"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("reading /nonexistent/script.txt"));
}

#[test]
fn diff_against_a_recording_agrees_and_reports_a_divergence() {
    let script = traces().join("scripts/fork.txt");
    let good = traces().join("expected/fork.out");
    let out = mmun(&[
        "diff",
        script.to_str().unwrap(),
        "--against",
        good.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    assert!(text(&out.stdout).starts_with("identical: 21 steps"));

    let dir = scratch_dir().join(format!("mmun-cli-diff-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let altered = dir.join("fork.out");
    let recorded = std::fs::read_to_string(&good).unwrap();
    std::fs::write(
        &altered,
        recorded.replacen("  invalidate 0 0x10000\n", "  invalidate 0 0x20000\n", 1),
    )
    .unwrap();
    let out = mmun(&[
        "diff",
        script.to_str().unwrap(),
        "--against",
        altered.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains("first divergence at step 14 of 21"),
        "{}",
        text(&out.stdout)
    );
}

/// Needs root, /dev/kvm and tracefs; says it skipped otherwise.
#[test]
fn oracle_matches_the_recording_or_says_why_it_skipped() {
    let script = traces().join("scripts/munmap.txt");
    let out = mmun(&["oracle", script.to_str().unwrap()]);
    if out.status.code() == Some(77) {
        eprintln!("skipped: {}", text(&out.stderr).trim());
        assert!(text(&out.stderr).contains("skipped:"));
        return;
    }
    assert!(out.status.success(), "{}", text(&out.stderr));
    let expected = std::fs::read_to_string(traces().join("expected/munmap.out")).unwrap();
    assert_eq!(text(&out.stdout), expected);
}

/// Runs `mmun ARGS` with stdout going to `stdout`.
fn mmun_into(args: &[&str], stdout: std::process::Stdio) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mmun"))
        .args(args)
        .stdout(stdout)
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run mmun")
}

/// Every subcommand that prints, with arguments that make it print.
fn printing_commands() -> Vec<Vec<String>> {
    let script = traces().join("scripts/fork.txt").display().to_string();
    let recorded = traces().join("expected/fork.out").display().to_string();
    let altered = scratch_dir().join(format!("mmun-cli-out-{}.out", std::process::id()));
    let text = std::fs::read_to_string(&recorded).unwrap();
    std::fs::write(&altered, text.replacen("RC 0", "RC -1", 1)).unwrap();
    let altered = altered.display().to_string();
    let words = |s: &[&str]| s.iter().map(ToString::to_string).collect::<Vec<_>>();
    vec![
        words(&["replay", &script]),
        words(&["replay", "--events", &script]),
        words(&["diff", &script, "--against", &recorded]),
        words(&["diff", &script, "--against", &altered]),
        words(&["stress", "--ops", "300", "--quiet"]),
    ]
}

fn assert_write_error_reported(args: &[String], out: &Output, why: &str) {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?} into {why}: {stderr}");
    assert!(
        stderr.contains("writing stdout") && !stderr.contains("panicked"),
        "{args:?} into {why}: {stderr}"
    );
}

#[test]
fn output_into_a_closed_pipe_is_an_error_not_a_panic() {
    for args in printing_commands() {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let args_ref: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = mmun_into(&args_ref, writer.into());
        assert_write_error_reported(&args, &out, "a closed pipe");
    }
}

#[test]
fn output_onto_a_full_device_is_an_error_not_a_panic() {
    let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") else {
        eprintln!("skipped: no /dev/full");
        return;
    };
    for args in printing_commands() {
        let args_ref: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = mmun_into(&args_ref, full.try_clone().unwrap().into());
        assert_write_error_reported(&args, &out, "/dev/full");
    }
}

#[test]
fn binary_input_names_the_file_and_line() {
    let dir = scratch_dir().join(format!("mmun-cli-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join("blob.bin");
    std::fs::write(&bin, b"mmap 0 0x1000 rw\n\x7fELF\x02\x01\x01\x00\xff\xfe\n").unwrap();
    for args in [
        vec!["replay", bin.to_str().unwrap()],
        vec![
            "diff",
            traces().join("scripts/fork.txt").to_str().unwrap(),
            "--against",
            bin.to_str().unwrap(),
        ],
    ] {
        let out = mmun(&args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("blob.bin") && stderr.contains("line 2") && stderr.contains("binary"),
            "{stderr}"
        );
    }
}

#[test]
fn replay_leaves_the_window_as_the_oracle_does_and_models_finite_ram() {
    let dir = scratch_dir().join(format!("mmun-cli-ram-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let huge = dir.join("huge.txt");
    std::fs::write(&huge, "mmap 0 0x4000000000 rw populate\n").unwrap();
    let out = mmun(&["replay", huge.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr)
            .contains("step 1: mmap: [0x0, 0x0 + 0x4000000000) leaves the 0x100000000-byte window"),
        "{}",
        text(&out.stderr)
    );
    assert!(out.stdout.is_empty());

    let touch = dir.join("touch.txt");
    std::fs::write(&touch, "mmap 0 0x2000000 rw\ntouch 0 0x2000000 w\n").unwrap();
    let out = mmun(&["replay", "--memory-mib", "16", touch.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("touch.txt")
            && stderr.contains("line 2: `touch 0 0x2000000 w`: out of memory"),
        "{stderr}"
    );
    assert!(
        text(&out.stdout).starts_with("STEP 1 mmap"),
        "the steps before it are printed"
    );
    let out = mmun(&["replay", "--memory-mib", "64", touch.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let frag = dir.join("frag.txt");
    std::fs::write(&frag, "mmap 0 0x10000 rw\nmprotect 0x2000 0x1000 r\n").unwrap();
    let out = mmun(&["replay", "--max-map-count", "38", frag.to_str().unwrap()]);
    assert!(
        text(&out.stdout).ends_with("RC -12\n"),
        "{}",
        text(&out.stdout)
    );
    let out = mmun(&["replay", "--max-map-count", "40", frag.to_str().unwrap()]);
    assert!(
        text(&out.stdout).ends_with("RC 0\n"),
        "{}",
        text(&out.stdout)
    );
}

/// Where the test writes its files: cargo's per-target scratch directory
/// (`target/tmp`), so that nothing is left behind in the system's `/tmp`.
fn scratch_dir() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
}
