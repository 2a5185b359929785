//! The forwarding message kinds on the wire (`ForwardPropose`,
//! `ForwardProposeResponse`, `ReadIndexRequest`, `ReadIndexResponse`):
//! golden vectors, round trips, and corrupt input as errors, never panics.

use bytes::Bytes;
use proptest::prelude::*;
use raft_core::{
    ForwardProposeResult, ForwardReadResult, ForwardRefusal, LogId, Message, MessageBody,
};
use raft_net_quic::codec::{decode_frame, encode_to_bytes, DecodeError, Frame, StreamKind};

const MAX: u32 = 1 << 20;

fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

fn msg(body: MessageBody) -> Frame {
    Frame::Message(Message {
        from: 1,
        to: 2,
        term: 5,
        body,
    })
}

/// Message header as hex: version 1, kind message, from 1, to 2, term 5.
const HDR: &str = "01 10 0000000000000001 0000000000000002 0000000000000005";

/// `body_hex` after the header, with its length prefix.
fn framed(body_hex: &str) -> Vec<u8> {
    let content = hex(&format!("{HDR} {body_hex}"));
    let mut out = (content.len() as u32).to_be_bytes().to_vec();
    out.extend(content);
    out
}

fn golden(body: MessageBody, body_hex: &str) {
    let frame = msg(body);
    let expected = framed(body_hex);
    let encoded = encode_to_bytes(&frame, MAX).expect("encodes");
    assert_eq!(
        encoded.as_ref(),
        &expected[..],
        "encoding of {frame:?} changed"
    );
    assert_eq!(decode_frame(Bytes::from(expected), MAX), Ok(frame));
}

fn decode_err(body_hex: &str) -> DecodeError {
    match decode_frame(Bytes::from(framed(body_hex)), MAX) {
        Ok(f) => panic!("decoded to {f:?}, expected an error"),
        Err(e) => e,
    }
}

const REQ: &str = "0000000000000009";

#[test]
fn golden_forward_propose() {
    golden(
        MessageBody::ForwardPropose {
            request_id: 9,
            command: Bytes::from_static(b"ab"),
        },
        &format!("07 {REQ} 00000002 6162"),
    );
}

#[test]
fn golden_forward_propose_responses() {
    let answer = |result| MessageBody::ForwardProposeResponse {
        request_id: 9,
        result,
    };
    golden(
        answer(ForwardProposeResult::Appended(LogId::new(5, 7))),
        &format!("08 {REQ} 01 0000000000000005 0000000000000007"),
    );
    golden(
        answer(ForwardProposeResult::Refused(ForwardRefusal::NotLeader {
            leader: Some(3),
        })),
        &format!("08 {REQ} 02 01 01 0000000000000003"),
    );
    golden(
        answer(ForwardProposeResult::Refused(ForwardRefusal::NotLeader {
            leader: None,
        })),
        &format!("08 {REQ} 02 01 00"),
    );
    golden(
        answer(ForwardProposeResult::Refused(
            ForwardRefusal::TransferInProgress,
        )),
        &format!("08 {REQ} 02 02"),
    );
}

#[test]
fn golden_read_index_request_and_responses() {
    golden(
        MessageBody::ReadIndexRequest { request_id: 9 },
        &format!("09 {REQ}"),
    );
    golden(
        MessageBody::ReadIndexResponse {
            request_id: 9,
            result: ForwardReadResult::Index(12),
        },
        &format!("0a {REQ} 01 000000000000000c"),
    );
    golden(
        MessageBody::ReadIndexResponse {
            request_id: 9,
            result: ForwardReadResult::Refused(ForwardRefusal::Overloaded),
        },
        &format!("0a {REQ} 02 03"),
    );
}

#[test]
fn corrupt_forwarding_fields_are_errors() {
    for (body, field) in [
        (format!("08 {REQ} 03"), "forward result tag"),
        (format!("0a {REQ} 02 09"), "refusal code"),
        (format!("08 {REQ} 02 01 02"), "leader flag"),
    ] {
        match decode_err(&body) {
            DecodeError::Invalid { field: f, .. } => assert_eq!(f, field, "{body}"),
            e => panic!("{body}: {e:?}"),
        }
    }
    assert!(matches!(
        decode_err(&format!("07 {REQ} 00000010 6162")),
        DecodeError::Truncated(_)
    ));
    assert!(matches!(
        decode_err(&format!("0a {REQ} 01 0000")),
        DecodeError::Truncated(_)
    ));
    assert!(matches!(
        decode_err(&format!("09 {REQ} 00")),
        DecodeError::TrailingBytes(1)
    ));
}

/// A forwarded command (as large as an entry may be) counts against the
/// replication stream's byte bound; the small messages go on the control
/// stream.
#[test]
fn forwarded_commands_travel_on_the_replication_stream_the_rest_on_control() {
    let stream = |body| {
        let Frame::Message(m) = msg(body) else {
            unreachable!()
        };
        raft_net_quic::codec::stream_for(&m)
    };
    let command = Bytes::from_static(b"x");
    let propose = MessageBody::ForwardPropose {
        request_id: 1,
        command,
    };
    assert_eq!(stream(propose), StreamKind::Replication);
    let read = MessageBody::ReadIndexRequest { request_id: 1 };
    assert_eq!(stream(read), StreamKind::Control);
    let answer = MessageBody::ReadIndexResponse {
        request_id: 1,
        result: ForwardReadResult::Index(3),
    };
    assert_eq!(stream(answer), StreamKind::Control);
}

fn refusal() -> impl Strategy<Value = ForwardRefusal> {
    prop_oneof![
        any::<Option<u64>>().prop_map(|leader| ForwardRefusal::NotLeader { leader }),
        Just(ForwardRefusal::TransferInProgress),
        Just(ForwardRefusal::Overloaded),
    ]
}

fn forwarding_body() -> impl Strategy<Value = MessageBody> {
    prop_oneof![
        (any::<u64>(), prop::collection::vec(any::<u8>(), 0..200)).prop_map(|(request_id, c)| {
            MessageBody::ForwardPropose {
                request_id,
                command: Bytes::from(c),
            }
        }),
        (
            any::<u64>(),
            prop_oneof![
                (any::<u64>(), any::<u64>())
                    .prop_map(|(t, i)| ForwardProposeResult::Appended(LogId::new(t, i))),
                refusal().prop_map(ForwardProposeResult::Refused),
            ]
        )
            .prop_map(|(request_id, result)| MessageBody::ForwardProposeResponse {
                request_id,
                result
            }),
        any::<u64>().prop_map(|request_id| MessageBody::ReadIndexRequest { request_id }),
        (
            any::<u64>(),
            prop_oneof![
                any::<u64>().prop_map(ForwardReadResult::Index),
                refusal().prop_map(ForwardReadResult::Refused),
            ]
        )
            .prop_map(|(request_id, result)| MessageBody::ReadIndexResponse { request_id, result }),
    ]
}

proptest! {
    /// Every forwarding message decodes back to itself, and every prefix
    /// of its encoding and every single-byte corruption decodes to an
    /// error or to a frame, never a panic.
    #[test]
    fn forwarding_messages_round_trip_and_corruption_never_panics(
        body in forwarding_body(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let frame = msg(body);
        let bytes = encode_to_bytes(&frame, MAX).expect("encodes");
        prop_assert_eq!(decode_frame(bytes.clone(), MAX), Ok(frame));
        let cut = at.index(bytes.len());
        prop_assert!(decode_frame(bytes.slice(..cut), MAX).is_err());
        let mut corrupt = bytes.to_vec();
        corrupt[cut] = byte;
        let _ = decode_frame(Bytes::from(corrupt), MAX);
    }
}
