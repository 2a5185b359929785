//! [`KvCommand`]: the commands of [`MemKv`](super::MemKv) and their
//! encoding, decoded with bounds checks.

use bytes::{BufMut, Bytes, BytesMut};

use crate::state_machine::StateMachineError;

/// Tag byte of an encoded [`KvCommand::Put`].
pub(super) const TAG_PUT: u8 = 1;
/// Tag byte of an encoded [`KvCommand::Delete`].
pub(super) const TAG_DELETE: u8 = 2;
/// Tag byte of an encoded [`KvCommand::CompareAndSet`].
pub(super) const TAG_CAS: u8 = 3;

/// A command of the [`MemKv`](super::MemKv) state machine, carried in an
/// [`EntryPayload::Normal`](crate::EntryPayload::Normal) entry.
///
/// Encoding: a tag byte, then each field in order. Strings and byte strings
/// are a `u32` little-endian length followed by the bytes; the optional
/// `expected` of a compare-and-set is a byte 0 (absent) or 1 (present,
/// followed by the byte string).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvCommand {
    /// Sets `key` to `value`.
    Put {
        /// The key to write.
        key: String,
        /// The new value.
        value: Bytes,
    },
    /// Removes `key`.
    Delete {
        /// The key to remove.
        key: String,
    },
    /// Sets `key` to `value` if its current value is `expected` (`None`:
    /// the key must be absent).
    CompareAndSet {
        /// The key to write.
        key: String,
        /// The value the key must have for the write to happen.
        expected: Option<Bytes>,
        /// The new value.
        value: Bytes,
    },
}

impl KvCommand {
    /// Encodes the command for an [`EntryPayload::Normal`](crate::EntryPayload::Normal) entry.
    ///
    /// # Panics
    ///
    /// If a key or value is longer than `u32::MAX` bytes, which the format
    /// cannot express.
    pub fn encode(&self) -> Bytes {
        /// Writes a length-prefixed byte string.
        fn put_field(buf: &mut BytesMut, field: &[u8]) {
            let len = u32::try_from(field.len())
                .expect("KvCommand field longer than u32::MAX bytes cannot be encoded");
            buf.put_u32_le(len);
            buf.put_slice(field);
        }

        let mut buf = BytesMut::new();
        match self {
            KvCommand::Put { key, value } => {
                buf.reserve(1 + 8 + key.len() + value.len());
                buf.put_u8(TAG_PUT);
                put_field(&mut buf, key.as_bytes());
                put_field(&mut buf, value);
            }
            KvCommand::Delete { key } => {
                buf.reserve(1 + 4 + key.len());
                buf.put_u8(TAG_DELETE);
                put_field(&mut buf, key.as_bytes());
            }
            KvCommand::CompareAndSet {
                key,
                expected,
                value,
            } => {
                let expected_len = expected.as_ref().map_or(0, |e| 4 + e.len());
                buf.reserve(1 + 8 + 1 + key.len() + expected_len + value.len());
                buf.put_u8(TAG_CAS);
                put_field(&mut buf, key.as_bytes());
                match expected {
                    Some(expected) => {
                        buf.put_u8(1);
                        put_field(&mut buf, expected);
                    }
                    None => buf.put_u8(0),
                }
                put_field(&mut buf, value);
            }
        }
        buf.freeze()
    }

    /// Decodes a command encoded by [`encode`](Self::encode).
    ///
    /// # Errors
    ///
    /// A [`StateMachineError`] naming the problem ([`KvInvalid`]) when
    /// `bytes` is truncated, has an unknown tag, a key that is not UTF-8 or
    /// trailing bytes. Never panics, whatever the input.
    pub fn decode(bytes: &[u8]) -> Result<KvCommand, StateMachineError> {
        let invalid = |e: KvInvalid| StateMachineError::Invalid(e.to_string());
        let op = KvOp::decode(bytes).map_err(invalid)?;
        let key = |k: &[u8]| key_str(k).map(str::to_owned).map_err(invalid);
        Ok(match op {
            KvOp::Put { key: k, value } => KvCommand::Put {
                key: key(k)?,
                value: Bytes::copy_from_slice(value),
            },
            KvOp::Delete { key: k } => KvCommand::Delete { key: key(k)? },
            KvOp::CompareAndSet {
                key: k,
                expected,
                value,
            } => KvCommand::CompareAndSet {
                key: key(k)?,
                expected: expected.map(Bytes::copy_from_slice),
                value: Bytes::copy_from_slice(value),
            },
        })
    }
}

/// `key` as a string: a key must be UTF-8.
pub(super) fn key_str(key: &[u8]) -> Result<&str, KvInvalid> {
    std::str::from_utf8(key).map_err(|e| KvInvalid::KeyNotUtf8 {
        valid_up_to: e.valid_up_to(),
    })
}

/// Why a payload is not a valid [`KvCommand`]: what
/// [`KvResponse::Invalid`](super::KvResponse::Invalid) carries. Small and
/// `Copy`, so that skipping an invalid entry costs no allocation; its
/// `Display` names the problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KvInvalid {
    /// The payload ends inside the named field.
    #[error("kv command: truncated {0}")]
    Truncated(&'static str),
    /// The first byte is no command's tag.
    #[error("kv command: unknown tag {0}")]
    UnknownTag(u8),
    /// A compare-and-set's `expected` flag is neither 0 nor 1.
    #[error("kv command: expected flag {0}, want 0 or 1")]
    ExpectedFlag(u8),
    /// The key is not UTF-8; valid up to the given byte.
    #[error("kv command: key is not UTF-8 (valid up to byte {valid_up_to})")]
    KeyNotUtf8 {
        /// Bytes of the key that are valid UTF-8.
        valid_up_to: usize,
    },
    /// Bytes follow the command.
    #[error("kv command: {0} trailing bytes")]
    TrailingBytes(usize),
}

/// A decoded command borrowing its fields from the payload: what
/// [`MemKv`](super::MemKv) applies, copying only the key (when new) and
/// the value it keeps. Keys are not checked
/// for UTF-8 here: a key already in the map was checked when it was
/// written, so MemKv checks only keys it does not hold ([`key_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KvOp<'a> {
    Put {
        key: &'a [u8],
        value: &'a [u8],
    },
    Delete {
        key: &'a [u8],
    },
    CompareAndSet {
        key: &'a [u8],
        expected: Option<&'a [u8]>,
        value: &'a [u8],
    },
}

impl<'a> KvOp<'a> {
    /// Decodes `bytes` as [`KvCommand::decode`] does, borrowing the fields.
    pub(super) fn decode(bytes: &'a [u8]) -> Result<KvOp<'a>, KvInvalid> {
        let mut input = Decoder { rest: bytes };
        let op = match input.u8("tag")? {
            TAG_PUT => KvOp::Put {
                key: input.field("key")?,
                value: input.field("value")?,
            },
            TAG_DELETE => KvOp::Delete {
                key: input.field("key")?,
            },
            TAG_CAS => {
                let key = input.field("key")?;
                let expected = match input.u8("expected flag")? {
                    0 => None,
                    1 => Some(input.field("expected value")?),
                    other => return Err(KvInvalid::ExpectedFlag(other)),
                };
                KvOp::CompareAndSet {
                    key,
                    expected,
                    value: input.field("value")?,
                }
            }
            other => return Err(KvInvalid::UnknownTag(other)),
        };
        if !input.rest.is_empty() {
            return Err(KvInvalid::TrailingBytes(input.rest.len()));
        }
        Ok(op)
    }
}

/// A bounds-checked reader over an encoded [`KvCommand`].
struct Decoder<'a> {
    /// The bytes not read yet.
    rest: &'a [u8],
}

impl<'a> Decoder<'a> {
    fn u8(&mut self, what: &'static str) -> Result<u8, KvInvalid> {
        let (&byte, rest) = self.rest.split_first().ok_or(KvInvalid::Truncated(what))?;
        self.rest = rest;
        Ok(byte)
    }

    /// Reads a length-prefixed byte string, borrowed from the input.
    fn field(&mut self, what: &'static str) -> Result<&'a [u8], KvInvalid> {
        let (len, rest) = self
            .rest
            .split_first_chunk::<4>()
            .ok_or(KvInvalid::Truncated(what))?;
        // A length beyond the input (or beyond usize) is a truncation.
        let len = usize::try_from(u32::from_le_bytes(*len)).unwrap_or(usize::MAX);
        let (field, rest) = rest
            .split_at_checked(len)
            .ok_or(KvInvalid::Truncated(what))?;
        self.rest = rest;
        Ok(field)
    }
}
