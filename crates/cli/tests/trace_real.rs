//! `mmun trace --verify-with-kernel` on real programs no one here wrote:
//! every invalidation Linux made inside their system calls was delivered
//! (0 missed). Skips (with a message) where root, KVM or tracefs is
//! missing, or the program is not installed. The kernel trace buffer is
//! global: the runs take the oracle's lock, one at a time.

use std::path::Path;
use std::process::{Command, Output};

mod trace_common;
use trace_common::{preload, text};

fn installed(program: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs CMD under `mmun trace -q --verify-with-kernel`; checks the program
/// succeeded, the kernel made invalidations, and none was missed.
fn verify_zero_missed(test: &str, cmd: &[&str]) {
    if !installed(cmd[0]) {
        eprintln!("{test}: skipped: {} is not installed", cmd[0]);
        return;
    }
    let out: Output = Command::new(env!("CARGO_BIN_EXE_mmun"))
        .args(["trace", "-q", "--verify-with-kernel", "--"])
        .args(cmd)
        .env("MMUN_PRELOAD", preload())
        .output()
        .expect("run mmun trace");
    let trace = text(&out.stderr);
    if out.status.code() == Some(77) {
        eprintln!("{test}: skipped: {}", trace.trim());
        return;
    }
    eprintln!("{test}:\n{trace}");
    assert_eq!(out.status.code(), Some(0), "{test}: {trace}");
    let count = |name: &str| -> usize {
        trace
            .lines()
            .find_map(|l| l.trim().strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no `{name}` count: {trace}"))
    };
    assert!(
        count("covered") > 0,
        "{test}: some invalidations are covered: {trace}"
    );
    assert_eq!(count("MISSED"), 0, "{test}: {trace}");
}

/// Debian's python3 (its modules are built in). A python that loads
/// extension modules (`.so`, e.g. pyenv's build) hits the ld.so gap below.
#[test]
fn python_allocating_and_freeing_large_objects() {
    verify_zero_missed(
        "python_allocating_and_freeing_large_objects",
        &[
            "/usr/bin/python3",
            "-c",
            "a = [bytearray(10**7) for _ in range(8)]\ndel a\nb = bytes(5 * 10**7)\ndel b\nc = [str(i) * 50 for i in range(200000)]\ndel c\nprint('ok')",
        ],
    );
}

#[test]
fn sqlite_with_mmap_io() {
    let db = std::env::temp_dir().join(format!("mmun-trace-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&db);
    let sql = "PRAGMA mmap_size=268435456; CREATE TABLE t(a); \
               WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<20000) \
               INSERT INTO t SELECT randomblob(1000) FROM c; \
               SELECT count(*), sum(length(a)) FROM t; DELETE FROM t; VACUUM;";
    verify_zero_missed(
        "sqlite_with_mmap_io",
        &["sqlite3", db.to_str().unwrap(), sql],
    );
    let _ = std::fs::remove_file(&db);
}

#[test]
fn a_c_compiler_run() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/trace_prog.c");
    let out = std::env::temp_dir().join(format!("mmun-trace-cc-{}", std::process::id()));
    verify_zero_missed(
        "a_c_compiler_run",
        &[
            "cc",
            "-O2",
            src.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ],
    );
    let _ = std::fs::remove_file(&out);
}

/// fork(), _Fork(), clone() with and without CLONE_VM, vfork(),
/// posix_spawn() and system() from a parent with 64 MiB of written
/// private memory (`tests/c/copies.c`): the copies' write-protects are
/// covered, the shared-memory ones change nothing.
#[test]
fn every_way_of_making_a_process() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/copies.c");
    let bin = std::env::temp_dir().join(format!("mmun-copies-{}", std::process::id()));
    let built = Command::new("cc")
        .args(["-O2", "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
        .expect("cc (gcc) is installed by .ci/run");
    assert!(built.success(), "cc {}", src.display());
    verify_zero_missed("every_way_of_making_a_process", &[bin.to_str().unwrap()]);
    let _ = std::fs::remove_file(&bin);
}

/// Debian's python3 importing extension modules, which are `.so` files
/// `ld.so` maps, protects (RELRO) and relocates inside `dlopen`.
#[test]
fn python_importing_extension_modules() {
    verify_zero_missed(
        "python_importing_extension_modules",
        &[
            "python3",
            "-c",
            "import _ctypes, decimal, sqlite3, _bz2, _lzma, mmap; print(decimal.Decimal(1) / 7)",
        ],
    );
}

#[test]
fn perl_building_and_dropping_strings() {
    verify_zero_missed(
        "perl_building_and_dropping_strings",
        &[
            "perl",
            "-e",
            "my @a = map { 'x' x 100000 } 1 .. 300; undef @a; my %h = map { $_ => [1 .. 100] } 1 .. 20000; undef %h; print qq(ok\\n);",
        ],
    );
}
