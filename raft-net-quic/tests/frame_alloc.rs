//! Issue 16 item 10: a snapshot stream allocates its frame buffer as data
//! arrives, not up to the announced frame length (16 MiB) before any data.
//! A counting global allocator measures what the process holds while an
//! authenticated peer keeps four snapshot streams open, each with a chunk
//! frame that announces 16 MiB and sends 100 bytes.

mod common;

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use common::*;
use raft_net_quic::codec::{self, Frame, SnapshotOffer, StreamKind};

/// Counts the bytes the process holds (the `cap` crate wraps the system
/// allocator).
#[global_allocator]
static ALLOCATOR: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

fn held() -> isize {
    ALLOCATOR.allocated() as isize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announced_frame_lengths_allocate_nothing_before_the_data() {
    let (ca, dir) = ca_and_dir();
    let cfg = test_config();
    let max_frame = cfg.max_frame_bytes;
    let (receiver, _inbound, _completed) =
        start_snapshot_receiver(&ca, 1, cfg, &dir.path().join("incoming"), 2);
    let addr = receiver.local_addr().unwrap();
    let (endpoint, ccfg) = raw_client(&ca, 2);
    let conn = raw_connect(&endpoint, &ccfg, 1, addr).await.unwrap();
    assert_eq!(
        raw_hello(&conn, 2, 1, 1).await.unwrap(),
        Frame::Welcome {
            node: 1,
            cluster: None
        }
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = held();
    let mut streams = Vec::new();
    for id in 0..4u64 {
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[StreamKind::Snapshot as u8]);
        let offer = Frame::SnapshotOffer(SnapshotOffer {
            transfer_id: id,
            total_bytes: 1 << 30,
            meta: Bytes::new(),
        });
        codec::encode_frame(&offer, max_frame, &mut buf).unwrap();
        send.write_all(&buf).await.unwrap();
        // The receiver answers with where to resume.
        let mut prefix = [0u8; 4];
        recv.read_exact(&mut prefix).await.unwrap();
        let mut rest = vec![0u8; u32::from_be_bytes(prefix) as usize];
        recv.read_exact(&mut rest).await.unwrap();
        // The offer must be taken (a refusal, say for lack of disk space,
        // would leave nothing to measure).
        let mut answer = BytesMut::from(&prefix[..]);
        answer.extend_from_slice(&rest);
        assert_eq!(
            codec::decode_frame(answer.freeze(), max_frame).unwrap(),
            Frame::SnapshotResume { offset: 0 },
            "snapshot offer {id} was not taken"
        );
        // A chunk frame announcing the largest length, then 100 bytes.
        let mut head = BytesMut::new();
        head.put_u32(max_frame);
        head.put_slice(&[codec::PROTOCOL_VERSION; 100]);
        send.write_all(&head).await.unwrap();
        streams.push((send, recv));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grown = held() - before;
    eprintln!("held {grown} more bytes with 4 streams announcing {max_frame}-byte frames");
    assert!(
        grown < 8 << 20,
        "the receiver holds {grown} more bytes for 400 bytes of data"
    );
    drop(streams);
    receiver.shutdown().await;
}
