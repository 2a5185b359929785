//! [`Client::backup`]: a backup of the store (`GET /v1/cluster/backup`),
//! streamed.

use std::time::Duration;

use bytes::Bytes;
use reqwest::header::HeaderMap;
use reqwest::Method;

use crate::client::{chain, Client, Request, Safety};
use crate::error::{Error, Result};

/// Which state a backup holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum BackupConsistency {
    /// The leader's store at an index that includes every write
    /// acknowledged before the request (it confirms its leadership with a
    /// quorum first). A follower answers 421 naming the leader, and the
    /// client goes there.
    #[default]
    Linearizable,
    /// The answering node's own applied state, without asking the leader:
    /// may be behind.
    Stale,
}

impl BackupConsistency {
    /// The `consistency` query value (and `x-raft-backup-consistency`).
    pub fn as_str(self) -> &'static str {
        match self {
            BackupConsistency::Linearizable => "linearizable",
            BackupConsistency::Stale => "stale",
        }
    }
}

impl std::str::FromStr for BackupConsistency {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "linearizable" => Ok(Self::Linearizable),
            "stale" => Ok(Self::Stale),
            other => Err(Error::Config(format!(
                "a backup's consistency is linearizable or stale; got {other:?}"
            ))),
        }
    }
}

/// A backup being downloaded: what the node said it is (the
/// `x-raft-backup-*` headers), and its bytes, read with
/// [`Backup::chunk`]. The bytes are a backup file (`raft-node restore`
/// reads it; raft-node's `backup::verify` checks one); this crate does
/// not look inside.
#[derive(Debug)]
#[non_exhaustive]
pub struct Backup {
    /// The last log index the backup covers.
    pub index: u64,
    /// That entry's term.
    pub term: u64,
    /// The node that serves it.
    pub node: u64,
    /// Linearizable (the leader's, at or after `read_index`) or stale.
    pub consistency: BackupConsistency,
    /// A linearizable backup's read index: every write acknowledged
    /// before the request is at or below it.
    pub read_index: Option<u64>,
    /// The base URL of the node that serves it (`http://host:port`).
    pub endpoint: String,
    response: reqwest::Response,
    idle: Duration,
    received: u64,
    /// Set once the body ended (`Ok`) or was cut off (`Err`: why).
    end: Option<std::result::Result<(), String>>,
}

impl Backup {
    /// The next chunk of the body; `None` once it ended complete. Each
    /// wait is bounded by the client's request timeout; the whole download
    /// by nothing (a backup takes as long as the store is large).
    ///
    /// # Errors
    ///
    /// [`Error::Interrupted`] when the connection failed or no bytes came
    /// for the request timeout (then every later call too): what was
    /// received is not a whole backup. Nothing is retried: ask for a new
    /// backup, from the start.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>> {
        match &self.end {
            Some(Ok(())) => return Ok(None),
            Some(Err(detail)) => return Err(self.interrupted(detail.clone())),
            None => {}
        }
        let next = tokio::time::timeout(self.idle, self.response.chunk()).await;
        let detail = match next {
            Ok(Ok(Some(c))) => {
                self.received += c.len() as u64;
                return Ok(Some(c));
            }
            Ok(Ok(None)) => {
                self.end = Some(Ok(()));
                return Ok(None);
            }
            Ok(Err(e)) => format!("{}: {}", self.endpoint, chain(&e)),
            Err(_) => format!(
                "{}: no bytes for {} ms",
                self.endpoint,
                self.idle.as_millis()
            ),
        };
        self.end = Some(Err(detail.clone()));
        Err(self.interrupted(detail))
    }

    /// Bytes of the body received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    fn interrupted(&self, detail: String) -> Error {
        Error::Interrupted {
            received: self.received,
            detail,
        }
    }
}

impl Client {
    /// Starts downloading a backup of the store (`GET /v1/cluster/backup`;
    /// nodes serve it to the admin token only). Returns once the node
    /// answered with the backup's headers; read its bytes with
    /// [`Backup::chunk`].
    ///
    /// A [`BackupConsistency::Linearizable`] backup is the leader's: a
    /// follower answers 421 `not-leader` naming the leader's address, and
    /// the request goes there at once (with the same scheme, TLS settings
    /// and token), whether or not it is one of the client's endpoints. A
    /// [`BackupConsistency::Stale`] one comes from the first node that
    /// answers (the known leader's endpoint first); [`Client::at`] picks
    /// the node. Until the headers come, the request is retried like a
    /// read (a refused connection, a timeout, 503: a node runs at most
    /// `--max-concurrent-backups` at once); once the body flows, never. A
    /// node also cuts a backup that lasts past its
    /// `--backup-max-duration-ms`: [`Backup::chunk`] says so.
    ///
    /// # Errors
    ///
    /// See [`Error`]: [`Error::Api`] for 401 (no token), 403 (not the
    /// admin token) and 421 (no leader found within the retry policy);
    /// [`Error::InvalidAnswer`] for a success without the backup headers.
    pub async fn backup(&self, consistency: BackupConsistency) -> Result<Backup> {
        let mut path = "/v1/cluster/backup".to_owned();
        if consistency == BackupConsistency::Stale {
            path.push_str("?consistency=stale");
        }
        let req = Request::new(Method::GET, path, Safety::Read).streamed();
        let a = self.execute(&req).await?;
        if !a.status.is_success() {
            return Err(a.into_error());
        }
        let Some(response) = a.stream else {
            return Err(Error::InvalidAnswer(format!(
                "{}: a backup answered without a body",
                a.from
            )));
        };
        let h = &a.headers;
        let consistency = header(h, "consistency")?
            .parse()
            .map_err(|e: Error| Error::InvalidAnswer(e.to_string()))?;
        let read_index = match h.get("x-raft-backup-read-index") {
            Some(_) => Some(number(h, "read-index")?),
            None => None,
        };
        Ok(Backup {
            index: number(h, "index")?,
            term: number(h, "term")?,
            node: number(h, "node")?,
            consistency,
            read_index,
            endpoint: a.from,
            response: *response,
            idle: self.request_timeout(),
            received: 0,
            end: None,
        })
    }
}

/// The `x-raft-backup-<name>` header.
fn header<'h>(h: &'h HeaderMap, name: &str) -> Result<&'h str> {
    let full = format!("x-raft-backup-{name}");
    h.get(&full)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .ok_or_else(|| Error::InvalidAnswer(format!("a backup answered without {full}")))
}

fn number(h: &HeaderMap, name: &str) -> Result<u64> {
    let text = header(h, name)?;
    text.parse().map_err(|_| {
        Error::InvalidAnswer(format!("x-raft-backup-{name} is not a number: {text:?}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backup_headers_are_read_and_a_missing_one_is_named() {
        let mut h = HeaderMap::new();
        h.insert("x-raft-backup-index", "42".parse().unwrap());
        h.insert("x-raft-backup-term", "x".parse().unwrap());
        assert_eq!(number(&h, "index").unwrap(), 42);
        let bad = number(&h, "term").unwrap_err().to_string();
        assert!(bad.contains("x-raft-backup-term"), "{bad}");
        let missing = number(&h, "node").unwrap_err().to_string();
        assert!(missing.contains("without x-raft-backup-node"), "{missing}");
        assert_eq!(
            "stale".parse::<BackupConsistency>().unwrap(),
            BackupConsistency::Stale
        );
        assert!("lease".parse::<BackupConsistency>().is_err());
    }
}
