//! The key-value commands that travel through the Raft log, and their
//! results. A command is proposed as the payload of a normal entry; every
//! replica decodes and applies it the same way, so the encoding is strict
//! and versioned.
//!
//! Two command layouts are read: version 1, written by every earlier
//! release (and still written for a command without a principal, so its
//! bytes are unchanged), and version 2, which adds the principal that
//! scopes the idempotency key.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use sha2::{Digest, Sha256};

/// Format version of a command without a principal (the original layout)
/// and of encoded results.
const VERSION: u8 = 1;
/// Format version of a command that carries a principal.
const VERSION_SCOPED: u8 = 2;
/// Largest principal name, in bytes.
pub const PRINCIPAL_MAX_BYTES: usize = 64;
/// Bytes of SHA-256 kept in an idempotency fingerprint (128 bits).
pub const FINGERPRINT_BYTES: usize = 16;

/// What an idempotency record remembers of a request: the first
/// [`FINGERPRINT_BYTES`] bytes of a SHA-256 of everything but its token.
pub type Fingerprint = [u8; FINGERPRINT_BYTES];

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
    /// Who sent the request, as authenticated by the node that proposed it
    /// (`user` or `admin`, by the bearer token it presented; `None` when
    /// the API is open). Idempotency keys are scoped by it: the same key
    /// from two principals names two requests. Carried in the command so
    /// that every replica scopes identically.
    pub principal: Option<String>,
}

/// The write operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Set the key to the value.
    Put(Bytes),
    /// Remove the key.
    Delete,
    /// Set the key to the value and attach it to a lease (see
    /// [`crate::lease`]).
    PutLeased {
        /// The value.
        value: Bytes,
        /// The lease (not 0).
        lease: u64,
        /// The proposer's `--max-keys-per-lease`: the put is refused when
        /// the lease already holds that many keys.
        max_keys: u32,
    },
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
    /// A delete of an absent key, or a transaction with a put keeping the
    /// value or lease (`ignore_value`, `ignore_lease`) of an absent key;
    /// nothing changed.
    NotFound,
    /// The entry's payload is not a valid command; nothing changed.
    Malformed(String),
    /// An entry without a command (blank or membership).
    Noop,
    /// The idempotency key was used (within the window) by a different
    /// request; nothing changed.
    IdempotencyConflict,
    /// A compaction happened: history before `revision` is gone.
    Compacted {
        /// The new compacted revision.
        revision: u64,
    },
    /// A compaction was refused (its revision is already compacted, or
    /// above the current revision); nothing changed.
    CompactRefused {
        /// The compacted revision.
        compacted: u64,
        /// The store's current revision.
        current: u64,
    },
    /// A transaction ran (see [`crate::txn`]).
    Txn(Box<crate::txn::TxnResponse>),
    /// A transaction was refused when applied (a range too large, see
    /// [`crate::txn::TxnRefusal`]); nothing changed.
    TxnRefused(String),
    /// A lease was granted.
    LeaseGranted {
        /// Its id.
        id: u64,
        /// Its TTL, in seconds.
        ttl_secs: u64,
    },
    /// A lease was revoked; `rev` is the revision that deleted its keys
    /// (the store's revision when it had none).
    LeaseRevoked {
        /// The revision after the revoke.
        rev: u64,
    },
    /// A lease operation, or a put or transaction with a lease, was
    /// refused; nothing changed.
    LeaseRefused(crate::lease::LeaseRefusal),
}

/// First byte of an entry that records a member's addresses (not a
/// key-value command, whose first byte is the format version).
pub const MEMBER_TAG: u8 = 0x80;

/// First byte of an entry that compacts the revision history
/// (`COMPACT_TAG | revision:u64`).
pub const COMPACT_TAG: u8 = 0x81;

/// Encodes a compaction of the history up to `revision` as an entry
/// payload: every replica compacts at the same index.
pub fn encode_compact(revision: u64) -> Bytes {
    let mut out = BytesMut::with_capacity(9);
    out.put_u8(COMPACT_TAG);
    out.put_u64(revision);
    out.freeze()
}

/// Decodes what [`encode_compact`] wrote.
///
/// # Errors
///
/// [`DecodeError`] when it is not a compaction.
pub fn decode_compact(data: &[u8]) -> Result<u64, DecodeError> {
    match data {
        [COMPACT_TAG, rev @ ..] => <[u8; 8]>::try_from(rev)
            .map(u64::from_be_bytes)
            .map_err(|_| DecodeError("compaction revision")),
        _ => Err(DecodeError("compaction tag")),
    }
}

/// A member's addresses as the log records them.
///
/// `only_if_member` marks an update of a member's addresses
/// (`PUT /v1/cluster/members/{id}`): it is applied only while the node is
/// in the configuration last applied, so an update that commits after the
/// member's removal does not bring its record back. A record without it
/// (adding a learner, and every record an earlier release wrote) is
/// applied as it is. Earlier releases ignore the field and apply the
/// record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemberRecord {
    /// The member and its addresses.
    #[serde(flatten)]
    pub member: crate::config::Member,
    /// Applied only if the node is still a member when the entry applies.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub only_if_member: bool,
}

/// Encodes a member's addresses as an entry payload. Replicating addresses
/// through the log lets every node (and every snapshot) know how to reach
/// members added later.
pub fn encode_member(member: &crate::config::Member) -> Bytes {
    encode_member_record(&MemberRecord {
        member: member.clone(),
        only_if_member: false,
    })
}

/// Encodes a new address of an existing member (see [`MemberRecord`]).
pub fn encode_member_update(member: &crate::config::Member) -> Bytes {
    encode_member_record(&MemberRecord {
        member: member.clone(),
        only_if_member: true,
    })
}

fn encode_member_record(record: &MemberRecord) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u8(MEMBER_TAG);
    out.put_slice(&serde_json::to_vec(record).expect("a member serializes"));
    out.freeze()
}

/// A member's gRPC URL as a node publishes it (member record version 2,
/// `"v": 2`): it sets the gRPC URL of member `id` and nothing else, so a
/// node publishing its URL never changes the addresses recorded for it
/// (which may be newer than what the node knows). `grpc_url` absent means
/// "no gRPC URL" (the node serves none): the recorded one is cleared.
/// `peer_addr` and `client_addr` are recorded only when the member has no
/// record yet (an original member, known from `--initial-cluster`); the
/// leader sets them only then. Applied only while `id` is in the
/// configuration last applied. Earlier releases read a record with both
/// addresses as a plain record, and refuse one without them as malformed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcUrlRecord {
    /// The record version: [`GRPC_URL_RECORD_VERSION`].
    pub v: u8,
    /// The member.
    pub id: raft_core::NodeId,
    /// Its gRPC URL; none clears the recorded one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_url: Option<String>,
    /// Its peer address, recorded only when it has no record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_addr: Option<raft_net_quic::PeerAddr>,
    /// Its client address, recorded only when it has no record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_addr: Option<String>,
}

/// The version field of a [`GrpcUrlRecord`]; records without one are
/// version 1 ([`MemberRecord`]).
pub const GRPC_URL_RECORD_VERSION: u8 = 2;

/// A member's addresses that keep its recorded gRPC URL (member record
/// version 3, `"v": 3`): what `POST /v1/cluster/learners` and `PUT
/// /v1/cluster/members/{id}` record when the request carries no
/// `grpc_url`. Which URL stays is decided when the entry applies, from
/// the record then: the URL the node published last, even one committed
/// after the leader read the record (version 1 carried the URL the leader
/// read, and could put back one the node had just replaced). An update
/// (`only_if_member`, applied only while `id` is in the configuration
/// last applied) keeps the recorded URL whatever the recorded addresses; a
/// learner's record keeps it only when the recorded addresses are the
/// same ones (a node at other addresses is another process). Releases
/// before version 2 read it as a plain record without a URL; those with
/// version 2 refuse it as malformed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressRecord {
    /// The record version: [`ADDRESS_RECORD_VERSION`].
    pub v: u8,
    /// The member.
    pub id: raft_core::NodeId,
    /// Its peer address.
    pub peer_addr: raft_net_quic::PeerAddr,
    /// Its client address.
    pub client_addr: String,
    /// Applied only if the node is still a member when the entry applies.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub only_if_member: bool,
}

/// The version field of an [`AddressRecord`].
pub const ADDRESS_RECORD_VERSION: u8 = 3;

/// Encodes a member's addresses that keep its recorded gRPC URL (see
/// [`AddressRecord`]); `update` for a member's new addresses
/// (`only_if_member`).
pub fn encode_member_addresses(member: &crate::config::Member, update: bool) -> Bytes {
    let record = AddressRecord {
        v: ADDRESS_RECORD_VERSION,
        id: member.id,
        peer_addr: member.peer_addr.clone(),
        client_addr: member.client_addr.clone(),
        only_if_member: update,
    };
    let mut out = BytesMut::new();
    out.put_u8(MEMBER_TAG);
    out.put_slice(&serde_json::to_vec(&record).expect("a member serializes"));
    out.freeze()
}

/// A decoded member entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberEntry {
    /// A member's addresses (version 1: every record before version 2).
    Addresses(MemberRecord),
    /// A member's gRPC URL alone (version 2).
    GrpcUrl(GrpcUrlRecord),
    /// A member's addresses keeping its recorded gRPC URL (version 3).
    AddressesKeepingUrl(AddressRecord),
}

/// Encodes a member's gRPC URL alone (see [`GrpcUrlRecord`]).
pub fn encode_grpc_url(record: &GrpcUrlRecord) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u8(MEMBER_TAG);
    out.put_slice(&serde_json::to_vec(record).expect("a member serializes"));
    out.freeze()
}

/// Decodes what [`encode_member`], [`encode_member_update`],
/// [`encode_grpc_url`] or [`encode_member_addresses`] wrote.
///
/// # Errors
///
/// [`DecodeError`] when it is not a member record, or one of a later
/// version.
pub fn decode_member(data: &[u8]) -> Result<MemberEntry, DecodeError> {
    #[derive(serde::Deserialize)]
    struct Version {
        #[serde(default)]
        v: Option<u8>,
    }
    match data.split_first() {
        Some((&MEMBER_TAG, json)) => {
            let version: Version =
                serde_json::from_slice(json).map_err(|_| DecodeError("member record"))?;
            match version.v {
                None | Some(1) => serde_json::from_slice(json)
                    .map(MemberEntry::Addresses)
                    .map_err(|_| DecodeError("member record")),
                Some(GRPC_URL_RECORD_VERSION) => serde_json::from_slice(json)
                    .map(MemberEntry::GrpcUrl)
                    .map_err(|_| DecodeError("member gRPC URL record")),
                Some(ADDRESS_RECORD_VERSION) => serde_json::from_slice(json)
                    .map(MemberEntry::AddressesKeepingUrl)
                    .map_err(|_| DecodeError("member address record")),
                Some(_) => Err(DecodeError("member record of an unknown version")),
            }
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
    /// What an idempotency record remembers of the request: the first 128
    /// bits of a SHA-256 over everything but the token and the principal
    /// (operation, key, value, precondition), so that reusing a token for
    /// another request is detected instead of answered with the first
    /// request's result. A cryptographic hash: two different requests
    /// cannot be made to look alike, as they could under a CRC.
    pub fn fingerprint(&self) -> Fingerprint {
        let mut h = Sha256::new();
        h.update(b"raft-node idempotency fingerprint v2\0");
        h.update(self.anonymous().encode());
        let digest = h.finalize();
        let mut fp = [0u8; FINGERPRINT_BYTES];
        fp.copy_from_slice(&digest[..FINGERPRINT_BYTES]);
        fp
    }

    /// The fingerprint idempotency records written by earlier releases hold:
    /// a CRC-32C of the same bytes. Only compared against those records,
    /// until they leave the idempotency window.
    pub fn legacy_fingerprint(&self) -> u32 {
        crc32c::crc32c(&self.anonymous().encode())
    }

    /// The command without its token and principal (version 1 layout).
    fn anonymous(&self) -> Command {
        Command {
            idempotency_key: None,
            principal: None,
            ..self.clone()
        }
    }

    /// The name of this command's idempotency record in its principal's
    /// namespace, `None` without a token. Without a principal it is the
    /// token itself (as earlier releases named every record); with one,
    /// `0x00 | len:u8 | principal | token`, which no token (visible ASCII)
    /// can spell.
    pub fn idempotency_slot(&self) -> Option<Vec<u8>> {
        let token = self.idempotency_key.as_ref()?;
        Some(match &self.principal {
            None => token.as_bytes().to_vec(),
            Some(p) => {
                let mut slot = Vec::with_capacity(2 + p.len() + token.len());
                slot.push(0);
                slot.push(u8::try_from(p.len()).expect("principals are bounded"));
                slot.extend_from_slice(p.as_bytes());
                slot.extend_from_slice(token.as_bytes());
                slot
            }
        })
    }

    /// Encodes the command as an entry payload.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(32 + self.key.len());
        out.put_u8(if self.principal.is_some() {
            VERSION_SCOPED
        } else {
            VERSION
        });
        match &self.op {
            Op::Put(_) => out.put_u8(1),
            Op::Delete => out.put_u8(2),
            Op::PutLeased { .. } => out.put_u8(3),
        }
        match self.precondition {
            Precondition::None => out.put_u8(0),
            Precondition::IfMatch(rev) => {
                out.put_u8(1);
                out.put_u64(rev);
            }
            Precondition::IfNoneMatch => out.put_u8(2),
        }
        if let Some(p) = &self.principal {
            put_bytes(&mut out, p.as_bytes());
        }
        match &self.idempotency_key {
            None => out.put_u8(0),
            Some(k) => {
                out.put_u8(1);
                put_bytes(&mut out, k.as_bytes());
            }
        }
        put_bytes(&mut out, &self.key);
        match &self.op {
            Op::Put(v) => put_bytes(&mut out, v),
            Op::PutLeased {
                value,
                lease,
                max_keys,
            } => {
                put_bytes(&mut out, value);
                out.put_u64(*lease);
                out.put_u32(*max_keys);
            }
            Op::Delete => {}
        }
        out.freeze()
    }

    /// Decodes an entry payload.
    ///
    /// # Errors
    ///
    /// [`DecodeError`] naming the field that is wrong.
    pub fn decode(mut buf: Bytes) -> Result<Self, DecodeError> {
        let scoped = match get_u8(&mut buf, "version")? {
            VERSION => false,
            VERSION_SCOPED => true,
            _ => return Err(DecodeError("unknown version")),
        };
        let op = get_u8(&mut buf, "op")?;
        let precondition = match get_u8(&mut buf, "precondition")? {
            0 => Precondition::None,
            1 => Precondition::IfMatch(get_u64(&mut buf, "revision")?),
            2 => Precondition::IfNoneMatch,
            _ => return Err(DecodeError("precondition")),
        };
        let principal = if scoped {
            let p = get_bytes(&mut buf, "principal")?;
            if p.is_empty() || p.len() > PRINCIPAL_MAX_BYTES || !p.iter().all(u8::is_ascii_graphic)
            {
                return Err(DecodeError("principal"));
            }
            Some(String::from_utf8(p.to_vec()).map_err(|_| DecodeError("principal"))?)
        } else {
            None
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
            3 => {
                let value = get_bytes(&mut buf, "value")?;
                let lease = get_u64(&mut buf, "lease")?;
                if buf.remaining() < 4 {
                    return Err(DecodeError("max keys per lease"));
                }
                let max_keys = buf.get_u32();
                if lease == 0 || lease > crate::lease::MAX_LEASE_ID {
                    return Err(DecodeError("lease"));
                }
                Op::PutLeased {
                    value,
                    lease,
                    max_keys,
                }
            }
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
            principal,
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
            Outcome::Compacted { revision } => {
                out.put_u8(7);
                out.put_u64(*revision);
            }
            Outcome::CompactRefused { compacted, current } => {
                out.put_u8(8);
                out.put_u64(*compacted);
                out.put_u64(*current);
            }
            // Transactions carry no idempotency key, so their outcome is
            // never stored: only whether it succeeded and its revision are
            // encoded.
            Outcome::Txn(t) => {
                out.put_u8(9);
                out.put_u8(u8::from(t.succeeded));
                out.put_u64(t.revision);
            }
            Outcome::TxnRefused(m) => {
                out.put_u8(10);
                put_bytes(&mut out, m.as_bytes());
            }
            Outcome::LeaseGranted { id, ttl_secs } => {
                out.put_u8(11);
                out.put_u64(*id);
                out.put_u64(*ttl_secs);
            }
            Outcome::LeaseRevoked { rev } => {
                out.put_u8(12);
                out.put_u64(*rev);
            }
            Outcome::LeaseRefused(r) => {
                let (code, limit) = r.code();
                out.put_u8(13);
                out.put_u8(code);
                out.put_u64(limit);
            }
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
            7 => Outcome::Compacted {
                revision: get_u64(&mut buf, "revision")?,
            },
            8 => Outcome::CompactRefused {
                compacted: get_u64(&mut buf, "revision")?,
                current: get_u64(&mut buf, "revision")?,
            },
            9 => {
                let succeeded = match get_u8(&mut buf, "succeeded")? {
                    0 => false,
                    1 => true,
                    _ => return Err(DecodeError("succeeded")),
                };
                Outcome::Txn(Box::new(crate::txn::TxnResponse {
                    succeeded,
                    revision: get_u64(&mut buf, "revision")?,
                    responses: Vec::new(),
                }))
            }
            10 => {
                let m = get_bytes(&mut buf, "message")?;
                Outcome::TxnRefused(String::from_utf8_lossy(&m).into_owned())
            }
            11 => Outcome::LeaseGranted {
                id: get_u64(&mut buf, "lease id")?,
                ttl_secs: get_u64(&mut buf, "lease ttl")?,
            },
            12 => Outcome::LeaseRevoked {
                rev: get_u64(&mut buf, "revision")?,
            },
            13 => {
                let code = get_u8(&mut buf, "lease refusal")?;
                let limit = get_u64(&mut buf, "lease refusal limit")?;
                Outcome::LeaseRefused(
                    crate::lease::LeaseRefusal::from_code(code, limit)
                        .ok_or(DecodeError("lease refusal"))?,
                )
            }
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
                principal: None,
            },
            Command {
                op: Op::Delete,
                key: Bytes::from_static(b"\xff\x00"),
                precondition: Precondition::IfNoneMatch,
                idempotency_key: None,
                principal: None,
            },
            Command {
                op: Op::Put(Bytes::from_static(b"v")),
                key: Bytes::from_static(b"k"),
                precondition: Precondition::None,
                idempotency_key: Some("abc".into()),
                principal: Some("admin".into()),
            },
            Command {
                op: Op::PutLeased {
                    value: Bytes::from_static(b"v"),
                    lease: 7,
                    max_keys: 10,
                },
                key: Bytes::from_static(b"k"),
                precondition: Precondition::None,
                idempotency_key: None,
                principal: None,
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
            Outcome::Compacted { revision: 9 },
            Outcome::CompactRefused {
                compacted: 4,
                current: 8,
            },
            Outcome::Txn(Box::new(crate::txn::TxnResponse {
                succeeded: true,
                revision: 7,
                responses: Vec::new(),
            })),
            Outcome::TxnRefused("too large".into()),
            Outcome::LeaseGranted { id: 3, ttl_secs: 9 },
            Outcome::LeaseRevoked { rev: 12 },
            Outcome::LeaseRefused(crate::lease::LeaseRefusal::TooManyKeys { limit: 2 }),
        ];
        assert_eq!(decode_compact(&encode_compact(42)), Ok(42));
        assert!(decode_compact(&encode_compact(42)[..8]).is_err());
        for o in outcomes {
            assert_eq!(Outcome::decode(o.encode()), Ok(o));
        }
    }

    /// Commands written by earlier releases (format version 1, pinned
    /// bytes) still decode, and a command without a principal is still
    /// written in that layout byte for byte.
    #[test]
    fn version_1_commands_still_decode_and_are_still_written() {
        let v1: &[u8] = b"\x01\x01\x01\x00\x00\x00\x00\x00\x00\x00\x07\x01\x00\x00\x00\x03abc\
                          \x00\x00\x00\x01k\x00\x00\x00\x01v";
        let cmd = Command::decode(Bytes::from_static(v1)).unwrap();
        assert_eq!(
            cmd,
            Command {
                op: Op::Put(Bytes::from_static(b"v")),
                key: Bytes::from_static(b"k"),
                precondition: Precondition::IfMatch(7),
                idempotency_key: Some("abc".into()),
                principal: None,
            }
        );
        assert_eq!(cmd.encode().as_ref(), v1);
        assert_eq!(cmd.idempotency_slot().unwrap(), b"abc");
    }

    #[test]
    fn fingerprints_and_slots_tell_requests_and_principals_apart() {
        let put = |v: &'static [u8], principal: Option<&str>| Command {
            op: Op::Put(Bytes::from_static(v)),
            key: Bytes::from_static(b"k"),
            precondition: Precondition::None,
            idempotency_key: Some("t".into()),
            principal: principal.map(str::to_owned),
        };
        // The token and the principal are not part of the fingerprint; the
        // request is.
        assert_eq!(
            put(b"a", None).fingerprint(),
            put(b"a", Some("user")).fingerprint()
        );
        assert_ne!(put(b"a", None).fingerprint(), put(b"b", None).fingerprint());
        // Each principal has its own namespace of tokens.
        let slots = [
            put(b"a", None).idempotency_slot(),
            put(b"a", Some("user")).idempotency_slot(),
            put(b"a", Some("admin")).idempotency_slot(),
        ];
        assert_ne!(slots[0], slots[1]);
        assert_ne!(slots[1], slots[2]);
        assert_ne!(slots[0], slots[2]);
        // A principal that is empty, too long or not visible ASCII is refused.
        for bad in ["", " x", &"p".repeat(PRINCIPAL_MAX_BYTES + 1)] {
            let enc = put(b"a", Some(bad)).encode();
            assert!(Command::decode(enc).is_err(), "{bad:?}");
        }
    }
}
