//! The device's page table and its counters: what the device lock guards.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use mmun_softmmu::Translation;

use crate::secondary::Counters;

/// One entry of the device page table (test_hmm's xarray entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevicePte {
    /// The frame life the device uses and whether it may write it.
    pub translation: Translation,
    /// Held through a device-exclusive entry of the primary (test_hmm's
    /// `ATOMIC` tag): the CPU cannot reach the page until it takes it back.
    pub exclusive: bool,
}

/// What the device lock guards.
#[derive(Debug, Default)]
pub(super) struct Table {
    /// Virtual page → device PTE.
    pub(super) ptes: BTreeMap<u64, DevicePte>,
    /// `Release` was delivered: the address space is going away.
    pub(super) released: bool,
    /// Bumped whenever the device itself changes its table outside the
    /// notifier protocol (its own migrations, whose `Migrate` range it
    /// skips and so never `set_seq`s; `close`, which removes the
    /// subscriptions): a fault that read it before its walk must retry if
    /// it changed.
    pub(super) generation: u64,
}

impl Table {
    /// Removes the PTEs of the pages overlapping `[start, end)`; returns
    /// how many there were.
    pub(super) fn zap(&mut self, start: u64, end: u64) -> usize {
        if start >= end {
            return 0;
        }
        let doomed: Vec<u64> = self.ptes.range(start..end).map(|(&va, _)| va).collect();
        for va in &doomed {
            self.ptes.remove(va);
        }
        doomed.len()
    }

    /// Drops everything for good (`Release`).
    pub(super) fn release(&mut self) -> usize {
        self.released = true;
        let zapped = self.ptes.len();
        self.ptes.clear();
        zapped
    }
}

/// Counts beyond the common [`Counters`], for tests and reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MirrorStats {
    /// `Migrate`/`Exclusive` ranges skipped as the device's own.
    pub skipped: u64,
    /// Non-blockable ranges refused because the device lock was busy.
    pub refused: u64,
    /// Device PTEs removed by invalidations.
    pub zapped: u64,
    /// Accesses that found the primary's page table busy and backed off.
    pub busy: u64,
    /// Pages the device mapped through its own migrations.
    pub migrated: u64,
}

/// The device's counters; relaxed atomics, read for reports only.
#[derive(Debug, Default)]
pub(super) struct Counts {
    pub(super) faults: AtomicU64,
    pub(super) retries: AtomicU64,
    pub(super) invalidations: AtomicU64,
    pub(super) hits: AtomicU64,
    pub(super) misses: AtomicU64,
    pub(super) skipped: AtomicU64,
    pub(super) refused: AtomicU64,
    pub(super) zapped: AtomicU64,
    pub(super) busy: AtomicU64,
    pub(super) migrated: AtomicU64,
}

/// Adds one to a counter.
pub(super) fn bump(counter: &AtomicU64) {
    add(counter, 1);
}

/// Adds `n` to a counter.
pub(super) fn add(counter: &AtomicU64, n: usize) {
    counter.fetch_add(n as u64, Ordering::Relaxed);
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl Counts {
    pub(super) fn counters(&self) -> Counters {
        Counters {
            faults: get(&self.faults),
            retries: get(&self.retries),
            invalidations: get(&self.invalidations),
            hits: get(&self.hits),
            misses: get(&self.misses),
        }
    }

    pub(super) fn stats(&self) -> MirrorStats {
        MirrorStats {
            skipped: get(&self.skipped),
            refused: get(&self.refused),
            zapped: get(&self.zapped),
            busy: get(&self.busy),
            migrated: get(&self.migrated),
        }
    }
}
