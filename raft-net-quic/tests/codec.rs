//! Tests of the wire codec (`raft_net_quic::codec`): golden byte vectors that pin the format of
//! every frame kind, encode/decode round trips, robustness against truncated, corrupted and
//! arbitrary input, and the limit and error paths.

use std::collections::BTreeSet;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use raft_core::{AppendResult, Entry, EntryPayload, LogId, Membership, Message, MessageBody};
use raft_net_quic::codec::{
    self, check_frame_length, decode_frame, decode_frame_content, encode_frame, encode_to_bytes,
    DecodeError, EncodeError, Frame, Hello, RefusalReason, SnapshotChunk, SnapshotOffer,
    SnapshotRefusal, StreamKind, FRAME_HEADER_BYTES, LENGTH_PREFIX_BYTES, PROTOCOL_VERSION,
    SNAPSHOT_META_BYTES_MAX,
};

/// The frame limit used throughout (the fuzz target uses the same).
const MAX: u32 = 1 << 20;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Parses hex, ignoring whitespace (so fields can be grouped readably) and `#` comments to the
/// end of the line.
fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s
        .lines()
        .flat_map(|line| line.split('#').next().unwrap_or("").bytes())
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    assert!(digits.len() % 2 == 0, "odd number of hex digits in {s:?}");
    digits
        .chunks(2)
        .map(|pair| {
            let pair = std::str::from_utf8(pair).expect("ascii");
            u8::from_str_radix(pair, 16).unwrap_or_else(|_| panic!("bad hex {pair:?} in {s:?}"))
        })
        .collect()
}

/// Formats bytes as lowercase hex without separators.
fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Prefixes frame content (version, kind, body, given as hex) with its length.
fn framed(content_hex: &str) -> Bytes {
    with_prefix(&hex(content_hex))
}

/// Prefixes raw frame content with its length.
fn with_prefix(content: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(content.len() + LENGTH_PREFIX_BYTES);
    out.extend_from_slice(&u32::try_from(content.len()).unwrap().to_be_bytes());
    out.extend_from_slice(content);
    Bytes::from(out)
}

/// Asserts that `frame` encodes to exactly `expected_hex` and that those bytes decode back to it.
fn golden(frame: &Frame, expected_hex: &str) {
    let expected = hex(expected_hex);
    // Check the hand-written vector itself first: its length prefix must match its size.
    let declared = u32::from_be_bytes(expected[..4].try_into().unwrap()) as usize;
    assert_eq!(
        declared,
        expected.len() - LENGTH_PREFIX_BYTES,
        "golden vector's length prefix is wrong"
    );
    let encoded = encode_to_bytes(frame, MAX).expect("encode");
    assert_eq!(
        to_hex(&encoded),
        to_hex(&expected),
        "encoding of {frame:?} changed"
    );
    assert_eq!(
        decode_frame(Bytes::from(expected), MAX).as_ref(),
        Ok(frame),
        "golden bytes no longer decode to the frame"
    );
}

/// Decodes frame content given as hex (length prefix added) and returns the error.
fn decode_err(content_hex: &str) -> DecodeError {
    match decode_frame(framed(content_hex), MAX) {
        Ok(f) => panic!("decoded to {f:?}, expected an error"),
        Err(e) => e,
    }
}

fn msg(body: MessageBody) -> Frame {
    Frame::Message(Message {
        from: 1,
        to: 2,
        term: 5,
        body,
    })
}

/// Message header as hex: from 1, to 2, term 5.
const HDR: &str = "0000000000000001 0000000000000002 0000000000000005";

// ---------------------------------------------------------------------------------------------
// a. Golden vectors
// ---------------------------------------------------------------------------------------------

#[test]
fn golden_hello() {
    golden(
        &Frame::Hello(Hello {
            from: 0x0102_0304_0506_0708,
            to: 2,
            cluster: None,
        }),
        "00000012 01 01  0102030405060708 0000000000000002",
    );
}

/// The cluster id is an optional trailing field: the previous release's
/// `Hello` and `Welcome` (the vectors above) still decode, with none.
#[test]
fn golden_hello_and_welcome_with_a_cluster_id() {
    golden(
        &Frame::Hello(Hello {
            from: 1,
            to: 2,
            cluster: Some(0x00112233_44556677_8899aabb_ccddeeff),
        }),
        "00000022 01 01  0000000000000001 0000000000000002 00112233445566778899aabbccddeeff",
    );
    golden(
        &Frame::Welcome {
            node: 3,
            cluster: Some(7),
        },
        "0000001a 01 02  0000000000000003 00000000000000000000000000000007",
    );
    // Anything but nothing or exactly 16 bytes after the ids is refused.
    assert!(matches!(
        decode_err("01 01  0000000000000001 0000000000000002 00"),
        DecodeError::Truncated(_)
    ));
    assert!(matches!(
        decode_err("01 02  0000000000000001 00112233445566778899aabbccddee"),
        DecodeError::Truncated(_)
    ));
    assert!(matches!(
        decode_err("01 01  0000000000000001 0000000000000002 00112233445566778899aabbccddeeff 00"),
        DecodeError::TrailingBytes(1)
    ));
}

/// A `Hello` or `Welcome` (which may end with a cluster id).
fn takes_cluster_id(frame: &Frame) -> bool {
    matches!(frame, Frame::Hello(_) | Frame::Welcome { .. })
}

/// A `Hello` or `Welcome` that ends with a cluster id.
fn has_cluster_id(frame: &Frame) -> bool {
    match frame {
        Frame::Hello(h) => h.cluster.is_some(),
        Frame::Welcome { cluster, .. } => cluster.is_some(),
        _ => false,
    }
}

#[test]
fn golden_welcome() {
    golden(
        &Frame::Welcome {
            node: 3,
            cluster: None,
        },
        "0000000a 01 02  0000000000000003",
    );
}

#[test]
fn golden_request_vote() {
    let vote = |pre_vote, leadership_transfer| {
        msg(MessageBody::RequestVote {
            pre_vote,
            last_log_id: LogId::new(4, 9),
            leadership_transfer,
        })
    };
    // length, version, kind; from, to, term; body tag, flags, last log id (term, index)
    golden(
        &vote(false, false),
        "0000002c 01 10  0000000000000001 0000000000000002 0000000000000005
         01 00  0000000000000004 0000000000000009",
    );
    golden(
        &vote(true, false),
        "0000002c 01 10  0000000000000001 0000000000000002 0000000000000005
         01 01  0000000000000004 0000000000000009",
    );
    golden(
        &vote(false, true),
        "0000002c 01 10  0000000000000001 0000000000000002 0000000000000005
         01 02  0000000000000004 0000000000000009",
    );
    golden(
        &vote(true, true),
        "0000002c 01 10  0000000000000001 0000000000000002 0000000000000005
         01 03  0000000000000004 0000000000000009",
    );
}

#[test]
fn golden_request_vote_response() {
    // flags: bit 0 pre_vote, bit 1 granted
    golden(
        &msg(MessageBody::RequestVoteResponse {
            pre_vote: true,
            granted: false,
        }),
        "0000001c 01 10  0000000000000001 0000000000000002 0000000000000005  02 01",
    );
    golden(
        &msg(MessageBody::RequestVoteResponse {
            pre_vote: false,
            granted: true,
        }),
        "0000001c 01 10  0000000000000001 0000000000000002 0000000000000005  02 02",
    );
}

#[test]
fn golden_append_entries_with_every_payload_kind() {
    let frame = msg(MessageBody::AppendEntries {
        prev_log_id: LogId::new(2, 10),
        entries: vec![
            Entry {
                term: 3,
                index: 11,
                payload: EntryPayload::Blank,
            },
            Entry {
                term: 3,
                index: 12,
                payload: EntryPayload::Normal(Bytes::from_static(b"hi!")),
            },
            Entry {
                term: 3,
                index: 13,
                payload: EntryPayload::Membership(Box::new(Membership::joint(
                    [1, 2, 3],
                    [2, 3, 4],
                    [5, 6],
                ))),
            },
            Entry {
                term: 3,
                index: 14,
                payload: EntryPayload::Membership(Box::new(Membership::new([1, 2, 3]))),
            },
        ],
        leader_commit: 9,
        round: 7,
        heartbeat: false,
    });
    golden(
        &frame,
        "000000f9 01 10  0000000000000001 0000000000000002 0000000000000005
         03                                   # append entries
         0000000000000002 000000000000000a    # prev log id 10@2
         0000000000000009                     # leader commit
         0000000000000007                     # round
         00                                   # flags: not a heartbeat
         00000004                             # entry count
         0000000000000003 000000000000000b 00 # 11@3 blank
         0000000000000003 000000000000000c 01 # 12@3 normal
           00000003 686921                    #   \"hi!\"
         0000000000000003 000000000000000d 02 # 13@3 membership
           00000003 0000000000000002 0000000000000003 0000000000000004 # voters (new)
           01                                                          # joint
           00000003 0000000000000001 0000000000000002 0000000000000003 # outgoing voters (old)
           00000002 0000000000000005 0000000000000006                  # learners
         0000000000000003 000000000000000e 02 # 14@3 membership
           00000003 0000000000000001 0000000000000002 0000000000000003 # voters
           00                                                          # not joint
           00000000                                                    # no learners",
    );
}

#[test]
fn golden_append_entries_heartbeat_and_probe() {
    golden(
        &msg(MessageBody::AppendEntries {
            prev_log_id: LogId::new(5, 20),
            entries: vec![],
            leader_commit: 20,
            round: 8,
            heartbeat: true,
        }),
        "00000040 01 10  0000000000000001 0000000000000002 0000000000000005
         03  0000000000000005 0000000000000014  0000000000000014  0000000000000008  01  00000000",
    );
    golden(
        &msg(MessageBody::AppendEntries {
            prev_log_id: LogId::new(5, 20),
            entries: vec![],
            leader_commit: 20,
            round: 8,
            heartbeat: false,
        }),
        "00000040 01 10  0000000000000001 0000000000000002 0000000000000005
         03  0000000000000005 0000000000000014  0000000000000014  0000000000000008  00  00000000",
    );
}

#[test]
fn golden_append_entries_response() {
    golden(
        &msg(MessageBody::AppendEntriesResponse {
            round: 7,
            result: AppendResult::Success { last_index: 13 },
        }),
        "0000002c 01 10  0000000000000001 0000000000000002 0000000000000005
         04  0000000000000007  01 000000000000000d",
    );
    golden(
        &msg(MessageBody::AppendEntriesResponse {
            round: 7,
            result: AppendResult::Conflict {
                rejected_prev: 10,
                hint: LogId::new(2, 8),
            },
        }),
        "0000003c 01 10  0000000000000001 0000000000000002 0000000000000005
         04  0000000000000007  02 000000000000000a  0000000000000002 0000000000000008",
    );
    golden(
        &msg(MessageBody::AppendEntriesResponse {
            round: 7,
            result: AppendResult::Installing,
        }),
        "00000024 01 10  0000000000000001 0000000000000002 0000000000000005
         04  0000000000000007  03",
    );
}

#[test]
fn golden_timeout_now() {
    golden(
        &msg(MessageBody::TimeoutNow),
        "0000001b 01 10  0000000000000001 0000000000000002 0000000000000005  05",
    );
}

#[test]
fn golden_install_snapshot() {
    golden(
        &msg(MessageBody::InstallSnapshot {
            meta: raft_core::SnapshotMeta {
                last_log_id: raft_core::LogId::new(3, 40),
                membership: Membership::with_learners([1, 2], [4]),
            },
        }),
        "0000004c 01 10  0000000000000001 0000000000000002 0000000000000005
         06                                                   # install snapshot
         0000000000000003 0000000000000028                    # last log id 40@3
         00000002 0000000000000001 0000000000000002           # voters 1, 2
         00                                                   # not joint
         00000001 0000000000000004                            # learner 4",
    );
    // Only as a snapshot's header: on a message stream it is refused (see
    // tests/malformed.rs); the header helpers round-trip it.
    let header = raft_core::Message {
        from: 1,
        to: 2,
        term: 5,
        body: MessageBody::InstallSnapshot {
            meta: raft_core::SnapshotMeta {
                last_log_id: raft_core::LogId::new(3, 40),
                membership: Membership::new([1, 2, 3]),
            },
        },
    };
    let bytes = codec::encode_snapshot_header(&header, 1 << 20).unwrap();
    assert_eq!(
        codec::decode_snapshot_header(bytes, 1 << 20).unwrap(),
        header
    );
    let not_header = codec::encode_to_bytes(&msg(MessageBody::TimeoutNow), 1 << 20).unwrap();
    assert!(codec::decode_snapshot_header(not_header, 1 << 20).is_err());
}

#[test]
fn golden_snapshot_frames() {
    golden(
        &Frame::SnapshotOffer(SnapshotOffer {
            transfer_id: 0x0102_0304_0506_0708,
            total_bytes: 4096,
            meta: Bytes::from_static(b"meta"),
        }),
        "0000001a 01 20  0102030405060708  0000000000001000  00000004 6d657461",
    );
    golden(
        &Frame::SnapshotResume { offset: 1024 },
        "0000000a 01 21  0000000000000400",
    );
    golden(
        &Frame::SnapshotChunk(SnapshotChunk {
            offset: 1024,
            crc32c: 0xdead_beef,
            data: Bytes::from_static(&[0xaa, 0xbb, 0xcc]),
        }),
        "00000015 01 22  0000000000000400  deadbeef  00000003 aabbcc",
    );
    golden(
        &Frame::SnapshotDone {
            total_bytes: 4096,
            crc32c: 0x1234_5678,
        },
        "0000000e 01 23  0000000000001000  12345678",
    );
    golden(&Frame::SnapshotResult { error: None }, "00000003 01 24  00");
    golden(
        &Frame::SnapshotResult {
            error: Some(SnapshotRefusal::new(RefusalReason::Other, "disk full")),
        },
        "00000010 01 24  01 00000009 6469736b2066756c6c",
    );
    // Typed refusals (tag 2, then the reason code): too_large 1, no_space 2,
    // not_allowed 3, not_accepting 4, invalid 5, storage 6.
    golden(
        &Frame::SnapshotResult {
            error: Some(SnapshotRefusal::new(RefusalReason::NoSpace, "disk full")),
        },
        "00000011 01 24  02 02 00000009 6469736b2066756c6c",
    );
    for (reason, code) in [
        (RefusalReason::TooLarge, "01"),
        (RefusalReason::NoSpace, "02"),
        (RefusalReason::NotAllowed, "03"),
        (RefusalReason::NotAccepting, "04"),
        (RefusalReason::Invalid, "05"),
        (RefusalReason::Storage, "06"),
    ] {
        golden(
            &Frame::SnapshotResult {
                error: Some(SnapshotRefusal::new(reason, "")),
            },
            &format!("00000008 01 24  02 {code} 00000000"),
        );
    }
    // A code this version does not know (a newer peer's): decoded with its
    // text, and sent on unchanged.
    golden(
        &Frame::SnapshotResult {
            error: Some(SnapshotRefusal::new(
                RefusalReason::Unknown(99),
                "disk full",
            )),
        },
        "00000011 01 24  02 63 00000009 6469736b2066756c6c",
    );
}

#[test]
fn golden_empty_snapshot_payloads() {
    golden(
        &Frame::SnapshotOffer(SnapshotOffer {
            transfer_id: 1,
            total_bytes: 0,
            meta: Bytes::new(),
        }),
        "00000016 01 20  0000000000000001  0000000000000000  00000000",
    );
    golden(
        &Frame::SnapshotResult {
            error: Some(SnapshotRefusal::new(RefusalReason::Other, "")),
        },
        "00000007 01 24  01 00000000",
    );
}

#[test]
fn stream_kinds_and_routing() {
    for kind in [
        StreamKind::Handshake,
        StreamKind::Control,
        StreamKind::Replication,
        StreamKind::Snapshot,
    ] {
        assert_eq!(StreamKind::from_byte(kind as u8), Some(kind));
    }
    assert_eq!(StreamKind::Handshake as u8, b'H');
    assert_eq!(StreamKind::Control as u8, b'C');
    assert_eq!(StreamKind::Replication as u8, b'R');
    assert_eq!(StreamKind::Snapshot as u8, b'S');
    assert_eq!(StreamKind::from_byte(b'X'), None);

    let append = |heartbeat, entries: Vec<Entry>| Message {
        from: 1,
        to: 2,
        term: 1,
        body: MessageBody::AppendEntries {
            prev_log_id: LogId::new(1, 1),
            entries,
            leader_commit: 0,
            round: 0,
            heartbeat,
        },
    };
    let blank = Entry {
        term: 1,
        index: 2,
        payload: EntryPayload::Blank,
    };
    assert_eq!(
        codec::stream_for(&append(true, vec![])),
        StreamKind::Control
    );
    assert_eq!(
        codec::stream_for(&append(false, vec![])),
        StreamKind::Replication
    );
    assert_eq!(
        codec::stream_for(&append(false, vec![blank])),
        StreamKind::Replication
    );
    let Frame::Message(timeout) = msg(MessageBody::TimeoutNow) else {
        unreachable!()
    };
    assert_eq!(codec::stream_for(&timeout), StreamKind::Control);
}

// ---------------------------------------------------------------------------------------------
// b. Round trips
// ---------------------------------------------------------------------------------------------

/// Node ids: often small (so sets collide), sometimes anything.
fn node_id() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..12, any::<u64>()]
}

fn id_set() -> impl Strategy<Value = BTreeSet<u64>> {
    prop::collection::btree_set(node_id(), 0..6)
}

fn log_id() -> impl Strategy<Value = LogId> {
    (any::<u64>(), any::<u64>()).prop_map(|(term, index)| LogId::new(term, index))
}

/// Memberships: sorted distinct ids, learners disjoint from the voters of both halves.
fn membership() -> impl Strategy<Value = Membership> {
    (id_set(), prop::option::of(id_set()), id_set()).prop_map(|(voters, outgoing, learners)| {
        let learners: Vec<u64> = learners
            .into_iter()
            .filter(|l| !voters.contains(l) && !outgoing.as_ref().is_some_and(|o| o.contains(l)))
            .collect();
        match outgoing {
            Some(old) => Membership::joint(old, voters, learners),
            None => Membership::with_learners(voters, learners),
        }
    })
}

fn payload() -> impl Strategy<Value = EntryPayload> {
    prop_oneof![
        Just(EntryPayload::Blank),
        prop::collection::vec(any::<u8>(), 0..300)
            .prop_map(|v| EntryPayload::Normal(Bytes::from(v))),
        membership().prop_map(|m| EntryPayload::Membership(Box::new(m))),
    ]
}

const MAX_ENTRIES: usize = 8;

fn append_entries() -> impl Strategy<Value = MessageBody> {
    // The last entry's index must not overflow: keep prev index <= u64::MAX - MAX_ENTRIES, with
    // extra weight right at the top of the range.
    let top = u64::MAX - MAX_ENTRIES as u64;
    let prev_index = prop_oneof![0..=top, (top - 16)..=top];
    (
        any::<u64>(),
        prev_index,
        prop::collection::vec((any::<u64>(), payload()), 0..=MAX_ENTRIES),
        any::<u64>(),
        any::<u64>(),
        any::<bool>(),
    )
        .prop_map(
            |(prev_term, prev_index, entries, leader_commit, round, heartbeat)| {
                let entries: Vec<Entry> = entries
                    .into_iter()
                    .enumerate()
                    .map(|(i, (term, payload))| Entry {
                        term,
                        index: prev_index + 1 + i as u64,
                        payload,
                    })
                    .collect();
                MessageBody::AppendEntries {
                    prev_log_id: LogId::new(prev_term, prev_index),
                    heartbeat: heartbeat && entries.is_empty(),
                    entries,
                    leader_commit,
                    round,
                }
            },
        )
}

fn append_result() -> impl Strategy<Value = AppendResult> {
    prop_oneof![
        any::<u64>().prop_map(|last_index| AppendResult::Success { last_index }),
        Just(AppendResult::Installing),
        (any::<u64>(), log_id()).prop_map(|(rejected_prev, hint)| AppendResult::Conflict {
            rejected_prev,
            hint
        }),
    ]
}

fn message_body() -> impl Strategy<Value = MessageBody> {
    prop_oneof![
        (any::<bool>(), log_id(), any::<bool>()).prop_map(
            |(pre_vote, last_log_id, leadership_transfer)| MessageBody::RequestVote {
                pre_vote,
                last_log_id,
                leadership_transfer,
            }
        ),
        (any::<bool>(), any::<bool>())
            .prop_map(|(pre_vote, granted)| MessageBody::RequestVoteResponse { pre_vote, granted }),
        append_entries(),
        (any::<u64>(), append_result())
            .prop_map(|(round, result)| MessageBody::AppendEntriesResponse { round, result }),
        Just(MessageBody::TimeoutNow),
        (any::<u64>(), bytes_up_to(64)).prop_map(|(request_id, command)| {
            MessageBody::ForwardPropose {
                request_id,
                command,
            }
        }),
        (any::<u64>(), log_id()).prop_map(|(request_id, id)| {
            MessageBody::ForwardProposeResponse {
                request_id,
                result: raft_core::ForwardProposeResult::Appended(id),
            }
        }),
        any::<u64>().prop_map(|request_id| MessageBody::ReadIndexRequest { request_id }),
        (any::<u64>(), any::<u64>()).prop_map(|(request_id, index)| {
            MessageBody::ReadIndexResponse {
                request_id,
                result: raft_core::ForwardReadResult::Index(index),
            }
        }),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    (any::<u64>(), any::<u64>(), any::<u64>(), message_body()).prop_map(|(from, to, term, body)| {
        Message {
            from,
            to,
            term,
            body,
        }
    })
}

fn bytes_up_to(n: usize) -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..n).prop_map(Bytes::from)
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        1 => (any::<u64>(), any::<u64>(), any::<Option<u128>>())
            .prop_map(|(from, to, cluster)| Frame::Hello(Hello { from, to, cluster })),
        1 => (any::<u64>(), any::<Option<u128>>())
            .prop_map(|(node, cluster)| Frame::Welcome { node, cluster }),
        4 => message().prop_map(Frame::Message),
        1 => (any::<u64>(), any::<u64>(), bytes_up_to(300)).prop_map(
            |(transfer_id, total_bytes, meta)| Frame::SnapshotOffer(SnapshotOffer {
                transfer_id,
                total_bytes,
                meta,
            })
        ),
        1 => any::<u64>().prop_map(|offset| Frame::SnapshotResume { offset }),
        1 => (any::<u64>(), any::<u32>(), bytes_up_to(300)).prop_map(|(offset, crc32c, data)| {
            Frame::SnapshotChunk(SnapshotChunk {
                offset,
                crc32c,
                data,
            })
        }),
        1 => (any::<u64>(), any::<u32>())
            .prop_map(|(total_bytes, crc32c)| Frame::SnapshotDone { total_bytes, crc32c }),
        1 => prop::option::of((0..RefusalReason::ALL.len(), any::<String>())).prop_map(|error| {
            Frame::SnapshotResult {
                error: error.map(|(r, text)| SnapshotRefusal::new(RefusalReason::ALL[r], text)),
            }
        }),
    ]
}

/// Encodes a frame that must encode.
fn encode(frame: &Frame) -> Bytes {
    encode_to_bytes(frame, MAX).expect("a generated frame encodes")
}

/// If `bytes` decode, the frame must re-encode to exactly the same bytes (the encoding is
/// canonical: the decoder never guesses or drops anything) and decode again to itself.
fn check_canonical(bytes: &Bytes) -> Result<(), TestCaseError> {
    if let Ok(frame) = decode_frame(bytes.clone(), MAX) {
        let again = encode(&frame);
        prop_assert_eq!(to_hex(&again), to_hex(bytes), "decoded {:?}", frame);
        prop_assert_eq!(decode_frame(again, MAX), Ok(frame));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        rng_seed: proptest::test_runner::RngSeed::Fixed(raft_core::testing::proptest_seed()),
        ..ProptestConfig::default()
    })]

    #[test]
    fn messages_round_trip(m in message()) {
        let frame = Frame::Message(m);
        let bytes = encode(&frame);
        prop_assert_eq!(
            u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize,
            bytes.len() - LENGTH_PREFIX_BYTES
        );
        prop_assert_eq!(bytes[4], PROTOCOL_VERSION);
        prop_assert_eq!(decode_frame(bytes.clone(), MAX), Ok(frame.clone()));
        prop_assert_eq!(decode_frame_content(bytes.slice(LENGTH_PREFIX_BYTES..)), Ok(frame));
    }

    #[test]
    fn frames_round_trip(frame in frame()) {
        let bytes = encode(&frame);
        prop_assert_eq!(decode_frame(bytes, MAX), Ok(frame));
    }

    #[test]
    fn frames_appended_to_a_buffer_round_trip(frames in prop::collection::vec(frame(), 1..5)) {
        let mut out = BytesMut::from(&b"junk"[..]);
        let mut ends = vec![out.len()];
        for f in &frames {
            encode_frame(f, MAX, &mut out).unwrap();
            ends.push(out.len());
        }
        let out = out.freeze();
        prop_assert_eq!(&out[..4], b"junk");
        for (f, w) in frames.iter().zip(ends.windows(2)) {
            prop_assert_eq!(decode_frame(out.slice(w[0]..w[1]), MAX), Ok(f.clone()));
        }
    }

    // -----------------------------------------------------------------------------------------
    // c. Robustness
    // -----------------------------------------------------------------------------------------

    /// (i) Arbitrary bytes never panic, whatever the limit.
    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..600),
        max in prop_oneof![Just(MAX), any::<u32>()],
    ) {
        let _ = decode_frame(Bytes::from(bytes), max);
    }

    /// (i, deeper) Arbitrary bodies behind a well-formed length, version and a (mostly) known
    /// kind reach the body decoders; they never panic, and whatever decodes is canonical.
    #[test]
    fn arbitrary_bodies_never_panic(
        kind in prop_oneof![
            prop::sample::select(vec![0x01u8, 0x02, 0x10, 0x20, 0x21, 0x22, 0x23, 0x24]),
            any::<u8>(),
        ],
        message_tag in 0u8..7,
        body in prop::collection::vec(any::<u8>(), 0..400),
    ) {
        let mut content = vec![PROTOCOL_VERSION, kind];
        if kind == 0x10 {
            // from, to, term, then a (mostly) valid body tag.
            content.extend_from_slice(&hex(HDR));
            content.push(message_tag);
        }
        content.extend_from_slice(&body);
        let bytes = with_prefix(&content);
        let _ = decode_frame_content(bytes.slice(LENGTH_PREFIX_BYTES..));
        check_canonical(&bytes)?;
    }

    /// (ii) Every strict prefix of a valid frame is a truncation error, both as raw bytes and
    /// as frame content behind a length prefix that matches it.
    #[test]
    fn strict_prefixes_are_truncation_errors(frame in frame()) {
        let bytes = encode(&frame);
        let content = bytes.slice(LENGTH_PREFIX_BYTES..);
        // The handshake's optional cluster id: without it, the same frame
        // minus the id (the previous release's), checked in the golden test.
        let optional = has_cluster_id(&frame).then(|| content.len() - 16);
        for i in 0..bytes.len() {
            if optional.is_some_and(|o| i == o + LENGTH_PREFIX_BYTES) {
                continue;
            }
            let r = decode_frame(bytes.slice(..i), MAX);
            prop_assert!(matches!(r, Err(DecodeError::Truncated(_))), "prefix {}: {:?}", i, r);
        }
        for j in 0..content.len() {
            if optional == Some(j) {
                continue;
            }
            let r = decode_frame_content(content.slice(..j));
            prop_assert!(matches!(r, Err(DecodeError::Truncated(_))), "content {}: {:?}", j, r);
            let r = decode_frame(with_prefix(&content[..j]), MAX);
            if j < FRAME_HEADER_BYTES {
                prop_assert_eq!(r, Err(DecodeError::TooSmall(j as u32)));
            } else {
                prop_assert!(
                    matches!(r, Err(DecodeError::Truncated(_))),
                    "reframed {}: {:?}",
                    j,
                    r
                );
            }
        }
    }

    /// (iii) A valid frame with one byte changed decodes to some frame (canonically) or is an
    /// error; it never panics.
    #[test]
    fn corrupted_byte_never_panics(
        frame in frame(),
        position in any::<prop::sample::Index>(),
        xor in 1u8..=255,
    ) {
        let mut bytes = encode(&frame).to_vec();
        let i = position.index(bytes.len());
        bytes[i] ^= xor;
        check_canonical(&Bytes::from(bytes))?;
    }

    /// (iii, stronger) Several bytes overwritten, in the body only (so the length still holds).
    #[test]
    fn corrupted_body_never_panics(
        frame in frame(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let mut bytes = encode(&frame).to_vec();
        let body = LENGTH_PREFIX_BYTES + FRAME_HEADER_BYTES;
        if bytes.len() > body {
            for (position, value) in edits {
                let i = body + position.index(bytes.len() - body);
                bytes[i] = value;
            }
        }
        check_canonical(&Bytes::from(bytes))?;
    }

    /// (iv) Bytes after a valid frame are `TrailingBytes`, whether they lie outside the length
    /// prefix or inside it.
    #[test]
    fn trailing_bytes_are_rejected(
        frame in frame(),
        extra in prop::collection::vec(any::<u8>(), 1..64),
    ) {
        // Bytes after a handshake frame without a cluster id are one (see
        // golden_hello_and_welcome_with_a_cluster_id).
        prop_assume!(!takes_cluster_id(&frame) || has_cluster_id(&frame));
        let bytes = encode(&frame);
        let mut outside = bytes.to_vec();
        outside.extend_from_slice(&extra);
        prop_assert_eq!(
            decode_frame(Bytes::from(outside), MAX),
            Err(DecodeError::TrailingBytes(extra.len()))
        );
        let mut inside = bytes[LENGTH_PREFIX_BYTES..].to_vec();
        inside.extend_from_slice(&extra);
        prop_assert_eq!(
            decode_frame(with_prefix(&inside), MAX),
            Err(DecodeError::TrailingBytes(extra.len()))
        );
    }
}

// ---------------------------------------------------------------------------------------------
// d. Limits and errors
// ---------------------------------------------------------------------------------------------

#[test]
fn length_prefix_over_the_limit_is_too_large() {
    // The limit is checked on the prefix alone, before the rest arrives.
    let r = decode_frame(Bytes::from(hex("00000065 01 02")), 100);
    assert_eq!(r, Err(DecodeError::TooLarge { len: 101, max: 100 }));
    let r = decode_frame(Bytes::from(hex("ffffffff")), MAX);
    assert_eq!(
        r,
        Err(DecodeError::TooLarge {
            len: u64::from(u32::MAX),
            max: u64::from(MAX)
        })
    );
    assert_eq!(
        check_frame_length(101u32.to_be_bytes(), 100),
        Err(DecodeError::TooLarge { len: 101, max: 100 })
    );
    assert_eq!(check_frame_length(100u32.to_be_bytes(), 100), Ok(100));
}

#[test]
fn length_prefix_below_the_header_is_too_small() {
    assert_eq!(decode_frame(framed(""), MAX), Err(DecodeError::TooSmall(0)));
    assert_eq!(
        decode_frame(framed("01"), MAX),
        Err(DecodeError::TooSmall(1))
    );
    assert_eq!(check_frame_length([0, 0, 0, 2], MAX), Ok(2));
    // Two bytes hold a header but not a Hello's body.
    assert!(matches!(decode_err("01 01"), DecodeError::Truncated(_)));
}

#[test]
fn frame_exactly_at_the_limit() {
    let frame = Frame::Welcome {
        node: 7,
        cluster: None,
    };
    let len = 10; // version, kind, node
    assert_eq!(encode_to_bytes(&frame, len).map(|b| b.len()), Ok(14));
    assert_eq!(
        encode_to_bytes(&frame, len - 1),
        Err(EncodeError::TooLarge { len: 10, max: 9 })
    );
    let bytes = encode_to_bytes(&frame, len).unwrap();
    assert_eq!(decode_frame(bytes.clone(), len), Ok(frame));
    assert_eq!(
        decode_frame(bytes, len - 1),
        Err(DecodeError::TooLarge { len: 10, max: 9 })
    );
}

#[test]
fn encode_over_the_limit_leaves_the_buffer_unchanged() {
    let frame = Frame::SnapshotChunk(SnapshotChunk {
        offset: 0,
        crc32c: 0,
        data: Bytes::from(vec![0u8; 1000]),
    });
    let mut out = BytesMut::from(&b"earlier frames"[..]);
    let r = encode_frame(&frame, 999, &mut out);
    // version, kind, offset, crc, length, data
    assert_eq!(
        r,
        Err(EncodeError::TooLarge {
            len: 1 + 1 + 8 + 4 + 4 + 1000,
            max: 999
        })
    );
    assert_eq!(&out[..], b"earlier frames");
    // The same buffer still takes a frame that fits.
    encode_frame(&Frame::SnapshotResume { offset: 1 }, 999, &mut out).unwrap();
    assert_eq!(
        decode_frame(out.freeze().slice(14..), 999),
        Ok(Frame::SnapshotResume { offset: 1 })
    );
}

#[test]
fn wrong_version_is_rejected() {
    assert_eq!(
        decode_err("02 02 0000000000000003"),
        DecodeError::Version { got: 2 }
    );
    assert_eq!(decode_err("00 02"), DecodeError::Version { got: 0 });
    assert_eq!(
        decode_frame_content(Bytes::from(hex("ff 01"))),
        Err(DecodeError::Version { got: 0xff })
    );
}

#[test]
fn unknown_kind_is_rejected() {
    for kind in [0x00u8, 0x03, 0x11, 0x25, 0xff] {
        assert_eq!(
            decode_err(&format!("01 {kind:02x} 0000000000000003")),
            DecodeError::UnknownKind(kind)
        );
    }
}

#[track_caller]
fn assert_invalid(content_hex: &str, expected_field: &str) {
    match decode_err(content_hex) {
        DecodeError::Invalid { field, .. } if field == expected_field => {}
        other => panic!("expected Invalid {{ field: {expected_field:?} }}, got {other:?}"),
    }
}

/// AppendEntries content up to (not including) the entry count: prev log id 10@2, commit 9,
/// round 7, then `flags`.
fn append_head(flags: &str) -> String {
    format!(
        "01 10 {HDR} 03  0000000000000002 000000000000000a  0000000000000009
         0000000000000007 {flags}"
    )
}

#[test]
fn non_consecutive_entries_are_invalid() {
    // Second entry skips index 12.
    assert_invalid(
        &format!(
            "{} 00000002  0000000000000003 000000000000000b 00
                          0000000000000003 000000000000000d 00",
            append_head("00")
        ),
        "entry index",
    );
    // First entry does not follow prev log id.
    assert_invalid(
        &format!(
            "{} 00000001  0000000000000003 000000000000000a 00",
            append_head("00")
        ),
        "entry index",
    );
    // Entries after u64::MAX cannot exist.
    assert_invalid(
        &format!(
            "01 10 {HDR} 03  0000000000000002 ffffffffffffffff  0000000000000000 0000000000000000
             00  00000001  0000000000000003 0000000000000000 00"
        ),
        "entry index",
    );
}

#[test]
fn heartbeat_with_entries_is_invalid() {
    assert_invalid(
        &format!(
            "{} 00000001  0000000000000003 000000000000000b 00",
            append_head("01")
        ),
        "append flags",
    );
}

#[test]
fn unknown_flag_bits_are_rejected() {
    for flags in ["04", "80", "ff"] {
        assert_invalid(
            &format!("01 10 {HDR} 01 {flags} 0000000000000004 0000000000000009"),
            "vote flags",
        );
        assert_invalid(&format!("01 10 {HDR} 02 {flags}"), "vote response flags");
    }
    for flags in ["02", "80", "ff"] {
        assert_invalid(&format!("{} 00000000", append_head(flags)), "append flags");
    }
}

#[test]
fn unknown_tags_are_rejected() {
    // 07..0a are the forwarding kinds (tests/codec_forward.rs).
    for tag in ["00", "0b", "ff"] {
        assert_invalid(&format!("01 10 {HDR} {tag}"), "message body tag");
    }
    assert_invalid(
        &format!("01 10 {HDR} 04 0000000000000007 04 000000000000000d"),
        "append result tag",
    );
    // `Installing` (tag 03) has no body: bytes after it are trailing bytes.
    decode_err(&format!(
        "01 10 {HDR} 04 0000000000000007 03 000000000000000d"
    ));
    assert_invalid(
        &format!(
            "{} 00000001  0000000000000003 000000000000000b 03",
            append_head("00")
        ),
        "payload tag",
    );
    assert_invalid(
        &format!(
            "{} 00000001  0000000000000003 000000000000000b 02  00000000 02 00000000",
            append_head("00")
        ),
        "joint tag",
    );
    assert_invalid("01 24 03", "result tag");
    // A typed refusal with a reason code this version does not know is not
    // invalid: it decodes as `Unknown` (see golden_snapshot_frames).
    for code in [0u8, 7] {
        assert_eq!(
            decode_frame(framed(&format!("01 24 02 {code:02x} 00000000")), MAX),
            Ok(Frame::SnapshotResult {
                error: Some(SnapshotRefusal::new(RefusalReason::Unknown(code), "")),
            })
        );
    }
    // A typed refusal cut off before its code is still truncated.
    assert!(matches!(
        decode_frame(framed("01 24 02"), MAX),
        Err(DecodeError::Truncated(_))
    ));
}

#[test]
fn snapshot_error_text_must_be_utf8() {
    assert_invalid("01 24 01 00000002 c328", "error text");
}

/// A membership entry in an AppendEntries; `membership_hex` is the encoded configuration.
fn membership_content(membership_hex: &str) -> String {
    format!(
        "{} 00000001  0000000000000003 000000000000000b 02 {membership_hex}",
        append_head("00")
    )
}

#[test]
fn learner_that_is_a_voter_is_rejected() {
    // voters {1, 2}, learners {2}
    assert_invalid(
        &membership_content(
            "00000002 0000000000000001 0000000000000002  00  00000001 0000000000000002",
        ),
        "learners",
    );
    // Joint: voters {1}, outgoing {1, 2}, learners {2}: 2 votes in the outgoing half.
    assert_invalid(
        &membership_content(
            "00000001 0000000000000001
             01 00000002 0000000000000001 0000000000000002
             00000001 0000000000000002",
        ),
        "learners",
    );
    // Sanity: the same joint configuration with learner 3 decodes.
    let ok = framed(&membership_content(
        "00000001 0000000000000001
         01 00000002 0000000000000001 0000000000000002
         00000001 0000000000000003",
    ));
    assert!(decode_frame(ok, MAX).is_ok());
}

#[test]
fn membership_ids_must_be_strictly_increasing() {
    assert_invalid(
        &membership_content("00000002 0000000000000002 0000000000000001  00  00000000"),
        "voters",
    );
    assert_invalid(
        &membership_content("00000002 0000000000000001 0000000000000001  00  00000000"),
        "voters",
    );
    assert_invalid(
        &membership_content("00000000  01 00000002 0000000000000003 0000000000000003  00000000"),
        "outgoing voters",
    );
    assert_invalid(
        &membership_content("00000000  00  00000002 0000000000000009 0000000000000008"),
        "learners",
    );
}

/// Counts and lengths far beyond the bytes present are errors found before any allocation
/// (allocating `u32::MAX` entries or ids would abort the test process).
#[test]
fn huge_counts_fail_without_allocating() {
    let truncated = |content: String| {
        let e = decode_err(&content);
        assert!(matches!(e, DecodeError::Truncated(_)), "{content}: {e:?}");
    };
    truncated(format!("{} ffffffff", append_head("00")));
    truncated(format!(
        "{} ffffffff {}",
        append_head("00"),
        "00".repeat(1000)
    ));
    // A count that fits the byte budget but whose entries are not all there.
    truncated(format!(
        "{} 00000002  0000000000000003 000000000000000b 00 {}",
        append_head("00"),
        "00".repeat(16)
    ));
    truncated(membership_content("ffffffff"));
    truncated(membership_content("00000000 01 ffffffff"));
    truncated(membership_content("00000000 00 ffffffff 0000000000000001"));
    truncated(format!(
        "{} 00000001  0000000000000003 000000000000000b 01 ffffffff 00",
        append_head("00")
    ));
    truncated("01 20 0000000000000001 0000000000000000 ffffffff 00".into());
    truncated("01 22 0000000000000000 00000000 ffffffff 00".into());
    truncated("01 24 01 ffffffff 00".into());
}

#[test]
fn snapshot_metadata_over_the_limit() {
    let big = SnapshotOffer {
        transfer_id: 1,
        total_bytes: 1,
        meta: Bytes::from(vec![0u8; SNAPSHOT_META_BYTES_MAX + 1]),
    };
    // The decoder refuses it even when the frame limit allows it...
    let mut content = hex("01 20 0000000000000001 0000000000000001");
    content.extend_from_slice(&(SNAPSHOT_META_BYTES_MAX as u32 + 1).to_be_bytes());
    content.extend_from_slice(&big.meta);
    match decode_frame(with_prefix(&content), u32::MAX) {
        Err(DecodeError::Invalid {
            field: "snapshot metadata",
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    // ...so the encoder must not produce it either (regression: it used to, whenever the frame
    // limit was above 1 MiB, e.g. the default 16 MiB), and it leaves the buffer unchanged.
    let mut out = BytesMut::from(&b"x"[..]);
    assert!(matches!(
        encode_frame(&Frame::SnapshotOffer(big.clone()), u32::MAX, &mut out),
        Err(EncodeError::Unrepresentable(_))
    ));
    assert_eq!(&out[..], b"x");
    // Exactly at the limit is fine.
    let at_limit = Frame::SnapshotOffer(SnapshotOffer {
        meta: big.meta.slice(..SNAPSHOT_META_BYTES_MAX),
        ..big
    });
    let bytes = encode_to_bytes(&at_limit, u32::MAX).unwrap();
    assert_eq!(decode_frame(bytes, u32::MAX), Ok(at_limit));
}

/// Regression: the learner/voter overlap check was quadratic, so one frame full of ids could
/// pin a core for minutes (about 10^12 comparisons at the default 16 MiB frame limit). This
/// frame (~1 MiB, 2 x 65,000 ids) took 38 s in a debug build before the fix and milliseconds
/// after. No time is asserted (tests carry no timing assertions); a regression shows up as
/// this test turning slow.
#[test]
fn large_membership_decodes() {
    let n = 65_000u64;
    let membership = Membership::with_learners(0..n, n..2 * n);
    let frame = msg(MessageBody::AppendEntries {
        prev_log_id: LogId::new(1, 1),
        entries: vec![Entry {
            term: 1,
            index: 2,
            payload: EntryPayload::Membership(Box::new(membership)),
        }],
        leader_commit: 0,
        round: 0,
        heartbeat: false,
    });
    let bytes = encode_to_bytes(&frame, 2 << 20).unwrap();
    assert_eq!(decode_frame(bytes, 2 << 20), Ok(frame));
}
