//! Settings: flags over the file over the defaults, the checks that
//! name a bad setting, and the peer and RocksDB limits.

use super::*;

#[test]
fn flags_win_over_the_file_which_wins_over_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.toml");
    std::fs::write(
        &file,
        "data-dir = \"/from/file\"\ntick-ms = 10\nmax-value-bytes = 99\n",
    )
    .unwrap();
    let args = RunArgs {
        config: Some(file),
        tick_ms: Some(25),
        ..base()
    };
    let cfg = args.resolve().unwrap();
    assert_eq!(cfg.tick, Duration::from_millis(25)); // flag
    assert_eq!(cfg.data_dir, PathBuf::from("/from/file")); // file
    assert_eq!(cfg.max_value_bytes, 99); // file
    assert_eq!(cfg.max_key_bytes, 1024); // default
}

#[test]
fn bad_settings_are_named() {
    let err = RunArgs { id: None, ..base() }.resolve().unwrap_err();
    assert!(err.0.contains("--id"), "{err}");
    let err = RunArgs {
        tls_ca: None,
        ..base()
    }
    .resolve()
    .unwrap_err();
    assert!(err.0.contains("--tls-ca"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "no-such-setting = 1\n").unwrap();
    let err = RunArgs {
        config: Some(file),
        ..base()
    }
    .resolve()
    .unwrap_err();
    assert!(err.0.contains("no-such-setting"), "{err}");
    let err = RunArgs {
        initial_cluster: Some("2=127.0.0.1:7002/127.0.0.1:8002".into()),
        ..base()
    }
    .resolve()
    .unwrap_err();
    assert!(err.0.contains("does not list this node"), "{err}");
}

#[test]
fn peer_hardening_limits_default_and_are_checked() {
    let cfg = base().resolve().unwrap();
    assert_eq!(cfg.tls_crl, None);
    assert_eq!(cfg.max_snapshot_receive_bytes, 4 << 30);
    assert_eq!(cfg.max_connections_per_peer, 4);
    assert_eq!(cfg.peer_retry_after_handshakes, 32);
    assert_eq!(cfg.peer_handshakes_per_ip, 8);
    assert_eq!(cfg.peer_reserved_connections, 16);
    assert_eq!(cfg.join_admission, Duration::from_secs(300));
    let cfg = RunArgs {
        tls_crl: Some("crl.pem".into()),
        max_snapshot_receive_mib: Some(10),
        max_connections_per_peer: Some(2),
        peer_retry_after_handshakes: Some(0),
        peer_handshakes_per_ip: Some(2),
        peer_reserved_connections: Some(4),
        join_admission_secs: Some(7),
        ..base()
    }
    .resolve()
    .unwrap();
    assert_eq!(cfg.peer_handshakes_per_ip, 2);
    assert_eq!(cfg.peer_reserved_connections, 4);
    assert_eq!(cfg.join_admission, Duration::from_secs(7));
    assert_eq!(cfg.tls_crl, Some("crl.pem".into()));
    assert_eq!(cfg.max_snapshot_receive_bytes, 10 << 20);
    assert_eq!(cfg.max_connections_per_peer, 2);
    assert_eq!(cfg.peer_retry_after_handshakes, 0);
    for (args, flag) in [
        (
            RunArgs {
                max_snapshot_receive_mib: Some(0),
                ..base()
            },
            "--max-snapshot-receive-mib",
        ),
        (
            RunArgs {
                max_connections_per_peer: Some(0),
                ..base()
            },
            "--max-connections-per-peer",
        ),
        (
            RunArgs {
                max_connections_per_peer: Some(257),
                ..base()
            },
            "--max-connections-per-peer",
        ),
        (
            RunArgs {
                peer_handshakes_per_ip: Some(0),
                ..base()
            },
            "--peer-handshakes-per-ip",
        ),
        (
            RunArgs {
                peer_reserved_connections: Some(256),
                ..base()
            },
            "--peer-reserved-connections",
        ),
        (
            RunArgs {
                join_admission_secs: Some(0),
                ..base()
            },
            "--join-admission-secs",
        ),
    ] {
        let err = args.resolve().unwrap_err();
        assert!(err.0.contains(flag), "{err}");
    }
}

#[test]
fn rocksdb_memory_sizes_default_and_are_bounded() {
    let cfg = base().resolve().unwrap();
    assert_eq!(cfg.write_buffer_bytes, 16 << 20);
    assert_eq!(cfg.block_cache_bytes, 64 << 20);
    let cfg = RunArgs {
        write_buffer_mib: Some(4),
        block_cache_mib: Some(8),
        ..base()
    }
    .resolve()
    .unwrap();
    assert_eq!(
        (cfg.write_buffer_bytes, cfg.block_cache_bytes),
        (4 << 20, 8 << 20)
    );
    for bad in [0, 65_537] {
        let err = RunArgs {
            write_buffer_mib: Some(bad),
            ..base()
        }
        .resolve()
        .unwrap_err();
        assert!(err.0.contains("--write-buffer-mib"), "{err}");
    }
}

/// The lease limits have ceilings: a revoke deletes every key of its lease
/// in one log entry's apply, and the leader proposes up to the revoke rate
/// each second, so values past them would let one entry stall every
/// replica (or exhaust its memory). The ceilings themselves are accepted.
#[test]
fn lease_limits_have_ceilings() {
    for (args, flag) in [
        (
            RunArgs {
                max_keys_per_lease: Some(1_000_001),
                ..base()
            },
            "--max-keys-per-lease",
        ),
        (
            RunArgs {
                lease_revokes_per_second: Some(100_001),
                ..base()
            },
            "--lease-revokes-per-second",
        ),
        (
            RunArgs {
                max_leases: Some(10_000_001),
                ..base()
            },
            "--max-leases",
        ),
    ] {
        let err = args.resolve().unwrap_err();
        assert!(err.0.contains(flag), "{err}");
    }
    let cfg = RunArgs {
        max_keys_per_lease: Some(1_000_000),
        lease_revokes_per_second: Some(100_000),
        max_leases: Some(10_000_000),
        ..base()
    }
    .resolve()
    .unwrap();
    assert_eq!(
        (
            cfg.max_keys_per_lease,
            cfg.lease_revokes_per_second,
            cfg.max_leases
        ),
        (1_000_000, 100_000, 10_000_000)
    );
}

/// Review finding (LOW): `--grpc-url-check-interval-ms 1` was accepted:
/// every node would send the leader a request and a read barrier each
/// millisecond. At least a second.
#[test]
fn the_grpc_url_check_interval_has_a_floor() {
    let err = RunArgs {
        grpc_url_check_interval_ms: Some(999),
        ..base()
    }
    .resolve()
    .unwrap_err();
    assert!(err.0.contains("--grpc-url-check-interval-ms"), "{err}");
    let cfg = RunArgs {
        grpc_url_check_interval_ms: Some(1000),
        ..base()
    }
    .resolve()
    .unwrap();
    assert_eq!(
        cfg.grpc_url_check_interval,
        std::time::Duration::from_secs(1)
    );
}
