//! The transaction: one request from its head to the end of its response body.
//!
//! It is carried by the response body (as its [`BodyEnd`]) and finishes when that body is
//! sent or abandoned: the upstream connection goes back to its pool when the body was read to
//! the end, then the connection's keep-alive timer starts, the counters are added and the
//! access log line is written.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::access_log::{AccessLogLine, Route};
use super::body::{BodyEnd, BodyError};
use super::conn_clock::ConnClock;
use super::hooks::{RequestId, TxnHooks};
use super::picker::ServerPicker;
use super::route::VsRoute;
use super::stats::{Gauge, GaugeGuard, ServerCounters};
use super::tls::TlsInfo;
use super::upstream::Lent;

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
    pub request_id: RequestId,
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
    /// The Basic-Auth user of the request (after the scripts), for the access log.
    pub basic_auth_user: Option<String>,
    /// The connection the response body streams from; back to its pool once read to the end.
    pub upstream: Option<Lent>,
    response_bytes: u64,
    complete: bool,
    /// The connection's TLS facts, for the access log.
    pub tls: Option<Arc<TlsInfo>>,
}

impl Txn {
    pub fn new(
        client: SocketAddr,
        method: http::Method,
        uri: http::Uri,
        clock: Arc<ConnClock>,
    ) -> Self {
        Self {
            request_id: RequestId::next(),
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
            basic_auth_user: None,
            upstream: None,
            response_bytes: 0,
            complete: false,
            tls: None,
        }
    }

    pub fn close_requested(&self) -> bool {
        self.hooks.as_ref().is_some_and(|h| h.close_connection())
    }
}

impl BodyEnd for Txn {
    fn sent(&mut self, len: u64) {
        self.response_bytes += len;
    }

    fn finished(&mut self) {
        self.complete = true;
        if let Some(lent) = self.upstream.take() {
            lent.give_back();
        }
    }

    fn failed(&mut self, error: &BodyError) {
        // The connection is broken (or its server stalled): never pool it.
        self.upstream = None;
        let server = self.server.as_ref().map(|s| s.addr);
        let vs = self.vs.as_ref().map(|v| &*v.name);
        match error {
            BodyError::Idle(limit) => tracing::warn!(
                vs,
                ?server,
                ?limit,
                "server paused in its response body too long; exchange cut"
            ),
            BodyError::Read(e) => {
                tracing::debug!(vs, ?server, error = %e, "response body from the server failed")
            }
        }
    }
}

impl Drop for Txn {
    fn drop(&mut self) {
        // First, so that whoever sees this response counted sees its connection idle.
        self.clock.idle();
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
        let user = self
            .hooks
            .as_ref()
            .and_then(|h| h.user_id())
            .or_else(|| self.basic_auth_user.take());
        AccessLogLine {
            request_id: self.request_id,
            user: user.as_deref(),
            client: self.client,
            vs: self.vs.as_ref().map(|v| &*v.name),
            server: self.server.as_ref().map(|s| s.addr),
            method: &self.method,
            path: self.uri.path(),
            status: self.status,
            duration: self.start.elapsed(),
            request_bytes,
            response_bytes: self.response_bytes,
            complete: self.complete,
            route: self.route,
            script_log: script_log.as_deref(),
            tls: self.tls.as_deref(),
        }
        .write();
    }
}
