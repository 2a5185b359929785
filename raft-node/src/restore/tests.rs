//! Tests of restore and recover on stores in temporary directories.

mod recovery {
    use super::super::*;
    use super::support::{args, backup};

    /// A well-formed file (checksums and SHA-256 right) whose header names
    /// an index or term no log can hold, or a term of 0 at an index above
    /// 0, is refused with an error, not a panic, and nothing is created.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_backup_with_an_impossible_index_or_term_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for (index, term) in [(u64::MAX, 3), (u64::MAX - 1, 3), (5, u64::MAX), (5, 0)] {
            let from = backup(dir.path(), index, term);
            let data = dir.path().join(format!("data-{index}-{term}"));
            let task = tokio::spawn(restore(args(&from, &data)));
            let result = task
                .await
                .unwrap_or_else(|e| panic!("index {index} term {term}: restore panicked: {e}"));
            let e = result.expect_err("an impossible header must be refused");
            assert!(
                format!("{e:#}").contains("corrupted"),
                "index {index} term {term}: {e:#}"
            );
            assert!(
                !data.exists(),
                "index {index} term {term}: nothing is created"
            );
        }
    }

    /// A store restored from a backup of term 7 and then recovered with
    /// `--force-new-cluster` (its log holds no entry, only the snapshot)
    /// gets its configuration entry at a term no lower than 7: terms never
    /// go down along a log.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn recover_after_restore_appends_at_a_term_no_lower_than_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let from = backup(dir.path(), 40, 7);
        let data = dir.path().join("data");
        restore(args(&from, &data)).await.unwrap();
        recover(recover_args(&data, false)).await.unwrap();
        let log = open(&data).unwrap();
        let stored = log.stored_state().await.unwrap();
        let last = stored.last_log_id.expect("the configuration entry");
        assert_eq!(last.index, 41);
        assert!(
            last.term >= 7,
            "entry 41 at term {} after term 7",
            last.term
        );
    }

    fn stored_cluster_id(data: &Path) -> Option<u128> {
        let log = open(data).unwrap();
        cluster_id::load(log.db()).unwrap()
    }

    /// Every node restored from one file with one `--initial-cluster` gets
    /// the same cluster id; another file gives another; `recover
    /// --force-new-cluster` gives a new one, so that a survivor started on
    /// its old data (it still counts the lost members as voters) is
    /// refused by the recovered node and by members that take the lost
    /// members' ids; a second recovery another again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn restored_nodes_share_a_cluster_id_per_file_and_recover_makes_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let one = backup(dir.path(), 40, 7);
        let other = backup(dir.path(), 41, 7);
        let (a, b, c) = (
            dir.path().join("a"),
            dir.path().join("b"),
            dir.path().join("c"),
        );
        restore(args(&one, &a)).await.unwrap();
        restore(args(&one, &b)).await.unwrap();
        restore(args(&other, &c)).await.unwrap();
        let id = stored_cluster_id(&a).expect("a restored node has a cluster id");
        assert_eq!(stored_cluster_id(&b), Some(id));
        assert_ne!(stored_cluster_id(&c), Some(id));
        recover(recover_args(&a, false)).await.unwrap();
        let recovered = stored_cluster_id(&a).expect("a recovered node has a cluster id");
        assert_ne!(recovered, id, "the old members' id still admits them");
        recover(recover_args(&a, false)).await.unwrap();
        let again = stored_cluster_id(&a).expect("a recovered node has a cluster id");
        assert!(again != recovered && again != id, "a second recovery");
    }

    fn recover_args(data: &Path, again: bool) -> RecoverArgs {
        RecoverArgs {
            data_dir: data.to_path_buf(),
            id: 1,
            force_new_cluster: true,
            again,
        }
    }

    /// A store recovered once whose cluster then gained voters (members
    /// that rejoined) is not recovered again without `--again`: those
    /// members may still run.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_second_recovery_after_members_rejoined_needs_again() {
        let dir = tempfile::tempdir().unwrap();
        let from = backup(dir.path(), 40, 7);
        let data = dir.path().join("data");
        restore(args(&from, &data)).await.unwrap();
        recover(recover_args(&data, false)).await.unwrap();
        // Recovering again while it is still alone is harmless.
        recover(recover_args(&data, false)).await.unwrap();
        // Members 4 and 5 join and are promoted.
        {
            let log = open(&data).unwrap();
            let last = log.stored_state().await.unwrap().last_log_id.unwrap();
            log.append(vec![Entry {
                term: last.term,
                index: last.index + 1,
                payload: EntryPayload::Membership(Box::new(Membership::new([1, 4, 5]))),
            }])
            .await
            .unwrap();
        }
        let err = recover(recover_args(&data, false)).await.unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("[4, 5]") && text.contains("--again"),
            "{text}"
        );
        recover(recover_args(&data, true)).await.unwrap();
        let log = open(&data).unwrap();
        let stored = log.stored_state().await.unwrap();
        let (_, m) = stored.membership.expect("a configuration");
        assert_eq!(m.voters().iter().copied().collect::<Vec<_>>(), vec![1]);
    }
}

mod symlink {
    use super::super::*;
    use super::support::backup;

    /// A data directory that is a symlink to an empty directory elsewhere
    /// (a disk mounted away from /var/lib) is restored into, through the
    /// link, and nothing is left behind beside either.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_symlinked_empty_data_dir_is_restored_through_the_link() {
        let dir = tempfile::tempdir().unwrap();
        let from = backup(dir.path(), 40, 7);
        let (disk, link_dir) = (dir.path().join("disk"), dir.path().join("etc"));
        std::fs::create_dir_all(disk.join("data")).unwrap();
        std::fs::create_dir_all(&link_dir).unwrap();
        let link = link_dir.join("data");
        std::os::unix::fs::symlink(disk.join("data"), &link).unwrap();
        restore(RestoreArgs {
            from,
            data_dir: link.clone(),
            id: 1,
            initial_cluster: "1=127.0.0.1:7000/127.0.0.1:8080".into(),
            initial_cluster_token: "t".into(),
        })
        .await
        .expect("restore through a symlink");
        assert!(
            link.join("CURRENT").is_file(),
            "the store is behind the link"
        );
        assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
        for d in [&disk, &link_dir] {
            let names: Vec<_> = std::fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(names, ["data"], "left in {}", d.display());
        }
    }
}

mod in_place {
    use super::super::*;
    use super::support::{args, backup};

    /// A restore that stopped half-way leaves its marker: the directory is
    /// refused by `run`'s check, by `recover` and by another restore.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn an_unfinished_restore_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let from = backup(dir.path(), 40, 7);
        let data = dir.path().join("data");
        restore(args(&from, &data)).await.unwrap();
        refuse_unfinished_restore(&data).expect("a finished restore is accepted");
        std::fs::write(data.join(RESTORING_MARKER), b"").unwrap();
        let run = refuse_unfinished_restore(&data).unwrap_err().to_string();
        assert!(run.contains("did not finish"), "{run}");
        let again = RecoverArgs {
            data_dir: data.clone(),
            id: 1,
            force_new_cluster: true,
            again: false,
        };
        let e = format!("{:#}", recover(again).await.unwrap_err());
        assert!(e.contains("did not finish"), "{e}");
        let e = format!("{:#}", restore(args(&from, &data)).await.unwrap_err());
        assert!(e.contains("not empty"), "{e}");
    }

    /// A restore that crashes after its first write (the marker, written
    /// before any store file) leaves a directory `run` and `recover` refuse
    /// with the marker's message; emptied as that says, it is restored.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_crash_after_the_first_write_of_a_restore_leaves_the_marker() {
        let dir = tempfile::tempdir().unwrap();
        let from = backup(dir.path(), 40, 7);
        let data = dir.path().join("data");
        let crashed = {
            let (from, data) = (from.clone(), data.clone());
            std::thread::spawn(move || {
                CRASH_AFTER_FIRST_WRITE.set(true);
                let rt = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                rt.block_on(restore(args(&from, &data)))
            })
            .join()
        };
        assert!(
            crashed.is_err(),
            "the restore did not reach its crash point"
        );
        let left: Vec<_> = std::fs::read_dir(&data)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, [RESTORING_MARKER], "left by the crash");
        let run = refuse_unfinished_restore(&data).unwrap_err().to_string();
        assert!(run.contains("did not finish"), "run: {run}");
        let again = RecoverArgs {
            data_dir: data.clone(),
            id: 1,
            force_new_cluster: true,
            again: false,
        };
        let e = format!("{:#}", recover(again).await.unwrap_err());
        assert!(e.contains("did not finish"), "recover: {e}");
        std::fs::remove_file(data.join(RESTORING_MARKER)).unwrap();
        restore(args(&from, &data)).await.unwrap();
        refuse_unfinished_restore(&data).expect("the restore finished");
    }

    /// A backup taken with `consistency=stale` (any node's applied state)
    /// gets a warning saying it may miss acknowledged writes; so does one
    /// whose header names no consistency this release knows; a
    /// linearizable one gets none.
    #[test]
    fn a_stale_backup_is_restored_with_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let from = backup(dir.path(), 40, 7);
        let mut h = crate::backup::verify(&from).unwrap().header;
        assert_eq!(consistency_warning(&h), None);
        h.consistency = "stale".into();
        h.node = 3;
        let w = consistency_warning(&h).expect("a warning for a stale backup");
        assert!(w.starts_with("WARNING:"), "{w}");
        assert!(w.contains("consistency: stale"), "{w}");
        assert!(w.contains("node 3"), "{w}");
        assert!(
            w.contains("may miss writes acknowledged before it was taken"),
            "{w}"
        );
        h.consistency = "eventual".into();
        let w = consistency_warning(&h).expect("a warning for an unknown consistency");
        assert!(w.contains("consistency: eventual"), "{w}");
    }
}

pub(super) mod support {
    use std::path::{Path, PathBuf};

    use crate::backup::{BackupHeader, FORMAT};

    /// Restore `from` into `data_dir` as node 1 of a one-node cluster.
    pub(in crate::restore) fn args(from: &Path, data_dir: &Path) -> crate::restore::RestoreArgs {
        crate::restore::RestoreArgs {
            from: from.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            id: 1,
            initial_cluster: "1=127.0.0.1:7000/127.0.0.1:8080".into(),
            initial_cluster_token: "t".into(),
        }
    }

    /// A backup of an empty store whose header says `index` and `term`.
    pub(in crate::restore) fn backup(dir: &Path, index: u64, term: u64) -> PathBuf {
        let path = dir.join(format!("b-{index}-{term}.bak"));
        let header = BackupHeader {
            format: FORMAT,
            index,
            term,
            voters: vec![1],
            learners: vec![],
            members: vec![],
            node: 1,
            consistency: "linearizable".into(),
            read_index: Some(index),
            created_unix_ms: 1,
            version: "test".into(),
        };
        crate::backup::write_empty_backup(&path, &header);
        path
    }
}
