//! Settings: precedence, defaults, checks, token files and warnings.

use super::*;
use std::path::Path;

fn base() -> RunArgs {
    RunArgs {
        id: Some(1),
        tls_ca: Some("ca.pem".into()),
        tls_cert: Some("n.pem".into()),
        tls_key: Some("n.key".into()),
        ..RunArgs::default()
    }
}

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

#[test]
fn advertised_addresses_default_to_the_cluster_entry_and_must_agree_with_it() {
    let cluster = "1=127.0.0.1:7001/127.0.0.1:8001,2=127.0.0.1:7002/127.0.0.1:8002";
    let cfg = RunArgs {
        initial_cluster: Some(cluster.into()),
        ..base()
    }
    .resolve()
    .unwrap();
    assert_eq!(cfg.advertise.peer_addr, "127.0.0.1:7001".parse().unwrap());
    assert_eq!(cfg.advertise.client_addr, "127.0.0.1:8001");
    let err = RunArgs {
        initial_cluster: Some(cluster.into()),
        peer_advertise: Some("127.0.0.1:9999".parse().unwrap()),
        ..base()
    }
    .resolve()
    .unwrap_err();
    assert!(err.0.contains("advertises"), "{err}");
    // A name in the cluster entry and its address in --peer-advertise (or
    // the other way round) name the same place: accepted, as before names
    // were kept as written (the entry's name was resolved at start then).
    for (entry, advertised) in [
        ("localhost:7001", "127.0.0.1:7001"),
        ("127.0.0.1:7001", "localhost:7001"),
    ] {
        let cfg = RunArgs {
            initial_cluster: Some(format!(
                "1={entry}/127.0.0.1:8001,2=127.0.0.1:7002/127.0.0.1:8002"
            )),
            peer_advertise: Some(advertised.parse().unwrap()),
            ..base()
        }
        .resolve()
        .unwrap_or_else(|e| panic!("{entry} vs {advertised}: {e}"));
        assert_eq!(cfg.advertise.peer_addr.to_string(), advertised);
    }
    // A name that resolves elsewhere still disagrees.
    let err = RunArgs {
        initial_cluster: Some("1=localhost:7001/127.0.0.1:8001".into()),
        peer_advertise: Some("127.0.0.1:7009".parse().unwrap()),
        ..base()
    }
    .resolve()
    .unwrap_err();
    assert!(err.0.contains("advertises"), "{err}");
    let err = RunArgs {
        peer_listen: Some("0.0.0.0:7000".parse().unwrap()),
        ..base()
    }
    .resolve()
    .unwrap_err();
    assert!(err.0.contains("--peer-advertise"), "{err}");
    let cfg = RunArgs {
        peer_listen: Some("0.0.0.0:7000".parse().unwrap()),
        client_listen: Some("0.0.0.0:8000".parse().unwrap()),
        peer_advertise: Some("10.0.0.1:7000".parse().unwrap()),
        client_advertise: Some("node1.example:8000".into()),
        insecure: Some(true),
        ..base()
    }
    .resolve()
    .unwrap();
    assert_eq!(cfg.advertise.client_addr, "node1.example:8000");
}

#[test]
fn review_an_exposed_node_whose_data_api_is_open_needs_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let admin = private_token(dir.path(), "admin", "an-admin-token-0123456789");
    let r = RunArgs {
        admin_token_file: Some(admin),
        ..exposed()
    }
    .resolve();
    assert!(
        r.is_err(),
        "0.0.0.0 with only --admin-token-file (every key readable and writable by anyone) \
         started without --insecure"
    );
}

fn private_token(dir: &Path, name: &str, token: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// Listening beyond loopback, as a node of a real cluster does.
fn exposed() -> RunArgs {
    RunArgs {
        client_listen: Some("0.0.0.0:8080".parse().unwrap()),
        client_advertise: Some("10.0.0.1:8080".into()),
        peer_advertise: Some("10.0.0.1:7000".parse().unwrap()),
        ..base()
    }
}

#[test]
fn an_api_exposed_beyond_loopback_without_auth_is_refused_unless_insecure() {
    let err = exposed().resolve().unwrap_err();
    assert!(
        err.0.contains("--insecure") && err.0.contains("--auth-token-file"),
        "{err}"
    );
    // TLS alone authenticates nobody.
    let err = RunArgs {
        client_tls: Some(true),
        ..exposed()
    }
    .resolve()
    .unwrap_err();
    assert!(err.0.contains("--insecure"), "{err}");
    // Said explicitly: it starts, with a loud warning.
    let cfg = RunArgs {
        insecure: Some(true),
        ..exposed()
    }
    .resolve()
    .unwrap();
    let warnings = cfg.security_warnings().join("\n");
    assert!(
        warnings.contains("no bearer token and no TLS"),
        "{warnings}"
    );
    // A token or client certificates are enough.
    let dir = tempfile::tempdir().unwrap();
    let token = private_token(dir.path(), "t", "a-token-of-enough-length");
    let cfg = RunArgs {
        auth_token_file: Some(token),
        ..exposed()
    }
    .resolve()
    .unwrap();
    let warnings = cfg.security_warnings().join("\n");
    assert!(
        warnings.contains("Authorization") && warnings.contains("plain HTTP"),
        "followers forward the token in clear: {warnings}"
    );
    RunArgs {
        client_tls: Some(true),
        client_ca: Some("ca.pem".into()),
        ..exposed()
    }
    .resolve()
    .unwrap();
    // Loopback needs nothing and warns of nothing.
    let cfg = base().resolve().unwrap();
    assert!(!cfg.insecure);
    assert_eq!(cfg.security_warnings(), Vec::<String>::new());
}

#[test]
fn cleartext_tokens_and_an_open_data_api_are_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let admin = private_token(dir.path(), "admin", "an-admin-token-0123456789");
    // Only the admin token: /v1/kv stays open.
    let cfg = RunArgs {
        admin_token_file: Some(admin.clone()),
        ..base()
    }
    .resolve()
    .unwrap();
    let warnings = cfg.security_warnings().join("\n");
    assert!(
        warnings.contains("/v1/kv") && warnings.contains("--auth-token-file"),
        "{warnings}"
    );
    // --join over http:// sends the admin token in clear.
    let cfg = RunArgs {
        admin_token_file: Some(admin),
        join: Some("http://10.0.0.1:8080".into()),
        ..base()
    }
    .resolve()
    .unwrap();
    let warnings = cfg.security_warnings().join("\n");
    assert!(
        warnings.contains("--join") && warnings.contains("in clear"),
        "{warnings}"
    );
}

#[test]
fn token_files_owned_by_another_user_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = private_token(dir.path(), "other", "a-token-of-another-user-0123");
    // Needs root (the tests run as root in CI): give the file away.
    std::os::unix::fs::chown(&path, Some(65534), None)
        .expect("changing the token file's owner (run the tests as root)");
    let err = read_token(&path).unwrap_err();
    assert!(err.0.contains("belongs to user 65534"), "{err}");
}

#[test]
fn token_files_others_can_read_are_refused_and_tokens_never_printed() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = private_token(dir.path(), "user.token", "secret-token-0123456789");
    for loose in [0o644, 0o640, 0o604] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(loose)).unwrap();
        let err = RunArgs {
            auth_token_file: Some(path.clone()),
            ..base()
        }
        .resolve()
        .unwrap_err();
        let mode = format!("{loose:04o}");
        assert!(
            err.0.contains("user.token") && err.0.contains(&mode) && err.0.contains("chmod 600"),
            "{err}"
        );
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
    let cfg = RunArgs {
        auth_token_file: Some(path.clone()),
        admin_token_file: Some(path),
        ..base()
    }
    .resolve()
    .unwrap();
    assert!(cfg.auth_token.is_some() && cfg.admin_token.is_some());
    let shown = format!("{cfg:?} {cfg:#?}");
    assert!(!shown.contains("secret-token"), "{shown}");
    assert!(shown.contains("auth_token"), "{shown}");
}

#[test]
fn initial_cluster_parses_and_rejects_garbage() {
    let m =
        parse_initial_cluster("1=127.0.0.1:7001/127.0.0.1:8001, 2=127.0.0.1:7002/localhost:8002")
            .unwrap();
    assert_eq!(m.len(), 2);
    assert_eq!(m[1].client_addr, "localhost:8002");
    for bad in [
        "",
        "1",
        "x=127.0.0.1:1/a:1",
        "1=127.0.0.1:7001",
        "1=nope/a:1",
        "1=127.0.0.1:1/a:1,1=127.0.0.1:2/a:2",
        "0=127.0.0.1:1/a:1",
        "1=bad_name:1/a:1",
        "1=name:0/a:1",
        // Client addresses: into URLs, they must not name another host.
        "1=127.0.0.1:1/a:0",
        "1=127.0.0.1:1/a:1@attacker.example",
        "1=127.0.0.1:1/attacker.example@a:1",
        "1=127.0.0.1:1/attacker.example:80#",
        "1=127.0.0.1:1/:80",
    ] {
        assert!(parse_initial_cluster(bad).is_err(), "{bad}");
    }
}

#[test]
fn peer_names_are_kept_as_written_and_not_looked_up_at_start() {
    // `.invalid` never resolves (RFC 6761): a name is stored as given, so a
    // node starts even while a peer's name does not resolve yet (a pod
    // whose DNS record appears once it runs), and dials it when it does.
    let m = parse_initial_cluster(
        "1=raft-0.raft.default.svc:7000/raft-0.raft:8080,2=Node-2.invalid:7000/b:1,3=[::1]:7003/c:1",
    )
    .unwrap();
    assert_eq!(m[0].peer_addr.to_string(), "raft-0.raft.default.svc:7000");
    assert_eq!(m[1].peer_addr.to_string(), "node-2.invalid:7000");
    assert_eq!(m[2].peer_addr.to_string(), "[::1]:7003");
    let e = parse_initial_cluster("1=raft_0:7000/a:1")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--initial-cluster item") && e.contains("letters, digits"),
        "{e}"
    );
    // Stored records written before names were accepted ("ip:port") read back.
    let old: Member =
        serde_json::from_str(r#"{"id":1,"peer_addr":"127.0.0.1:7000","client_addr":"a:1"}"#)
            .unwrap();
    assert_eq!(old.peer_addr, "127.0.0.1:7000".parse().unwrap());
    assert_eq!(
        serde_json::to_string(&m[0]).unwrap(),
        r#"{"id":1,"peer_addr":"raft-0.raft.default.svc:7000","client_addr":"raft-0.raft:8080"}"#
    );
}

#[test]
fn token_files_that_are_missing_empty_or_unreadable_are_named_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.token");
    let empty = private_token(dir.path(), "empty.token", "");
    // A directory opens, but cannot be read as a file.
    let unreadable = dir.path().join("dir.token");
    std::fs::create_dir(&unreadable).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&unreadable, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let message = |path: &Path| {
        RunArgs {
            admin_token_file: Some(path.to_path_buf()),
            ..base()
        }
        .resolve()
        .unwrap_err()
        .0
    };
    assert_eq!(
        message(&missing),
        format!(
            "cannot read token file {}: No such file or directory (os error 2)",
            missing.display()
        )
    );
    assert_eq!(
        message(&empty),
        format!(
            "token file {} must hold one token of at least 16 visible ASCII characters",
            empty.display()
        )
    );
    assert_eq!(
        message(&unreadable),
        format!(
            "cannot read token file {}: Is a directory (os error 21)",
            unreadable.display()
        )
    );
}

#[test]
fn the_id_placeholder_is_replaced_in_the_data_dir_and_node_certificate_paths() {
    let cfg = RunArgs {
        id: Some(3),
        data_dir: Some("/data/node-{id}".into()),
        tls_cert: Some("/certs/node-{id}.pem".into()),
        tls_key: Some("/certs/node-{id}.key".into()),
        ..base()
    }
    .resolve()
    .unwrap();
    assert_eq!(cfg.data_dir, Path::new("/data/node-3"));
    assert_eq!(cfg.tls_cert, Path::new("/certs/node-3.pem"));
    assert_eq!(cfg.tls_key, Path::new("/certs/node-3.key"));
    assert_eq!(cfg.tls_ca, Path::new("ca.pem"));
}

#[test]
fn the_id_comes_from_the_host_name_on_request_and_not_with_an_id() {
    let err = RunArgs {
        id_from_hostname: Some(true),
        ..base()
    }
    .resolve()
    .unwrap_err();
    assert!(err.0.contains("exclude each other"), "{err}");
    // This machine's name decides which answer is right.
    let host = identity::hostname().unwrap();
    let got = RunArgs {
        id: None,
        id_from_hostname: Some(true),
        tls_cert: Some("/certs/node-{id}.pem".into()),
        ..base()
    }
    .resolve();
    match identity::id_from_hostname(&host) {
        Ok(id) => {
            let cfg = got.unwrap();
            assert_eq!(cfg.id, id);
            assert_eq!(cfg.tls_cert, PathBuf::from(format!("/certs/node-{id}.pem")));
        }
        Err(_) => {
            let err = got.unwrap_err();
            assert!(err.0.contains(&format!("{host:?}")), "{err}");
        }
    }
    let err = RunArgs { id: None, ..base() }.resolve().unwrap_err();
    assert!(err.0.contains("--id-from-hostname"), "{err}");
}

#[test]
fn the_grpc_api_is_off_by_default_limited_and_never_more_open_than_http() {
    let cfg = base().resolve().unwrap();
    assert_eq!(cfg.grpc_listen, None);
    assert_eq!(cfg.grpc_max_request_bytes, 1_572_864);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.toml");
    std::fs::write(&file, "grpc-listen = \"127.0.0.1:2379\"\n").unwrap();
    let cfg = RunArgs {
        config: Some(file),
        ..base()
    }
    .resolve()
    .unwrap();
    assert_eq!(cfg.grpc_listen, Some("127.0.0.1:2379".parse().unwrap()));
    let err = RunArgs {
        grpc_listen: Some("0.0.0.0:2379".parse().unwrap()),
        ..base()
    }
    .resolve()
    .unwrap_err();
    assert!(
        err.0.contains("--grpc-listen") && err.0.contains("--insecure"),
        "{err}"
    );
    let err = RunArgs {
        grpc_max_request_bytes: Some(10),
        ..base()
    }
    .resolve()
    .unwrap_err();
    assert!(err.0.contains("--grpc-max-request-bytes"), "{err}");
}

#[test]
fn the_grpc_url_others_list_is_the_flag_else_the_listen_address() {
    assert_eq!(base().resolve().unwrap().advertise.grpc_url, None);
    let with = |listen: &str, adv: Option<&str>| RunArgs {
        grpc_listen: Some(listen.parse().unwrap()),
        grpc_advertise: adv.map(Into::into),
        client_advertise: Some("node1.example:8080".into()),
        insecure: Some(true),
        ..base()
    };
    let url = |a: RunArgs| a.resolve().unwrap().advertise.grpc_url;
    assert_eq!(
        url(with("127.0.0.1:2379", None)).as_deref(),
        Some("http://127.0.0.1:2379")
    );
    // An unspecified listen address: the client advertise host.
    assert_eq!(
        url(with("0.0.0.0:2379", None)).as_deref(),
        Some("http://node1.example:2379")
    );
    assert_eq!(
        url(with("0.0.0.0:2379", Some("grpc.example:443"))).as_deref(),
        Some("http://grpc.example:443")
    );
    for bad in ["0.0.0.0:2379", "grpc.example", "user@h:1"] {
        let err = with("0.0.0.0:2379", Some(bad)).resolve().unwrap_err();
        assert!(err.0.contains("--grpc-advertise"), "{bad}: {err}");
    }
    let err = RunArgs {
        grpc_advertise: Some("h:1".into()),
        ..base()
    }
    .resolve()
    .unwrap_err();
    assert!(err.0.contains("--grpc-listen"), "{err}");
}

#[test]
fn member_records_without_a_grpc_url_read_as_before() {
    let old = r#"{"id":2,"peer_addr":"h:7000","client_addr":"h:8080"}"#;
    let m: Member = serde_json::from_str(old).unwrap();
    assert_eq!(m.grpc_url, None);
    // Written back without the field, as an earlier release wrote it.
    assert_eq!(serde_json::to_string(&m).unwrap(), old);
    let new = Member {
        grpc_url: Some("http://h:2379".into()),
        ..m
    };
    let text = serde_json::to_string(&new).unwrap();
    assert_eq!(serde_json::from_str::<Member>(&text).unwrap(), new);
}
