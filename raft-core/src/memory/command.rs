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
    /// A [`StateMachineError`] naming the problem when `bytes` is truncated,
    /// has an unknown tag, a key that is not UTF-8 or trailing bytes. Never
    /// panics, whatever the input.
    pub fn decode(bytes: &[u8]) -> Result<KvCommand, StateMachineError> {
        let mut input = Decoder { rest: bytes };
        let command = match input.u8("tag")? {
            TAG_PUT => KvCommand::Put {
                key: input.string("key")?,
                value: input.bytes("value")?,
            },
            TAG_DELETE => KvCommand::Delete {
                key: input.string("key")?,
            },
            TAG_CAS => {
                let key = input.string("key")?;
                let expected = match input.u8("expected flag")? {
                    0 => None,
                    1 => Some(input.bytes("expected value")?),
                    other => {
                        return Err(StateMachineError::Invalid(format!(
                            "kv command: expected flag {other}, want 0 or 1"
                        )))
                    }
                };
                KvCommand::CompareAndSet {
                    key,
                    expected,
                    value: input.bytes("value")?,
                }
            }
            other => {
                return Err(StateMachineError::Invalid(format!(
                    "kv command: unknown tag {other}"
                )))
            }
        };
        if !input.rest.is_empty() {
            return Err(StateMachineError::Invalid(format!(
                "kv command: {} trailing bytes",
                input.rest.len()
            )));
        }
        Ok(command)
    }
}

/// A bounds-checked reader over an encoded [`KvCommand`].
struct Decoder<'a> {
    /// The bytes not read yet.
    rest: &'a [u8],
}

impl<'a> Decoder<'a> {
    /// The error for input that ends inside `what`.
    fn truncated(what: &str) -> StateMachineError {
        StateMachineError::Invalid(format!("kv command: truncated {what}"))
    }

    fn u8(&mut self, what: &str) -> Result<u8, StateMachineError> {
        let (&byte, rest) = self
            .rest
            .split_first()
            .ok_or_else(|| Self::truncated(what))?;
        self.rest = rest;
        Ok(byte)
    }

    /// Reads a length-prefixed byte string, borrowed from the input.
    fn field(&mut self, what: &str) -> Result<&'a [u8], StateMachineError> {
        let (len, rest) = self
            .rest
            .split_first_chunk::<4>()
            .ok_or_else(|| Self::truncated(what))?;
        let len = usize::try_from(u32::from_le_bytes(*len))
            .map_err(|_| StateMachineError::Invalid(format!("kv command: {what} too long")))?;
        let (field, rest) = rest
            .split_at_checked(len)
            .ok_or_else(|| Self::truncated(what))?;
        self.rest = rest;
        Ok(field)
    }

    fn bytes(&mut self, what: &str) -> Result<Bytes, StateMachineError> {
        self.field(what).map(Bytes::copy_from_slice)
    }

    fn string(&mut self, what: &str) -> Result<String, StateMachineError> {
        let field = self.field(what)?;
        std::str::from_utf8(field).map(str::to_owned).map_err(|e| {
            StateMachineError::Invalid(format!("kv command: {what} is not UTF-8: {e}"))
        })
    }
}
