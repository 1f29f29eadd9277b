//! End to end with real data: threads `READ_FIXED` a file of known
//! contents into cached fixed buffers while other threads `munmap`,
//! `mmap(MAP_FIXED)` over, `mremap`, `MADV_DONTNEED`, `free` and allocate
//! the same memory again; every byte must be where the buffer's virtual
//! address says. With the cache ignoring invalidations (an injected bug)
//! bytes land in the old pages and the same check sees them missing.
//!
//! `MMUN_URING_E2E_SECS=60 cargo test --release -p mmun-uring --test e2e`
//! runs the clean churn longer.

mod common;

use std::time::Duration;

use common::{PatternFile, cache_or_skip, churn};
use mmun_secondary::Bug;
use mmun_uring::UringConfig;

fn seconds() -> Duration {
    let secs = std::env::var("MMUN_URING_E2E_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    Duration::from_secs(secs)
}

/// A small table, so that eviction and slot reuse happen too.
fn config() -> UringConfig {
    UringConfig {
        slots: 64,
        max_regions: 32,
        ..UringConfig::default()
    }
}

#[test]
fn reads_land_at_the_virtual_address_under_churn() {
    let Some(cache) = cache_or_skip("reads_land_at_the_virtual_address_under_churn", config())
    else {
        return;
    };
    let file = PatternFile::new("clean", 1 << 20);
    let report = churn(&cache, &file, 3, 2, seconds(), false);
    eprintln!("{report:?}");
    assert_eq!(report.lost, 0, "bytes lost or misplaced: {report:?}");
    assert!(
        report.ios > 1000,
        "too few reads to mean anything: {report:?}"
    );
    assert!(report.mutations > 100, "too few changes: {report:?}");
    assert!(
        report.invalidations > 0 && report.registrations > 10,
        "the churn never invalidated a registration: {report:?}"
    );
}

#[test]
fn a_cache_that_ignores_invalidations_loses_data_within_seconds() {
    let config = UringConfig {
        bug: Some(Bug::KeepStaleRegistration),
        ..config()
    };
    let Some(cache) = cache_or_skip("a_cache_that_ignores_invalidations_loses_data", config) else {
        return;
    };
    let file = PatternFile::new("bug", 1 << 20);
    let report = churn(&cache, &file, 3, 2, Duration::from_secs(20), true);
    eprintln!("{report:?}");
    assert!(report.lost > 0, "the stale cache lost nothing: {report:?}");
    assert!(
        report.elapsed < Duration::from_secs(10),
        "caught only after {:?}",
        report.elapsed
    );
}
