//! The sampler's status gauges do not wait for the walk of the data
//! directory nor for the read of the certificates' expiry: a hung
//! filesystem (a `stat` or `read` that never returns) freezes the file
//! gauges only, and no second walk piles up behind the hung one.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics_util::debugging::{DebuggingRecorder, Snapshotter};
use raft_core::memory::{MemKv, MemLog, MemNetwork};
use raft_core::{Config, DriverConfig, Membership, Raft};

use super::{spawn_sampler_with, FileSampler, SamplerConfig};

fn has_gauge(snapshotter: &Snapshotter, name: &str) -> bool {
    snapshotter
        .snapshot()
        .into_vec()
        .iter()
        .any(|(key, ..)| key.key().name() == name)
}

fn config(dir: &std::path::Path) -> SamplerConfig {
    SamplerConfig {
        id: 1,
        data_dir: dir.to_owned(),
        tls_cert: dir.join("none.pem"),
        tls_ca: dir.join("none.pem"),
        interval: Duration::from_millis(50),
    }
}

/// A one-node cluster of raft-core's in-memory parts, on one thread whose
/// tasks (every one but the blocking reads) `recorder` sees, running `f`.
fn with_one_node<F, Fut>(recorder: &DebuggingRecorder, f: F)
where
    F: FnOnce(raft_core::RaftHandle<raft_core::memory::KvResponse>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(recorder, || {
        rt.block_on(async {
            let net = MemNetwork::new();
            let raft = Raft::start(
                Config::new(1),
                DriverConfig::default(),
                Membership::new([1]),
                Arc::new(MemLog::new()),
                MemKv::new(),
                net.transport(1),
            )
            .await
            .unwrap();
            f(raft.clone()).await;
            raft.shutdown().await;
        });
    });
}

#[test]
fn a_hung_read_of_the_certificates_does_not_freeze_the_sampled_gauges() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    // The certificates' read hangs until `release` is dropped.
    let (release, hang) = std::sync::mpsc::channel::<()>();
    let hang = Arc::new(Mutex::new(hang));
    let certs: FileSampler = Arc::new(move |_: &SamplerConfig| {
        let _ = hang.lock().unwrap().recv();
    });
    let walks = Arc::new(AtomicUsize::new(0));
    let files: FileSampler = {
        let walks = walks.clone();
        Arc::new(move |_: &SamplerConfig| {
            walks.fetch_add(1, Ordering::SeqCst);
        })
    };
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    with_one_node(&recorder, |raft| async move {
        let sampler = spawn_sampler_with(cfg, raft, files, certs);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let set = has_gauge(&snapshotter, "raft_reads_pending");
        let started = walks.load(Ordering::SeqCst);
        eprintln!("certificate read hung: raft_reads_pending set {set}, walks started {started}");
        // Released before the runtime, which waits for its blocking threads.
        drop(release);
        sampler.abort();
        assert!(
            set,
            "raft_reads_pending was never set while the certificates' read hung"
        );
        assert!(
            started > 1,
            "the data directory was not sampled while the certificates' read hung"
        );
    });
}

#[test]
fn a_hung_walk_of_the_data_directory_does_not_freeze_the_status_gauges() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    // The walk hangs until `release` is dropped.
    let (release, hang) = std::sync::mpsc::channel::<()>();
    let hang = Arc::new(Mutex::new(hang));
    let walks = Arc::new(AtomicUsize::new(0));
    let files: FileSampler = {
        let walks = walks.clone();
        Arc::new(move |_: &SamplerConfig| {
            walks.fetch_add(1, Ordering::SeqCst);
            let _ = hang.lock().unwrap().recv();
        })
    };
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // One thread runs every task but the walk: the local recorder sees
    // what the sampler's task sets.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            let net = MemNetwork::new();
            let raft = Raft::start(
                Config::new(1),
                DriverConfig::default(),
                Membership::new([1]),
                Arc::new(MemLog::new()),
                MemKv::new(),
                net.transport(1),
            )
            .await
            .unwrap();
            let sampler = spawn_sampler_with(cfg, raft.clone(), files, Arc::new(|_: &_| {}));
            tokio::time::sleep(Duration::from_millis(500)).await;
            let set = has_gauge(&snapshotter, "raft_reads_pending");
            let started = walks.load(Ordering::SeqCst);
            eprintln!("walk hung: raft_reads_pending set {set}, walks started {started}");
            assert!(set, "raft_reads_pending was never set while the walk hung");
            assert_eq!(started, 1, "walks piled up behind the hung one");
            // The filesystem answers again: the walks resume.
            drop(release);
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(walks.load(Ordering::SeqCst) > 1, "the walks did not resume");
            sampler.abort();
            raft.shutdown().await;
        });
    });
}
