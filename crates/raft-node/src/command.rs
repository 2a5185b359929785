//! The key-value commands that travel through the Raft log, and their
//! results. A command is proposed as the payload of a normal entry; every
//! replica decodes and applies it the same way, so the encoding is strict
//! and versioned.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Format version of encoded commands and results.
const VERSION: u8 = 1;

/// A write's precondition on the key's current revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// No precondition.
    None,
    /// `If-Match: "<rev>"`: the key must exist at exactly this revision.
    IfMatch(u64),
    /// `If-None-Match: *`: the key must not exist.
    IfNoneMatch,
}

/// A write command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// What to do.
    pub op: Op,
    /// The key (raw bytes).
    pub key: Bytes,
    /// The precondition.
    pub precondition: Precondition,
    /// `Idempotency-Key`: a retry with the same token returns the first
    /// result instead of applying again.
    pub idempotency_key: Option<String>,
}

/// The write operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Set the key to the value.
    Put(Bytes),
    /// Remove the key.
    Delete,
}

/// The result of applying a command (or of an entry that carries none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The write happened; `rev` is its revision (the log index).
    Applied {
        /// The new revision.
        rev: u64,
    },
    /// The precondition failed; nothing changed. `current` is the key's
    /// revision (None when absent).
    PreconditionFailed {
        /// The key's current revision.
        current: Option<u64>,
    },
    /// A delete of an absent key; nothing changed.
    NotFound,
    /// The entry's payload is not a valid command; nothing changed.
    Malformed(String),
    /// An entry without a command (blank or membership).
    Noop,
    /// The idempotency key was used (within the window) by a different
    /// request; nothing changed.
    IdempotencyConflict,
}

/// First byte of an entry that records a member's addresses (not a
/// key-value command, whose first byte is the format version).
pub const MEMBER_TAG: u8 = 0x80;

/// Encodes a member's addresses as an entry payload. Replicating addresses
/// through the log lets every node (and every snapshot) know how to reach
/// members added later.
pub fn encode_member(member: &crate::config::Member) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u8(MEMBER_TAG);
    out.put_slice(&serde_json::to_vec(member).expect("a member serializes"));
    out.freeze()
}

/// Decodes what [`encode_member`] wrote.
///
/// # Errors
///
/// [`DecodeError`] when it is not a member record.
pub fn decode_member(data: &[u8]) -> Result<crate::config::Member, DecodeError> {
    match data.split_first() {
        Some((&MEMBER_TAG, json)) => {
            serde_json::from_slice(json).map_err(|_| DecodeError("member record"))
        }
        _ => Err(DecodeError("member record tag")),
    }
}

/// Why bytes are not a valid command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed command: {0}")]
pub struct DecodeError(pub &'static str);

fn put_bytes(out: &mut BytesMut, b: &[u8]) {
    out.put_u32(u32::try_from(b.len()).expect("fields are bounded by the request limits"));
    out.put_slice(b);
}

fn get_bytes(buf: &mut Bytes, what: &'static str) -> Result<Bytes, DecodeError> {
    if buf.remaining() < 4 {
        return Err(DecodeError(what));
    }
    let n = buf.get_u32() as usize;
    if buf.remaining() < n {
        return Err(DecodeError(what));
    }
    Ok(buf.split_to(n))
}

fn get_u8(buf: &mut Bytes, what: &'static str) -> Result<u8, DecodeError> {
    if buf.remaining() < 1 {
        return Err(DecodeError(what));
    }
    Ok(buf.get_u8())
}

fn get_u64(buf: &mut Bytes, what: &'static str) -> Result<u64, DecodeError> {
    if buf.remaining() < 8 {
        return Err(DecodeError(what));
    }
    Ok(buf.get_u64())
}

impl Command {
    /// What an idempotency record remembers of the request: a checksum of
    /// everything but the token, so reusing a token for another request is
    /// detected instead of answered with the first request's result.
    pub fn fingerprint(&self) -> u32 {
        let anonymous = Command {
            idempotency_key: None,
            ..self.clone()
        };
        crc32c::crc32c(&anonymous.encode())
    }

    /// Encodes the command as an entry payload.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(32 + self.key.len());
        out.put_u8(VERSION);
        match &self.op {
            Op::Put(_) => out.put_u8(1),
            Op::Delete => out.put_u8(2),
        }
        match self.precondition {
            Precondition::None => out.put_u8(0),
            Precondition::IfMatch(rev) => {
                out.put_u8(1);
                out.put_u64(rev);
            }
            Precondition::IfNoneMatch => out.put_u8(2),
        }
        match &self.idempotency_key {
            None => out.put_u8(0),
            Some(k) => {
                out.put_u8(1);
                put_bytes(&mut out, k.as_bytes());
            }
        }
        put_bytes(&mut out, &self.key);
        if let Op::Put(v) = &self.op {
            put_bytes(&mut out, v);
        }
        out.freeze()
    }

    /// Decodes an entry payload.
    ///
    /// # Errors
    ///
    /// [`DecodeError`] naming the field that is wrong.
    pub fn decode(mut buf: Bytes) -> Result<Self, DecodeError> {
        if get_u8(&mut buf, "version")? != VERSION {
            return Err(DecodeError("unknown version"));
        }
        let op = get_u8(&mut buf, "op")?;
        let precondition = match get_u8(&mut buf, "precondition")? {
            0 => Precondition::None,
            1 => Precondition::IfMatch(get_u64(&mut buf, "revision")?),
            2 => Precondition::IfNoneMatch,
            _ => return Err(DecodeError("precondition")),
        };
        let idempotency_key = match get_u8(&mut buf, "idempotency flag")? {
            0 => None,
            1 => {
                let k = get_bytes(&mut buf, "idempotency key")?;
                Some(String::from_utf8(k.to_vec()).map_err(|_| DecodeError("idempotency key"))?)
            }
            _ => return Err(DecodeError("idempotency flag")),
        };
        let key = get_bytes(&mut buf, "key")?;
        let op = match op {
            1 => Op::Put(get_bytes(&mut buf, "value")?),
            2 => Op::Delete,
            _ => return Err(DecodeError("op")),
        };
        if buf.has_remaining() {
            return Err(DecodeError("trailing bytes"));
        }
        Ok(Self {
            op,
            key,
            precondition,
            idempotency_key,
        })
    }
}

impl Outcome {
    /// Encodes the outcome (for the idempotency table).
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(16);
        out.put_u8(VERSION);
        match self {
            Outcome::Applied { rev } => {
                out.put_u8(1);
                out.put_u64(*rev);
            }
            Outcome::PreconditionFailed { current } => {
                out.put_u8(2);
                out.put_u64(current.unwrap_or(0));
            }
            Outcome::NotFound => out.put_u8(3),
            Outcome::Malformed(m) => {
                out.put_u8(4);
                put_bytes(&mut out, m.as_bytes());
            }
            Outcome::Noop => out.put_u8(5),
            Outcome::IdempotencyConflict => out.put_u8(6),
        }
        out.freeze()
    }

    /// Decodes an outcome stored by [`Outcome::encode`].
    ///
    /// # Errors
    ///
    /// [`DecodeError`] for bytes that are not an outcome.
    pub fn decode(mut buf: Bytes) -> Result<Self, DecodeError> {
        if get_u8(&mut buf, "version")? != VERSION {
            return Err(DecodeError("unknown version"));
        }
        let o = match get_u8(&mut buf, "outcome")? {
            1 => Outcome::Applied {
                rev: get_u64(&mut buf, "revision")?,
            },
            2 => {
                let r = get_u64(&mut buf, "revision")?;
                Outcome::PreconditionFailed {
                    current: (r != 0).then_some(r),
                }
            }
            3 => Outcome::NotFound,
            4 => {
                let m = get_bytes(&mut buf, "message")?;
                Outcome::Malformed(String::from_utf8_lossy(&m).into_owned())
            }
            5 => Outcome::Noop,
            6 => Outcome::IdempotencyConflict,
            _ => return Err(DecodeError("outcome")),
        };
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_and_garbage_is_refused() {
        let cmds = [
            Command {
                op: Op::Put(Bytes::from_static(b"v")),
                key: Bytes::from_static(b"k"),
                precondition: Precondition::IfMatch(7),
                idempotency_key: Some("abc".into()),
            },
            Command {
                op: Op::Delete,
                key: Bytes::from_static(b"\xff\x00"),
                precondition: Precondition::IfNoneMatch,
                idempotency_key: None,
            },
        ];
        for c in cmds {
            let enc = c.encode();
            assert_eq!(Command::decode(enc.clone()), Ok(c));
            for cut in 0..enc.len() {
                assert!(Command::decode(enc.slice(..cut)).is_err());
            }
        }
        let outcomes = [
            Outcome::Applied { rev: 5 },
            Outcome::PreconditionFailed { current: None },
            Outcome::PreconditionFailed { current: Some(3) },
            Outcome::NotFound,
            Outcome::Malformed("x".into()),
            Outcome::Noop,
            Outcome::IdempotencyConflict,
        ];
        for o in outcomes {
            assert_eq!(Outcome::decode(o.encode()), Ok(o));
        }
    }
}
