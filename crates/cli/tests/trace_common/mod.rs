//! What the `mmun trace` test binaries share.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// Lossy UTF-8 of a program's output.
pub fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// The preload library (`libmmun.so`) cargo built for this test (a
/// dev-dependency).
pub fn preload() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_mmun")).parent().unwrap();
    [bin.join("deps/libmmun.so"), bin.join("libmmun.so")]
        .into_iter()
        .find(|p| p.is_file())
        .expect("libmmun.so is built as a dev-dependency of mmun-cli")
}
