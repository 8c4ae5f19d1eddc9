//! Streaming bodies: frames pass through one at a time and are only counted, never collected
//! (except, up to a limit, for the scripts of the body events: [`collect_limited`]).
//!
//! A response body tells its [`BodyEnd`] (the transaction) what went out and how it ended, so
//! that the access log line, the counters and the return of the upstream connection to its
//! pool happen when the response has really been sent (or abandoned), not when its headers
//! were. This module knows nothing of transactions or connections.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::clock::{OwnedSleep, ProxyClock};

/// Why a body stopped short.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    /// Reading it failed: the peer reset or sent a malformed body.
    #[error(transparent)]
    Read(#[from] hyper::Error),
    /// No byte of it came for this long.
    #[error("no body data for {0:?}")]
    Idle(Duration),
}

/// Bounds how long a body may keep its reader waiting: the time counts only while the body
/// is polled and has nothing (a peer that is not read from, because the other side is slow,
/// is not pausing). A wait starts at the first `Pending` after a frame (one clock read per
/// wait, none per frame); the timer is armed once and re-armed lazily when it fires before
/// the current wait's end, so a flowing body causes no timer churn.
pub(crate) struct IdleTimer {
    limit: Duration,
    clock: ProxyClock,
    armed: Option<(Instant, OwnedSleep)>,
    /// When the current wait ends; `None` between waits.
    due: Option<Instant>,
    /// A frame came since the current wait began.
    progressed: bool,
}

impl IdleTimer {
    pub fn new(limit: Duration, clock: ProxyClock) -> Self {
        Self {
            limit,
            clock,
            armed: None,
            due: None,
            progressed: false,
        }
    }

    /// A frame came: the next `Pending` starts a new wait.
    fn frame(&mut self) {
        self.progressed = true;
    }

    /// The body has nothing: ready once this wait has lasted `limit`.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<Duration> {
        let due = match self.due {
            Some(due) if !self.progressed => due,
            _ => {
                self.progressed = false;
                let due = self.clock.now() + self.limit;
                self.due = Some(due);
                due
            }
        };
        loop {
            let (deadline, sleep) = self
                .armed
                .get_or_insert_with(|| (due, self.clock.sleep_owned(due)));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if *deadline < due {
                // Armed for an earlier wait: this one ends later.
                self.armed = Some((due, self.clock.sleep_owned(due)));
                continue;
            }
            self.armed = None;
            self.due = None;
            return Poll::Ready(self.limit);
        }
    }
}

/// What the handler learns of a request body while it goes upstream.
#[derive(Debug, Default)]
pub(crate) struct UploadProgress {
    /// A [`ClientFailure`] as u8; 0 while none.
    failure: AtomicU8,
    /// The body was polled and is waiting for the client (not for the server to take it).
    waiting_on_client: AtomicBool,
}

/// How reading the client's body failed: a failed upstream request is then the client's
/// doing, not the server's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ClientFailure {
    /// Bad chunk framing, or the client went away.
    Broken = 1,
    /// The client paused longer than `client_body_idle_timeout`.
    Idle = 2,
}

impl UploadProgress {
    pub fn failure(&self) -> Option<ClientFailure> {
        match self.failure.load(Ordering::Relaxed) {
            1 => Some(ClientFailure::Broken),
            2 => Some(ClientFailure::Idle),
            _ => None,
        }
    }

    pub fn waiting_on_client(&self) -> bool {
        self.waiting_on_client.load(Ordering::Relaxed)
    }
}

/// The handler's view of a request body in flight: its progress, and a signal when it has
/// been read to its end, failed or was dropped.
pub(crate) struct UploadWatch {
    pub progress: Arc<UploadProgress>,
    /// Bytes of the body read from the client so far.
    pub bytes: Arc<AtomicU64>,
    /// Resolves (with an error: nothing is ever sent) once the body's side is gone.
    pub done: oneshot::Receiver<()>,
    /// `done` has resolved (it must not be polled again).
    pub finished: bool,
}

/// The body's side of an [`UploadWatch`].
struct Upload {
    idle: IdleTimer,
    progress: Arc<UploadProgress>,
    done: Option<oneshot::Sender<()>>,
}

impl Upload {
    fn fail(&mut self, failure: ClientFailure) {
        self.progress
            .failure
            .store(failure as u8, Ordering::Relaxed);
        self.done = None;
    }
}

/// The client's request body on its way upstream, counted: streamed, or buffered whole for the
/// HTTP_REQ_DATA scripts.
pub(crate) struct RequestBody {
    source: Source,
    bytes: Arc<AtomicU64>,
    /// For a streamed body with something left to read: its idle timer and what the handler
    /// sees of it. `None` for empty and buffered bodies, which cost nothing of this.
    upload: Option<Upload>,
}

impl RequestBody {
    /// A body streamed from the client, cut with [`BodyError::Idle`] when the client pauses
    /// longer than `idle`.
    pub fn streamed(inner: Incoming, bytes: Arc<AtomicU64>, idle: IdleTimer) -> Self {
        let upload = (!inner.is_end_stream()).then(|| Upload {
            idle,
            progress: Arc::default(),
            done: None,
        });
        Self {
            source: Source::Streamed(inner),
            bytes,
            upload,
        }
    }

    /// A body read whole beforehand (see [`collect_limited`]).
    pub fn buffered(body: Bytes, bytes: Arc<AtomicU64>) -> Self {
        Self {
            source: Source::Full((!body.is_empty()).then_some(body)),
            bytes,
            upload: None,
        }
    }

    /// Watches the upload, when there is one to wait for (a streamed body not yet at its end).
    pub fn watch(&mut self) -> Option<UploadWatch> {
        let upload = self.upload.as_mut()?;
        let (tx, done) = oneshot::channel();
        upload.done = Some(tx);
        Some(UploadWatch {
            progress: Arc::clone(&upload.progress),
            bytes: Arc::clone(&self.bytes),
            done,
            finished: false,
        })
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let inner = match &mut this.source {
            Source::Full(bytes) => {
                return Poll::Ready(bytes.take().map(|b| {
                    this.bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
                    Ok(Frame::data(b))
                }));
            }
            Source::Streamed(inner) => inner,
        };
        let polled = Pin::new(&mut *inner).poll_frame(cx);
        let Some(upload) = this.upload.as_mut() else {
            return polled.map_err(BodyError::Read);
        };
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                upload.idle.frame();
                upload
                    .progress
                    .waiting_on_client
                    .store(false, Ordering::Relaxed);
                if inner.is_end_stream() {
                    upload.done = None;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                upload.done = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                upload.fail(ClientFailure::Broken);
                Poll::Ready(Some(Err(BodyError::Read(e))))
            }
            Poll::Pending => {
                upload
                    .progress
                    .waiting_on_client
                    .store(true, Ordering::Relaxed);
                match upload.idle.poll_expired(cx) {
                    Poll::Ready(limit) => {
                        upload.fail(ClientFailure::Idle);
                        Poll::Ready(Some(Err(BodyError::Idle(limit))))
                    }
                    Poll::Pending => Poll::Pending,
                }
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

/// Why [`collect_limited`] gave up.
#[derive(Debug)]
pub(crate) enum CollectError {
    /// The body is longer than the limit.
    TooLarge,
    /// Reading it failed (the peer reset or sent a malformed body).
    Read(hyper::Error),
    /// The peer paused inside the body longer than the idle limit.
    Idle(Duration),
}

/// Reads a whole body of at most `limit` bytes (for the HTTP_REQ_DATA / HTTP_RESP_DATA
/// scripts); a longer one is refused as soon as it is known to be longer, and a peer that
/// pauses longer than `idle` between two frames is given up on.
pub(crate) async fn collect_limited(
    mut body: Incoming,
    limit: usize,
    idle: Duration,
    clock: &ProxyClock,
) -> Result<Bytes, CollectError> {
    use http_body_util::BodyExt;
    if body.size_hint().lower() > limit as u64 {
        return Err(CollectError::TooLarge);
    }
    let mut buf = bytes::BytesMut::new();
    loop {
        let frame = match clock.timeout(idle, body.frame()).await {
            Err(_) => return Err(CollectError::Idle(idle)),
            Ok(None) => break,
            Ok(Some(frame)) => frame.map_err(CollectError::Read)?,
        };
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
    /// Reading the body from the server failed, or the server paused in it too long; the
    /// rest of it is lost.
    fn failed(&mut self, error: &BodyError);
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
    /// For a streamed body: cuts a server that pauses in it too long.
    idle: Option<IdleTimer>,
}

impl<E: BodyEnd> ResponseBody<E> {
    pub fn full(bytes: Bytes, end: E) -> Self {
        Self {
            source: Source::Full((!bytes.is_empty()).then_some(bytes)),
            end,
            idle: None,
        }
    }

    /// A body streamed from a server, cut with [`BodyError::Idle`] when the server pauses
    /// longer than `idle`.
    pub fn streamed(body: Incoming, end: E, idle: IdleTimer) -> Self {
        Self {
            source: Source::Streamed(body),
            end,
            idle: Some(idle),
        }
    }
}

impl<E: BodyEnd> Body for ResponseBody<E> {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
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
            Source::Streamed(body) => match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        this.end.sent(data.len() as u64);
                    }
                    if let Some(idle) = this.idle.as_mut() {
                        idle.frame();
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(None) => {
                    this.end.finished();
                    Poll::Ready(None)
                }
                Poll::Ready(Some(Err(e))) => {
                    let error = BodyError::Read(e);
                    this.end.failed(&error);
                    Poll::Ready(Some(Err(error)))
                }
                Poll::Pending => match this.idle.as_mut().map(|i| i.poll_expired(cx)) {
                    Some(Poll::Ready(limit)) => {
                        let error = BodyError::Idle(limit);
                        this.end.failed(&error);
                        Poll::Ready(Some(Err(error)))
                    }
                    _ => Poll::Pending,
                },
            },
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
