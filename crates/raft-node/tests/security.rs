//! The client API's security on real node processes: idempotency keys
//! scoped per principal and told apart by a cryptographic fingerprint.

mod common;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

const USER: &str = "user-token-0123456789abcdef";
const ADMIN: &str = "admin-token-0123456789abcdef";

/// Writes a token file readable by its owner only.
fn token_file(path: &Path, token: &str) {
    std::fs::write(path, format!("{token}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
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
