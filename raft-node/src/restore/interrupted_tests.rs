//! `recover --force-new-cluster` on a store whose last snapshot install a
//! crash interrupted: the state machine took the snapshot, the log did not
//! record it. The node's start completes that install (raft-core's
//! driver, `recover`), which replaces the whole log by the snapshot: a
//! configuration entry appended before it is lost with it.

use std::path::Path;
use std::time::Duration;

use raft_core::memory::MemNetwork;
use raft_core::{Config, DriverConfig, LogId, Membership, Raft, Role, SnapshotMeta};

use super::tests::support::backup;
use super::*;

const CLUSTER: &str = "1=127.0.0.1:7000/127.0.0.1:8080,2=127.0.0.1:7001/127.0.0.1:8081,\
                       3=127.0.0.1:7002/127.0.0.1:8082";

/// Node 1 of a three-node cluster, restored at index 40, term 7, whose
/// state machine then installed a snapshot at index 60, term 8, from its
/// leader; the node crashed before the log recorded it.
async fn interrupted_install(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    restore(RestoreArgs {
        from: backup(dir, 40, 7),
        data_dir: data.clone(),
        id: 1,
        initial_cluster: CLUSTER.into(),
        initial_cluster_token: "t".into(),
    })
    .await
    .unwrap();
    let log = open(&data).unwrap();
    let snapshots = data.join("snapshots");
    let sm = KvStateMachine::new(log.db().clone(), 1)
        .unwrap()
        .with_snapshot_dir(&snapshots)
        .unwrap();
    let later = backup(dir, 60, 8);
    let verified = crate::backup::verify(&later).unwrap();
    let file = crate::store::snapshot_file(&snapshots, 60);
    crate::backup::extract_snapshot(&later, &verified, &file).unwrap();
    let meta = SnapshotMeta {
        last_log_id: LogId { term: 8, index: 60 },
        membership: Membership::new([1, 2, 3]),
    };
    let members = crate::config::parse_initial_cluster(CLUSTER).unwrap();
    sm.seed(&meta, &members).unwrap();
    let stored = log.stored_state().await.unwrap();
    assert_eq!(
        stored.snapshot.map(|s| s.last_log_id.index),
        Some(40),
        "the log did not record the install"
    );
    data
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovery_after_an_interrupted_install_starts_as_the_single_voter() {
    let dir = tempfile::tempdir().unwrap();
    let data = interrupted_install(dir.path()).await;
    recover(RecoverArgs {
        data_dir: data.clone(),
        id: 1,
        force_new_cluster: true,
        again: false,
    })
    .await
    .unwrap();

    // The node starts on the store as `raft-node run` starts it.
    let log = open(&data).unwrap();
    let sm = KvStateMachine::new(log.db().clone(), 1)
        .unwrap()
        .with_snapshot_dir(data.join("snapshots"))
        .unwrap();
    let net = MemNetwork::new();
    let raft = Raft::start(
        Config::new(1),
        DriverConfig::default(),
        Membership::new([1, 2, 3]),
        log,
        sm,
        net.transport(1),
    )
    .await
    .expect("the node starts");
    let mut last = None;
    for _ in 0..100 {
        let st = raft.status().await.expect("status").engine;
        if st.role == Role::Leader {
            last = None;
            assert_eq!(
                st.membership.voters().iter().copied().collect::<Vec<_>>(),
                [1]
            );
            assert!(st.last_index > 60, "{st:?}");
            break;
        }
        last = Some(st);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    raft.shutdown().await;
    if let Some(st) = last {
        panic!(
            "the recovered node did not lead alone within 5 s: voters {:?}, role {:?}, last index {}",
            st.membership.voters(),
            st.role,
            st.last_index
        );
    }
}
