//! What can go wrong, typed by what it means for a write: definitely not
//! applied, or outcome unknown.

use std::time::Duration;

/// An `application/problem+json` answer of a node: a stable `type` URN
/// (`urn:raft-node:problem:<kind>`), a title, a detail, and any extra
/// members (`current_rev`, `lag`, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// The HTTP status.
    pub status: u16,
    /// The last part of the `type` URN (`no-leader`, `precondition-failed`,
    /// ...); empty when the answer was not a problem document.
    pub kind: String,
    /// A short human summary.
    pub title: String,
    /// What happened, for a human.
    pub detail: String,
    /// Every member of the document (those above included).
    pub body: serde_json::Value,
}

/// Prefix of every problem `type` raft-node sends.
pub const PROBLEM_TYPE_PREFIX: &str = "urn:raft-node:problem:";

impl Problem {
    /// Reads a problem document from an answer body; a body that is not one
    /// becomes the detail (cut at 512 bytes).
    pub fn parse(status: u16, body: &[u8]) -> Self {
        match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(v @ serde_json::Value::Object(_)) => {
                let text = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
                let kind = text("type");
                Self {
                    status,
                    kind: kind
                        .strip_prefix(PROBLEM_TYPE_PREFIX)
                        .unwrap_or(&kind)
                        .to_owned(),
                    title: text("title"),
                    detail: text("detail"),
                    body: v,
                }
            }
            _ => {
                let cut = &body[..body.len().min(512)];
                Self {
                    status,
                    kind: String::new(),
                    title: String::new(),
                    detail: String::from_utf8_lossy(cut).into_owned(),
                    body: serde_json::Value::Null,
                }
            }
        }
    }

    /// A number member of the document (`current_rev`, `lag`, `leader`).
    pub fn number(&self, member: &str) -> Option<u64> {
        self.body.get(member).and_then(serde_json::Value::as_u64)
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.kind.is_empty(), self.detail.is_empty()) {
            (false, false) => write!(f, "{} {}: {}", self.status, self.kind, self.detail),
            (false, true) => write!(f, "{} {}", self.status, self.kind),
            (true, _) => write!(f, "{} {}", self.status, self.detail),
        }
    }
}

/// Whether a failed request changed anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing was applied: the node refused (4xx), was unavailable (503),
    /// or the request never left (connection refused).
    NotApplied,
    /// A write may or may not have been applied (504, a timeout or a
    /// connection lost after the request was sent, a 5xx other than 503).
    /// Read the key to find out, or send the write again with the same
    /// idempotency key.
    Unknown,
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The client settings are unusable (a malformed endpoint, a
    /// certificate or token file that cannot be used).
    #[error("client configuration: {0}")]
    Config(String),
    /// No endpoint could be connected to: nothing was sent.
    #[error("no node reachable ({attempts} attempts): {detail}")]
    Connect {
        /// Requests tried.
        attempts: u32,
        /// The last connection error.
        detail: String,
    },
    /// The nodes answered 503 (no leader, overloaded, shutting down) until
    /// the retry budget ran out: nothing was applied.
    #[error("unavailable after {attempts} attempts: {problem}")]
    Unavailable {
        /// The last answer.
        problem: Box<Problem>,
        /// Its `Retry-After`.
        retry_after: Option<Duration>,
        /// Requests tried.
        attempts: u32,
    },
    /// A write's outcome is unknown: 504, or the answer was lost after the
    /// request was sent (timeout, reset connection). It was not retried,
    /// since it carried no idempotency key (or the retry budget ran out).
    #[error("outcome unknown: {detail}")]
    OutcomeUnknown {
        /// The 504 problem, when the node answered.
        problem: Option<Box<Problem>>,
        /// What happened.
        detail: String,
    },
    /// A conditional write or delete found another revision (412):
    /// nothing was applied.
    #[error("precondition failed (current revision {current_rev:?})")]
    PreconditionFailed {
        /// The key's revision now (`None`: absent).
        current_rev: Option<u64>,
    },
    /// Any other answer that is not a success (400, 401, 403, 404, 409,
    /// 413, 414, 422, 500, ...).
    #[error("{problem}")]
    Api {
        /// What the node said.
        problem: Box<Problem>,
    },
    /// The node's answer could not be understood.
    #[error("malformed answer: {0}")]
    InvalidAnswer(String),
    /// A streamed answer ([`Client::backup`](crate::Client::backup)) was
    /// cut off: the connection failed, or no bytes came for the request
    /// timeout. What was received is incomplete. Streaming reads change
    /// nothing on the node (outcome [`Outcome::NotApplied`]).
    #[error("the answer was cut off after {received} bytes: {detail}")]
    Interrupted {
        /// Bytes of the body received before it stopped.
        received: u64,
        /// What happened.
        detail: String,
    },
}

impl Error {
    /// Whether a failed write may have been applied.
    pub fn outcome(&self) -> Outcome {
        match self {
            Error::OutcomeUnknown { .. } => Outcome::Unknown,
            Error::Api { problem } if problem.status >= 500 => Outcome::Unknown,
            // A success whose body could not be read: it happened.
            Error::InvalidAnswer(_) => Outcome::Unknown,
            _ => Outcome::NotApplied,
        }
    }

    /// Shorthand for `outcome() == Outcome::Unknown`.
    pub fn is_outcome_unknown(&self) -> bool {
        self.outcome() == Outcome::Unknown
    }

    /// The HTTP status of the node's answer, when there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Unavailable { problem, .. } | Error::Api { problem } => Some(problem.status),
            Error::OutcomeUnknown { problem, .. } => problem.as_ref().map(|p| p.status),
            Error::PreconditionFailed { .. } => Some(412),
            _ => None,
        }
    }

    /// The node's problem document, when there was one.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            Error::Unavailable { problem, .. } | Error::Api { problem } => Some(problem),
            Error::OutcomeUnknown { problem, .. } => problem.as_deref(),
            _ => None,
        }
    }
}

/// What this crate's functions return.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_document_is_read_with_its_members() {
        let p = Problem::parse(
            412,
            br#"{"type":"urn:raft-node:problem:precondition-failed","title":"t","detail":"d","current_rev":7}"#,
        );
        assert_eq!(p.kind, "precondition-failed");
        assert_eq!(p.number("current_rev"), Some(7));
        assert_eq!(p.to_string(), "412 precondition-failed: d");
    }

    #[test]
    fn a_body_that_is_no_problem_document_becomes_the_detail() {
        let p = Problem::parse(502, &[b'x'; 2000]);
        assert_eq!(p.kind, "");
        assert_eq!(p.detail.len(), 512);
    }

    #[test]
    fn outcomes_follow_the_contract() {
        let api = |status| Error::Api {
            problem: Box::new(Problem::parse(status, b"")),
        };
        assert_eq!(api(400).outcome(), Outcome::NotApplied);
        assert_eq!(api(500).outcome(), Outcome::Unknown);
        let unknown = Error::OutcomeUnknown {
            problem: None,
            detail: "timeout".into(),
        };
        assert!(unknown.is_outcome_unknown());
        let refused = Error::Connect {
            attempts: 1,
            detail: "refused".into(),
        };
        assert_eq!(refused.outcome(), Outcome::NotApplied);
    }
}
