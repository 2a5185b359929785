//! Addresses and identity: advertised addresses and `--initial-cluster`,
//! peer names, the node id (the `{id}` placeholder, from the host name),
//! and the gRPC API and URL.

use super::*;

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
