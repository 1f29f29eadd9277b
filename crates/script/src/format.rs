//! Writing an [`Op`] back as a script line: the inverse of the parser, so
//! a program that drives an address space (the stress harness) can record
//! what it did as a script `mmun replay` runs again.

use std::fmt;

use crate::step::Op;

/// A number as scripts write it: `0`, or hex.
struct Num(u64);

impl fmt::Display for Num {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            f.write_str("0")
        } else {
            write!(f, "{:#x}", self.0)
        }
    }
}

/// The words after the op name that follow only when set.
fn flag_words(f: &mut fmt::Formatter<'_>, words: &[(bool, &str)]) -> fmt::Result {
    for (on, word) in words {
        if *on {
            write!(f, " {word}")?;
        }
    }
    Ok(())
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Op::Mmap {
                off,
                len,
                prot,
                flags,
            } => {
                write!(f, "mmap {} {} {prot}", Num(off), Num(len))?;
                let words = [
                    (flags.shared, "shared"),
                    (flags.memfd, "memfd"),
                    (flags.populate, "populate"),
                    (flags.fixed, "fixed"),
                ];
                flag_words(f, &words)
            }
            Op::Touch { off, len, write } => {
                let access = if write { "w" } else { "r" };
                write!(f, "touch {} {} {access}", Num(off), Num(len))
            }
            Op::Mprotect { off, len, prot } => {
                write!(f, "mprotect {} {} {prot}", Num(off), Num(len))
            }
            Op::Madvise { off, len, advice } => {
                write!(f, "madvise {} {} {}", Num(off), Num(len), advice.name())
            }
            Op::Mremap {
                off,
                old_len,
                new_len,
                may_move,
                dont_unmap,
                new_off,
            } => {
                write!(f, "mremap {} {} {}", Num(off), Num(old_len), Num(new_len))?;
                flag_words(f, &[(may_move, "maymove"), (dont_unmap, "dontunmap")])?;
                match new_off {
                    Some(to) => write!(f, " {}", Num(to)),
                    None => Ok(()),
                }
            }
            Op::TestYoung { off } => write!(f, "test_young {}", Num(off)),
            Op::Fork => f.write_str("fork"),
            Op::SoftDirty => f.write_str("softdirty"),
            Op::OomReap => f.write_str("oom_reap"),
            Op::Exit => f.write_str("exit"),
            Op::Munmap { off, len }
            | Op::Mlock { off, len }
            | Op::Munlock { off, len }
            | Op::Migrate { off, len }
            | Op::MigrateDevice { off, len }
            | Op::Ksm { off, len }
            | Op::Exclusive { off, len }
            | Op::Age { off, len }
            | Op::Reclaim { off, len } => {
                write!(f, "{} {} {}", self.range_op_name(), Num(off), Num(len))
            }
        }
    }
}

impl Op {
    /// The script word of the ops that take only an offset and a length.
    fn range_op_name(&self) -> &'static str {
        match self {
            Op::Munmap { .. } => "munmap",
            Op::Mlock { .. } => "mlock",
            Op::Munlock { .. } => "munlock",
            Op::Migrate { .. } => "migrate",
            Op::MigrateDevice { .. } => "migrate_device",
            Op::Ksm { .. } => "ksm",
            Op::Exclusive { .. } => "exclusive",
            Op::Age { .. } => "age",
            Op::Reclaim { .. } => "reclaim",
            _ => unreachable!("not a range-only op: {self:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use crate::parse_script;
    use crate::step::{Advice, MmapFlags, Op, Prot};

    fn offset() -> impl Strategy<Value = u64> {
        (0..0x1_0000u64).prop_map(|page| page * 0x1000)
    }

    fn prot() -> impl Strategy<Value = Prot> {
        (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(read, write, exec)| Prot {
            read,
            write,
            exec,
        })
    }

    fn range_op() -> impl Strategy<Value = Op> {
        (0..9usize, offset(), offset()).prop_map(|(kind, off, len)| match kind {
            0 => Op::Munmap { off, len },
            1 => Op::Mlock { off, len },
            2 => Op::Munlock { off, len },
            3 => Op::Migrate { off, len },
            4 => Op::MigrateDevice { off, len },
            5 => Op::Ksm { off, len },
            6 => Op::Exclusive { off, len },
            7 => Op::Age { off, len },
            _ => Op::Reclaim { off, len },
        })
    }

    fn op() -> impl Strategy<Value = Op> {
        let flags = (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
            |(shared, memfd, populate, fixed)| MmapFlags {
                shared,
                memfd,
                populate,
                fixed,
            },
        );
        prop_oneof![
            (offset(), offset(), prot(), flags).prop_map(|(off, len, prot, flags)| Op::Mmap {
                off,
                len,
                prot,
                flags
            }),
            (offset(), offset(), any::<bool>()).prop_map(|(off, len, write)| Op::Touch {
                off,
                len,
                write
            }),
            (offset(), offset(), prot()).prop_map(|(off, len, prot)| Op::Mprotect {
                off,
                len,
                prot
            }),
            (offset(), offset(), 0..Advice::ALL.len()).prop_map(|(off, len, i)| Op::Madvise {
                off,
                len,
                advice: Advice::ALL[i].0
            }),
            (
                offset(),
                offset(),
                offset(),
                any::<bool>(),
                any::<bool>(),
                proptest::option::of(offset())
            )
                .prop_map(|(off, old_len, new_len, may_move, dont_unmap, new_off)| {
                    Op::Mremap {
                        off,
                        old_len,
                        new_len,
                        may_move,
                        dont_unmap,
                        new_off,
                    }
                }),
            offset().prop_map(|off| Op::TestYoung { off }),
            range_op(),
            Just(Op::Fork),
            Just(Op::SoftDirty),
            Just(Op::OomReap),
            Just(Op::Exit),
        ]
    }

    proptest! {
        #[test]
        fn every_op_parses_back_from_its_line(ops in prop::collection::vec(op(), 1..20)) {
            let text: String = ops.iter().map(|op| format!("{op}\n")).collect();
            let parsed: Vec<Op> = parse_script(&text)
                .map_err(|e| TestCaseError::fail(format!("{e} in\n{text}")))?
                .into_iter()
                .map(|step| step.op)
                .collect();
            prop_assert_eq!(parsed, ops);
        }
    }
}
