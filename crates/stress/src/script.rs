//! Offsets in the script window, for writing the mutators' operations as
//! script lines (`Op`'s `Display`, `docs/script-format.md`) that
//! `mmun replay` runs again.

use mmun_script::WINDOW_BASE;

/// The offset in the script window of address `va`.
pub fn off(va: u64) -> u64 {
    va.wrapping_sub(WINDOW_BASE)
}
