//! The seam between the HTTP proxy and whatever runs per request (DataScripts).
//!
//! The proxy knows nothing about Lua; the DataScript engine knows nothing about sockets. The
//! proxy asks a [`HookFactory`] (one per virtual service) for a [`TxnHooks`] at the start of
//! every request and calls it at the DataScript events. Everything here is synchronous:
//! scripts never wait on I/O. The events beyond HTTP_REQ and HTTP_RESP have no-op defaults, and
//! a body is only buffered when the hooks ask for it, so a service without such scripts keeps
//! streaming.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;

pub use super::tls::{CipherNames, TlsInfo};

/// A transaction's identity (avi.http.get_request_id, the access log's `request_id`): unique
/// within one agent process, and unlikely to repeat across restarts because the sequence
/// starts at a random number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RequestId(pub u64);

impl RequestId {
    /// The next id of this process.
    pub fn next() -> Self {
        static NEXT: std::sync::OnceLock<AtomicU64> = std::sync::OnceLock::new();
        let counter = NEXT.get_or_init(|| {
            // RandomState is seeded from the OS: a random start without a rand dependency.
            use std::hash::BuildHasher;
            AtomicU64::new(std::collections::hash_map::RandomState::new().hash_one(0u8))
        });
        Self(counter.fetch_add(1, Ordering::Relaxed))
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// What the proxy tells the hooks about a transaction when it begins.
#[derive(Clone, Debug)]
pub struct TxnInfo {
    /// Virtual service name.
    pub vs_name: String,
    /// Address the virtual service listens on (avi.vs.ip / avi.vs.port).
    pub vs_addr: SocketAddr,
    /// The client's address (avi.vs.client_ip / client_port).
    pub client: SocketAddr,
    /// The transaction's id, also in its access log line.
    pub request_id: RequestId,
    /// The connection's TLS facts (avi.ssl.*, avi.http.secure); `None` for plain HTTP.
    pub tls: Option<Arc<TlsInfo>>,
}

/// How a script wants the request forwarded: a pool and server (avi.pool.select),
/// overriding the VS's algorithm, and per-request settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    /// Pool name; `None` keeps the virtual service's default pool.
    pub pool: Option<String>,
    /// A specific server of that pool; `None` lets the pool's algorithm choose.
    pub server: Option<SocketAddr>,
    /// The key a consistent-hash pool hashes instead of its configured one
    /// (avi.pool.chash).
    pub hash_key: Option<String>,
    /// Time the server has to send the response head, instead of the proxy's setting
    /// (avi.http.set_server_timeout).
    pub response_timeout: Option<Duration>,
}

/// Outcome of the HTTP_REQ event.
#[derive(Debug)]
pub enum RequestVerdict {
    /// Go on to load balancing with this selection (possibly empty).
    Forward(Selection),
    /// Answer the client without contacting a backend (avi.http.response / redirect, or a
    /// script error answered 500).
    Respond(http::Response<Bytes>),
}

/// Outcome of the HTTP_RESP event.
#[derive(Debug)]
pub enum ResponseVerdict {
    /// Send the (possibly modified) backend response on.
    Continue,
    /// Replace the backend response (avi.http.response in HTTP_RESP, or a script error
    /// answered 500). The backend body is discarded.
    Respond(http::Response<Bytes>),
}

/// Per-transaction hooks. Created at request start, dropped when the response is done.
pub trait TxnHooks: Send {
    /// HTTP_REQ: after the request headers, before the body. May rewrite the request headers.
    fn on_request(&mut self, request: &mut http::request::Parts) -> RequestVerdict;

    /// HTTP_RESP: after the response headers from `server`. May rewrite the response headers.
    fn on_response(
        &mut self,
        response: &mut http::response::Parts,
        server: SocketAddr,
    ) -> ResponseVerdict;

    /// The most of the request body to buffer for [`TxnHooks::on_request_body`]; `None`
    /// (the default) streams the body to the server. Asked after `on_request`.
    fn request_body_limit(&self) -> Option<usize> {
        None
    }

    /// HTTP_REQ_DATA: the whole request body is in (only when `request_body_limit` asked).
    fn on_request_body(
        &mut self,
        _request: &mut http::request::Parts,
        _body: &Bytes,
    ) -> RequestVerdict {
        RequestVerdict::Forward(Selection::default())
    }

    /// HTTP_LB_DONE: `server` was chosen and is connected; the request has not gone yet.
    /// `Some` answers the client instead.
    fn on_lb_done(&mut self, _server: SocketAddr) -> Option<http::Response<Bytes>> {
        None
    }

    /// HTTP_RESP_FAILED: no valid response head came (connect failure, timeout, bad or reset
    /// response); the proxy would answer `status`. `Some` answers the client instead.
    fn on_response_failed(&mut self, _status: http::StatusCode) -> Option<http::Response<Bytes>> {
        None
    }

    /// The most of the response body to buffer for [`TxnHooks::on_response_body`]; `None`
    /// (the default) streams it. Asked after `on_response`.
    fn response_body_limit(&self) -> Option<usize> {
        None
    }

    /// HTTP_RESP_DATA: the whole response body is in (only when `response_body_limit` asked).
    fn on_response_body(
        &mut self,
        _response: &mut http::response::Parts,
        _body: &Bytes,
    ) -> ResponseVerdict {
        ResponseVerdict::Continue
    }

    /// Text the scripts logged with avi.vs.log, for the request's access log line.
    fn log_output(&self) -> Option<String> {
        None
    }

    /// True when a script asked for the client connection to be closed after this response
    /// (avi.http.close_conn).
    fn close_connection(&self) -> bool {
        false
    }

    /// The user id a script set (avi.http.set_userid), for the access log line; `None`
    /// leaves the request's Basic-Auth user there.
    fn user_id(&self) -> Option<String> {
        None
    }
}

/// One per virtual service; cheap to call once per request.
pub trait HookFactory: Send + Sync {
    /// Start a transaction.
    fn begin(&self, info: TxnInfo) -> Box<dyn TxnHooks>;
}

/// Health of one server as scripts see it (avi.pool.get_server_status and friends).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerView {
    /// Server address.
    pub addr: SocketAddr,
    /// True when the health monitor (if any) says up.
    pub up: bool,
}

/// Read-only view of the pools for scripts: which pools exist, their servers and health.
pub trait PoolView: Send + Sync {
    /// Servers of `pool`, or `None` for an unknown pool.
    fn servers(&self, pool: &str) -> Option<Vec<ServerView>>;
}
