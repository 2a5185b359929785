//! Runs `examples/embedded.rs` (three nodes in one process on RocksDB and
//! QUIC, with the example's own ledger state machine) and checks its outcome.

#[allow(dead_code)] // the example's `main`
#[path = "../examples/embedded.rs"]
mod embedded;

use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_example_survives_the_loss_of_its_leader() {
    let summary = tokio::time::timeout(Duration::from_secs(120), embedded::run())
        .await
        .expect("the example did not finish within 120 s")
        .unwrap_or_else(|e| panic!("the example failed: {e}"));

    // The ledger's rules, applied to the commands it accepted.
    let mut expected = 0u64;
    for (cmd, reply) in &summary.outcomes {
        let (verb, amount) = cmd.split_once(' ').expect("command");
        let amount: u64 = amount.parse().expect("amount");
        match (verb, reply) {
            ("deposit", Ok(_)) => expected += amount,
            ("withdraw", Ok(_)) => expected -= amount,
            ("withdraw", Err(why)) => {
                assert!(amount > expected, "{cmd} refused with funds: {why}");
                assert!(why.contains("overdraft"), "{cmd}: {why}");
            }
            _ => panic!("unexpected outcome of {cmd}: {reply:?}"),
        }
        if let Ok(balance) = reply {
            assert_eq!(*balance, expected, "reply to {cmd}");
        }
    }
    let refused: Vec<&str> = summary
        .outcomes
        .iter()
        .filter(|(_, reply)| reply.is_err())
        .map(|(cmd, _)| *cmd)
        .collect();
    assert_eq!(refused, ["withdraw 500", "withdraw 100"]);
    assert_eq!(expected, 60);
    assert_eq!(summary.read_balance, 95, "the read before the failover");

    let (first, second) = summary.leaders;
    assert_ne!(first, second, "a new leader after the first one stopped");
    assert_eq!(summary.balances.len(), 2, "two nodes still running");
    for (id, balance) in &summary.balances {
        assert_ne!(*id, first);
        assert_eq!(*balance, expected, "node {id}");
    }
}
