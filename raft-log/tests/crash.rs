//! Crash test: a child process appends to a `RocksLog` in a loop and prints
//! each acknowledged index; the parent SIGKILLs it at random moments, reopens
//! the store, and checks that every acknowledged entry is present and intact
//! and that no partial entry is visible.
//!
//! `RAFT_LOG_CRASH_ROUNDS` sets the number of kills (default 12; raise it for
//! a soak), `RAFT_LOG_CRASH_SEED` replays a run (the seed is printed).

use std::future::Future as _;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use bytes::Bytes;
use raft_core::{Entry, EntryPayload, HardState, LogStorage, LogWrite};
use raft_log::{RocksLog, RocksLogOptions};
use rand::{Rng, SeedableRng};

const CHILD_ENV: &str = "RAFT_LOG_CRASH_CHILD";

/// The payload every writer puts at `index`, so the parent can verify it.
fn payload(index: u64) -> Bytes {
    let len = 1 + (index * 7919 % 2048) as usize;
    Bytes::from(
        (0..len)
            .map(|i| (index as usize).wrapping_mul(31).wrapping_add(i) as u8)
            .collect::<Vec<u8>>(),
    )
}

/// The child's body: runs only when spawned by the parent test.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let seed: u64 = raft_core::testing::env_or("RAFT_LOG_CRASH_SEED", 0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let log = std::sync::Arc::new(
            RocksLog::open(&dir, RocksLogOptions::default()).expect("child opens the store"),
        );
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut next = log.last_index() + 1;
        let term = log.hard_state().term + 1;
        loop {
            // Several writes in flight at once, to exercise group commit.
            // They are submitted in log order (each write is handed to the
            // store when it is first polled, and they are first polled in
            // order): spawned as tasks, a loaded runtime could submit a
            // later range first, which the store rightly refuses as a gap.
            let mut writes = Vec::new();
            for _ in 0..rng.gen_range(1..4) {
                let n = rng.gen_range(1..64u64);
                let entries: Vec<Entry> = (next..next + n)
                    .map(|i| Entry {
                        term,
                        index: i,
                        payload: EntryPayload::Normal(payload(i)),
                    })
                    .collect();
                next += n;
                let last = next - 1;
                let hs = HardState {
                    term,
                    vote: None,
                    commit: 0,
                };
                let log = log.clone();
                writes.push(Box::pin(async move {
                    log.write(LogWrite {
                        hard_state: Some(hs),
                        truncate_from: None,
                        entries,
                    })
                    .await
                    .map(|_| last)
                }));
            }
            let mut done: Vec<Option<u64>> = vec![None; writes.len()];
            std::future::poll_fn(|cx| {
                for (w, d) in writes.iter_mut().zip(done.iter_mut()) {
                    if d.is_none() {
                        if let std::task::Poll::Ready(r) = w.as_mut().poll(cx) {
                            *d = Some(r.expect("write"));
                        }
                    }
                }
                if done.iter().all(Option::is_some) {
                    std::task::Poll::Ready(())
                } else {
                    std::task::Poll::Pending
                }
            })
            .await;
            for last in done.into_iter().flatten() {
                println!("ACK {last}");
            }
        }
    });
}

#[test]
fn acknowledged_entries_survive_sigkill() {
    let rounds: u32 = raft_core::testing::env_or("RAFT_LOG_CRASH_ROUNDS", 12);
    let seed: u64 =
        raft_core::testing::env_or("RAFT_LOG_CRASH_SEED", u64::from(rand::random::<u32>()));
    println!("crash test seed {seed} (replay with RAFT_LOG_CRASH_SEED={seed}), {rounds} rounds");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    let exe = std::env::current_exe().expect("test binary path");
    let mut max_acked = 0u64;
    for round in 0..rounds {
        let mut child = Command::new(&exe)
            .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &path)
            .env("RAFT_LOG_CRASH_SEED", (seed + round as u64).to_string())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join("child.stderr")).expect("stderr file"))
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("stdout");
        let (first_ack, got_first_ack) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut acked = 0u64;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(n) = line
                    .strip_prefix("ACK ")
                    .and_then(|n| n.trim().parse::<u64>().ok())
                {
                    if acked == 0 {
                        let _ = first_ack.send(());
                    }
                    acked = acked.max(n);
                }
            }
            acked
        });
        // Odd rounds: the kill comes at a random time after the start, so
        // it may hit the child while it opens and recovers the store.
        // Even rounds: at a random time after the first acknowledgement,
        // so every run kills writers mid-stream however slowly a loaded
        // machine starts the child.
        let delay = Duration::from_millis(rng.gen_range(150..600));
        if round % 2 == 0 {
            if let Err(e) = got_first_ack.recv_timeout(Duration::from_secs(120)) {
                let what = match e {
                    RecvTimeoutError::Timeout => "no acknowledgement within 120 s",
                    RecvTimeoutError::Disconnected => "the child stopped before acknowledging",
                };
                let _ = child.kill();
                let status = child.wait().map(|s| s.to_string());
                let stderr =
                    std::fs::read_to_string(dir.path().join("child.stderr")).unwrap_or_default();
                // The head: a panic's message comes before its backtrace.
                let head: Vec<&str> = stderr.lines().take(40).collect();
                panic!(
                    "seed {seed} round {round}: {what} (child: {status:?}); its stderr:\n{}",
                    head.join("\n")
                );
            }
            std::thread::sleep(delay - Duration::from_millis(150));
        } else {
            std::thread::sleep(delay);
        }
        child.kill().expect("SIGKILL the child");
        child.wait().expect("reap child");
        let acked = reader.join().expect("reader");
        max_acked = max_acked.max(acked);

        let log = RocksLog::open(&path, RocksLogOptions::default())
            .unwrap_or_else(|e| panic!("seed {seed} round {round}: reopen failed: {e}"));
        let last = log.last_index();
        assert!(
            last >= max_acked,
            "seed {seed} round {round}: acknowledged up to {max_acked} but the store ends at {last}"
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let entries = rt
            .block_on(log.entries(1, last + 1, u64::MAX))
            .expect("read back");
        assert_eq!(
            entries.len() as u64,
            last,
            "seed {seed} round {round}: entries 1..={last}"
        );
        for e in &entries {
            assert_eq!(
                e.payload,
                EntryPayload::Normal(payload(e.index)),
                "seed {seed} round {round}: entry {} differs",
                e.index
            );
        }
        drop(log);
    }
    assert!(
        max_acked > 0,
        "seed {seed}: the child never acknowledged a write"
    );
    println!("crash test: {rounds} kills, {max_acked} entries acknowledged, all intact");
}
