//! Streaming bodies: frames pass through one at a time and are only counted, never collected
//! (except, up to a limit, for the scripts of the body events: [`collect_limited`]).
//!
//! A response body tells its [`BodyEnd`] (the transaction) what went out and how it ended, so
//! that the access log line, the counters and the return of the upstream connection to its
//! pool happen when the response has really been sent (or abandoned), not when its headers
//! were. This module knows nothing of transactions or connections.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// The client's request body on its way upstream, counted: streamed, or buffered whole for the
/// HTTP_REQ_DATA scripts.
pub(crate) struct RequestBody {
    source: Source,
    bytes: Arc<AtomicU64>,
    /// Set when reading the client's body failed (bad chunk framing, the client gone): a
    /// failed upstream request is then the client's doing, not the server's.
    client_failed: Arc<AtomicBool>,
}

impl RequestBody {
    pub fn new(inner: Incoming, bytes: Arc<AtomicU64>) -> Self {
        Self {
            source: Source::Streamed(inner),
            bytes,
            client_failed: Arc::default(),
        }
    }

    /// A body read whole beforehand (see [`collect_limited`]).
    pub fn buffered(body: Bytes, bytes: Arc<AtomicU64>) -> Self {
        Self {
            source: Source::Full((!body.is_empty()).then_some(body)),
            bytes,
            client_failed: Arc::default(),
        }
    }

    /// Whether reading the client's body failed, readable after the body moved upstream.
    pub fn client_failure(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.client_failed)
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = match &mut this.source {
            Source::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Source::Streamed(inner) => Pin::new(inner).poll_frame(cx),
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
            }
            Poll::Ready(Some(Err(_))) => this.client_failed.store(true, Ordering::Relaxed),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.source.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.source.size_hint()
    }
}

/// Why [`collect_limited`] gave up.
#[derive(Debug)]
pub(crate) enum CollectError {
    /// The body is longer than the limit.
    TooLarge,
    /// Reading it failed (the peer reset or sent a malformed body).
    Read(hyper::Error),
}

/// Reads a whole body of at most `limit` bytes (for the HTTP_REQ_DATA / HTTP_RESP_DATA
/// scripts); a longer one is refused as soon as it is known to be longer.
pub(crate) async fn collect_limited(
    mut body: Incoming,
    limit: usize,
) -> Result<Bytes, CollectError> {
    use http_body_util::BodyExt;
    if body.size_hint().lower() > limit as u64 {
        return Err(CollectError::TooLarge);
    }
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(CollectError::Read)?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(CollectError::TooLarge);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// Told what a [`ResponseBody`] sent and how it ended.
pub(crate) trait BodyEnd: Unpin {
    /// A data frame of `len` bytes went out.
    fn sent(&mut self, len: u64);
    /// The body was read to its end (or was empty from the start). May be told more than once.
    fn finished(&mut self);
    /// Reading the body from the server failed; the rest of it is lost.
    fn failed(&mut self);
}

enum Source {
    /// Made by the proxy; `None` once sent.
    Full(Option<Bytes>),
    /// Streamed from the peer.
    Streamed(Incoming),
}

impl Source {
    fn is_end_stream(&self) -> bool {
        match self {
            Source::Full(b) => b.is_none(),
            Source::Streamed(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Source::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Source::Streamed(body) => body.size_hint(),
        }
    }
}

/// A response body: either made by the proxy (errors, scripts) or streamed from a server.
pub(crate) struct ResponseBody<E: BodyEnd> {
    source: Source,
    end: E,
}

impl<E: BodyEnd> ResponseBody<E> {
    pub fn full(bytes: Bytes, end: E) -> Self {
        Self {
            source: Source::Full((!bytes.is_empty()).then_some(bytes)),
            end,
        }
    }

    pub fn streamed(body: Incoming, end: E) -> Self {
        Self {
            source: Source::Streamed(body),
            end,
        }
    }
}

impl<E: BodyEnd> Body for ResponseBody<E> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        match &mut this.source {
            Source::Full(bytes) => match bytes.take() {
                Some(b) => {
                    this.end.sent(b.len() as u64);
                    Poll::Ready(Some(Ok(Frame::data(b))))
                }
                None => {
                    this.end.finished();
                    Poll::Ready(None)
                }
            },
            Source::Streamed(body) => {
                let polled = Pin::new(body).poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(data) = frame.data_ref() {
                            this.end.sent(data.len() as u64);
                        }
                    }
                    Poll::Ready(None) => this.end.finished(),
                    Poll::Ready(Some(Err(_))) => this.end.failed(),
                    Poll::Pending => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.source.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.source.size_hint()
    }
}

impl<E: BodyEnd> Drop for ResponseBody<E> {
    fn drop(&mut self) {
        // hyper skips polling a body that is empty from the start (HEAD, 204, 304,
        // Content-Length: 0): such a body is complete and its connection reusable.
        if self.is_end_stream() {
            self.end.finished();
        }
    }
}
