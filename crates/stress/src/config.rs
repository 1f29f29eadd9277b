//! What a run is asked to do.

use std::time::Duration;

use mmun_secondary::Bug;

/// How long `mmun stress` runs when given neither `seconds` nor `ops`.
pub const DEFAULT_SECONDS: f64 = 10.0;

/// The most mutator operations a round may have: a round's address space,
/// its secondaries' state and its threads' records live until the round
/// exits, so a round must end within a bounded amount of memory.
pub const MAX_ROUND_OPS: u64 = 1_000_000;

/// The parameters of a run.
#[derive(Debug, Clone)]
pub struct StressConfig {
    /// Stop after this long (wall clock).
    pub seconds: Option<f64>,
    /// Stop after about this many operations of every kind.
    pub ops: Option<u64>,
    /// Seeds every thread's choices.
    pub seed: u64,
    /// Threads that access and fault through the secondaries.
    pub accessors: usize,
    /// Threads that change the address space.
    pub mutators: usize,
    /// Build the secondary that carries this bug with it.
    pub inject: Option<Bug>,
    /// Mutator operations per round (then the address space exits and a
    /// new round starts).
    pub round_ops: u64,
    /// Records each thread keeps for the trace.
    pub window: usize,
    /// Abort if some thread makes no progress for this long.
    pub stall: Duration,
    /// End the run at the first violation (the round it happens in still
    /// ends with an exit).
    pub stop_on_violation: bool,
}

impl Default for StressConfig {
    fn default() -> Self {
        StressConfig {
            seconds: None,
            ops: None,
            seed: 1,
            accessors: 2,
            mutators: 1,
            inject: None,
            round_ops: 100,
            window: 512,
            stall: Duration::from_secs(30),
            stop_on_violation: true,
        }
    }
}

/// A configuration that cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid stress configuration: {0}")]
pub struct ConfigError(pub String);

impl StressConfig {
    /// The time limit: `seconds`, or the default if `ops` is not given
    /// either.
    pub fn time_limit(&self) -> Option<Duration> {
        match (self.seconds, self.ops) {
            (Some(s), _) => Some(Duration::from_secs_f64(s)),
            (None, None) => Some(Duration::from_secs_f64(DEFAULT_SECONDS)),
            (None, Some(_)) => None,
        }
    }

    /// Checks the numbers.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |what: &str| Err(ConfigError(what.to_owned()));
        if let Some(s) = self.seconds
            && !(s.is_finite() && s > 0.0 && s < 1e9)
        {
            return bad("seconds must be a positive number");
        }
        if self.ops == Some(0) {
            return bad("ops must be positive");
        }
        if !(1..=64).contains(&self.accessors) {
            return bad("accessors must be 1 to 64");
        }
        if !(1..=16).contains(&self.mutators) {
            return bad("mutators must be 1 to 16");
        }
        if !(1..=MAX_ROUND_OPS).contains(&self.round_ops) {
            return bad(&format!(
                "round_ops must be 1 to {MAX_ROUND_OPS} (a round keeps its address space, \
                 secondaries and trace until it ends; start more rounds instead)"
            ));
        }
        if self.stall.is_zero() {
            return bad("stall must be positive");
        }
        Ok(())
    }
}
