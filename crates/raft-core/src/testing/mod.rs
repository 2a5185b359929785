//! Tools for testing Raft systems: a linearizability checker for client
//! histories against a key-value register model.

pub mod linearizability;

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
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a valid value")),
        Err(_) => default,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_or_parses_the_variable_or_falls_back() {
        std::env::set_var("RAFT_CORE_TEST_ENV_OR", " 42 ");
        assert_eq!(env_or::<u64>("RAFT_CORE_TEST_ENV_OR", 1), 42);
        assert_eq!(env_or::<u64>("RAFT_CORE_TEST_ENV_OR_UNSET", 7), 7);
        std::env::set_var("RAFT_CORE_TEST_ENV_OR_BAD", "x");
        let r = std::panic::catch_unwind(|| env_or::<u64>("RAFT_CORE_TEST_ENV_OR_BAD", 1));
        assert!(r.is_err());
    }
}
