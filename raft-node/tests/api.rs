//! The HTTP API's edges on real node processes: bearer-token auth (401
//! changes nothing, a separate admin token), HTTPS with forwarding between
//! nodes, a paused (SIGSTOP) leader that the cluster moves past, bad input,
//! and a node whose peers are all down.
//!
//! The contract itself (status codes, headers, malformed input) is checked
//! on raw HTTP; waiting for a leader, and what a client observes of a
//! paused leader, go through `raft_client`.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::raw_http::get_json;
use common::{builder_of, client_of, leader, via, Proc};
use raft_client::{Client, ReadConsistency, RetryPolicy};
use serde_json::Value;

/// `common::cluster_with` with a shorter request timeout.
fn cluster_with(dir: &Path, n: u64, extra: &[String], names: &[String], scheme: &str) -> Vec<Proc> {
    let mut flags = vec!["--request-timeout-ms=2000".to_string()];
    flags.extend(extra.iter().cloned());
    common::cluster_with(dir, n, &flags, names, scheme)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_guard_the_api_and_the_admin_routes() {
    let dir = tempfile::tempdir().unwrap();
    let user = dir.path().join("user.token");
    let admin = dir.path().join("admin.token");
    std::fs::write(&user, "user-token-0123456789abcdef\n").unwrap();
    std::fs::write(&admin, "admin-token-0123456789abcdef\n").unwrap();
    // Token files must be readable by their owner only.
    for f in [&user, &admin] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let extra = vec![
        format!("--auth-token-file={}", user.display()),
        format!("--admin-token-file={}", admin.display()),
    ];
    let procs = cluster_with(dir.path(), 3, &extra, &[], "http");
    let client = reqwest::Client::new();
    // /v1/cluster needs a token now; poll the leader with it.
    let with_token = builder_of(&procs)
        .token("user-token-0123456789abcdef")
        .build()
        .unwrap();
    let first = leader(&with_token, &procs, None).await;
    let follower = procs.iter().find(|p| p.id != first).unwrap();

    let url = format!("{}/v1/kv/secret", follower.http);
    let r = client.put(&url).body("x").send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["www-authenticate"],
        "Bearer realm=\"raft-node\""
    );
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let r = client
        .put(&url)
        .bearer_auth("wrong-token-0123456789")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Nothing was written: a read with the token finds no key.
    let r = client
        .get(&url)
        .bearer_auth("user-token-0123456789abcdef")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // With the token, through a follower (forwarded with its credentials).
    let r = client
        .put(&url)
        .bearer_auth("user-token-0123456789abcdef")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // A watch is a read: the user token, like any other.
    let w = format!("{}/v1/watch?key=secret", follower.http);
    assert_eq!(client.get(&w).send().await.unwrap().status(), 401);
    let r = client
        .get(&w)
        .bearer_auth("user-token-0123456789abcdef")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    drop(r);

    // Admin routes need the admin token.
    let t = format!("{}/v1/cluster/transfer-leader", follower.http);
    assert_eq!(client.post(&t).send().await.unwrap().status(), 401);
    let r = client
        .post(&t)
        .bearer_auth("user-token-0123456789abcdef")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = client
        .post(&t)
        .bearer_auth("admin-token-0123456789abcdef")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);

    // Health and metrics stay open.
    assert_eq!(
        client
            .get(format!("{}/healthz", follower.http))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client
            .get(format!("{}/metrics", follower.http))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_client_certificates_serves_and_forwards() {
    let dir = tempfile::tempdir().unwrap();
    let names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
    let extra = vec![
        "--client-tls".to_string(),
        format!("--client-ca={}", dir.path().join("certs/ca.pem").display()),
    ];
    let procs = cluster_with(dir.path(), 3, &extra, &names, "https");
    let certs = dir.path().join("certs");
    let ca = reqwest::Certificate::from_pem(&std::fs::read(certs.join("ca.pem")).unwrap()).unwrap();
    // A client with a certificate from the CA (here: node 1's).
    let mut pem = std::fs::read(certs.join("node-1.key")).unwrap();
    pem.extend(std::fs::read(certs.join("node-1.pem")).unwrap());
    let identity = reqwest::Identity::from_pem(&pem).unwrap();
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca.clone())
        .identity(identity)
        .build()
        .unwrap();
    let nodes = builder_of(&procs)
        .ca_file(certs.join("ca.pem"))
        .unwrap()
        .identity_files(certs.join("node-1.pem"), certs.join("node-1.key"))
        .unwrap()
        .build()
        .unwrap();
    let first = leader(&nodes, &procs, None).await;
    let follower = procs.iter().find(|p| p.id != first).unwrap();
    let r = client
        .put(format!("{}/v1/kv/tls", follower.http))
        .body("yes")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let r = client
        .get(format!("{}/v1/kv/tls", follower.http))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "yes");

    // Without a client certificate the handshake is refused.
    let anonymous = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .build()
        .unwrap();
    assert!(anonymous
        .get(format!("{}/healthz", follower.http))
        .send()
        .await
        .is_err());
    // Plain HTTP is not served.
    let plain = follower.http.replace("https://", "http://");
    assert!(reqwest::get(format!("{plain}/healthz")).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_is_replaced_and_steps_down_when_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let (mut procs, client, first, old) = cluster_with_k(dir.path(), "before").await;
    signal(&procs[old], rustix::process::Signal::STOP);
    // The others elect a new leader and take writes.
    let survivors: Vec<usize> = (0..procs.len()).filter(|i| *i != old).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let new_leader = loop {
        let s = common::status(&client, &procs[survivors[0]]).await;
        if let Some(l) = s.and_then(|s| s.leader).filter(|l| *l != first) {
            break l;
        }
        assert!(
            Instant::now() < deadline,
            "no new leader while node {first} is paused"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    put_until_accepted(&client, &procs[survivors[0]], "after").await;

    signal(&procs[old], rustix::process::Signal::CONT);
    // The old leader learns the new term and steps down; a linearizable read
    // through it never returns the stale value.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = common::status(&client, &procs[old]).await;
        if s.as_ref()
            .is_some_and(|s| s.role == "follower" && s.leader == Some(new_leader))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the resumed leader did not step down: {:?}",
            s.map(|s| s.raw)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let e = via(&client, &procs[old]).get("k").await.unwrap();
    assert_eq!(e.map(|e| e.value), Some("after".into()));
    for p in &mut procs {
        p.kill9();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_documented_status_and_a_lone_node_answers_503() {
    let dir = tempfile::tempdir().unwrap();
    let mut procs = cluster_with(dir.path(), 3, &[], &[], "http");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let first = leader(&client_of(&procs), &procs, None).await;
    let p = &procs[0];

    // Invalid UTF-8 in a key is fine when percent-encoded; it lists encoded.
    let r = client
        .put(format!("{}/v1/kv/bin%FF%00key", p.http))
        .body("v")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .get(format!("{}/v1/kv/bin%FF%00key", p.http))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let listed = get_json(&client, format!("{}/v1/kv?prefix=bin", p.http)).await;
    assert_eq!(listed["items"][0]["key"], "bin%FF%00key");

    // Malformed headers and parameters: 400, nothing applied.
    for (name, value) in [
        ("if-match", "42"),
        ("if-match", "\"-1\""),
        ("if-none-match", "\"3\""),
    ] {
        let r = client
            .put(format!("{}/v1/kv/h", p.http))
            .header(name, value)
            .body("v")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{name}: {value}");
    }
    let r = client
        .put(format!("{}/v1/kv/h", p.http))
        .header("idempotency-key", "")
        .body("v")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = client
        .get(format!("{}/v1/kv?limit=0", p.http))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        client
            .get(format!("{}/v1/kv/h", p.http))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    // Unknown routes and methods.
    let r = client
        .get(format!("{}/v2/nothing", p.http))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let r = client
        .post(format!("{}/v1/kv/x", p.http))
        .body("v")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    assert_eq!(r.headers()["allow"], "GET,HEAD,PUT,DELETE");
    let problem: Value = r.json().await.unwrap();
    assert_eq!(problem["type"], "urn:raft-node:problem:method-not-allowed");
    let r = client
        .post(format!("{}/v1/cluster/transfer-leader", p.http))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // A node whose peers are all down: a write gets 503 (not applied) or,
    // if it still believed itself leader, 504 (unknown) -- never a hang.
    let lone = procs.iter().position(|q| q.id != first).unwrap();
    for (i, q) in procs.iter_mut().enumerate() {
        if i != lone {
            q.kill9();
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = client
        .put(format!("{}/v1/kv/alone", procs[lone].http))
        .body("v")
        .send()
        .await
        .unwrap();
    let code = r.status();
    if code == 503 {
        assert!(r.headers().contains_key("retry-after"));
    } else {
        assert_eq!(code, 504, "{:?}", r.text().await);
    }
    let r = client
        .get(format!("{}/v1/kv/alone", procs[lone].http))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let r = client
        .get(format!(
            "{}/v1/kv/bin%FF%00key?consistency=stale",
            procs[lone].http
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Once its election timeout passes it knows it has no leader: not ready.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = client
            .get(format!("{}/readyz", procs[lone].http))
            .send()
            .await
            .unwrap();
        if r.status() == 503 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a node without peers stays ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Thesis §6.4.1: a lease is time, and a paused process does not notice
/// time passing. A leader stopped with SIGSTOP for longer than its lease,
/// while the others elect a new leader that commits a newer value, must not
/// answer a lease read with the old value when it resumes: the reads sent
/// to it while it was stopped are waiting in its socket the moment it runs
/// again. (They may fail, or be served after it learns the truth; never
/// with the value the new leader has replaced.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_leader_never_serves_a_stale_lease_read() {
    let dir = tempfile::tempdir().unwrap();
    let (mut procs, client, _, old) = cluster_with_k(dir.path(), "old").await;
    // One attempt each, waiting up to 20 s for the answer.
    let lease_read = via(&client, &procs[old])
        .with_retry(RetryPolicy::none())
        .with_request_timeout(Duration::from_secs(20));
    // A lease read works on the healthy leader.
    let e = lease_read
        .get_with("k", ReadConsistency::Lease)
        .await
        .unwrap();
    assert_eq!(e.map(|e| e.value), Some("old".into()));

    signal(&procs[old], rustix::process::Signal::STOP);
    let survivor = (0..procs.len()).find(|i| *i != old).unwrap();
    put_until_accepted(&client, &procs[survivor], "new").await;
    // Lease reads reach the stopped leader's socket, then it resumes.
    let reads: Vec<_> = (0..5)
        .map(|_| {
            let c = lease_read.clone();
            tokio::spawn(async move { c.get_with("k", ReadConsistency::Lease).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    signal(&procs[old], rustix::process::Signal::CONT);
    for r in reads {
        let read = r.await.unwrap();
        assert!(
            !read.is_ok_and(|e| e.is_some_and(|e| &e.value[..] == b"old")),
            "a lease read on the resumed leader returned the overwritten value"
        );
    }
    for p in &mut procs {
        p.kill9();
    }
}

/// A 3-node cluster with `k` = `value` written through its leader: the
/// processes, a client of them, the leader's id and its position in them.
async fn cluster_with_k(dir: &std::path::Path, value: &str) -> (Vec<Proc>, Client, u64, usize) {
    let procs = cluster_with(dir, 3, &[], &[], "http");
    let client = client_of(&procs);
    let first = leader(&client, &procs, None).await;
    let at = procs.iter().position(|p| p.id == first).unwrap();
    via(&client, &procs[at])
        .put("k", value.to_owned())
        .await
        .unwrap();
    (procs, client, first, at)
}

/// Sends `sig` to `p`'s process.
fn signal(p: &Proc, sig: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(p.child.as_ref().unwrap().id() as i32).unwrap();
    rustix::process::kill_process(pid, sig).unwrap();
}

/// PUTs `k` = `value` through `p` until one is accepted (the cluster may be
/// electing a leader), for up to 60 s.
async fn put_until_accepted(client: &Client, p: &Proc, value: &str) {
    let node = via(client, p).with_request_timeout(Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let sent = node.put("k", value.to_owned()).await;
        if sent.is_ok() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no write accepted through node {} ({sent:?})",
            p.id
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
