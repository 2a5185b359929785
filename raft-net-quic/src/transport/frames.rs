//! Reading and writing frames on QUIC streams.

use super::*;

pub(super) async fn write_frame(
    send: &mut SendStream,
    frame: &Frame,
    max: u32,
) -> Result<(), String> {
    let mut buf = BytesMut::new();
    encode_frame(frame, max, &mut buf).map_err(|e| e.to_string())?;
    send.write_all(&buf).await.map_err(|e| e.to_string())
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    /// The stream or connection failed (not the peer's bytes' fault).
    #[error("stream: {0}")]
    Stream(String),
    /// The bytes are not a valid frame.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// Reads frames from a long-lived message stream in large chunks: one
/// stream read serves many small frames (two exact reads per frame cost a
/// stream lock each). Each frame is copied into its own exact-size buffer,
/// so decoded payloads never pin a whole read chunk in memory.
pub(super) struct FrameReader {
    buf: BytesMut,
    max: u32,
}

/// Bytes asked of the stream per read.
pub(super) const READ_CHUNK_BYTES: usize = 64 << 10;

impl FrameReader {
    pub(super) fn new(max: u32) -> Self {
        Self {
            buf: BytesMut::new(),
            max,
        }
    }

    /// The next frame and its size; `Ok(None)` when the stream ended
    /// cleanly between frames.
    pub(super) async fn next(
        &mut self,
        recv: &mut RecvStream,
    ) -> Result<Option<(Frame, usize)>, FrameError> {
        loop {
            if self.buf.len() >= LENGTH_PREFIX_BYTES {
                let mut prefix = [0u8; LENGTH_PREFIX_BYTES];
                prefix.copy_from_slice(&self.buf[..LENGTH_PREFIX_BYTES]);
                let len = check_frame_length(prefix, self.max)?;
                let total = LENGTH_PREFIX_BYTES + len;
                if self.buf.len() >= total {
                    let content = Bytes::copy_from_slice(&self.buf[LENGTH_PREFIX_BYTES..total]);
                    bytes::Buf::advance(&mut self.buf, total);
                    return Ok(Some((decode_frame_content(content)?, total)));
                }
            }
            match recv.read_chunk(READ_CHUNK_BYTES, true).await {
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk.bytes),
                Ok(None) if self.buf.is_empty() => return Ok(None),
                Ok(None) if self.buf.len() < LENGTH_PREFIX_BYTES => {
                    return Err(DecodeError::Truncated("length prefix").into())
                }
                Ok(None) => {
                    return Err(
                        DecodeError::Truncated("frame shorter than its length prefix").into(),
                    )
                }
                Err(e) => return Err(FrameError::Stream(e.to_string())),
            }
        }
    }
}

pub(super) async fn read_frame(
    recv: &mut RecvStream,
    max: u32,
) -> Result<Option<Frame>, FrameError> {
    Ok(read_frame_sized(recv, max).await?.map(|(f, _)| f))
}

/// Reads one frame; `Ok(None)` when the stream ended cleanly between frames.
pub(super) async fn read_frame_sized(
    recv: &mut RecvStream,
    max: u32,
) -> Result<Option<(Frame, usize)>, FrameError> {
    let mut prefix = [0u8; LENGTH_PREFIX_BYTES];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(quinn::ReadExactError::FinishedEarly(_)) => {
            return Err(DecodeError::Truncated("length prefix").into())
        }
        Err(quinn::ReadExactError::ReadError(e)) => return Err(FrameError::Stream(e.to_string())),
    }
    let len = check_frame_length(prefix, max)?;
    // The buffer grows as data arrives: a length prefix alone (up to
    // `max_frame_bytes`) allocates at most one read chunk.
    let mut body = BytesMut::with_capacity(len.min(READ_CHUNK_BYTES));
    while body.len() < len {
        match recv.read_chunk(len - body.len(), true).await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk.bytes),
            Ok(None) => {
                return Err(DecodeError::Truncated("frame shorter than its length prefix").into())
            }
            Err(e) => return Err(FrameError::Stream(e.to_string())),
        }
    }
    let frame = decode_frame_content(body.freeze())?;
    Ok(Some((frame, len + LENGTH_PREFIX_BYTES)))
}
