//! A node whose disk fails: every flush (`fsync`, `fdatasync`) of one
//! node's process returns EIO from the moment a trigger file appears (a
//! preload library, `raft-log/tests/support/failsync.c`). The node never
//! acknowledges a write it could not make durable, `/healthz` answers 503
//! naming the failure, the process exits non-zero with a clear log line,
//! the rest of the cluster goes on, and the node comes back from its disk
//! once the disk works again.

#[path = "../../raft-log/tests/support/failsync.rs"]
mod failsync;

mod common;

use std::time::{Duration, Instant};

use common::{by_id, client_of, leader, via, Proc};
use raft_client::{Client, ReadConsistency, RetryPolicy};
use serde_json::Value;

/// Writes `value` at `key` through `p`, asking again while the answer is
/// not a success (elections under way), for up to 60 s.
async fn put_until_accepted(client: &Client, p: &Proc, key: &str, value: &str) {
    let node = via(client, p).with_request_timeout(Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = node.put(key, value.to_owned()).await;
        if r.is_ok() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {}: write {key}={value} not accepted within 60 s (last: {r:?}); log:\n{}",
            p.id,
            p.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `client` on node `p`, one attempt of at most `secs` seconds.
fn once(client: &Client, p: &Proc, secs: u64) -> Client {
    via(client, p)
        .with_retry(RetryPolicy::none())
        .with_request_timeout(Duration::from_secs(secs))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_fsync_fails_acknowledges_nothing_turns_unhealthy_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let lib = failsync::FailSync::build(dir.path());
    let trigger_of = |id: u64| dir.path().join(format!("fail-node-{id}"));
    let extra = vec![
        "--failure-exit-delay-ms=3000".to_string(),
        "--request-timeout-ms=3000".to_string(),
    ];
    let mut procs = common::cluster_with_env(dir.path(), 3, &extra, &[], "http", |id| {
        lib.env(&trigger_of(id))
    });
    let client = client_of(&procs);
    // Raw HTTP for /healthz, whose problem document the test reads.
    let http = reqwest::Client::new();
    let first = leader(&client, &procs, None).await;
    put_until_accepted(&client, by_id(&procs, first), "k", "before").await;
    let r = http
        .get(format!("{}/healthz", by_id(&procs, first).http))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "a healthy node is live");

    // The leader's disk fails: the write that needs its next fsync is not
    // acknowledged (its outcome is unknown: 504, or the connection drops).
    std::fs::write(trigger_of(first), b"").unwrap();
    let victim = by_id(&procs, first);
    let r = once(&client, victim, 20).put("k", "during").await;
    if let Ok(rev) = r {
        panic!(
            "a write whose fsync failed was acknowledged (revision {rev}); log:\n{}",
            victim.log_text()
        );
    }

    // /healthz turns unhealthy and says why, then the process exits non-zero.
    let deadline = Instant::now() + Duration::from_secs(30);
    let problem: Value = loop {
        let r = http
            .get(format!("{}/healthz", victim.http))
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        if let Ok(r) = r {
            if r.status() == 503 {
                break r.json().await.expect("a problem body");
            }
        }
        assert!(
            Instant::now() < deadline,
            "/healthz of the failed node never answered 503; log:\n{}",
            victim.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        problem["type"].as_str().map(|t| t.ends_with("node-failed")),
        Some(true),
        "{problem:#}"
    );
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("log write failed"), "{problem:#}");

    let victim = procs.iter_mut().find(|p| p.id == first).unwrap();
    let mut child = victim.child.take().expect("running");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the failed node did not exit; log:\n{}",
            victim.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let log = victim.log_text();
    assert!(
        !status.success() && status.code().is_some(),
        "a failed node exits with a non-zero status, not a signal: {status}; log:\n{log}"
    );
    assert!(
        log.contains("raft stopped: the log storage or the state machine failed"),
        "the log says why the node stopped:\n{log}"
    );
    assert!(!log.contains("panicked"), "{log}");

    // The other two go on.
    let next = leader(&client, &procs, Some(first)).await;
    put_until_accepted(&client, by_id(&procs, next), "k", "after").await;

    // The disk works again: the node restarts from what it holds and
    // catches up (a stale read is answered from its own store, never
    // forwarded).
    std::fs::remove_file(trigger_of(first)).unwrap();
    let victim = procs.iter_mut().find(|p| p.id == first).unwrap();
    victim.start();
    let victim = by_id(&procs, first);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = once(&client, victim, 5)
            .get_with("k", ReadConsistency::Stale)
            .await;
        if r.is_ok_and(|e| e.is_some_and(|e| &e.value[..] == b"after")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted node did not catch up; log:\n{}",
            victim.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_disk_hangs_turns_unhealthy_until_it_answers() {
    let dir = tempfile::tempdir().unwrap();
    let lib = failsync::FailSync::build(dir.path());
    let trigger_of = |id: u64| dir.path().join(format!("hang-node-{id}"));
    let extra = vec![
        "--storage-stall-timeout-ms=1500".to_string(),
        "--request-timeout-ms=3000".to_string(),
    ];
    let procs = common::cluster_with_env(dir.path(), 3, &extra, &[], "http", |id| {
        lib.env_hang(&trigger_of(id))
    });
    let client = client_of(&procs);
    let http = reqwest::Client::new();
    let first = leader(&client, &procs, None).await;
    put_until_accepted(&client, by_id(&procs, first), "k", "before").await;
    let victim = by_id(&procs, first);
    let healthz = |c: &reqwest::Client| {
        c.get(format!("{}/healthz", victim.http))
            .timeout(Duration::from_secs(2))
            .send()
    };
    assert_eq!(healthz(&http).await.unwrap().status(), 200);

    // The leader's disk stops answering: a write that needs it hangs.
    std::fs::write(trigger_of(first), b"").unwrap();
    let writer = once(&client, victim, 20);
    let write = tokio::spawn(async move { writer.put("k", "during").await });
    let deadline = Instant::now() + Duration::from_secs(30);
    let problem: Value = loop {
        if let Ok(r) = healthz(&http).await {
            if r.status() == 503 {
                break r.json().await.expect("a problem body");
            }
        }
        assert!(
            Instant::now() < deadline,
            "/healthz never reported the hanging disk; log:\n{}",
            victim.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        problem["type"]
            .as_str()
            .map(|t| t.ends_with("storage-stalled")),
        Some(true),
        "{problem:#}"
    );

    // The disk answers again: the node is healthy again and serves.
    std::fs::remove_file(trigger_of(first)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if healthz(&http).await.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/healthz stayed unhealthy after the disk came back; log:\n{}",
            victim.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = write.await;
    let next = leader(&client, &procs, None).await;
    put_until_accepted(&client, by_id(&procs, next), "k", "after").await;
}

/// A tmpfs mounted at `dir` (size `mib` MiB, mode 0700), unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    /// Mounts it, or fails the test saying why: this test needs root (or
    /// CAP_SYS_ADMIN) to make a disk that fills up, and must not pass
    /// without having run.
    fn mount(dir: &std::path::Path, mib: u64) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={mib}m,mode=0700"))
            .arg("tmpfs")
            .arg(dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Tmpfs(dir.to_path_buf()),
            Ok(o) => panic!(
                "this test mounts a small tmpfs as a node's data directory and needs root \
                 (CAP_SYS_ADMIN) for it: `mount -t tmpfs` failed ({}): {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => panic!(
                "this test mounts a small tmpfs as a node's data directory: cannot run \
                 `mount` ({e})"
            ),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Fills the file system holding `dir` with a file until it is full.
fn fill(dir: &std::path::Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join("filler")).unwrap();
    let chunk = vec![0xA5u8; 64 << 10];
    loop {
        match f.write_all(&chunk) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
            Err(e) => panic!("filling the tmpfs: {e}"),
        }
    }
    // What the page cache still held is written (or refused) too.
    let _ = f.sync_all();
    // Bytes that fit in a smaller write.
    let mut small = vec![0u8; 512];
    while f.write_all(&small).is_ok() {}
    small.clear();
}

/// The node's data directory is a small tmpfs that fills up: the write that
/// needed the full disk is not acknowledged, `/healthz` answers 503 naming
/// the failure until the process exits, and it exits with a non-zero
/// status (for systemd, Docker or Kubernetes to restart it) after a log
/// line that says why, naming the full disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_disk_fills_up_exits_non_zero_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node-1");
    let _tmpfs = Tmpfs::mount(&data, 48);
    let extra = vec![
        "--failure-exit-delay-ms=3000".to_string(),
        "--request-timeout-ms=3000".to_string(),
        "--write-buffer-mib=1".to_string(),
        "--block-cache-mib=8".to_string(),
    ];
    let mut procs = common::cluster_with(dir.path(), 1, &extra, &[], "http");
    let client = client_of(&procs);
    let http = reqwest::Client::new();
    leader(&client, &procs, None).await;
    put_until_accepted(&client, &procs[0], "k", "before").await;

    fill(&data);
    // Writes until one is refused: the disk has no room for the log.
    let value = "x".repeat(32 << 10);
    let mut refused = false;
    let node = once(&client, &procs[0], 10);
    for i in 0..200 {
        if node.put(format!("big{i}"), value.clone()).await.is_err() {
            refused = true;
            break;
        }
    }
    assert!(
        refused,
        "200 writes of 32 KiB were acknowledged on a full disk; log:\n{}",
        procs[0].log_text()
    );

    // /healthz says why until the process exits; then it exits non-zero.
    let p = &mut procs[0];
    let mut child = p.child.take().expect("running");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut problem: Option<Value> = None;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if problem.is_none() {
            if let Ok(r) = http
                .get(format!("{}/healthz", p.http))
                .timeout(Duration::from_secs(2))
                .send()
                .await
            {
                if r.status() == 503 {
                    problem = r.json().await.ok();
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "the node on a full disk did not exit within 60 s (a zombie that answers 503); \
             log:\n{}",
            p.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let log = p.log_text();
    assert!(
        !status.success() && status.code().is_some(),
        "a node whose disk is full exits with a non-zero status, not a signal: {status}; \
         log:\n{log}"
    );
    let problem = problem
        .unwrap_or_else(|| panic!("/healthz never answered 503 before the exit; log:\n{log}"));
    assert_eq!(
        problem["type"].as_str().map(|t| t.ends_with("node-failed")),
        Some(true),
        "{problem:#}"
    );
    let why = log
        .lines()
        .find(|l| l.contains("raft stopped"))
        .unwrap_or_else(|| panic!("no log line says why the node stopped:\n{log}"));
    assert!(
        why.to_lowercase().contains("no space left on device"),
        "the log line that says why the node stopped names the full disk: {why}\nlog:\n{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
}
