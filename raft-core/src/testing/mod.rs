//! Helpers of tests and benchmarks: seeds and sizes from the environment,
//! printed so a failure can be replayed; a time limit for tests that could
//! loop forever ([`bounded`]); the engine test [`network`] and the
//! durable-log model and the [`ReadySteps`] split of a `Ready` it shares
//! with the simulation; the
//! [`driver_cluster`] the driver benchmarks load. (The linearizability
//! checker is the `raftkv-linearizability` crate.)

mod bounded;
pub mod driver_cluster;
mod durable;
pub mod network;
mod ready;

pub use bounded::bounded;
pub use durable::DurableLog;
pub use ready::{ReadySteps, ReadyWrite};

/// The environment variable `name` parsed as a `T`, or `default` when it is
/// not set: how tests and benchmarks take their seeds, counts and sizes.
///
/// ```
/// let cases: usize = raft_core::testing::env_or("MY_TEST_CASES", 200);
/// assert!(cases > 0);
/// ```
///
/// # Panics
///
/// When the variable is set but does not parse: a typo in a replay command
/// must not silently run another configuration.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    parse_or(name, std::env::var(name).ok(), default)
}

/// `value` (the variable `name`'s, if set) parsed as a `T`, else `default`.
fn parse_or<T: std::str::FromStr>(name: &str, value: Option<String>, default: T) -> T {
    match value {
        Some(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a valid value")),
        None => default,
    }
}

/// A seed from the environment variable `name`, or a fresh random one when
/// it is not set. Callers print it, so a failure can be replayed with
/// `name=<seed>`.
///
/// # Panics
///
/// When the variable is set but is not a number.
pub fn seed_from_env(name: &str) -> u64 {
    env_or(name, rand::random())
}

/// [`seed_from_env`] for a property test's random generator, printed with
/// how to replay it (the test harness shows the line when the test fails).
/// With proptest:
/// `rng_seed: RngSeed::Fixed(raft_core::testing::proptest_seed())`, so
/// `PROPTEST_RNG_SEED=<seed>` replays the same cases.
///
/// # Panics
///
/// When `PROPTEST_RNG_SEED` is set but is not a number.
pub fn proptest_seed() -> u64 {
    let seed = seed_from_env("PROPTEST_RNG_SEED");
    println!("property test seed {seed} (replay with PROPTEST_RNG_SEED={seed})");
    seed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_or_parses_the_variable_or_falls_back() {
        // Through `parse_or`: setting variables would race other tests'
        // reads of the environment in this multi-threaded test binary.
        assert_eq!(parse_or::<u64>("X", Some(" 42 ".into()), 1), 42);
        assert_eq!(parse_or::<u64>("X", None, 7), 7);
        let r = std::panic::catch_unwind(|| parse_or::<u64>("X", Some("x".into()), 1));
        assert!(r.is_err());
        assert_eq!(env_or::<u64>("RAFT_CORE_TEST_ENV_OR_UNSET", 7), 7);
    }
}
