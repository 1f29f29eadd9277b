//! The operations the kernel drives from the page's side, which the kernel
//! oracle cannot trigger: migration, device migration, KSM, device
//! exclusive, aging, reclaim, test_young, the OOM reaper and exit (spec
//! §2.7, §2.8, §2.9, §2.12, §2.14). Each test checks the whole callback
//! stream: event, range, blockability, owner, and pairing.

use mmun_core::Event;
use mmun_replay::{Callback, Replayer, device_owner};
use mmun_script::{WINDOW_BASE, parse_script};

const B: u64 = WINDOW_BASE;

/// Runs `setup` then `op`; returns the callbacks of `op` and its RC line.
fn stream(setup: &str, op: &str) -> (Vec<Callback>, String) {
    let replayer = Replayer::new();
    for step in parse_script(setup).unwrap() {
        replayer.step(&step).unwrap();
    }
    let step = &parse_script(op).unwrap()[0];
    let trace = replayer.step(step).unwrap();
    (trace.callbacks, trace.report.outcome.to_string())
}

fn start(event: Event, s: u64, e: u64) -> Callback {
    Callback::Start {
        event,
        start: B + s,
        end: B + e,
        blockable: true,
        owner: None,
    }
}

fn starts(calls: &[Callback]) -> Vec<Callback> {
    calls
        .iter()
        .filter(|c| matches!(c, Callback::Start { .. }))
        .cloned()
        .collect()
}

/// Every start is followed by its end before the next start at this depth.
fn assert_paired(calls: &[Callback]) {
    let mut open = Vec::new();
    for call in calls {
        match call {
            Callback::Start { start, end, .. } => open.push((*start, *end)),
            Callback::End { start, end } => {
                assert_eq!(open.pop(), Some((*start, *end)), "{calls:#?}")
            }
            _ => {}
        }
    }
    assert!(open.is_empty(), "unended ranges in {calls:#?}");
}

#[test]
fn migration_clears_each_anonymous_page_and_remaps_silently() {
    let (calls, rc) = stream("mmap 0 0x4000 rw\ntouch 0 0x2000 w\n", "migrate 0 0x4000");
    assert_eq!(rc, "RC 2");
    assert_eq!(
        starts(&calls),
        vec![
            start(Event::Clear, 0, 0x1000),
            start(Event::Clear, 0x1000, 0x2000)
        ]
    );
    assert_paired(&calls);
}

#[test]
fn a_huge_page_migrates_under_one_clear_of_its_2mib() {
    let (calls, _) = stream(
        "mmap 0x200000 0x200000 rw\nmadvise 0x200000 0x200000 hugepage\ntouch 0x200000 0x1000 w\n",
        "migrate 0x200000 0x200000",
    );
    assert_eq!(
        starts(&calls),
        vec![start(Event::Clear, 0x200000, 0x400000)]
    );
}

#[test]
fn device_migration_is_one_migrate_range_with_the_owner() {
    let (calls, rc) = stream(
        "mmap 0 0x4000 rw\ntouch 0 0x4000 w\n",
        "migrate_device 0x1000 0x2000",
    );
    assert_eq!(rc, "RC 2");
    let owner = Some(device_owner());
    assert_eq!(
        starts(&calls),
        vec![Callback::Start {
            event: Event::Migrate,
            start: B + 0x1000,
            end: B + 0x3000,
            blockable: true,
            owner
        }]
    );
    assert_paired(&calls);
}

fn migrate(s: u64, e: u64) -> Callback {
    Callback::Start {
        event: Event::Migrate,
        start: B + s,
        end: B + e,
        blockable: true,
        owner: Some(device_owner()),
    }
}

/// `migrate_vma_pages`: empty entries of an anonymous VMA migrate too (a
/// fresh device page each), under a second `Migrate` range with the owner
/// from the first of them to the end of the request.
#[test]
fn device_migration_fills_holes_under_a_second_migrate_range() {
    let (calls, rc) = stream(
        "mmap 0 0x4000 rw
touch 0 0x1000 w
",
        "migrate_device 0 0x4000",
    );
    assert_eq!(rc, "RC 4");
    assert_eq!(
        starts(&calls),
        vec![migrate(0, 0x4000), migrate(0x1000, 0x4000)]
    );
    assert_paired(&calls);
}

/// test_hmm's loop is per VMA: the first VMA migrates under its own
/// range, and the page without a VMA after it ends the request (`EINVAL`,
/// so nothing past the hole is touched).
#[test]
fn device_migration_goes_vma_by_vma_and_stops_at_a_hole() {
    let setup =
        "mmap 0 0x1000 rw\nmmap 0x2000 0x1000 rw\ntouch 0 0x1000 w\ntouch 0x2000 0x1000 w\n";
    let (calls, rc) = stream(setup, "migrate_device 0 0x3000");
    assert_eq!(rc, "RC 1");
    assert_eq!(starts(&calls), vec![migrate(0, 0x1000)]);
    assert_paired(&calls);
}

#[test]
fn ksm_write_protects_every_page_then_replaces_all_but_the_first() {
    let (calls, rc) = stream("mmap 0 0x3000 rw\ntouch 0 0x3000 w\n", "ksm 0 0x3000");
    assert_eq!(rc, "RC 3");
    assert_eq!(
        starts(&calls),
        vec![
            start(Event::Clear, 0, 0x1000),
            start(Event::Clear, 0x1000, 0x2000),
            start(Event::Clear, 0x1000, 0x2000),
            start(Event::Clear, 0x2000, 0x3000),
            start(Event::Clear, 0x2000, 0x3000),
        ]
    );
    // change_pte comes inside a covering Clear (the 2012 nesting rule).
    let mut covering = None;
    for call in &calls {
        match call {
            Callback::Start { start, end, .. } => covering = Some((*start, *end)),
            Callback::End { .. } => covering = None,
            Callback::ChangePte { addr, .. } => {
                let (s, e) = covering.expect("change_pte outside a range");
                assert!(s <= *addr && *addr < e);
            }
            _ => {}
        }
    }
    assert_paired(&calls);
    // A write to a KSM page copies it under a Clear of the page.
    let replayer = Replayer::new();
    for step in parse_script("mmap 0 0x2000 rw\ntouch 0 0x2000 w\nksm 0 0x2000\n").unwrap() {
        replayer.step(&step).unwrap();
    }
    let write = replayer
        .step(&parse_script("touch 0x1000 0x1000 w").unwrap()[0])
        .unwrap();
    assert_eq!(
        starts(&write.callbacks),
        vec![start(Event::Clear, 0x1000, 0x2000)]
    );
}

#[test]
fn device_exclusive_then_cpu_access_reverts_with_clear_and_no_owner() {
    let (calls, rc) = stream(
        "mmap 0 0x2000 rw\ntouch 0 0x2000 w\n",
        "exclusive 0x1000 0x1000",
    );
    assert_eq!(rc, "RC 0");
    let owner = Some(device_owner());
    assert_eq!(
        starts(&calls),
        vec![Callback::Start {
            event: Event::Exclusive,
            start: B + 0x1000,
            end: B + 0x2000,
            blockable: true,
            owner
        }]
    );
    let replayer = Replayer::new();
    for step in
        parse_script("mmap 0 0x2000 rw\ntouch 0 0x2000 w\nexclusive 0x1000 0x1000\n").unwrap()
    {
        replayer.step(&step).unwrap();
    }
    let cpu = replayer
        .step(&parse_script("touch 0x1000 0x1000 r").unwrap()[0])
        .unwrap();
    assert_eq!(
        starts(&cpu.callbacks),
        vec![start(Event::Clear, 0x1000, 0x2000)]
    );
    assert!(
        replayer.space().translate(B + 0x1000).is_some(),
        "the CPU has the page back"
    );
}

#[test]
fn exclusive_on_a_read_only_mapping_is_einval() {
    let (calls, rc) = stream("mmap 0 0x1000 r\n", "exclusive 0 0x1000");
    assert_eq!(rc, "RC -22");
    assert!(calls.is_empty());
}

#[test]
fn aging_asks_every_present_page_with_clear_young() {
    let (calls, rc) = stream("mmap 0 0x4000 rw\ntouch 0x1000 0x2000 w\n", "age 0 0x4000");
    assert_eq!(rc, "RC 2", "both pages were young in the primary");
    assert_eq!(
        calls,
        vec![
            Callback::ClearYoung {
                start: B + 0x1000,
                end: B + 0x2000
            },
            Callback::ClearYoung {
                start: B + 0x2000,
                end: B + 0x3000
            },
        ]
    );
    let (again, rc) = stream(
        "mmap 0 0x4000 rw\ntouch 0x1000 0x2000 w\nage 0 0x4000\n",
        "age 0 0x4000",
    );
    assert_eq!(rc, "RC 0", "aged pages are old until touched again");
    assert_eq!(again.len(), 2, "the secondaries are asked all the same");
}

#[test]
fn reclaim_asks_with_clear_flush_young_and_unmaps_only_what_it_can_drop() {
    let (calls, rc) = stream("mmap 0 0x2000 rw\ntouch 0 0x2000 w\n", "reclaim 0 0x2000");
    assert_eq!(rc, "RC 0", "dirty anonymous memory cannot go without swap");
    assert!(
        calls
            .iter()
            .all(|c| matches!(c, Callback::ClearFlushYoung { .. }))
    );
    let (calls, rc) = stream(
        "mmap 0 0x2000 rw\ntouch 0 0x2000 w\nmadvise 0 0x1000 free\n",
        "reclaim 0 0x2000",
    );
    assert_eq!(rc, "RC 1", "the lazily freed page goes");
    assert_eq!(starts(&calls), vec![start(Event::Clear, 0, 0x1000)]);
    assert_paired(&calls);
}

#[test]
fn test_young_reaches_the_secondaries() {
    let (calls, _) = stream(
        "mmap 0 0x1000 rw\ntouch 0 0x1000 w\nage 0 0x1000\n",
        "test_young 0",
    );
    assert_eq!(calls, vec![Callback::TestYoung { addr: B }]);
}

#[test]
fn the_oom_reaper_unmaps_each_private_vma_non_blockably_from_the_top() {
    let setup = "mmap 0 0x1000 rw\nmmap 0x10000 0x1000 r\nmmap 0x20000 0x1000 rw shared\ntouch 0 0x1000 w\n";
    let (calls, rc) = stream(setup, "oom_reap");
    assert_eq!(rc, "RC 0");
    let nonblock = |s: u64, e: u64| Callback::Start {
        event: Event::Unmap,
        start: B + s,
        end: B + e,
        blockable: false,
        owner: None,
    };
    assert_eq!(
        starts(&calls),
        vec![nonblock(0x10000, 0x11000), nonblock(0, 0x1000)],
        "shared VMAs are skipped"
    );
    assert_paired(&calls);
}

#[test]
fn exit_releases_the_list_notifier_which_then_sees_nothing() {
    let (calls, rc) = stream("mmap 0 0x1000 rw\ntouch 0 0x1000 w\n", "exit");
    assert_eq!(rc, "RC 0");
    assert_eq!(calls, vec![Callback::Release]);
}

static REFUSES_NONBLOCK: mmun_core::NotifierOps<()> = mmun_core::NotifierOps {
    invalidate_range_start: Some(mmun_core::StartFn::Fallible(|_, range| {
        if range.is_blockable() {
            Ok(())
        } else {
            Err(mmun_core::WouldBlock)
        }
    })),
    ..mmun_core::NotifierOps::EMPTY
};

/// §2.14: a subscriber that would sleep refuses the reaper's non-blockable
/// range; the VMA is skipped with no end and its pages stay, and the reaper
/// gives up after its retries. Other notifiers that got the start get their
/// end (§5 #12).
#[test]
fn the_oom_reaper_skips_a_vma_a_subscriber_refuses() {
    let replayer = Replayer::new();
    for step in parse_script("mmap 0 0x1000 rw\ntouch 0 0x1000 w\n").unwrap() {
        replayer.step(&step).unwrap();
    }
    let refuser = mmun_core::Notifier::register(replayer.mm(), &REFUSES_NONBLOCK, ()).unwrap();
    let trace = replayer
        .step(&parse_script("oom_reap").unwrap()[0])
        .unwrap();
    assert_eq!(trace.report.outcome.to_string(), "RC -11");
    let nonblock = Callback::Start {
        event: Event::Unmap,
        start: B,
        end: B + 0x1000,
        blockable: false,
        owner: None,
    };
    let tries = mmun_softmmu::oom_kill::MAX_OOM_REAP_RETRIES;
    assert_eq!(
        starts(&trace.callbacks),
        vec![nonblock; tries],
        "one refused start per pass"
    );
    assert_paired(&trace.callbacks);
    assert!(
        replayer.space().translate(B).is_some(),
        "the refused VMA keeps its page"
    );
    assert!(
        replayer.mm().warnings().is_empty(),
        "a non-blockable refusal is legitimate"
    );
    drop(refuser);
    assert!(
        replayer.space().oom_reap(),
        "without the refuser the reaper succeeds"
    );
    assert!(replayer.space().translate(B).is_none());
}

#[test]
fn migration_keeps_a_prot_none_page_inaccessible() {
    let replayer = Replayer::new();
    let setup = "mmap 0 0x1000 rw\ntouch 0 0x1000 w\nmprotect 0 0x1000 none\n";
    for step in parse_script(setup).unwrap() {
        replayer.step(&step).unwrap();
    }
    let space = replayer.space();
    let (before, _) = space.mapped_frame(B).expect("mapped, PROT_NONE");
    assert_eq!(space.migrate(B, B + 0x1000), 1);
    let (after, _) = space.mapped_frame(B).expect("still mapped after migration");
    assert_ne!(before, after, "the page moved");
    assert_eq!(space.translate(B), None, "PROT_NONE survives migration");
}
