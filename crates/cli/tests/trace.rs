//! `mmun trace` end to end on a small C program (`tests/c/trace_prog.c`)
//! under the preload library: every call it makes appears with its exact
//! range, forks are followed, the program's output and exit status are its
//! own. The `--verify-with-kernel` tests skip (with a message) where root,
//! KVM or tracefs is missing; they share the machine's trace buffer and
//! take the oracle's lock, so they run one at a time.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

mod trace_common;
use trace_common::{preload, text};

/// The C program, compiled once per test run.
fn prog() -> &'static Path {
    static PROG: OnceLock<PathBuf> = OnceLock::new();
    PROG.get_or_init(|| {
        let dir = scratch_dir().join(format!("mmun-trace-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("trace_prog");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/trace_prog.c");
        let cc = Command::new("cc")
            .arg("-O1")
            .arg(&src)
            .arg("-o")
            .arg(&out)
            .output()
            .expect("cc (gcc) is installed by .ci/run");
        assert!(cc.status.success(), "cc: {}", text(&cc.stderr));
        out
    })
}

fn mmun_trace(args: &[&str], cmd: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mmun"))
        .arg("trace")
        .args(args)
        .arg("--")
        .args(cmd)
        .env("MMUN_PRELOAD", preload())
        .output()
        .expect("run mmun trace")
}

/// `NAME START END` lines of the program's stdout.
fn calls(stdout: &str) -> Vec<(String, u64, u64)> {
    stdout
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let (name, s, e) = (w.next()?, w.next()?, w.next()?);
            Some((
                name.to_string(),
                u64::from_str_radix(s, 16).ok()?,
                u64::from_str_radix(e, 16).ok()?,
            ))
        })
        .collect()
}

fn pid_of(stdout: &str, who: &str) -> u32 {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(who)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `{who}` line in {stdout}"))
}

#[test]
fn every_call_of_the_program_is_traced_with_its_range() {
    let out = mmun_trace(&[], &[prog().to_str().unwrap()]);
    let (stdout, trace) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(7),
        "the program's exit status: {trace}"
    );
    assert!(
        !stdout.contains(" start "),
        "the trace stays off the program's stdout"
    );
    let (parent, child) = (pid_of(&stdout, "parent "), pid_of(&stdout, "child "));
    for (name, s, e) in calls(&stdout) {
        let (pid, call, event) = match name.as_str() {
            "munmap" => (parent, "munmap", "UNMAP"),
            "madvise" => (parent, "madvise", "CLEAR"),
            "mprotect" => (parent, "mprotect", "PROTECTION_VMA"),
            "child-munmap" => (child, "munmap", "UNMAP"),
            other => panic!("unexpected {other}"),
        };
        for phase in ["start", "end"] {
            let found = trace.lines().any(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                w.len() == 7
                    && w[1].starts_with(&format!("{pid}/"))
                    && w[2] == phase
                    && w[3] == event
                    && w[4] == "hook"
                    && w[5] == format!("{s:#x}-{e:#x}")
                    && w[6] == call
            });
            assert!(
                found,
                "{phase} of {name} [{s:#x}, {e:#x}) in pid {pid} not traced:\n{trace}"
            );
        }
    }
    assert!(
        trace.contains("invalidations delivered"),
        "summary: {trace}"
    );
}

#[test]
fn json_lines_and_the_summary_agree() {
    let out = mmun_trace(&["--json"], &[prog().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(7));
    let lines: Vec<serde_json::Value> = text(&out.stderr)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    let starts = lines.iter().filter(|v| v["phase"] == "start").count() as u64;
    let summary = &lines.last().expect("lines")["summary"];
    assert_eq!(summary["invalidations"].as_u64(), Some(starts), "{summary}");
    let munmaps = lines
        .iter()
        .filter(|v| v["phase"] == "start" && v["call"] == "munmap" && v["source"] == "hook")
        .count() as u64;
    assert_eq!(
        summary["by_event"]["UNMAP"]["hook"]
            .as_u64()
            .map(|n| n >= munmaps),
        Some(true)
    );
    assert!(munmaps >= 3, "{munmaps} munmap starts");
}

#[test]
fn execs_are_followed() {
    let script = format!("{} && true", prog().display());
    let out = mmun_trace(&[], &["/bin/sh", "-c", &script]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    let parent = pid_of(&text(&out.stdout), "parent ");
    assert!(
        text(&out.stderr)
            .lines()
            .any(|l| l.contains(&format!(" {parent}/")) && l.contains(" munmap")),
        "the exec'd program's calls are traced: {}",
        text(&out.stderr)
    );
}

#[test]
fn a_missing_command_is_a_clear_error() {
    let out = mmun_trace(&[], &["no-such-command-mmun"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("no-such-command-mmun: command not found"),
        "{}",
        text(&out.stderr)
    );
    let out = mmun_trace(&[], &["/no/such/file"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("/no/such/file: no such executable file"));
}

/// Runs `mmun trace --verify-with-kernel`; `None` (skipped) where the
/// kernel side cannot run.
fn verify(test: &str, extra: &[&str], cmd: &[&str]) -> Option<Output> {
    let mut args = vec!["--verify-with-kernel"];
    args.extend_from_slice(extra);
    let out = mmun_trace(&args, cmd);
    if out.status.code() == Some(77) {
        eprintln!("{test}: skipped: {}", text(&out.stderr).trim());
        return None;
    }
    Some(out)
}

#[test]
fn the_kernel_sees_nothing_the_hooks_missed() {
    let Some(out) = verify(
        "the_kernel_sees_nothing_the_hooks_missed",
        &["-q"],
        &[prog().to_str().unwrap()],
    ) else {
        return;
    };
    let trace = text(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{trace}");
    let covered: usize = count(&trace, "covered");
    assert!(
        covered >= 4,
        "the four calls with populated pages are covered: {trace}"
    );
    assert_eq!(count(&trace, "MISSED"), 0, "{trace}");
}

#[test]
fn a_raw_syscall_is_reported_missed_and_fails_the_run() {
    let Some(out) = verify(
        "a_raw_syscall_is_reported_missed_and_fails_the_run",
        &["-q"],
        &[prog().to_str().unwrap(), "raw"],
    ) else {
        return;
    };
    let (stdout, trace) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(1),
        "exit 1 on a missed invalidation: {trace}"
    );
    let (_, s, e) = calls(&stdout)
        .into_iter()
        .find(|c| c.0 == "raw-munmap")
        .unwrap();
    assert!(
        trace.contains(&format!("MISSED: pid {} ", pid_of(&stdout, "parent ")))
            && trace.contains(&format!("in munmap [{s:#x}, {e:#x})")),
        "{trace}"
    );
}

/// The number after `name` on its summary line (`  covered   12`).
fn count(trace: &str, name: &str) -> usize {
    trace
        .lines()
        .find_map(|l| {
            let l = l.trim();
            let rest = l.strip_prefix(name)?;
            rest.trim().parse().ok()
        })
        .unwrap_or_else(|| panic!("no `{name}` count in {trace}"))
}

/// The traced command asks UCX for its GOT-hooking mode, which coexists
/// with the hooks (`mmun_linux::patch::foreign`), unless the user chose.
#[test]
fn the_traced_command_asks_ucx_for_reloc_mode_unless_the_user_chose() {
    let echo = ["sh", "-c", "echo mode=$UCX_MEM_MMAP_HOOK_MODE"];
    let unset = mmun_trace(&["-q"], &echo);
    assert!(unset.status.success(), "{}", text(&unset.stderr));
    assert_eq!(text(&unset.stdout).trim(), "mode=reloc");
    let chosen = Command::new(env!("CARGO_BIN_EXE_mmun"))
        .args(["trace", "-q", "--"])
        .args(echo)
        .env("MMUN_PRELOAD", preload())
        .env("UCX_MEM_MMAP_HOOK_MODE", "bistro")
        .output()
        .expect("run mmun trace");
    assert_eq!(text(&chosen.stdout).trim(), "mode=bistro");
}

/// Where the test writes its files: cargo's per-target scratch directory
/// (`target/tmp`), so that nothing is left behind in the system's `/tmp`.
fn scratch_dir() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
}
