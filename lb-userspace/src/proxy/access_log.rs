//! The access log: one line per transaction at target `latch::access`, written when the
//! response has been sent or abandoned (see `txn`).

use std::net::SocketAddr;
use std::time::Duration;

use super::hooks::{RequestId, TlsInfo};

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

/// One access log line.
pub(crate) struct AccessLogLine<'a> {
    /// The transaction's id (avi.http.get_request_id).
    pub request_id: RequestId,
    /// The user id: set by a script (avi.http.set_userid), else the Basic-Auth user.
    pub user: Option<&'a str>,
    pub client: SocketAddr,
    /// Virtual service; `None` when the listener was gone.
    pub vs: Option<&'a str>,
    /// The server the request went to, if any.
    pub server: Option<SocketAddr>,
    pub method: &'a http::Method,
    pub path: &'a str,
    /// Status sent to the client; 0 when no response was made.
    pub status: u16,
    pub duration: Duration,
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// The response body went out to its end.
    pub complete: bool,
    pub route: Route,
    /// What the transaction's scripts logged.
    pub script_log: Option<&'a str>,
    /// The connection's TLS version, cipher and SNI; `None` for plain HTTP.
    pub tls: Option<&'a TlsInfo>,
}

impl AccessLogLine<'_> {
    pub fn write(&self) {
        tracing::info!(
            target: "latch::access",
            request_id = %self.request_id,
            client = %self.client,
            vs = self.vs.unwrap_or("-"),
            server = %self.server.map_or_else(|| "-".to_owned(), |s| s.to_string()),
            method = %self.method,
            path = self.path,
            status = self.status,
            duration_us = self.duration.as_micros() as u64,
            request_bytes = self.request_bytes,
            response_bytes = self.response_bytes,
            complete = self.complete,
            route = self.route.as_str(),
            user = self.user.unwrap_or("-"),
            script_log = self.script_log.unwrap_or(""),
            tls_version = self.tls.map_or("-", |t| t.protocol),
            tls_cipher = self.tls.map_or("-", |t| t.cipher_name()),
            tls_sni = self.tls.and_then(|t| t.server_name.as_deref()).unwrap_or("-"),
        );
    }
}
