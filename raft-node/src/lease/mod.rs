//! Leases like etcd's: a lease has a TTL, keys can be attached to it, and
//! when it is revoked (by a client, or by the leader once it expired) every
//! key attached to it is deleted, all at one revision.
//!
//! What is replicated (decided from the log alone, identical on every
//! replica):
//!
//! - [`LeaseGrant`] entries create a lease (`id`, `ttl_secs`); an `id` of
//!   0 is chosen at apply, from the entry's index (never 0, never one in
//!   use). The TTL in the entry is already clamped by the proposer (see
//!   [`LeaseLimits::min_ttl_secs`]); apply refuses one above
//!   [`MAX_TTL_SECS`] and a grant beyond the entry's `max_leases`.
//! - [`LeaseRevoke`] entries delete a lease and its keys at the entry's
//!   revision.
//! - A put with a lease attaches the key (refused when the lease does not
//!   exist, or when the lease already holds the entry's
//!   `max_keys_per_lease` keys); a put without one, or a delete, detaches
//!   it.
//!
//! What is not replicated: the deadlines. Only the leader keeps them, in
//! memory ([`lessor`]); it proposes a [`LeaseRevoke`] for a lease whose
//! deadline passed. A new leader gives every lease its full TTL and an
//! election timeout again, as etcd does.
//!
//! The entries (strict and versioned, as every command of the log):
//!
//! ```text
//! grant  = LEASE_GRANT_TAG:u8 (0x83) | version:u8 (1) | id:u64 | ttl_secs:u64 | max_leases:u64
//! revoke = LEASE_REVOKE_TAG:u8 (0x84) | version:u8 (1) | id:u64 | expiry_term:u64
//! ```
//!
//! A revoke for an expiry names the term of the leader that decided it
//! (`expiry_term`; 0 for a client's revoke). It applies only when its
//! entry has that term, which discards a revoke whose proposer started
//! another term between deciding and appending it. An entry keeps the
//! term it was appended in, so an old leader's revoke that a newer leader
//! commits still applies: what keeps the newer leader's promises is that
//! a keep-alive answers only after a ReadIndex, which waits for an entry
//! of the leader's own term to commit, so every older revoke that will
//! ever apply has applied and the keep-alive finds the lease gone. The
//! leader also refuses a keep-alive while its own revoke of the lease may
//! still apply ([`Lessor::keep_alive`]).

pub mod lessor;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::command::DecodeError;

pub use lessor::Lessor;

/// First byte of an entry that grants a lease.
pub const LEASE_GRANT_TAG: u8 = 0x83;
/// First byte of an entry that revokes a lease.
pub const LEASE_REVOKE_TAG: u8 = 0x84;
/// Format version of both lease entries.
const LEASE_VERSION: u8 = 1;

/// Longest TTL a lease may have, in seconds (etcd's `MaxLeaseTTL`).
pub const MAX_TTL_SECS: u64 = 9_000_000_000;

/// Largest lease id: etcd's ids are `int64`, and 0 means "no lease".
pub const MAX_LEASE_ID: u64 = i64::MAX as u64;

/// Grants lease `id` (0: chosen at apply) with `ttl_secs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseGrant {
    /// The lease's id; 0 asks the apply to choose one.
    pub id: u64,
    /// Its TTL, already clamped up to the proposer's minimum.
    pub ttl_secs: u64,
    /// The proposer's `--max-leases`: a grant beyond it is refused.
    pub max_leases: u64,
}

/// Revokes lease `id`: deletes it and every key attached to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseRevoke {
    /// The lease.
    pub id: u64,
    /// For an expiry, the term of the leader that found the lease expired
    /// (the revoke applies only in an entry of that term); 0 for a
    /// client's revoke.
    pub expiry_term: u64,
}

/// A lease as the store holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseInfo {
    /// Its id.
    pub id: u64,
    /// Its TTL as granted, in seconds.
    pub ttl_secs: u64,
    /// How many keys are attached to it.
    pub keys: u64,
}

/// Why a lease operation (or a put with a lease) was refused; nothing
/// changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseRefusal {
    /// The lease does not exist (never granted, revoked or expired).
    #[error("requested lease not found")]
    NotFound,
    /// A grant named an id already in use.
    #[error("lease already exists")]
    Exists,
    /// A grant asked for more than [`MAX_TTL_SECS`].
    #[error("too large lease TTL")]
    TtlTooLarge,
    /// A grant beyond `--max-leases`.
    #[error("this cluster already holds {limit} leases (--max-leases); revoke some first")]
    TooManyLeases {
        /// The limit.
        limit: u64,
    },
    /// A put that would attach more keys to the lease than allowed.
    #[error("the lease already holds {limit} keys (--max-keys-per-lease)")]
    TooManyKeys {
        /// The limit.
        limit: u64,
    },
}

impl LeaseRefusal {
    /// The tag of the refusal in an encoded outcome.
    pub(crate) fn code(&self) -> (u8, u64) {
        match self {
            LeaseRefusal::NotFound => (1, 0),
            LeaseRefusal::Exists => (2, 0),
            LeaseRefusal::TtlTooLarge => (3, 0),
            LeaseRefusal::TooManyLeases { limit } => (4, *limit),
            LeaseRefusal::TooManyKeys { limit } => (5, *limit),
        }
    }

    /// What [`LeaseRefusal::code`] answered.
    pub(crate) fn from_code(code: u8, limit: u64) -> Option<Self> {
        Some(match code {
            1 => LeaseRefusal::NotFound,
            2 => LeaseRefusal::Exists,
            3 => LeaseRefusal::TtlTooLarge,
            4 => LeaseRefusal::TooManyLeases { limit },
            5 => LeaseRefusal::TooManyKeys { limit },
            _ => return None,
        })
    }
}

/// The node's lease settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseLimits {
    /// Most leases at once (`--max-leases`).
    pub max_leases: u64,
    /// Most keys attached to one lease (`--max-keys-per-lease`).
    pub max_keys_per_lease: u32,
    /// Most expired leases the leader revokes per second
    /// (`--lease-revokes-per-second`).
    pub revokes_per_second: u32,
    /// Shortest TTL: a grant asking less gets this (etcd: about three
    /// election timeouts, in seconds rounded up).
    pub min_ttl_secs: u64,
    /// The election timeout: a node that becomes leader gives every lease
    /// this much on top of its TTL (as etcd's promotion does), so a
    /// keep-alive the old leader answered just before the election is
    /// still kept.
    pub election: std::time::Duration,
}

impl Default for LeaseLimits {
    fn default() -> Self {
        Self {
            max_leases: 100_000,
            max_keys_per_lease: 10_000,
            revokes_per_second: 1000,
            min_ttl_secs: 1,
            election: std::time::Duration::from_secs(1),
        }
    }
}

impl LeaseLimits {
    /// The limits a node's settings give: the minimum TTL is three election
    /// timeouts (`--election-ticks` × `--tick-ms`), in whole seconds
    /// rounded up: a lease outlives the election that follows a leader's
    /// loss.
    pub fn of(cfg: &crate::config::NodeConfig) -> Self {
        let ticks = u32::try_from(cfg.election_ticks).unwrap_or(u32::MAX);
        let election = cfg.tick.saturating_mul(ticks);
        let min_ms = election.as_millis().saturating_mul(3);
        Self {
            max_leases: cfg.max_leases,
            max_keys_per_lease: cfg.max_keys_per_lease,
            revokes_per_second: cfg.lease_revokes_per_second,
            min_ttl_secs: u64::try_from(min_ms.div_ceil(1000))
                .unwrap_or(u64::MAX)
                .max(1),
            election,
        }
    }

    /// The TTL a grant asking for `ttl` gets: at least the minimum.
    pub fn clamp_ttl(&self, ttl: u64) -> u64 {
        ttl.max(self.min_ttl_secs)
    }
}

impl LeaseGrant {
    /// The entry payload.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(26);
        out.put_u8(LEASE_GRANT_TAG);
        out.put_u8(LEASE_VERSION);
        out.put_u64(self.id);
        out.put_u64(self.ttl_secs);
        out.put_u64(self.max_leases);
        out.freeze()
    }

    /// Decodes an entry payload.
    ///
    /// # Errors
    ///
    /// [`DecodeError`] naming what is wrong.
    pub fn decode(mut buf: Bytes) -> Result<Self, DecodeError> {
        header(&mut buf, LEASE_GRANT_TAG)?;
        let id = get_u64(&mut buf, "lease id")?;
        let ttl_secs = get_u64(&mut buf, "lease ttl")?;
        let max_leases = get_u64(&mut buf, "max leases")?;
        if buf.has_remaining() {
            return Err(DecodeError("trailing bytes"));
        }
        if id > MAX_LEASE_ID {
            return Err(DecodeError("lease id above i64::MAX"));
        }
        Ok(Self {
            id,
            ttl_secs,
            max_leases,
        })
    }
}

impl LeaseRevoke {
    /// The entry payload.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(18);
        out.put_u8(LEASE_REVOKE_TAG);
        out.put_u8(LEASE_VERSION);
        out.put_u64(self.id);
        out.put_u64(self.expiry_term);
        out.freeze()
    }

    /// Decodes an entry payload.
    ///
    /// # Errors
    ///
    /// [`DecodeError`] naming what is wrong.
    pub fn decode(mut buf: Bytes) -> Result<Self, DecodeError> {
        header(&mut buf, LEASE_REVOKE_TAG)?;
        let id = get_u64(&mut buf, "lease id")?;
        let expiry_term = get_u64(&mut buf, "expiry term")?;
        if buf.has_remaining() {
            return Err(DecodeError("trailing bytes"));
        }
        Ok(Self { id, expiry_term })
    }
}

fn header(buf: &mut Bytes, tag: u8) -> Result<(), DecodeError> {
    if buf.remaining() < 2 || buf.get_u8() != tag {
        return Err(DecodeError("lease tag"));
    }
    if buf.get_u8() != LEASE_VERSION {
        return Err(DecodeError("unknown lease entry version"));
    }
    Ok(())
}

fn get_u64(buf: &mut Bytes, what: &'static str) -> Result<u64, DecodeError> {
    if buf.remaining() < 8 {
        return Err(DecodeError(what));
    }
    Ok(buf.get_u64())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes of both entries are pinned: every replica, of every
    /// release, must read them alike.
    #[test]
    fn lease_entries_are_pinned_and_strict() {
        let grant = LeaseGrant {
            id: 7,
            ttl_secs: 10,
            max_leases: 100,
        };
        let golden: &[u8] = b"\x83\x01\0\0\0\0\0\0\0\x07\0\0\0\0\0\0\0\x0a\0\0\0\0\0\0\0\x64";
        assert_eq!(grant.encode().as_ref(), golden);
        assert_eq!(LeaseGrant::decode(Bytes::from_static(golden)), Ok(grant));
        let revoke = LeaseRevoke {
            id: 7,
            expiry_term: 2,
        };
        let golden: &[u8] = b"\x84\x01\0\0\0\0\0\0\0\x07\0\0\0\0\0\0\0\x02";
        assert_eq!(revoke.encode().as_ref(), golden);
        assert_eq!(LeaseRevoke::decode(Bytes::from_static(golden)), Ok(revoke));
        // Truncated, trailing, another version or tag: refused.
        let enc = grant.encode();
        assert!(LeaseGrant::decode(enc.slice(..enc.len() - 1)).is_err());
        let mut long = enc.to_vec();
        long.push(0);
        assert!(LeaseGrant::decode(Bytes::from(long)).is_err());
        let mut v2 = enc.to_vec();
        v2[1] = 2;
        assert!(LeaseGrant::decode(Bytes::from(v2)).is_err());
        assert!(LeaseRevoke::decode(enc).is_err());
        let big = LeaseGrant {
            id: u64::MAX,
            ..grant
        };
        assert!(LeaseGrant::decode(big.encode()).is_err());
    }

    #[test]
    fn refusals_round_trip_their_codes() {
        for r in [
            LeaseRefusal::NotFound,
            LeaseRefusal::Exists,
            LeaseRefusal::TtlTooLarge,
            LeaseRefusal::TooManyLeases { limit: 3 },
            LeaseRefusal::TooManyKeys { limit: 4 },
        ] {
            let (c, l) = r.code();
            assert_eq!(LeaseRefusal::from_code(c, l), Some(r));
        }
        assert_eq!(LeaseRefusal::from_code(9, 0), None);
    }

    #[test]
    fn short_ttls_are_clamped_up() {
        let l = LeaseLimits {
            min_ttl_secs: 3,
            ..LeaseLimits::default()
        };
        assert_eq!(l.clamp_ttl(1), 3);
        assert_eq!(l.clamp_ttl(10), 10);
    }
}
