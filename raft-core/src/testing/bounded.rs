//! [`bounded`]: a time limit for a test that could otherwise loop forever.

use std::sync::mpsc;
use std::time::Duration;

/// Runs `test` on a thread of its own and waits for it at most `limit`
/// (times `RAFT_TEST_BOUND_SCALE`, default 1, for a slow machine). A test
/// still running then fails at once with its name and `hint` (what an
/// endless run of it means), instead of holding its test binary until the
/// CI job's timeout, which names no test; a panic of `test` is passed on
/// as it is.
///
/// The test's name is its thread's, which the test harness sets; the
/// thread left running ends with the test binary.
///
/// # Panics
///
/// When `test` panics, or is still running after the limit.
pub fn bounded<F: FnOnce() + Send + 'static>(limit: Duration, hint: &str, test: F) {
    let name = std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_owned();
    let limit = limit * super::env_or("RAFT_TEST_BOUND_SCALE", 1u32);
    let (done_tx, done) = mpsc::channel();
    let runner = std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            test();
            let _ = done_tx.send(());
        })
        .expect("spawn the test's thread");
    match done.recv_timeout(limit) {
        // Finished, or panicked (the sender dropped): join passes a panic on.
        Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(panic) = runner.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("{name} is still running after {limit:?}: {hint}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_test_within_its_limit_passes_and_one_past_it_fails_naming_it() {
        bounded(Duration::from_secs(10), "unused", || {});
        let past = std::panic::catch_unwind(|| {
            bounded(Duration::from_millis(50), "it loops", || {
                std::thread::sleep(Duration::from_secs(5))
            })
        })
        .unwrap_err();
        let text = past.downcast_ref::<String>().unwrap();
        assert!(text.contains("a_test_within_its_limit"), "{text}");
        assert!(
            text.contains("still running after 50ms: it loops"),
            "{text}"
        );
    }

    #[test]
    fn a_panic_of_the_test_is_passed_on() {
        let err = std::panic::catch_unwind(|| {
            bounded(Duration::from_secs(10), "unused", || {
                panic!("the test's own")
            })
        })
        .unwrap_err();
        assert_eq!(err.downcast_ref::<&str>(), Some(&"the test's own"));
    }
}
