//! A run of the correct secondaries: the oracle finds nothing, and every
//! kind of operation ran.

use mmun_stress::{OpKind, StressConfig};

#[test]
fn correct_secondaries_survive_every_kind_of_operation() {
    let config = StressConfig {
        ops: Some(400_000),
        seed: 0x5eed,
        round_ops: 60,
        ..StressConfig::default()
    };
    let mut calls = 0;
    let report = mmun_stress::run(&config, |_| calls += 1).unwrap();
    eprintln!("{report}");
    assert!(report.is_clean(), "{}", report.violation_report(Some(40)));
    for kind in OpKind::ALL {
        assert!(report.ops[kind] > 0, "no {kind} ran:\n{report}");
    }
    assert!(report.ops.total() >= 400_000);
    // Each round's settle after exit has every accessor run its share of
    // operations (500, unless the 50 ms bound ends it first) into the
    // released secondaries; they are counted apart, out of the live rate.
    let settled = (report.rounds - 1) * config.accessors as u64 * 250;
    assert!(report.after_exit >= settled, "{report}");
    assert!(report.live_rate() < report.total_rate());
    assert!(report.rounds > 1 && calls > 0);
    assert!(report.trace.is_none() && report.first_violation.is_none());
    for s in &report.secondaries {
        let c = s.counters;
        assert!(
            c.faults > 0 && c.hits > 0 && c.invalidations > 0,
            "{}: {c}",
            s.name
        );
    }
}

#[test]
fn a_bad_configuration_is_refused() {
    let config = StressConfig {
        accessors: 0,
        ..StressConfig::default()
    };
    let err = mmun_stress::run(&config, |_| {}).unwrap_err();
    assert!(err.to_string().contains("accessors"), "{err}");
}
