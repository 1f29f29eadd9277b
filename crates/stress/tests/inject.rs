//! Every injected bug is caught, within seconds: the oracle can fail.

use std::time::Duration;

use mmun_secondary::Bug;
use mmun_stress::{StressConfig, StressReport};

/// The most a run may take to catch a bug (it stops at the first
/// violation; they take milliseconds).
const LIMIT: f64 = 30.0;

fn catch(bug: Bug, seed: u64) -> StressReport {
    let config = StressConfig {
        seconds: Some(LIMIT),
        seed,
        inject: Some(bug),
        ..StressConfig::default()
    };
    mmun_stress::run(&config, |_| {}).unwrap()
}

#[test]
fn every_injected_bug_is_caught_within_seconds() {
    let mut times = Vec::new();
    let mut missed = Vec::new();
    for bug in Bug::ALL {
        let report = catch(bug, 1);
        match report.first_violation {
            Some((at, round)) => {
                eprintln!(
                    "{bug:<24} caught after {:>8.1} ms (round {round}, {} ops): {}",
                    at.as_secs_f64() * 1e3,
                    report.ops.total(),
                    report.violations[0]
                );
                assert!(
                    report
                        .violations
                        .iter()
                        .all(|v| v.secondary == bug.secondary()),
                    "{bug}: {:#?}",
                    report.violations
                );
                times.push((bug, at));
            }
            None => missed.push(bug),
        }
    }
    assert!(missed.is_empty(), "not caught in {LIMIT} s: {missed:?}");
    assert!(
        times
            .iter()
            .all(|(_, t)| *t < Duration::from_secs_f64(LIMIT))
    );
}

#[test]
fn a_caught_bug_comes_with_a_trace_that_replays() {
    let report = catch(Bug::NoSetSeq, 2);
    assert!(!report.is_clean());
    let trace = report.trace.as_ref().expect("a trace of the round");
    let text = report.violation_report(None);
    assert!(
        text.contains("seed 2") && text.contains("--inject no-set-seq"),
        "{text}"
    );
    let steps = mmun_script::parse_script(&text).expect("the trace is a script");
    assert!(!steps.is_empty() && steps.len() == trace.steps().count());
    assert_eq!(steps[0].text, "mmap 0 0x200000 rw fixed");
    // The steps run on the software MMU as they are.
    let reports = mmun_replay::replay(&steps).expect("the trace replays");
    assert_eq!(reports.len(), steps.len());
}
