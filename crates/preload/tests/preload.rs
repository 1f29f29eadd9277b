//! The preload library on a separate C program: `LD_PRELOAD` installs the
//! hooks, the program subscribes through the C API and checks each change
//! (start before, end after) itself.

use std::path::PathBuf;
use std::process::Command;

fn preload_library() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    [
        deps.join("libmmun_preload.so"),
        deps.parent().unwrap().join("libmmun_preload.so"),
    ]
    .into_iter()
    .find(|p| p.exists())
    .expect("cargo builds the cdylib before the tests")
}

#[test]
fn a_c_program_under_ld_preload_sees_synchronous_invalidations() {
    let dir = std::env::temp_dir().join(format!("mmun-preload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join("scenarios");
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/c/scenarios.c");
    match Command::new("cc")
        .args(["-O1", "-Wall", "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
    {
        Ok(s) if s.success() => {}
        other => {
            eprintln!("SKIPPED: no working C compiler (`cc`): {other:?}");
            return;
        }
    }
    // Without the library the program says so (exit 77): the checks below
    // are the preload's doing.
    let bare = Command::new(&bin).output().unwrap();
    assert_eq!(
        bare.status.code(),
        Some(77),
        "{}",
        String::from_utf8_lossy(&bare.stdout)
    );

    let out = Command::new(&bin)
        .env("LD_PRELOAD", preload_library())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    for scenario in [
        "munmap",
        "madvise_dontneed",
        "mprotect",
        "mmap_fixed",
        "mremap_move",
        "free_64m",
    ] {
        assert!(
            stdout.contains(&format!("{scenario} ok")),
            "{scenario}: {stdout}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
