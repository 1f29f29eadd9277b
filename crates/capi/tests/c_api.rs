//! The C tests (`tests/c/run.sh`): the library cargo just built, installed
//! into a temporary prefix by `scripts/install-capi`, then every C test and
//! the C example built with gcc and pkg-config against it and run.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where cargo put `libmmun.so` and `libmmun.a` for this test.
fn built_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    [deps, deps.parent().unwrap()]
        .into_iter()
        .find(|d| d.join("libmmun.so").is_file() && d.join("libmmun.a").is_file())
        .expect("cargo builds libmmun.so and libmmun.a before the tests")
        .to_path_buf()
}

fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok()
}

#[test]
fn c_tests_pass_against_the_installed_library() {
    for tool in ["gcc", "pkg-config"] {
        if !have(tool) {
            eprintln!("SKIPPED: no {tool} (.ci/run installs it)");
            return;
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let work = std::env::temp_dir().join(format!("mmun-capi-{}", std::process::id()));
    let prefix = work.join("prefix");
    let install = Command::new(root.join("scripts/install-capi"))
        .arg("--prefix")
        .arg(&prefix)
        .arg("--from")
        .arg(built_dir())
        .output()
        .unwrap();
    assert!(
        install.status.success(),
        "install-capi: {}",
        String::from_utf8_lossy(&install.stderr)
    );
    let out = Command::new(root.join("crates/capi/tests/c/run.sh"))
        .arg(&prefix)
        .arg(work.join("build"))
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.ends_with("C tests ok\n"), "{stdout}");
    let _ = std::fs::remove_dir_all(&work);
}
