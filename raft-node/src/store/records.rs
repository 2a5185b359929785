//! The store's record formats and key layout, pure: key-value records
//! (`version | crc32c | mod_rev | create_rev | version | value`), idempotency records of both
//! versions, and the keys of `kv_meta`.

use bytes::{BufMut, Bytes, BytesMut};

use super::{StoreError, Versioned};
use crate::command::{Command, Fingerprint, Outcome, FINGERPRINT_BYTES};

/// The applied index, u64 (this replica's bookkeeping).
pub(super) const APPLIED_KEY: &[u8] = b"applied";
/// The metadata of the latest snapshot (raft-log's record encoding).
pub(super) const SNAPSHOT_META_KEY: &[u8] = b"snapshot";
/// Set while a snapshot install is in progress (the snapshot's metadata).
pub(super) const INSTALLING_KEY: &[u8] = b"installing";
/// Prefix of the replicated member address records: `m/<id:u64>`.
pub(super) const MEMBER_PREFIX: &[u8] = b"m/";
/// The members (ids) of the last configuration entry applied, as JSON: a
/// later configuration deletes the address records of the nodes it drops.
pub(super) const APPLIED_MEMBERS_KEY: &[u8] = b"applied_members";
/// Prefix of the idempotency records: `i/<slot>`.
pub(super) const TOKEN_PREFIX: &[u8] = b"i/";
/// Prefix of the idempotency order keys: `x/<index:u64><slot>`.
pub(super) const ORDER_PREFIX: &[u8] = b"x/";

/// The index of the first command applied with a principal (a scoped
/// idempotency key), u64: unscoped records older than it were written
/// before scoping existed, so a scoped retry of the same token finds them
/// (a write retried across the upgrade is not applied twice). Replicated:
/// a function of the log.
pub(super) const SCOPED_SINCE_KEY: &[u8] = b"idempotency_scoped_since";

/// Whether a `kv_meta` key is replicated state (part of a snapshot), as
/// opposed to this replica's bookkeeping.
pub(super) fn is_replicated_meta(key: &[u8]) -> bool {
    key != APPLIED_KEY && key != SNAPSHOT_META_KEY && key != INSTALLING_KEY
}

/// The key of member `id`'s address record.
pub(super) fn member_key(id: u64) -> Vec<u8> {
    let mut k = MEMBER_PREFIX.to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// The key of the idempotency record of `slot`.
pub(super) fn token_key(slot: &[u8]) -> Vec<u8> {
    let mut k = TOKEN_PREFIX.to_vec();
    k.extend_from_slice(slot);
    k
}

/// The order key of `slot`'s record written at `index`: order keys sort by
/// index, so the ones out of the window come first.
pub(super) fn order_key(index: u64, slot: &[u8]) -> Vec<u8> {
    let mut k = ORDER_PREFIX.to_vec();
    k.extend_from_slice(&index.to_be_bytes());
    k.extend_from_slice(slot);
    k
}

/// The index and slot of an order key.
pub(super) fn decode_order_key(k: &[u8]) -> Result<(u64, &[u8]), StoreError> {
    let index = k
        .get(2..10)
        .and_then(|i| <[u8; 8]>::try_from(i).ok())
        .map(u64::from_be_bytes);
    match (index, k.get(10..)) {
        (Some(index), Some(slot)) => Ok((index, slot)),
        _ => Err(StoreError::Corruption {
            key: String::from_utf8_lossy(k).into_owned(),
            detail: "idempotency order key too short",
        }),
    }
}

/// A u64 stored big-endian, when it is 8 bytes.
pub(super) fn decode_u64(v: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(v).ok().map(u64::from_be_bytes)
}

/// Version of the key-value records of earlier releases:
/// `1 | crc32c:u32 | rev:u64 | value`. Still read: such a key was created
/// at `rev` (its history before is not known), with version 1.
const RECORD_V1: u8 = 1;
/// Version of the key-value records written now:
/// `2 | crc32c:u32 | mod_rev:u64 | create_rev:u64 | version:u64 | value`.
const RECORD_V2: u8 = 2;
/// Version of the records of keys attached to a lease:
/// `3 | crc32c:u32 | mod_rev:u64 | create_rev:u64 | version:u64 |
/// lease:u64 | value`. A key without a lease keeps version 2, byte for
/// byte as before.
const RECORD_V3: u8 = 3;

/// A key-value record (version 2) of `v`; the CRC covers every byte after
/// itself.
pub(super) fn encode_record(v: &Versioned) -> Vec<u8> {
    let mut out = BytesMut::with_capacity(37 + v.value.len());
    out.put_u8(if v.lease == 0 { RECORD_V2 } else { RECORD_V3 });
    out.put_u32(0);
    out.put_u64(v.rev);
    out.put_u64(v.create_rev);
    out.put_u64(v.version);
    if v.lease != 0 {
        out.put_u64(v.lease);
    }
    out.put_slice(&v.value);
    let crc = crc32c::crc32c(&out[5..]);
    out[1..5].copy_from_slice(&crc.to_be_bytes());
    out.to_vec()
}

/// Reads a key-value record of either version, checking its checksum.
pub(super) fn decode_record(key: &[u8], rec: &[u8]) -> Result<Versioned, StoreError> {
    let corrupt = |detail| StoreError::Corruption {
        key: String::from_utf8_lossy(key).into_owned(),
        detail,
    };
    let header = match rec.first() {
        Some(&RECORD_V1) => 13,
        Some(&RECORD_V2) => 29,
        Some(&RECORD_V3) => 37,
        Some(_) => return Err(corrupt("unknown record version")),
        None => return Err(corrupt("record too short")),
    };
    if rec.len() < header {
        return Err(corrupt("record too short"));
    }
    let crc = u32::from_be_bytes([rec[1], rec[2], rec[3], rec[4]]);
    if crc32c::crc32c(&rec[5..]) != crc {
        return Err(corrupt("checksum mismatch"));
    }
    let u64_at = |at: usize| decode_u64(&rec[at..at + 8]).unwrap_or_default();
    let rev = u64_at(5);
    let (create_rev, version) = if header == 13 {
        (rev, 1)
    } else {
        (u64_at(13), u64_at(21))
    };
    Ok(Versioned {
        value: Bytes::copy_from_slice(&rec[header..]),
        rev,
        create_rev,
        version,
        lease: if header == 37 { u64_at(29) } else { 0 },
    })
}

/// A version-1 record, as earlier releases wrote (to test reading them).
#[cfg(test)]
pub(super) fn encode_record_v1(rev: u64, value: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::with_capacity(13 + value.len());
    out.put_u8(RECORD_V1);
    out.put_u32(0);
    out.put_u64(rev);
    out.put_slice(value);
    let crc = crc32c::crc32c(&out[5..]);
    out[1..5].copy_from_slice(&crc.to_be_bytes());
    out.to_vec()
}

/// First byte of an idempotency record of version 2 and later. Records of
/// version 1 (earlier releases) start with their index, big-endian, whose
/// first byte is 0 below index 2^56: they never start with this.
const TOKEN_RECORD_TAG: u8 = 0xFF;
/// Version of the idempotency records written now.
const TOKEN_RECORD_VERSION: u8 = 2;

/// What an idempotency record remembers of its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Remembered {
    /// A version-1 record (earlier releases): the CRC-32C of the request.
    Crc(u32),
    /// 128 bits of the request's SHA-256 ([`Command::fingerprint`]).
    Sha(Fingerprint),
}

impl Remembered {
    /// Whether `cmd` is the request the record was written for.
    pub(super) fn matches(&self, cmd: &Command, fingerprint: &Fingerprint) -> bool {
        match self {
            Remembered::Crc(crc) => *crc == cmd.legacy_fingerprint(),
            Remembered::Sha(fp) => fp == fingerprint,
        }
    }
}

/// An idempotency record: the index of the write, what it remembers of the
/// request, and its outcome.
pub(super) type TokenRecord = (u64, Remembered, Outcome);

/// Version 2: `0xFF | 2 | index:u64 | fingerprint:[u8; 16] | outcome`.
/// (Version 1 was `index:u64 | crc32c:u32 | outcome`.)
pub(super) fn encode_token_record(
    index: u64,
    fingerprint: &Fingerprint,
    outcome: &Outcome,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + 8 + fingerprint.len() + 16);
    out.push(TOKEN_RECORD_TAG);
    out.push(TOKEN_RECORD_VERSION);
    out.extend_from_slice(&index.to_be_bytes());
    out.extend_from_slice(fingerprint);
    out.extend_from_slice(&outcome.encode());
    out
}

/// Reads an idempotency record of either version.
pub(super) fn decode_token_record(slot: &[u8], rec: &[u8]) -> Result<TokenRecord, StoreError> {
    let corrupt = || StoreError::Corruption {
        key: String::from_utf8_lossy(slot).into_owned(),
        detail: "idempotency record",
    };
    let (index, remembered, outcome) = match rec {
        [TOKEN_RECORD_TAG, TOKEN_RECORD_VERSION, rest @ ..] => {
            if rest.len() < 8 + FINGERPRINT_BYTES {
                return Err(corrupt());
            }
            let (index, rest) = rest.split_at(8);
            let (fp, outcome) = rest.split_at(FINGERPRINT_BYTES);
            (
                index,
                Remembered::Sha(fp.try_into().map_err(|_| corrupt())?),
                outcome,
            )
        }
        [TOKEN_RECORD_TAG, ..] => return Err(corrupt()),
        _ => {
            if rec.len() < 12 {
                return Err(corrupt());
            }
            let (index, rest) = rec.split_at(8);
            let (crc, outcome) = rest.split_at(4);
            let crc = u32::from_be_bytes(crc.try_into().map_err(|_| corrupt())?);
            (index, Remembered::Crc(crc), outcome)
        }
    };
    let index = decode_u64(index).ok_or_else(corrupt)?;
    let outcome = Outcome::decode(Bytes::copy_from_slice(outcome)).map_err(|_| corrupt())?;
    Ok((index, remembered, outcome))
}
