//! A machine with finite RAM: what each kind of call does when no frame is
//! left, as Linux 6.18 does it (`MAP_POPULATE` keeps the mapping, `mlock`
//! says `EAGAIN`, `MADV_POPULATE_*` `ENOMEM`, `MADV_COLLAPSE` `ENOMEM`, a
//! THP fault falls back to base pages, a CPU fault is an OOM kill), and
//! the window rule the kernel oracle applies.

use std::sync::Arc;
use std::time::Instant;

use mmun_replay::{ReplayError, Replayer, replay_report};
use mmun_script::{Outcome, parse_script};
use mmun_softmmu::Memory;
use mmun_softmmu::frame::FrameKind;

const MIB: u64 = 1 << 20;

/// Runs `script` on a machine with `mib` MiB; the RC of every step, or the
/// error that stopped the run.
fn run(mib: u64, script: &str) -> (Vec<Outcome>, Option<ReplayError>) {
    let replayer = Replayer::with_memory(Arc::new(Memory::with_bytes(mib * MIB)));
    let mut outcomes = Vec::new();
    for step in parse_script(script).unwrap() {
        match replayer.step(&step) {
            Ok(trace) => outcomes.push(trace.report.outcome),
            Err(e) => return (outcomes, Some(e)),
        }
    }
    (outcomes, None)
}

#[test]
fn a_range_outside_the_window_is_refused_as_the_oracle_refuses_it() {
    let steps = parse_script("mmap 0 0x1000 rw\nmmap 0 0x4000000000 rw populate\n").unwrap();
    let started = Instant::now();
    let err = replay_report(&steps).unwrap_err();
    assert_eq!(
        err.to_string(),
        "step 2: mmap: [0x0, 0x0 + 0x4000000000) leaves the 0x100000000-byte window"
    );
    // Refused before anything ran (a 256 GiB populate would take minutes).
    assert!(started.elapsed().as_secs() < 5);
}

#[test]
fn populate_that_runs_out_keeps_the_mapping() {
    // 8 MiB of RAM, a 64 MiB MAP_POPULATE: mmap succeeds (mm_populate's
    // errors are ignored) and the mapping is there to unmap.
    let (rcs, err) = run(8, "mmap 0 0x4000000 rw populate\nmunmap 0 0x4000000\n");
    assert_eq!(err, None);
    assert_eq!(rcs, [Outcome::Rc(0), Outcome::Rc(0)]);
}

#[test]
fn mlock_that_runs_out_is_eagain_and_madv_populate_enomem() {
    let script = "mmap 0 0x4000000 rw\nmlock 0 0x4000000\nmunlock 0 0x4000000\n\
                  madvise 0 0x4000000 dontneed\nmadvise 0 0x4000000 populate_write\n\
                  mprotect 0 0x4000000 none\nmlock 0 0x1000\n";
    let (rcs, err) = run(8, script);
    assert_eq!(err, None);
    let eagain = Outcome::Rc(-11);
    let enomem = Outcome::Rc(-12);
    assert_eq!(rcs[1], eagain, "mlock without memory");
    assert_eq!(rcs[4], enomem, "MADV_POPULATE_WRITE without memory");
    assert_eq!(
        rcs[6], enomem,
        "mlock of PROT_NONE is still ENOMEM (EFAULT from GUP)"
    );
}

#[test]
fn a_touch_that_runs_out_is_an_oom_kill_naming_the_line() {
    let script = "mmap 0 0x4000000 rw\n# comment\ntouch 0 0x4000000 w\nmunmap 0 0x1000\n";
    let (rcs, err) = run(8, script);
    assert_eq!(rcs, [Outcome::Rc(0)]);
    let err = err.expect("the touch cannot complete in 8 MiB");
    let text = err.to_string();
    assert!(
        matches!(err, ReplayError::OutOfMemory { line: 3, .. })
            && text.starts_with("line 3: `touch 0 0x4000000 w`: out of memory")
            && text.contains("8 MiB")
            && text.contains("OOM killer"),
        "{text}"
    );
}

#[test]
fn a_thp_fault_without_a_huge_page_falls_back_to_base_pages() {
    // THP wants 2 MiB blocks; with 3 MiB of RAM the first fault gets one,
    // the next 2 MiB block's faults get base pages instead of failing.
    let script = "mmap 0 0x400000 rw\nmadvise 0 0x400000 hugepage\n\
                  touch 0 0x1000 w\ntouch 0x200000 0x4000 w\n";
    let (rcs, err) = run(3, script);
    assert_eq!(err, None, "{rcs:?}");
    assert_eq!(rcs, [Outcome::Rc(0); 4]);
}

#[test]
fn collapse_without_a_huge_page_is_enomem() {
    let script = "mmap 0 0x200000 rw\nmadvise 0 0x200000 nohugepage\ntouch 0 0x100000 w\n\
                  madvise 0 0x200000 hugepage\nmadvise 0 0x200000 collapse\n";
    let (rcs, err) = run(2, script);
    assert_eq!(err, None);
    assert_eq!(rcs[4], Outcome::Rc(-12), "SCAN_ALLOC_HUGE_PAGE_FAIL");
    let (rcs, _) = run(64, script);
    assert_eq!(rcs[4], Outcome::Rc(0), "with memory for it, it collapses");
}

#[test]
fn memory_holds_exactly_its_frames_and_compacts_for_huge_pages() {
    let memory = Memory::with_bytes(4 * MIB); // 1024 frames, the zero page one of them
    let small: Vec<_> = std::iter::from_fn(|| memory.alloc(FrameKind::Anon)).collect();
    assert_eq!(small.len(), 1023);
    assert_eq!(memory.alloc_huge(FrameKind::Anon), None);
    for pfn in small {
        memory.put(pfn);
    }
    // Freed base pages become a huge page again (compaction), and a free
    // huge page gives base pages.
    let a = memory.alloc_huge(FrameKind::Anon).expect("compaction");
    assert_eq!(a % 512, 0);
    assert!(
        memory.alloc_huge(FrameKind::Anon).is_none(),
        "frames 1..511 are not aligned"
    );
    memory.put(a);
    let frames: Vec<_> = std::iter::from_fn(|| memory.alloc(FrameKind::Anon)).collect();
    assert_eq!(frames.len(), 1023);
}

#[test]
fn collapse_takes_read_only_ptes_but_needs_an_anon_vma_and_a_pmd_block() {
    // 6.18 dropped SCAN_PAGE_RO: read-only PTEs collapse (recorded:
    // kernel-traces/recorded collapse-results step 4).
    let script = "mmap 0 0x200000 rw\ntouch 0 0x200000 w\nmprotect 0 0x200000 r\n\
                  madvise 0 0x200000 collapse\n";
    let (rcs, _) = run(64, script);
    assert_eq!(rcs[3], Outcome::Rc(0), "read-only PTEs collapse");
    // Zero pages only, in a VMA never written: no anon_vma, so
    // thp_vma_allowable_order refuses the VMA (EINVAL); with an anon_vma
    // the same block collapses.
    let (rcs, _) = run(
        64,
        "mmap 0 0x200000 r\ntouch 0 0x200000 r\nmadvise 0 0x200000 collapse\n",
    );
    assert_eq!(rcs[2], Outcome::Rc(-22), "no anon_vma");
    let (rcs, _) = run(
        64,
        "mmap 0 0x400000 rw\ntouch 0x200000 0x1000 w\ntouch 0 0x200000 r\nmadvise 0 0x200000 collapse\n",
    );
    assert_eq!(rcs[3], Outcome::Rc(0), "zero pages with an anon_vma");
    // thp_vma_allowable_order: a VMA with no aligned 2 MiB block in it is
    // refused whatever range is named, even one with no whole block.
    let (rcs, _) = run(
        64,
        "mmap 0 0x1ff000 rw\ntouch 0 0x1000 w\nmadvise 0 0x1000 collapse\n\
                            mmap 0x400000 0x200000 rw\ntouch 0x400000 0x1000 w\n\
                            madvise 0x400000 0x1000 collapse\n",
    );
    assert_eq!(rcs[2], Outcome::Rc(-22));
    assert_eq!(
        rcs[5],
        Outcome::Rc(0),
        "a 2 MiB VMA fits a block; no whole block named"
    );
}
