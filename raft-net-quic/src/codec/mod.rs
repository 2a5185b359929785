//! The wire codec: every frame that crosses a peer connection.
//!
//! # Frame layout
//!
//! ```text
//! frame   = length:u32  version:u8  kind:u8  body
//! length  = bytes after the length field (version + kind + body),
//!           at most the configured `max_frame_bytes`
//! version = PROTOCOL_VERSION (1)
//! ```
//!
//! All integers are big-endian and fixed-width. Every decoder is strict: an
//! unknown kind, an unknown flag bit, a count larger than the bytes left, or
//! trailing bytes after the body are errors, never a panic or a guess.
//!
//! # Stream layout
//!
//! Each QUIC stream starts with one byte naming its role ([`StreamKind`]),
//! then carries frames:
//!
//! - handshake (bidirectional, opened by the dialer): [`Frame::Hello`], then
//!   [`Frame::Welcome`] back;
//! - control (unidirectional): vote traffic, heartbeats, every response and
//!   `TimeoutNow`; small and latency-critical;
//! - replication (unidirectional): AppendEntries that carry entries, in order;
//! - snapshot (bidirectional, one per transfer): [`Frame::SnapshotOffer`],
//!   [`Frame::SnapshotResume`] back, [`Frame::SnapshotChunk`]s,
//!   [`Frame::SnapshotDone`], and [`Frame::SnapshotResult`] back.
//!
//! The byte layout of each frame is pinned by golden vectors in the tests
//! (`tests/codec.rs`): changing it is a protocol change and needs a new
//! [`PROTOCOL_VERSION`].

use bytes::{Buf, BufMut, Bytes, BytesMut};
use raft_core::{
    AppendResult, Entry, EntryPayload, ForwardProposeResult, ForwardReadResult, ForwardRefusal,
    LogId, Membership, Message, MessageBody, SnapshotMeta,
};

pub use crate::refusal::{RefusalReason, SnapshotRefusal};

mod message;
mod stream;
use message::{decode_message, encode_message};
pub use stream::StreamKind;

/// The protocol version this crate speaks. A peer speaking another version is
/// refused at connection time.
pub const PROTOCOL_VERSION: u8 = 1;

/// Bytes of the length prefix.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// Bytes of the version and kind that follow the length prefix.
pub const FRAME_HEADER_BYTES: usize = 2;

/// The dialer's first frame: who it is, whom it meant to reach, and the
/// cluster it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// The dialer's node id; its certificate must name it.
    pub from: u64,
    /// The node id the dialer meant to reach.
    pub to: u64,
    /// The dialer's cluster id: an optional trailing field (16 bytes),
    /// absent from the previous release's `Hello` and from a node that
    /// has none.
    pub cluster: Option<u128>,
}

/// Offers a snapshot to the receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotOffer {
    /// The sender's id for this transfer; a retry after a broken connection
    /// reuses it so the receiver can resume.
    pub transfer_id: u64,
    /// Total bytes of snapshot data.
    pub total_bytes: u64,
    /// Opaque metadata for the receiver (for example the last included log
    /// id and membership), at most [`SNAPSHOT_META_BYTES_MAX`].
    pub meta: Bytes,
}

/// The largest snapshot metadata accepted.
pub const SNAPSHOT_META_BYTES_MAX: usize = 1 << 20;

/// One chunk of snapshot data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotChunk {
    /// Where `data` starts in the snapshot.
    pub offset: u64,
    /// CRC-32C of `data`.
    pub crc32c: u32,
    /// The bytes.
    pub data: Bytes,
}

/// Every frame kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Handshake request (dialer → acceptor).
    Hello(Hello),
    /// Handshake accepted; carries the acceptor's node id.
    Welcome {
        /// The acceptor's node id.
        node: u64,
        /// The acceptor's cluster id: an optional trailing field (16
        /// bytes), sent only to a dialer whose `Hello` carried one (the
        /// previous release refuses trailing bytes).
        cluster: Option<u128>,
    },
    /// A Raft message.
    Message(Message),
    /// Snapshot transfer start (sender → receiver).
    SnapshotOffer(SnapshotOffer),
    /// Where to resume: bytes the receiver already holds (receiver → sender).
    SnapshotResume {
        /// The offset of the first byte the receiver still needs.
        offset: u64,
    },
    /// Snapshot data (sender → receiver).
    SnapshotChunk(SnapshotChunk),
    /// End of the snapshot data (sender → receiver).
    SnapshotDone {
        /// Total bytes sent, which must equal the offer's.
        total_bytes: u64,
        /// CRC-32C of the whole snapshot.
        crc32c: u32,
    },
    /// The receiver's verdict (receiver → sender).
    SnapshotResult {
        /// `None` when the snapshot was stored; otherwise why not.
        error: Option<SnapshotRefusal>,
    },
}

mod kind {
    pub const HELLO: u8 = 0x01;
    pub const WELCOME: u8 = 0x02;
    pub const MESSAGE: u8 = 0x10;
    pub const SNAPSHOT_OFFER: u8 = 0x20;
    pub const SNAPSHOT_RESUME: u8 = 0x21;
    pub const SNAPSHOT_CHUNK: u8 = 0x22;
    pub const SNAPSHOT_DONE: u8 = 0x23;
    pub const SNAPSHOT_RESULT: u8 = 0x24;
}

/// `SnapshotResult` tags: stored; refused with text only (every reason
/// before typed ones, and [`RefusalReason::Other`]); refused with a reason
/// code, then the text (a code this version does not know decodes as
/// [`RefusalReason::Unknown`], text kept). The typed tag was added within protocol version 1:
/// a node from before it fails to decode the answer and counts the transfer
/// failed, which is what a refusal means anyway (see `docs/architecture.md`).
const RESULT_STORED: u8 = 0;
const RESULT_REFUSED_TEXT: u8 = 1;
const RESULT_REFUSED_TYPED: u8 = 2;

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The frame ends before its content does.
    #[error("frame truncated: {0}")]
    Truncated(&'static str),
    /// The frame's declared length exceeds the limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Declared length.
        len: u64,
        /// The configured maximum.
        max: u64,
    },
    /// The frame's length field is too small to hold a header.
    #[error("frame length {0} is too small for a frame header")]
    TooSmall(u32),
    /// The peer speaks another protocol version.
    #[error("protocol version {got} not supported (this node speaks {PROTOCOL_VERSION})")]
    Version {
        /// The version in the frame.
        got: u8,
    },
    /// An unknown frame kind.
    #[error("unknown frame kind {0:#04x}")]
    UnknownKind(u8),
    /// A field holds a value the protocol does not allow.
    #[error("invalid {field}: {detail}")]
    Invalid {
        /// Which field.
        field: &'static str,
        /// What is wrong with it.
        detail: String,
    },
    /// Bytes left over after the frame's body.
    #[error("{0} unexpected bytes after the frame body")]
    TrailingBytes(usize),
}

fn invalid(field: &'static str, detail: impl Into<String>) -> DecodeError {
    DecodeError::Invalid {
        field,
        detail: detail.into(),
    }
}

/// Why a frame could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The encoded frame would exceed the limit (for example one entry larger
    /// than the frame limit); nothing was written.
    #[error("encoded frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Encoded length (after the length prefix).
        len: u64,
        /// The configured maximum.
        max: u64,
    },
    /// A field does not fit the wire format.
    #[error("cannot encode {0}")]
    Unrepresentable(&'static str),
}

/// Appends `frame`, length prefix included, to `out`.
///
/// # Errors
///
/// [`EncodeError::TooLarge`] when the frame would exceed `max_frame_bytes`
/// (nothing is left in `out`), [`EncodeError::Unrepresentable`] for a field
/// that does not fit (a payload over 4 GiB, say).
pub fn encode_frame(
    frame: &Frame,
    max_frame_bytes: u32,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    let start = out.len();
    out.put_u32(0); // patched below
    out.put_u8(PROTOCOL_VERSION);
    let result = encode_body(frame, out);
    let len = (out.len() - start - LENGTH_PREFIX_BYTES) as u64;
    if let Err(e) = result {
        out.truncate(start);
        return Err(e);
    }
    if len > u64::from(max_frame_bytes) {
        out.truncate(start);
        return Err(EncodeError::TooLarge {
            len,
            max: u64::from(max_frame_bytes),
        });
    }
    out[start..start + LENGTH_PREFIX_BYTES].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// Encodes one frame into a new buffer (convenience for tests and tools).
///
/// # Errors
///
/// As [`encode_frame`].
pub fn encode_to_bytes(frame: &Frame, max_frame_bytes: u32) -> Result<Bytes, EncodeError> {
    let mut out = BytesMut::new();
    encode_frame(frame, max_frame_bytes, &mut out)?;
    Ok(out.freeze())
}

fn put_len(out: &mut BytesMut, len: usize, what: &'static str) -> Result<(), EncodeError> {
    let len = u32::try_from(len).map_err(|_| EncodeError::Unrepresentable(what))?;
    out.put_u32(len);
    Ok(())
}

fn encode_body(frame: &Frame, out: &mut BytesMut) -> Result<(), EncodeError> {
    match frame {
        Frame::Hello(h) => {
            out.put_u8(kind::HELLO);
            out.put_u64(h.from);
            out.put_u64(h.to);
            if let Some(c) = h.cluster {
                out.put_u128(c);
            }
        }
        Frame::Welcome { node, cluster } => {
            out.put_u8(kind::WELCOME);
            out.put_u64(*node);
            if let Some(c) = cluster {
                out.put_u128(*c);
            }
        }
        Frame::Message(m) => {
            out.put_u8(kind::MESSAGE);
            encode_message(m, out)?;
        }
        Frame::SnapshotOffer(o) => {
            if o.meta.len() > SNAPSHOT_META_BYTES_MAX {
                return Err(EncodeError::Unrepresentable(
                    "snapshot metadata over the limit",
                ));
            }
            out.put_u8(kind::SNAPSHOT_OFFER);
            out.put_u64(o.transfer_id);
            out.put_u64(o.total_bytes);
            put_len(out, o.meta.len(), "snapshot metadata")?;
            out.put_slice(&o.meta);
        }
        Frame::SnapshotResume { offset } => {
            out.put_u8(kind::SNAPSHOT_RESUME);
            out.put_u64(*offset);
        }
        Frame::SnapshotChunk(c) => {
            out.put_u8(kind::SNAPSHOT_CHUNK);
            out.put_u64(c.offset);
            out.put_u32(c.crc32c);
            put_len(out, c.data.len(), "snapshot chunk")?;
            out.put_slice(&c.data);
        }
        Frame::SnapshotDone {
            total_bytes,
            crc32c,
        } => {
            out.put_u8(kind::SNAPSHOT_DONE);
            out.put_u64(*total_bytes);
            out.put_u32(*crc32c);
        }
        Frame::SnapshotResult { error } => {
            out.put_u8(kind::SNAPSHOT_RESULT);
            match error {
                None => out.put_u8(RESULT_STORED),
                Some(e) => {
                    match e.reason.code() {
                        None => out.put_u8(RESULT_REFUSED_TEXT),
                        Some(code) => {
                            out.put_u8(RESULT_REFUSED_TYPED);
                            out.put_u8(code);
                        }
                    }
                    put_len(out, e.detail.len(), "snapshot error text")?;
                    out.put_slice(e.detail.as_bytes());
                }
            }
        }
    }
    Ok(())
}

/// Reads a frame's length prefix and checks it against the limit.
///
/// # Errors
///
/// [`DecodeError::TooLarge`] above `max_frame_bytes`, [`DecodeError::TooSmall`]
/// below the header size.
pub fn check_frame_length(
    prefix: [u8; LENGTH_PREFIX_BYTES],
    max_frame_bytes: u32,
) -> Result<usize, DecodeError> {
    let len = u32::from_be_bytes(prefix);
    if len > max_frame_bytes {
        return Err(DecodeError::TooLarge {
            len: u64::from(len),
            max: u64::from(max_frame_bytes),
        });
    }
    if (len as usize) < FRAME_HEADER_BYTES {
        return Err(DecodeError::TooSmall(len));
    }
    Ok(len as usize)
}

/// Decodes one whole frame, length prefix included, from `buf`, which must
/// hold exactly that frame.
///
/// # Errors
///
/// A [`DecodeError`] naming what is wrong; never panics, whatever the bytes.
pub fn decode_frame(mut buf: Bytes, max_frame_bytes: u32) -> Result<Frame, DecodeError> {
    if buf.len() < LENGTH_PREFIX_BYTES {
        return Err(DecodeError::Truncated("length prefix"));
    }
    let mut prefix = [0u8; LENGTH_PREFIX_BYTES];
    buf.copy_to_slice(&mut prefix);
    let len = check_frame_length(prefix, max_frame_bytes)?;
    if buf.len() < len {
        return Err(DecodeError::Truncated(
            "frame shorter than its length prefix",
        ));
    }
    if buf.len() > len {
        return Err(DecodeError::TrailingBytes(buf.len() - len));
    }
    decode_frame_content(buf)
}

/// Decodes a frame's content: what follows the length prefix (version, kind,
/// body), exactly.
///
/// # Errors
///
/// A [`DecodeError`] naming what is wrong; never panics, whatever the bytes.
pub fn decode_frame_content(buf: Bytes) -> Result<Frame, DecodeError> {
    let mut r = Reader(buf);
    let version = r.u8("version")?;
    if version != PROTOCOL_VERSION {
        return Err(DecodeError::Version { got: version });
    }
    let kind = r.u8("kind")?;
    let frame = match kind {
        kind::HELLO => Frame::Hello(Hello {
            from: r.u64("hello from")?,
            to: r.u64("hello to")?,
            cluster: r.trailing_cluster("hello cluster id")?,
        }),
        kind::WELCOME => Frame::Welcome {
            node: r.u64("welcome node")?,
            cluster: r.trailing_cluster("welcome cluster id")?,
        },
        kind::MESSAGE => Frame::Message(decode_message(&mut r)?),
        kind::SNAPSHOT_OFFER => {
            let transfer_id = r.u64("transfer id")?;
            let total_bytes = r.u64("total bytes")?;
            let len = r.len("metadata length")?;
            if len > SNAPSHOT_META_BYTES_MAX {
                return Err(invalid(
                    "snapshot metadata",
                    format!("{len} bytes exceeds {SNAPSHOT_META_BYTES_MAX}"),
                ));
            }
            Frame::SnapshotOffer(SnapshotOffer {
                transfer_id,
                total_bytes,
                meta: r.bytes(len, "snapshot metadata")?,
            })
        }
        kind::SNAPSHOT_RESUME => Frame::SnapshotResume {
            offset: r.u64("resume offset")?,
        },
        kind::SNAPSHOT_CHUNK => {
            let offset = r.u64("chunk offset")?;
            let crc32c = r.u32("chunk crc")?;
            let len = r.len("chunk length")?;
            Frame::SnapshotChunk(SnapshotChunk {
                offset,
                crc32c,
                data: r.bytes(len, "chunk data")?,
            })
        }
        kind::SNAPSHOT_DONE => Frame::SnapshotDone {
            total_bytes: r.u64("total bytes")?,
            crc32c: r.u32("snapshot crc")?,
        },
        kind::SNAPSHOT_RESULT => match r.u8("result tag")? {
            RESULT_STORED => Frame::SnapshotResult { error: None },
            tag @ (RESULT_REFUSED_TEXT | RESULT_REFUSED_TYPED) => {
                let reason = if tag == RESULT_REFUSED_TYPED {
                    RefusalReason::from_code(r.u8("refusal reason")?)
                } else {
                    RefusalReason::Other
                };
                let len = r.len("error length")?;
                let text = r.bytes(len, "error text")?;
                let text = String::from_utf8(text.to_vec())
                    .map_err(|_| invalid("error text", "not UTF-8"))?;
                Frame::SnapshotResult {
                    error: Some(SnapshotRefusal::new(reason, text)),
                }
            }
            t => return Err(invalid("result tag", format!("{t}"))),
        },
        other => return Err(DecodeError::UnknownKind(other)),
    };
    if r.0.has_remaining() {
        return Err(DecodeError::TrailingBytes(r.0.remaining()));
    }
    Ok(frame)
}

/// A cursor that turns every short read into an error.
struct Reader(Bytes);

impl Reader {
    fn need(&self, n: usize, what: &'static str) -> Result<(), DecodeError> {
        if self.0.remaining() < n {
            Err(DecodeError::Truncated(what))
        } else {
            Ok(())
        }
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        self.need(1, what)?;
        Ok(self.0.get_u8())
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        self.need(4, what)?;
        Ok(self.0.get_u32())
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        self.need(8, what)?;
        Ok(self.0.get_u64())
    }

    /// An optional trailing cluster id: nothing left, or 16 bytes (fewer
    /// are truncated; more are left for the trailing-bytes check).
    fn trailing_cluster(&mut self, what: &'static str) -> Result<Option<u128>, DecodeError> {
        if !self.0.has_remaining() {
            return Ok(None);
        }
        self.need(16, what)?;
        Ok(Some(self.0.get_u128()))
    }

    /// A u32 length, checked against the bytes left so a lying length
    /// cannot make us allocate.
    fn len(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        let n = self.u32(what)? as usize;
        if n > self.0.remaining() {
            return Err(DecodeError::Truncated(what));
        }
        Ok(n)
    }

    fn bytes(&mut self, n: usize, what: &'static str) -> Result<Bytes, DecodeError> {
        self.need(n, what)?;
        Ok(self.0.split_to(n))
    }

    fn log_id(&mut self, what: &'static str) -> Result<LogId, DecodeError> {
        let term = self.u64(what)?;
        let index = self.u64(what)?;
        Ok(LogId::new(term, index))
    }

    fn flags(&mut self, what: &'static str, allowed: u8) -> Result<u8, DecodeError> {
        let f = self.u8(what)?;
        if f & !allowed != 0 {
            return Err(invalid(what, format!("unknown flag bits {f:#04x}")));
        }
        Ok(f)
    }
}

/// Encodes a snapshot's header (the engine's `InstallSnapshot` message) for
/// [`SnapshotOffer::meta`].
///
/// # Errors
///
/// [`EncodeError`] when it does not fit the frame limit.
pub fn encode_snapshot_header(
    header: &Message,
    max_frame_bytes: u32,
) -> Result<Bytes, EncodeError> {
    encode_to_bytes(&Frame::Message(header.clone()), max_frame_bytes)
}

/// Decodes what [`encode_snapshot_header`] wrote, and checks it is an
/// `InstallSnapshot` message.
///
/// # Errors
///
/// [`DecodeError`] for anything else.
pub fn decode_snapshot_header(meta: Bytes, max_frame_bytes: u32) -> Result<Message, DecodeError> {
    match decode_frame(meta, max_frame_bytes)? {
        Frame::Message(m) if matches!(m.body, MessageBody::InstallSnapshot { .. }) => Ok(m),
        _ => Err(invalid(
            "snapshot header",
            "not an InstallSnapshot message".to_string(),
        )),
    }
}

/// Which stream a message travels on: [`StreamKind::Replication`] for
/// AppendEntries that must keep their order, [`StreamKind::Control`] for
/// everything else (votes, heartbeats, responses, `TimeoutNow`).
pub fn stream_for(m: &Message) -> StreamKind {
    match &m.body {
        MessageBody::AppendEntries {
            heartbeat: false, ..
        } => StreamKind::Replication,
        // A forwarded command may be as large as an entry: it counts
        // against the replication queue's byte bound, not the control one.
        MessageBody::ForwardPropose { .. } => StreamKind::Replication,
        _ => StreamKind::Control,
    }
}
