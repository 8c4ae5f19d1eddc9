//! Streaming bodies: frames pass through one at a time and are only counted, never collected.
//! The response body also carries the transaction, so that the access log line, the counters
//! and the return of the upstream connection to its pool happen when the response has really
//! been sent (or abandoned), not when its headers were.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::conn::ConnClock;
use super::hooks::TxnHooks;
use super::picker::ServerPicker;
use super::route::VsRoute;
use super::stats::{Gauge, GaugeGuard, ServerCounters};
use super::upstream::{UpstreamPool, UpstreamSender};

/// The client's request body on its way upstream, counted.
pub(crate) struct RequestBody {
    inner: Incoming,
    bytes: Arc<AtomicU64>,
}

impl RequestBody {
    pub fn new(inner: Incoming, bytes: Arc<AtomicU64>) -> Self {
        Self { inner, bytes }
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
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            this.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The server a transaction went to; releases the picker's and the gauge's count on drop.
pub(crate) struct ServerUse {
    pub addr: SocketAddr,
    pub counters: Arc<ServerCounters>,
    picker: Arc<dyn ServerPicker>,
    _active: GaugeGuard<Gauge<ServerCounters>>,
}

impl ServerUse {
    pub fn new(
        addr: SocketAddr,
        counters: Arc<ServerCounters>,
        picker: Arc<dyn ServerPicker>,
    ) -> Self {
        counters.requests.fetch_add(1, Ordering::Relaxed);
        picker.request_started(addr);
        Self {
            addr,
            _active: GaugeGuard::new(Gauge::new(counters.clone(), |c: &ServerCounters| {
                &c.active_requests
            })),
            counters,
            picker,
        }
    }
}

impl Drop for ServerUse {
    fn drop(&mut self) {
        self.picker.request_finished(self.addr);
    }
}

/// Everything the access log line and the counters need; written out when dropped.
pub(crate) struct Txn {
    start: Instant,
    client: SocketAddr,
    method: http::Method,
    uri: http::Uri,
    clock: Arc<ConnClock>,
    pub vs: Option<Arc<VsRoute>>,
    pub hooks: Option<Box<dyn TxnHooks>>,
    pub server: Option<ServerUse>,
    /// Status the server answered, when it did.
    pub server_status: Option<u16>,
    /// Status sent to the client; 0 until a response exists.
    pub status: u16,
    pub request_bytes: Arc<AtomicU64>,
    /// How the server was chosen (the access log's persistence decision).
    pub route: Route,
    response_bytes: u64,
    complete: bool,
}

/// How a request's server was chosen, for the access log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// Answered without a server (a script's response or redirect, or an error).
    None,
    /// The pool's algorithm chose (no script selection).
    Balanced,
    /// A script selected the pool; its algorithm chose the server.
    ScriptPool,
    /// A script selected the server (persistence hit) and it was used.
    ScriptServer,
    /// A script selected a server that is down; the pool's algorithm chose instead.
    ScriptServerDown,
}

impl Route {
    fn as_str(self) -> &'static str {
        match self {
            Route::None => "-",
            Route::Balanced => "balanced",
            Route::ScriptPool => "script-pool",
            Route::ScriptServer => "script-server",
            Route::ScriptServerDown => "script-server-down",
        }
    }
}

impl Txn {
    pub fn new(
        client: SocketAddr,
        method: http::Method,
        uri: http::Uri,
        clock: Arc<ConnClock>,
    ) -> Self {
        Self {
            start: Instant::now(),
            client,
            method,
            uri,
            clock,
            vs: None,
            hooks: None,
            server: None,
            server_status: None,
            status: 0,
            request_bytes: Arc::new(AtomicU64::new(0)),
            route: Route::None,
            response_bytes: 0,
            complete: false,
        }
    }

    pub fn close_requested(&self) -> bool {
        self.hooks.as_ref().is_some_and(|h| h.close_connection())
    }
}

impl Drop for Txn {
    fn drop(&mut self) {
        let request_bytes = self.request_bytes.load(Ordering::Relaxed);
        if let Some(vs) = &self.vs {
            let c = &vs.counters;
            c.request_bytes.fetch_add(request_bytes, Ordering::Relaxed);
            c.response_bytes
                .fetch_add(self.response_bytes, Ordering::Relaxed);
            if self.status != 0 {
                c.response(self.status);
            }
        }
        if let Some(server) = &self.server {
            let c = &server.counters;
            c.request_bytes.fetch_add(request_bytes, Ordering::Relaxed);
            if let Some(status) = self.server_status {
                c.response(status);
                c.response_bytes
                    .fetch_add(self.response_bytes, Ordering::Relaxed);
            }
        }
        let script_log = self.hooks.as_ref().and_then(|h| h.log_output());
        tracing::info!(
            target: "latch::access",
            client = %self.client,
            vs = self.vs.as_ref().map_or("-", |v| &*v.name),
            server = %self.server.as_ref().map_or_else(|| "-".to_owned(), |s| s.addr.to_string()),
            method = %self.method,
            path = self.uri.path(),
            status = self.status,
            duration_us = self.start.elapsed().as_micros() as u64,
            request_bytes,
            response_bytes = self.response_bytes,
            complete = self.complete,
            route = self.route.as_str(),
            script_log = script_log.as_deref().unwrap_or(""),
        );
        self.clock.idle();
    }
}

/// An upstream connection lent to one response, returned to its pool at end of body.
pub(crate) struct Lent {
    pub pool: Arc<UpstreamPool>,
    pub server: SocketAddr,
    pub sender: UpstreamSender,
}

enum Source {
    Full(Option<Bytes>),
    Upstream { body: Incoming, lent: Option<Lent> },
}

/// A response body: either made by the proxy (errors, scripts) or streamed from a server.
pub(crate) struct ResponseBody {
    source: Source,
    txn: Txn,
}

impl ResponseBody {
    pub fn full(bytes: Bytes, txn: Txn) -> Self {
        Self {
            source: Source::Full((!bytes.is_empty()).then_some(bytes)),
            txn,
        }
    }

    pub fn upstream(body: Incoming, lent: Lent, txn: Txn) -> Self {
        Self {
            source: Source::Upstream {
                body,
                lent: Some(lent),
            },
            txn,
        }
    }
}

impl Body for ResponseBody {
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
                    this.txn.response_bytes += b.len() as u64;
                    Poll::Ready(Some(Ok(Frame::data(b))))
                }
                None => {
                    this.txn.complete = true;
                    Poll::Ready(None)
                }
            },
            Source::Upstream { body, lent } => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(data) = frame.data_ref() {
                            this.txn.response_bytes += data.len() as u64;
                        }
                    }
                    Poll::Ready(None) => {
                        this.txn.complete = true;
                        if let Some(l) = lent.take() {
                            l.pool.checkin(l.server, l.sender);
                        }
                    }
                    Poll::Ready(Some(Err(_))) => {
                        // The connection is broken: never pool it.
                        lent.take();
                    }
                    Poll::Pending => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Full(b) => b.is_none(),
            Source::Upstream { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Source::Upstream { body, .. } => body.size_hint(),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        match &mut self.source {
            // hyper skips polling a body that is empty from the start (HEAD, 204, 304,
            // Content-Length: 0): such a body is complete and its connection reusable.
            Source::Upstream { body, lent } if body.is_end_stream() => {
                self.txn.complete = true;
                if let Some(l) = lent.take() {
                    l.pool.checkin(l.server, l.sender);
                }
            }
            Source::Full(None) => self.txn.complete = true,
            _ => {}
        }
    }
}
