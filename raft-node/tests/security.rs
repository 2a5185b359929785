//! The client API's security on real node processes: `raft-node ctl`
//! against a node that requires a bearer token and HTTPS with client
//! certificates; idempotency keys scoped per principal and told apart by
//! a cryptographic fingerprint; private directories.

mod common;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

const USER: &str = "user-token-0123456789abcdef";
const ADMIN: &str = "admin-token-0123456789abcdef";

/// Writes a token file readable by its owner only.
fn token_file(path: &Path, token: &str) {
    std::fs::write(path, format!("{token}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Runs `raft-node ctl` with `args`; returns (success, stdout, stderr).
fn ctl(args: &[String]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_raft-node"))
        .arg("ctl")
        .args(args)
        .output()
        .expect("run raft-node ctl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_talks_to_a_node_that_requires_a_token_and_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("user.token");
    token_file(&token, USER);
    let certs = dir.path().join("certs");
    let names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
    let extra = vec![
        "--client-tls".to_string(),
        format!("--client-ca={}", certs.join("ca.pem").display()),
        format!("--auth-token-file={}", token.display()),
    ];
    let procs = common::cluster_with(dir.path(), 1, &extra, &names, "https");
    let endpoint = procs[0].http.clone();
    let tls = vec![
        format!("--endpoint={endpoint}"),
        format!("--cacert={}", certs.join("ca.pem").display()),
        format!("--cert={}", certs.join("node-2.pem").display()),
        format!("--key={}", certs.join("node-2.key").display()),
        "--timeout-ms=5000".to_string(),
    ];
    let with = |extra: &[&str]| -> Vec<String> {
        let mut a = tls.clone();
        a.push(format!("--token-file={}", token.display()));
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    // The node elects itself; ctl retries its first write until it does.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (ok, out, err) = ctl(&with(&["put", "greeting", "hello"]));
        if ok {
            assert!(out.contains("\"rev\""), "{out}");
            break;
        }
        assert!(
            (err.contains("503") || err.contains("Connection refused"))
                && Instant::now() < deadline,
            "ctl put through HTTPS with a token and a client certificate failed: {err}; \
             node log:\n{}",
            procs[0].log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (ok, out, err) = ctl(&with(&["get", "greeting"]));
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "hello");
    let (ok, out, err) = ctl(&with(&["status"]));
    assert!(ok, "{err}");
    let status: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["leader"], 1, "{status:#}");

    // Without the token: the node says 401, and ctl exits non-zero.
    let (ok, _, err) = ctl(&[tls.clone(), vec!["get".into(), "greeting".into()]].concat());
    assert!(!ok);
    assert!(err.contains("401"), "{err}");
    // Without a client certificate: the handshake is refused.
    let (ok, _, err) = ctl(&[
        format!("--endpoint={endpoint}"),
        format!("--cacert={}", certs.join("ca.pem").display()),
        format!("--token-file={}", token.display()),
        "get".into(),
        "greeting".into(),
    ]);
    assert!(!ok, "a client without a certificate was served");
    assert!(err.contains("cannot reach"), "{err}");
    // A token file others can read is refused, naming the fix.
    let loose = dir.path().join("loose.token");
    std::fs::write(&loose, USER).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, _, err) = ctl(&[
        tls.clone(),
        vec![format!("--token-file={}", loose.display()), "status".into()],
    ]
    .concat());
    assert!(!ok);
    assert!(
        err.contains("loose.token") && err.contains("0644") && err.contains("chmod 600"),
        "{err}"
    );

    // The node's directories are its own (0700).
    let data = dir.path().join("node-1");
    for d in [data.clone(), data.join("snapshots"), data.join("incoming")] {
        assert_eq!(mode(&d), 0o700, "{}", d.display());
    }
}

/// The command encoding (format version 1) that the previous fingerprint,
/// a CRC-32C, was computed over: a put of `value` at `key` without a
/// precondition, the idempotency key left out.
fn v1_fingerprint(key: &[u8], value: &[u8]) -> u32 {
    let mut b = vec![1u8, 1, 0, 0];
    b.extend_from_slice(&(key.len() as u32).to_be_bytes());
    b.extend_from_slice(key);
    b.extend_from_slice(&(value.len() as u32).to_be_bytes());
    b.extend_from_slice(value);
    crc32c::crc32c(&b)
}

/// Two values whose puts at `key` have the same CRC-32C fingerprint.
fn crc_collision(key: &[u8]) -> (String, String) {
    let mut seen: HashMap<u32, String> = HashMap::new();
    for i in 0u64.. {
        let v = format!("value-{i}");
        let fp = v1_fingerprint(key, v.as_bytes());
        if let Some(other) = seen.insert(fp, v.clone()) {
            return (other, v);
        }
    }
    unreachable!()
}

async fn put(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    idem: &str,
    value: &str,
) -> (u16, Value) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // The node may not listen yet, or have no leader yet (503).
        let r = match client
            .put(url)
            .bearer_auth(token)
            .header("idempotency-key", idem)
            .body(value.to_owned())
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) if e.is_connect() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => panic!("PUT {url}: {e}"),
        };
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        if status != 503 || Instant::now() > deadline {
            return (status, body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A one-node cluster whose API takes the user and the admin token.
fn node_with_tokens(dir: &Path) -> Vec<common::Proc> {
    let (user, admin) = (dir.join("user.token"), dir.join("admin.token"));
    token_file(&user, USER);
    token_file(&admin, ADMIN);
    let extra = vec![
        format!("--auth-token-file={}", user.display()),
        format!("--admin-token-file={}", admin.display()),
    ];
    common::cluster_with(dir, 1, &extra, &[], "http")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_requests_whose_crc_collides_are_told_apart_under_one_idempotency_key() {
    let dir = tempfile::tempdir().unwrap();
    let procs = node_with_tokens(dir.path());
    let client = reqwest::Client::new();
    let base = &procs[0].http;
    // Two different requests whose CRC-32C fingerprints (the previous
    // release's) collide: the second, with the same key, is a different
    // request (422), not a retry of the first.
    let (a, b) = crc_collision(b"collide");
    assert_ne!(a, b);
    let url = format!("{base}/v1/kv/collide");
    let (s, first) = put(&client, &url, USER, "key-1", &a).await;
    assert_eq!(s, 200, "{first}");
    let (s, body) = put(&client, &url, USER, "key-1", &b).await;
    assert_eq!(
        s, 422,
        "a different request ({b:?} after {a:?}, same CRC-32C) must not be taken for a retry: {body}"
    );
    let r = client.get(&url).bearer_auth(USER).send().await.unwrap();
    assert_eq!(
        r.text().await.unwrap(),
        a,
        "the second request changed nothing"
    );
    // A true retry still gets the first outcome.
    let (s, again) = put(&client, &url, USER, "key-1", &a).await;
    assert_eq!((s, &again), (200, &first));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_idempotency_key_from_two_principals_does_not_collide() {
    let dir = tempfile::tempdir().unwrap();
    let procs = node_with_tokens(dir.path());
    let client = reqwest::Client::new();
    let base = &procs[0].http;
    // The same idempotency key used by two principals (the user token and
    // the admin token): each is its own request, neither collides.
    let (s, by_user) = put(
        &client,
        &format!("{base}/v1/kv/u"),
        USER,
        "shared",
        "from-user",
    )
    .await;
    assert_eq!(s, 200, "{by_user}");
    let (s, by_admin) = put(
        &client,
        &format!("{base}/v1/kv/a"),
        ADMIN,
        "shared",
        "from-admin",
    )
    .await;
    assert_eq!(
        s, 200,
        "another principal's use of the same idempotency key is not a conflict: {by_admin}"
    );
    assert_ne!(by_user["rev"], by_admin["rev"]);
    // Retries within each principal's scope get that principal's outcome.
    let (_, retry) = put(
        &client,
        &format!("{base}/v1/kv/u"),
        USER,
        "shared",
        "from-user",
    )
    .await;
    assert_eq!(retry, by_user);
    let (_, retry) = put(
        &client,
        &format!("{base}/v1/kv/a"),
        ADMIN,
        "shared",
        "from-admin",
    )
    .await;
    assert_eq!(retry, by_admin);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_the_principal_survives_forwarding_through_a_follower() {
    let dir = tempfile::tempdir().unwrap();
    let (user, admin) = (
        dir.path().join("user.token"),
        dir.path().join("admin.token"),
    );
    token_file(&user, USER);
    token_file(&admin, ADMIN);
    let extra = vec![
        format!("--auth-token-file={}", user.display()),
        format!("--admin-token-file={}", admin.display()),
    ];
    let procs = common::cluster_with(dir.path(), 3, &extra, &[], "http");
    let authed = common::builder_of(&procs).token(USER).build().unwrap();
    let l = common::leader(&authed, &procs, None).await;
    let f = procs.iter().find(|p| p.id != l).unwrap();
    let ld = procs.iter().find(|p| p.id == l).unwrap();
    let client = reqwest::Client::new();
    let (s, first) = put(&client, &format!("{}/v1/kv/f", f.http), USER, "fw", "one").await;
    assert_eq!(s, 200, "{first}");
    let (s, again) = put(&client, &format!("{}/v1/kv/f", ld.http), USER, "fw", "one").await;
    assert_eq!((s, &again), (200, &first), "retry at the leader");
    let (s, again) = put(&client, &format!("{}/v1/kv/f", f.http), USER, "fw", "one").await;
    assert_eq!((s, &again), (200, &first), "retry at the follower");
    let (s, other) = put(&client, &format!("{}/v1/kv/g", f.http), ADMIN, "fw", "two").await;
    assert_eq!(s, 200, "admin scope through the follower: {other}");
    let (s, other) = put(&client, &format!("{}/v1/kv/g", f.http), USER, "fw", "two").await;
    assert_eq!(s, 422, "user scope, other request: {other}");
}

/// A token file the node cannot use stops it at start, before it binds
/// anything, with one line naming the file and the reason.
#[test]
fn a_token_file_the_node_cannot_use_stops_it_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    raft_net_quic::certs::write_dev_certs(&certs, &[1], &[]).unwrap();
    let missing = dir.path().join("missing.token");
    let empty = dir.path().join("empty.token");
    token_file(&empty, "");
    let unreadable = dir.path().join("dir.token");
    std::fs::create_dir(&unreadable).unwrap();
    std::fs::set_permissions(&unreadable, std::fs::Permissions::from_mode(0o700)).unwrap();
    let cases = [
        (
            &missing,
            "cannot read token file {}: No such file or directory (os error 2)",
        ),
        (
            &empty,
            "token file {} must hold one token of at least 16 visible ASCII characters",
        ),
        (
            &unreadable,
            "cannot read token file {}: Is a directory (os error 21)",
        ),
    ];
    for (path, expected) in cases {
        let (peer, client) = (common::free_udp(), common::free_tcp());
        let cmd = raft_client::launcher::NodeCommand::new(1, dir.path().join("node-1"))
            .listen(client, peer)
            .dev_certs(&certs)
            .initial_cluster(raft_client::launcher::initial_cluster([(1, peer, client)]))
            .arg(format!("--auth-token-file={}", path.display()));
        let mut child = cmd
            .command(env!("CARGO_BIN_EXE_raft-node"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the node started with {}", path.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        let expected = expected.replace("{}", &path.display().to_string());
        assert!(!status.success(), "{stderr}");
        assert!(
            stderr.contains(&expected),
            "the node's message for {}: {stderr}\nexpected: {expected}",
            path.display()
        );
    }
}
