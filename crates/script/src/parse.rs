//! Script text → steps, with errors that name the line.

use crate::step::{Advice, MmapFlags, Op, Prot, Step};
use crate::text::quote;

/// Why a script did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong, naming the offending word.
    pub message: String,
}

/// Parses a whole script. Blank lines and lines whose first word starts
/// with `#` are skipped; every other line is one step.
pub fn parse_script(text: &str) -> Result<Vec<Step>, ParseError> {
    let mut steps = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let words: Vec<&str> = raw.split_whitespace().collect();
        if words.is_empty() || words[0].starts_with('#') {
            continue;
        }
        let op = parse_op(&words).map_err(|message| ParseError { line, message })?;
        steps.push(Step {
            number: steps.len() + 1,
            line,
            text: words.join(" "),
            op,
        });
    }
    Ok(steps)
}

type Parsed<T> = Result<T, String>;

fn parse_op(words: &[&str]) -> Parsed<Op> {
    let (name, args) = (words[0], &words[1..]);
    let op = match name {
        "mmap" => parse_mmap(args)?,
        "touch" => parse_touch(args)?,
        "munmap" => {
            let [off, len] = fixed_args::<2>(name, args, "OFF LEN")?;
            Op::Munmap { off, len }
        }
        "mprotect" => {
            expect_count(name, args, 3, 3, "OFF LEN PROT")?;
            Op::Mprotect {
                off: number(args[0])?,
                len: number(args[1])?,
                prot: prot(args[2])?,
            }
        }
        "madvise" => {
            expect_count(name, args, 3, 3, "OFF LEN ADVICE")?;
            let advice = Advice::from_name(args[2])
                .ok_or_else(|| format!("unknown advice {}", quote(args[2])))?;
            Op::Madvise {
                off: number(args[0])?,
                len: number(args[1])?,
                advice,
            }
        }
        "mremap" => parse_mremap(args)?,
        "fork" => {
            expect_count(name, args, 0, 0, "")?;
            Op::Fork
        }
        "mlock" | "munlock" => {
            let [off, len] = fixed_args::<2>(name, args, "OFF LEN")?;
            if name == "mlock" {
                Op::Mlock { off, len }
            } else {
                Op::Munlock { off, len }
            }
        }
        "softdirty" => {
            expect_count(name, args, 0, 0, "")?;
            Op::SoftDirty
        }
        "migrate" | "migrate_device" | "ksm" | "exclusive" | "age" | "reclaim" => {
            let [off, len] = fixed_args::<2>(name, args, "OFF LEN")?;
            match name {
                "migrate" => Op::Migrate { off, len },
                "migrate_device" => Op::MigrateDevice { off, len },
                "ksm" => Op::Ksm { off, len },
                "exclusive" => Op::Exclusive { off, len },
                "age" => Op::Age { off, len },
                _ => Op::Reclaim { off, len },
            }
        }
        "test_young" => {
            let [off] = fixed_args::<1>(name, args, "OFF")?;
            Op::TestYoung { off }
        }
        "oom_reap" | "exit" => {
            expect_count(name, args, 0, 0, "")?;
            if name == "exit" {
                Op::Exit
            } else {
                Op::OomReap
            }
        }
        other => return Err(format!("unknown operation {}", quote(other))),
    };
    Ok(op)
}

fn parse_mmap(args: &[&str]) -> Parsed<Op> {
    expect_count(
        "mmap",
        args,
        3,
        7,
        "OFF LEN PROT [shared] [memfd] [populate] [fixed]",
    )?;
    let mut flags = MmapFlags::default();
    for word in &args[3..] {
        let slot = match *word {
            "shared" => &mut flags.shared,
            "memfd" => &mut flags.memfd,
            "populate" => &mut flags.populate,
            "fixed" => &mut flags.fixed,
            other => return Err(format!("unknown mmap flag {}", quote(other))),
        };
        if *slot {
            return Err(format!("mmap flag {} given twice", quote(word)));
        }
        *slot = true;
    }
    Ok(Op::Mmap {
        off: number(args[0])?,
        len: number(args[1])?,
        prot: prot(args[2])?,
        flags,
    })
}

fn parse_touch(args: &[&str]) -> Parsed<Op> {
    expect_count("touch", args, 2, 3, "OFF LEN [r|w]")?;
    let write = match args.get(2) {
        None | Some(&"r") => false,
        Some(&"w") => true,
        Some(other) => {
            return Err(format!(
                "touch mode must be `r` or `w`, not {}",
                quote(other)
            ));
        }
    };
    Ok(Op::Touch {
        off: number(args[0])?,
        len: number(args[1])?,
        write,
    })
}

fn parse_mremap(args: &[&str]) -> Parsed<Op> {
    expect_count(
        "mremap",
        args,
        3,
        6,
        "OFF OLDLEN NEWLEN [maymove] [dontunmap] [NEWOFF]",
    )?;
    let (mut may_move, mut dont_unmap, mut new_off) = (false, false, None);
    for word in &args[3..] {
        match *word {
            "maymove" => may_move = true,
            "dontunmap" => dont_unmap = true,
            other if new_off.is_none() => new_off = Some(number(other)?),
            other => {
                return Err(format!(
                    "unexpected mremap word {} (NEWOFF already given)",
                    quote(other)
                ));
            }
        }
    }
    Ok(Op::Mremap {
        off: number(args[0])?,
        old_len: number(args[1])?,
        new_len: number(args[2])?,
        may_move,
        dont_unmap,
        new_off,
    })
}

fn expect_count(name: &str, args: &[&str], min: usize, max: usize, usage: &str) -> Parsed<()> {
    if (min..=max).contains(&args.len()) {
        return Ok(());
    }
    let usage = if usage.is_empty() {
        String::from("no arguments")
    } else {
        format!("`{name} {usage}`")
    };
    Err(format!(
        "`{name}` takes {usage}, got {} argument(s)",
        args.len()
    ))
}

fn fixed_args<const N: usize>(name: &str, args: &[&str], usage: &str) -> Parsed<[u64; N]> {
    expect_count(name, args, N, N, usage)?;
    let mut out = [0; N];
    for (slot, word) in out.iter_mut().zip(args) {
        *slot = number(word)?;
    }
    Ok(out)
}

/// A C-style unsigned number (`strtoul(s, 0, 0)` without its leniency):
/// `0x` hex, leading-`0` octal, or decimal; the whole word must be a number
/// that fits in 64 bits.
fn number(word: &str) -> Parsed<u64> {
    let (digits, radix) =
        if let Some(hex) = word.strip_prefix("0x").or_else(|| word.strip_prefix("0X")) {
            (hex, 16)
        } else if word.len() > 1 && word.starts_with('0') {
            (&word[1..], 8)
        } else {
            (word, 10)
        };
    if digits.is_empty() || digits.starts_with(['+', '-']) {
        return Err(format!("{} is not a number", quote(word)));
    }
    u64::from_str_radix(digits, radix).map_err(|e| match e.kind() {
        std::num::IntErrorKind::PosOverflow => format!("{} does not fit in 64 bits", quote(word)),
        _ => format!("{} is not a number", quote(word)),
    })
}

fn prot(word: &str) -> Parsed<Prot> {
    if word == "none" {
        return Ok(Prot::NONE);
    }
    let mut prot = Prot::NONE;
    for letter in word.chars() {
        let slot = match letter {
            'r' => &mut prot.read,
            'w' => &mut prot.write,
            'x' => &mut prot.exec,
            _ => {
                return Err(format!(
                    "protection {} must be `none` or letters from `rwx`",
                    quote(word)
                ));
            }
        };
        *slot = true;
    }
    if word.is_empty() {
        return Err(String::from("empty protection"));
    }
    Ok(prot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_operation_and_keeps_the_words() {
        let text = "# c\n\nmmap 0x1000 4096 rw shared memfd populate fixed\ntouch 0 0x2000 w\n\
                    munmap 0 010\nmprotect 0 0x1000 none\nmadvise 0 0x1000 dontneed_locked\n\
                    mremap 0 0x1000 0x2000 maymove dontunmap 0x5000\nfork\nmlock 0 1\nmunlock 0 1\nsoftdirty\n";
        let steps = parse_script(text).unwrap();
        assert_eq!(steps.len(), 10);
        assert_eq!(steps[0].line, 3);
        assert_eq!(
            steps[0].text,
            "mmap 0x1000 4096 rw shared memfd populate fixed"
        );
        assert_eq!(steps[2].op, Op::Munmap { off: 0, len: 8 });
        assert_eq!(
            steps[5].op,
            Op::Mremap {
                off: 0,
                old_len: 0x1000,
                new_len: 0x2000,
                may_move: true,
                dont_unmap: true,
                new_off: Some(0x5000)
            }
        );
    }

    #[test]
    fn errors_name_the_line_and_the_word() {
        let cases = [
            ("mmap 0 0x1000", "line 1: `mmap` takes"),
            ("mmap 0 0x1000 rq", "protection `rq`"),
            ("mmap 0 0x1000 rw huge", "unknown mmap flag `huge`"),
            ("\n\ntouch 0 0x1000 x", "line 3: touch mode"),
            ("munmap 0x10000000000000000 1", "does not fit in 64 bits"),
            ("munmap 0xZZ 1", "`0xZZ` is not a number"),
            ("madvise 0 1 sleep", "unknown advice `sleep`"),
            ("frobnicate", "unknown operation `frobnicate`"),
            ("fork now", "`fork` takes no arguments"),
            ("mremap 0 1 2 3 4", "NEWOFF already given"),
        ];
        for (text, expected) in cases {
            let err = parse_script(text).unwrap_err().to_string();
            assert!(err.contains(expected), "{text:?}: {err}");
        }
    }

    #[test]
    fn a_huge_word_is_cut_in_the_message() {
        let text = format!("fork\nmunmap 0 {}\n", "9".repeat(10_000_000));
        let err = parse_script(&text).unwrap_err().to_string();
        assert!(
            err.starts_with("line 2: `9999") && err.len() < 120,
            "{}",
            &err[..err.len().min(200)]
        );
        assert!(err.contains("(10000000 bytes)"), "{err}");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
            let _ = parse_script(&text);
        }

        #[test]
        fn arbitrary_words_never_panic(words in proptest::collection::vec("[a-z0-9x_]{0,8}", 0..8)) {
            let _ = parse_script(&words.join(" "));
        }
    }
}
