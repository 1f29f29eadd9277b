//! The library as `LD_PRELOAD` on a separate C program that does not link
//! it: loading installs the hooks, the program registers through the C API
//! (looked up at run time) and checks each change (start before, end
//! after) itself.

use std::path::PathBuf;
use std::process::Command;

/// `libmmun.so` as cargo built it (installed, `libmmun_preload.so` is a
/// symlink to it).
fn preload_library() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    [
        deps.join("libmmun.so"),
        deps.parent().unwrap().join("libmmun.so"),
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
        .arg(concat!("-I", env!("CARGO_MANIFEST_DIR"), "/include"))
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

/// The fork protocol on a real program: bash forks a subshell per command
/// substitution while it has a list notifier (subscribed through the C API
/// by a second preloaded library) and the global SRCU domain's worker
/// thread. Each child exits, releasing the notifier state it inherited; a
/// child that inherited the parent's SRCU state unrepaired (a worker marked
/// spawned but absent, the queue lock held) hung there at exit.
#[test]
fn bash_command_substitutions_with_a_list_notifier_do_not_hang() {
    let dir = scratch_dir().join(format!("mmun-preload-bash-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let preload = preload_library();
    let preload_dir = preload.parent().unwrap();
    let shim = dir.join("liblist_subscriber.so");
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/c/list_subscriber.c");
    // Linked against the library, so the dynamic loader runs its
    // constructor (which installs the hooks) before the shim's.
    match Command::new("cc")
        .args(["-shared", "-fPIC", "-Wall", "-o"])
        .arg(&shim)
        .arg(&src)
        .arg(concat!("-I", env!("CARGO_MANIFEST_DIR"), "/include"))
        .arg(format!("-L{}", preload_dir.display()))
        .arg("-l:libmmun.so")
        .arg(format!("-Wl,-rpath,{}", preload_dir.display()))
        .status()
    {
        Ok(s) if s.success() => {}
        other => {
            eprintln!("SKIPPED: no working C compiler (`cc`): {other:?}");
            return;
        }
    }
    if Command::new("bash").arg("-c").arg("true").status().is_err() {
        eprintln!("SKIPPED: no bash");
        return;
    }
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(r#"for i in 1 2 3 4 5 6 7 8; do x=$(echo hi); y=$( (echo a) ); done; echo "$x$y""#)
        .env(
            "LD_PRELOAD",
            format!("{}:{}", preload.display(), shim.display()),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A hang detector, not a speed check: the script takes milliseconds.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "bash hung for 30 s (a fork child stuck in mmun's SRCU state?)\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert_eq!(stdout, "hia\n", "{stderr}");
}

/// Where the test writes its files: cargo's per-target scratch directory
/// (`target/tmp`), so that nothing is left behind in the system's `/tmp`.
fn scratch_dir() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
}
