//! The window rule: every range a step names lies inside the 4 GiB window
//! at [`WINDOW_BASE`](crate::WINDOW_BASE). The kernel oracle cannot run a
//! step outside it; the software MMU refuses the same steps with the same
//! words, so that a script that one side rejects, the other rejects too.

use std::fmt;

use crate::step::{Op, Step, WINDOW_SIZE};

/// A step whose range leaves the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowError {
    /// 1-based step number.
    pub step: usize,
    /// The operation's name.
    pub op: &'static str,
    /// The range's offset.
    pub off: u64,
    /// The range's length.
    pub len: u64,
}

/// Word for word what `mmun oracle` says (`mmun_oracle::OracleError::Step`
/// with the range detail of its `exec::run_step`).
impl fmt::Display for WindowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (off, len) = (self.off, self.len);
        write!(
            f,
            "step {}: {}: [{off:#x}, {off:#x} + {len:#x}) leaves the {WINDOW_SIZE:#x}-byte window",
            self.step, self.op
        )
    }
}

impl std::error::Error for WindowError {}

/// Whether `[off, off + len)` lies in the window.
fn inside(off: u64, len: u64) -> bool {
    off.checked_add(len).is_some_and(|end| end <= WINDOW_SIZE)
}

/// The ranges a step names, in the order the oracle checks them.
fn ranges(op: &Op) -> Vec<(&'static str, u64, u64)> {
    match *op {
        Op::Mmap { off, len, .. } => vec![("mmap", off, len)],
        Op::Touch { off, len, .. } => vec![("touch", off, len)],
        Op::Munmap { off, len } => vec![("munmap", off, len)],
        Op::Mprotect { off, len, .. } => vec![("mprotect", off, len)],
        Op::Madvise { off, len, .. } => vec![("madvise", off, len)],
        Op::Mremap {
            off,
            old_len,
            new_len,
            new_off,
            ..
        } => {
            let mut out = vec![("mremap", off, old_len)];
            out.extend(new_off.map(|to| ("mremap", to, new_len)));
            out
        }
        Op::Mlock { off, len } => vec![("mlock", off, len)],
        Op::Munlock { off, len } => vec![("munlock", off, len)],
        Op::Migrate { off, len } => vec![("migrate", off, len)],
        Op::MigrateDevice { off, len } => vec![("migrate_device", off, len)],
        Op::Ksm { off, len } => vec![("ksm", off, len)],
        Op::Exclusive { off, len } => vec![("exclusive", off, len)],
        Op::Age { off, len } => vec![("age", off, len)],
        Op::Reclaim { off, len } => vec![("reclaim", off, len)],
        Op::TestYoung { off } => vec![("test_young", off, 1)],
        Op::Fork | Op::SoftDirty | Op::OomReap | Op::Exit => Vec::new(),
    }
}

impl Step {
    /// Checks that every range the step names lies in the window.
    ///
    /// # Errors
    ///
    /// [`WindowError`] for the first range that leaves it.
    pub fn check_window(&self) -> Result<(), WindowError> {
        match ranges(&self.op)
            .into_iter()
            .find(|&(_, off, len)| !inside(off, len))
        {
            None => Ok(()),
            Some((op, off, len)) => Err(WindowError {
                step: self.number,
                op,
                off,
                len,
            }),
        }
    }
}

/// Checks a whole script before anything runs.
///
/// # Errors
///
/// [`WindowError`] for the first step that leaves the window.
pub fn check_window(steps: &[Step]) -> Result<(), WindowError> {
    steps.iter().try_for_each(Step::check_window)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_script;

    #[test]
    fn ranges_leaving_the_window_are_named_as_the_oracle_names_them() {
        let steps = parse_script("mmap 0 0x1000 rw\nmmap 0 0x4000000000 rw populate\n").unwrap();
        let err = check_window(&steps).unwrap_err();
        assert_eq!(
            err.to_string(),
            "step 2: mmap: [0x0, 0x0 + 0x4000000000) leaves the 0x100000000-byte window"
        );
        let edge =
            parse_script("touch 0xfffff000 0x1000\nmremap 0 0x1000 0x2000 0xfffff000").unwrap();
        assert!(steps[0].check_window().is_ok() && edge[0].check_window().is_ok());
        assert_eq!(edge[1].check_window().unwrap_err().op, "mremap");
        let wrap = parse_script("munmap 0xffffffffffffffff 2").unwrap();
        assert!(wrap[0].check_window().is_err());
        assert!(
            parse_script("test_young 0x100000000").unwrap()[0]
                .check_window()
                .is_err()
        );
    }
}
