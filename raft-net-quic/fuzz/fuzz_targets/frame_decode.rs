//! Fuzzes `codec::decode_frame` with arbitrary bytes: it must never panic, and
//! whatever decodes must re-encode to the same bytes and decode to itself.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use raft_net_quic::codec;

const MAX_FRAME_BYTES: u32 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = codec::decode_frame(Bytes::copy_from_slice(data), MAX_FRAME_BYTES) else {
        return;
    };
    let encoded = codec::encode_to_bytes(&frame, MAX_FRAME_BYTES)
        .expect("a decoded frame must encode within the same limit");
    let again = codec::decode_frame(encoded.clone(), MAX_FRAME_BYTES)
        .expect("an encoded frame must decode");
    assert_eq!(again, frame, "decode(encode(frame)) != frame");
    // The encoding is canonical: the decoder neither guesses nor drops anything.
    assert_eq!(&encoded[..], data, "re-encoding differs from the input");
});
