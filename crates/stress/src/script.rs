//! Script lines (`docs/script-format.md`) for the operations of a trace, so
//! that the mutators' part of a trace runs again with `mmun replay`.

use std::fmt::Write;

use mmun_script::{Op, WINDOW_BASE};

/// The offset in the script window of address `va`.
pub fn off(va: u64) -> u64 {
    va.wrapping_sub(WINDOW_BASE)
}

/// `op` as one line of an address-space script.
pub fn line(op: &Op) -> String {
    let mut s = String::new();
    let _ = write_op(&mut s, op);
    s
}

fn write_op(s: &mut String, op: &Op) -> std::fmt::Result {
    match *op {
        Op::Mmap {
            off,
            len,
            prot,
            flags,
        } => {
            write!(s, "mmap {} {} {prot}", n(off), n(len))?;
            for (on, word) in [
                (flags.shared, "shared"),
                (flags.memfd, "memfd"),
                (flags.populate, "populate"),
                (flags.fixed, "fixed"),
            ] {
                if on {
                    write!(s, " {word}")?;
                }
            }
            Ok(())
        }
        Op::Touch { off, len, write } => {
            write!(
                s,
                "touch {} {} {}",
                n(off),
                n(len),
                if write { "w" } else { "r" }
            )
        }
        Op::Munmap { off, len } => write!(s, "munmap {} {}", n(off), n(len)),
        Op::Mprotect { off, len, prot } => write!(s, "mprotect {} {} {prot}", n(off), n(len)),
        Op::Madvise { off, len, advice } => {
            write!(s, "madvise {} {} {}", n(off), n(len), advice.name())
        }
        Op::Mremap {
            off,
            old_len,
            new_len,
            may_move,
            dont_unmap,
            new_off,
        } => {
            write!(s, "mremap {} {} {}", n(off), n(old_len), n(new_len))?;
            if may_move {
                s.push_str(" maymove");
            }
            if dont_unmap {
                s.push_str(" dontunmap");
            }
            if let Some(to) = new_off {
                write!(s, " {}", n(to))?;
            }
            Ok(())
        }
        Op::Fork => s.write_str("fork"),
        Op::Mlock { off, len } => write!(s, "mlock {} {}", n(off), n(len)),
        Op::Munlock { off, len } => write!(s, "munlock {} {}", n(off), n(len)),
        Op::SoftDirty => s.write_str("softdirty"),
        Op::Migrate { off, len } => write!(s, "migrate {} {}", n(off), n(len)),
        Op::MigrateDevice { off, len } => write!(s, "migrate_device {} {}", n(off), n(len)),
        Op::Ksm { off, len } => write!(s, "ksm {} {}", n(off), n(len)),
        Op::Exclusive { off, len } => write!(s, "exclusive {} {}", n(off), n(len)),
        Op::Age { off, len } => write!(s, "age {} {}", n(off), n(len)),
        Op::Reclaim { off, len } => write!(s, "reclaim {} {}", n(off), n(len)),
        Op::TestYoung { off } => write!(s, "test_young {}", n(off)),
        Op::OomReap => s.write_str("oom_reap"),
        Op::Exit => s.write_str("exit"),
    }
}

/// A number as scripts write it: `0`, or hex.
fn n(x: u64) -> String {
    if x == 0 {
        "0".to_owned()
    } else {
        format!("{x:#x}")
    }
}

#[cfg(test)]
mod tests {
    use mmun_script::{Advice, MmapFlags, Prot, parse_script};

    use super::*;

    #[test]
    fn every_line_parses_back_to_its_op() {
        let ops = [
            Op::Mmap {
                off: 0,
                len: 0x20_0000,
                prot: Prot::RW,
                flags: MmapFlags {
                    shared: true,
                    memfd: true,
                    populate: false,
                    fixed: true,
                },
            },
            Op::Touch {
                off: 0x1000,
                len: 0x3000,
                write: true,
            },
            Op::Munmap {
                off: 0,
                len: 0x1000,
            },
            Op::Mprotect {
                off: 0x1000,
                len: 0x1000,
                prot: Prot::NONE,
            },
            Op::Madvise {
                off: 0,
                len: 0x1000,
                advice: Advice::PageOut,
            },
            Op::Mremap {
                off: 0x1000,
                old_len: 0x2000,
                new_len: 0x2000,
                may_move: true,
                dont_unmap: false,
                new_off: Some(0x80_0000),
            },
            Op::Fork,
            Op::Migrate {
                off: 0,
                len: 0x1000,
            },
            Op::MigrateDevice {
                off: 0,
                len: 0x1000,
            },
            Op::Ksm {
                off: 0,
                len: 0x4000,
            },
            Op::Exclusive {
                off: 0,
                len: 0x1000,
            },
            Op::Age {
                off: 0,
                len: 0x1000,
            },
            Op::Reclaim {
                off: 0,
                len: 0x1000,
            },
            Op::OomReap,
            Op::Exit,
        ];
        let text: String = ops.iter().map(|op| line(op) + "\n").collect();
        let steps = parse_script(&text).unwrap();
        let parsed: Vec<Op> = steps.into_iter().map(|s| s.op).collect();
        assert_eq!(parsed, ops);
    }
}
