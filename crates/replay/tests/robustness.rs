//! No script makes the software MMU panic: random scripts of every
//! operation with hostile numbers (unaligned, zero, huge, wrapping) run to
//! the end, and every step reports an RC.

use mmun_replay::{ReplayError, Replayer};
use mmun_script::parse_script;
use proptest::prelude::*;

fn number() -> impl Strategy<Value = u64> {
    prop_oneof![
        (0u64..64).prop_map(|p| p * 0x1000),
        (0u64..8).prop_map(|p| p * 0x20_0000),
        0u64..0x5000,
        Just(u64::MAX),
        Just(u64::MAX - 0xfff),
        Just(1u64 << 47),
        any::<u64>(),
    ]
}

/// Lengths: small, up to 64 MiB, or invalid (huge, wrapping).
fn length() -> impl Strategy<Value = u64> {
    prop_oneof![
        (0u64..64).prop_map(|p| p * 0x1000),
        0u64..0x0400_0000,
        Just(u64::MAX),
        Just(u64::MAX - 0xfff),
        Just(1u64 << 47),
    ]
}

fn small_len() -> impl Strategy<Value = u64> {
    prop_oneof![
        (0u64..16).prop_map(|p| p * 0x1000),
        0u64..0x3000,
        Just(0x20_0000u64)
    ]
}

fn line() -> impl Strategy<Value = String> {
    let prot = prop_oneof![Just("r"), Just("rw"), Just("none"), Just("wx")];
    let advice = prop::sample::select(vec![
        "dontneed",
        "dontneed_locked",
        "free",
        "remove",
        "cold",
        "pageout",
        "willneed",
        "populate_read",
        "populate_write",
        "hugepage",
        "nohugepage",
        "collapse",
        "mergeable",
        "unmergeable",
        "dontfork",
        "dofork",
        "wipeonfork",
        "keeponfork",
    ]);
    let flags = prop::sample::select(vec![
        "",
        " shared",
        " shared memfd",
        " populate",
        " fixed",
        " memfd",
    ]);
    let range_op = prop::sample::select(vec![
        "munmap",
        "mlock",
        "munlock",
        "migrate",
        "migrate_device",
        "ksm",
        "age",
        "reclaim",
    ]);
    prop_oneof![
        (number(), small_len(), prot.clone(), flags)
            .prop_map(|(o, l, p, f)| format!("mmap {o:#x} {l:#x} {p}{f}")),
        (number(), small_len(), any::<bool>())
            .prop_map(|(o, l, w)| format!("touch {o:#x} {l:#x} {}", if w { "w" } else { "r" })),
        (range_op, number(), length()).prop_map(|(op, o, l)| format!("{op} {o:#x} {l:#x}")),
        (number(), length(), prot).prop_map(|(o, l, p)| format!("mprotect {o:#x} {l:#x} {p}")),
        (number(), length(), advice).prop_map(|(o, l, a)| format!("madvise {o:#x} {l:#x} {a}")),
        (
            number(),
            length(),
            length(),
            any::<bool>(),
            proptest::option::of(number())
        )
            .prop_map(|(o, a, b, m, n)| {
                let mut s = format!("mremap {o:#x} {a:#x} {b:#x}");
                if m {
                    s.push_str(" maymove");
                }
                if let Some(n) = n {
                    s.push_str(&format!(" {n:#x}"));
                }
                s
            }),
        (number(), small_len()).prop_map(|(o, l)| format!("exclusive {o:#x} {l:#x}")),
        number().prop_map(|o| format!("test_young {o:#x}")),
        Just(String::from("fork")),
        Just(String::from("softdirty")),
        Just(String::from("oom_reap")),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, .. ProptestConfig::default() })]

    #[test]
    fn hostile_scripts_run_to_the_end(lines in prop::collection::vec(line(), 1..40), exit in any::<bool>()) {
        let mut text = lines.join("\n");
        if exit {
            text.push_str("\nexit\nmmap 0 0x1000 rw\n");
        }
        let steps = parse_script(&text).expect("generated lines are well-formed");
        // Step by step, so that the steps after one that leaves the window
        // still run: only the window rule may refuse a step, and the RAM
        // (1 GiB) exceeds what the small touches can fault in.
        let replayer = Replayer::new();
        for step in &steps {
            match replayer.step(step) {
                Ok(trace) => prop_assert_eq!(trace.report.number, step.number),
                Err(ReplayError::OutsideWindow(e)) => {
                    prop_assert!(step.check_window().is_err(), "{}", e);
                }
                Err(other) => prop_assert!(false, "{}: {}", step.text, other),
            }
        }
    }
}
