//! [`GuardedBody`]: a response body that holds a guard (a request slot,
//! a connection's busy mark, memory) until it is sent or dropped.

use std::pin::Pin;
use std::task::{Context, Poll};

/// A response body that holds `guard` until the body has been sent or
/// dropped: a request's connection stays busy and its slots stay taken
/// while its answer is on the way.
pub struct GuardedBody<G> {
    inner: axum::body::Body,
    _guard: G,
}

impl<G> std::fmt::Debug for GuardedBody<G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedBody").finish_non_exhaustive()
    }
}

impl<G> GuardedBody<G> {
    /// `inner`, holding `guard`.
    pub fn new(inner: axum::body::Body, guard: G) -> Self {
        Self {
            inner,
            _guard: guard,
        }
    }
}

impl<G: Unpin> http_body::Body for GuardedBody<G> {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
