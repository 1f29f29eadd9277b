//! UCX's memory hooks and registration cache, measured by a small C
//! program (`c/ucx_bench.c`) that `mmun bench` compiles and runs where
//! Debian's `libucx-dev` is installed. It is never part of the default
//! build, and it runs in its own process: UCX patches libc when it loads.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const SOURCE: &str = include_str!("../c/ucx_bench.c");
const HEADER: &str = "/usr/include/ucs/memory/rcache.h";

/// The medians the C program printed, by name (`ucm_munmap_bare`,
/// `ucm_munmap_hooked`, `rcache_hit`, `rcache_miss`).
#[derive(Debug, Clone, Default)]
pub struct UcxFigures {
    /// Median nanoseconds by measurement name.
    pub ns: HashMap<String, f64>,
}

impl UcxFigures {
    /// One figure, if the program printed it.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.ns.get(name).copied()
    }
}

/// Compiles and runs the UCX program with `rounds` rounds. `Err` says why
/// it could not (no `libucx-dev`, no compiler, the program failed).
pub fn measure(rounds: usize) -> Result<UcxFigures, String> {
    if !Path::new(HEADER).exists() {
        return Err(format!(
            "UCX headers not installed ({HEADER}; Debian: apt install libucx-dev)"
        ));
    }
    let dir = scratch_dir()?;
    let src = dir.join("ucx_bench.c");
    let bin = dir.join("ucx_bench");
    std::fs::write(&src, SOURCE).map_err(|e| format!("writing {}: {e}", src.display()))?;
    let built = Command::new("cc")
        .args(["-O2", "-o"])
        .arg(&bin)
        .arg(&src)
        .args(["-lucs", "-lucm"])
        .output()
        .map_err(|e| format!("running cc: {e}"))?;
    if !built.status.success() {
        return Err(format!(
            "cc ucx_bench.c failed: {}",
            String::from_utf8_lossy(&built.stderr).trim()
        ));
    }
    let out = Command::new(&bin)
        .arg(rounds.to_string())
        // UCX's default (code patching) mode: the figure UCX users get.
        .env_remove("UCX_MEM_MMAP_HOOK_MODE")
        .env_remove("LD_PRELOAD")
        .output()
        .map_err(|e| format!("running {}: {e}", bin.display()))?;
    let _ = std::fs::remove_dir_all(&dir);
    if !out.status.success() {
        return Err(format!(
            "ucx_bench failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    parse(&String::from_utf8_lossy(&out.stdout))
}

/// `name value` lines.
fn parse(text: &str) -> Result<UcxFigures, String> {
    let mut figures = UcxFigures::default();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut words = line.split_whitespace();
        let (Some(name), Some(value), None) = (words.next(), words.next(), words.next()) else {
            return Err(format!("ucx_bench printed an unexpected line: {line:?}"));
        };
        let value: f64 = value
            .parse()
            .map_err(|_| format!("ucx_bench printed a non-number: {line:?}"))?;
        figures.ns.insert(name.to_owned(), value);
    }
    Ok(figures)
}

fn scratch_dir() -> Result<PathBuf, String> {
    let dir = std::env::temp_dir().join(format!("mmun-bench-ucx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_name_value_lines_and_rejects_others() {
        let f = parse("rcache_hit 44.61\nrcache_miss 851.0\n").unwrap();
        assert_eq!(f.get("rcache_hit"), Some(44.61));
        assert_eq!(f.get("rcache_miss"), Some(851.0));
        assert!(
            parse("rcache_hit fast\n")
                .unwrap_err()
                .contains("non-number")
        );
        assert!(parse("a 1 2\n").unwrap_err().contains("unexpected line"));
    }
}
