//! The snapshot transfer protocol as two pure state machines, one per side
//! (no I/O: the stream drivers in `snapshot.rs` read and write frames, the
//! source and the sink, and ask these what to do).
//!
//! ```text
//! sender                          receiver
//! SnapshotOffer        ───────▶   check_offer, sink.begin
//!                      ◀───────   SnapshotResume{offset} | SnapshotResult{refusal}
//! SnapshotChunk*       ───────▶   Receiving::on_frame → Write (sink.write)
//! SnapshotDone         ───────▶   Receiving::on_frame → Finish (sink.finish)
//!                      ◀───────   SnapshotResult{None | refusal}
//! ```
//!
//! The sender's whole-snapshot CRC covers the prefix the receiver already
//! holds, so after a resume it reads that prefix for the checksum only.

use bytes::Bytes;
use raft_core::NodeId;

use crate::codec::{Frame, SnapshotChunk, SnapshotOffer};
use crate::refusal::{RefusalReason, SnapshotRefusal};

/// What the receiver checks of an offer before its sink sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OfferPolicy {
    /// This node.
    pub this: NodeId,
    /// Whether the sender is in the allowed set.
    pub allowed: bool,
    /// `snapshot_bytes_max`.
    pub limit: u64,
    /// Whether this node has a sink.
    pub has_sink: bool,
}

/// Refuses an offer from `peer` that the policy does not allow.
pub(crate) fn check_offer(
    peer: NodeId,
    offer: &SnapshotOffer,
    p: &OfferPolicy,
) -> Result<(), SnapshotRefusal> {
    if !p.allowed {
        return Err(SnapshotRefusal::new(
            RefusalReason::NotAllowed,
            format!(
                "node {peer} is not a member of node {}'s configuration",
                p.this
            ),
        ));
    }
    if offer.total_bytes > p.limit {
        return Err(SnapshotRefusal::new(
            RefusalReason::TooLarge,
            format!(
                "snapshot of {} bytes exceeds node {}'s limit of {} bytes \
                 (snapshot_bytes_max; raft-node: --max-snapshot-receive-mib)",
                offer.total_bytes, p.this, p.limit
            ),
        ));
    }
    if !p.has_sink {
        return Err(SnapshotRefusal::new(
            RefusalReason::NotAccepting,
            "this node does not accept snapshots",
        ));
    }
    Ok(())
}

/// What the receiver does with the next frame.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ReceiverStep {
    /// Store `data` at `offset` (checked), then call [`Receiving::wrote`].
    Write { offset: u64, data: Bytes },
    /// All data announced: verify and publish.
    Finish { total_bytes: u64, crc32c: u32 },
    /// Refuse the transfer (the stream ends with this verdict).
    Refuse(SnapshotRefusal),
    /// The peer broke the protocol: close the connection.
    Protocol(String),
}

/// A transfer being received.
#[derive(Debug, Clone)]
pub(crate) struct Receiving {
    total_bytes: u64,
    expected: u64,
}

impl Receiving {
    /// A transfer of `total_bytes` resuming at `offset` (what the sink
    /// already holds).
    pub(crate) fn resume(total_bytes: u64, offset: u64) -> Result<Self, SnapshotRefusal> {
        if offset > total_bytes {
            return Err(SnapshotRefusal::new(
                RefusalReason::Other,
                format!("sink resumes at {offset}, past the end"),
            ));
        }
        Ok(Self {
            total_bytes,
            expected: offset,
        })
    }

    /// The offset of the next byte expected.
    pub(crate) fn offset(&self) -> u64 {
        self.expected
    }

    /// The step for `frame`.
    pub(crate) fn on_frame(&self, frame: Frame) -> ReceiverStep {
        match frame {
            Frame::SnapshotChunk(SnapshotChunk {
                offset,
                crc32c,
                data,
            }) => {
                let bad = |detail: String| {
                    ReceiverStep::Refuse(SnapshotRefusal::new(RefusalReason::Invalid, detail))
                };
                if offset != self.expected {
                    bad(format!(
                        "chunk at offset {offset}, expected {}",
                        self.expected
                    ))
                } else if crc32c::crc32c(&data) != crc32c {
                    bad(format!("chunk at offset {offset} fails its checksum"))
                } else if offset
                    .checked_add(data.len() as u64)
                    .is_none_or(|end| end > self.total_bytes)
                {
                    bad(format!(
                        "chunk at offset {offset} runs past the snapshot's {} bytes",
                        self.total_bytes
                    ))
                } else {
                    ReceiverStep::Write { offset, data }
                }
            }
            Frame::SnapshotDone {
                total_bytes,
                crc32c,
            } => ReceiverStep::Finish {
                total_bytes,
                crc32c,
            },
            other => ReceiverStep::Protocol(format!("snapshot stream: unexpected frame {other:?}")),
        }
    }

    /// `len` bytes of the last `Write` were stored.
    pub(crate) fn wrote(&mut self, len: u64) {
        self.expected += len;
    }
}

/// Why a sender's attempt ended without success.
#[derive(Debug)]
pub(crate) enum SenderError {
    /// The receiver refused (typed).
    Refused(SnapshotRefusal),
    /// The stream failed or the receiver answered nonsense: retry.
    Failed(String),
}

/// The receiver's answer to the offer: where to resume.
pub(crate) fn on_offer_answer(answer: Option<Frame>, total_bytes: u64) -> Result<u64, SenderError> {
    match answer {
        Some(Frame::SnapshotResume { offset }) if offset <= total_bytes => Ok(offset),
        Some(Frame::SnapshotResult { error: Some(e) }) => Err(SenderError::Refused(e)),
        other => Err(SenderError::Failed(format!(
            "unexpected answer to the offer: {other:?}"
        ))),
    }
}

/// The receiver's final verdict.
pub(crate) fn on_result(answer: Option<Frame>) -> Result<(), SenderError> {
    match answer {
        Some(Frame::SnapshotResult { error: None }) => Ok(()),
        Some(Frame::SnapshotResult { error: Some(e) }) => Err(SenderError::Refused(e)),
        other => Err(SenderError::Failed(format!("unexpected answer: {other:?}"))),
    }
}

/// A transfer being sent, from the receiver's resume offset on.
#[derive(Debug, Clone)]
pub(crate) struct Sending {
    total_bytes: u64,
    chunk_bytes: usize,
    start: u64,
    offset: u64,
    crc: u32,
}

impl Sending {
    /// Sends `total_bytes` in chunks of `chunk_bytes`, the receiver holding
    /// the first `start` already.
    pub(crate) fn new(total_bytes: u64, chunk_bytes: usize, start: u64) -> Self {
        Self {
            total_bytes,
            chunk_bytes: chunk_bytes.max(1),
            start,
            offset: 0,
            crc: 0,
        }
    }

    /// The next read from the source (offset, at most this many bytes), or
    /// `None` when every byte was read.
    pub(crate) fn next_read(&self) -> Option<(u64, usize)> {
        if self.offset >= self.total_bytes {
            return None;
        }
        let limit = if self.offset < self.start {
            self.start
        } else {
            self.total_bytes
        };
        let len = (limit - self.offset).min(self.chunk_bytes as u64) as usize;
        Some((self.offset, len))
    }

    /// The bytes read at [`next_read`](Self::next_read): a chunk frame to
    /// send, or `None` for bytes before the resume point (checksummed only).
    ///
    /// # Errors
    ///
    /// An empty read: the source ended before its announced length.
    pub(crate) fn on_data(&mut self, data: Bytes) -> std::io::Result<Option<Frame>> {
        if data.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "snapshot source ended early",
            ));
        }
        self.crc = crc32c::crc32c_append(self.crc, &data);
        let offset = self.offset;
        self.offset += data.len() as u64;
        if offset < self.start {
            return Ok(None);
        }
        Ok(Some(Frame::SnapshotChunk(SnapshotChunk {
            offset,
            crc32c: crc32c::crc32c(&data),
            data,
        })))
    }

    /// The closing frame: the total length and the whole snapshot's CRC.
    pub(crate) fn done(&self) -> Frame {
        Frame::SnapshotDone {
            total_bytes: self.total_bytes,
            crc32c: self.crc,
        }
    }
}

#[cfg(test)]
#[path = "transfer_tests.rs"]
mod tests;
