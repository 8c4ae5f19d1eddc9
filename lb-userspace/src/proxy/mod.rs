//! HTTP termination and upstream connection pools (tokio + hyper).
//!
//! One [`HttpProxy`] serves every `type = "http"` virtual service. Per request it runs the
//! service's [`hooks`] (DataScripts), asks a pool's [`ServerPicker`] for a server, forwards
//! over a pooled HTTP/1.1 connection and streams both bodies. Defaults of every timeout and
//! limit are the `DEFAULT_*` constants in [`settings`].
//!
//! Protocol errors are answered by hyper before a request reaches the proxy or a server: a
//! request head over `max_header_bytes` or with more than `max_headers` headers gets 431, a
//! bad request line or header, or Content-Length together with Transfer-Encoding, gets 400;
//! then the connection is closed. hyper alone would accept the last one (dropping
//! Content-Length, as RFC 9112 section 6.3 permits); `framing` follows the framing of every
//! request on a connection and makes hyper refuse it, since it is the request-smuggling
//! vector. A head that does not arrive within `header_read_timeout`
//! closes the connection without a response.
//!
//! An HTTP/1.1 `Upgrade` request (WebSocket) runs the request scripts and is balanced like any
//! other, its `Upgrade` and `Connection: upgrade` forwarded; when the server answers 101 the
//! client gets the 101 and both connections are handed to `tunnel`, which copies bytes both
//! ways until both close or nothing moves for `client_idle_timeout`.
//!
//! A virtual service with TLS (`VirtualServiceSpec::tls`) handshakes every new connection
//! (rustls, within `header_read_timeout`) before hyper sees it; the handshake's facts
//! ([`TlsInfo`]) go to every transaction of the connection. A reload hands new connections
//! the new certificates; connections already open keep their session. A TLS client that
//! agreed on ALPN `h2` is served by hyper's HTTP/2 server (`conn::serve_h2`, limits in
//! `settings`), each stream a transaction like an HTTP/1.1 request.
//!
//! # Module layers
//!
//! A module uses only modules of lower layers, so the module graph has no cycle (a test reads
//! this list and checks every `super::` path against it):
//!
//! 0. `tls`: what a TLS handshake tells the transactions (a leaf under the hooks).
//! 1. `error`, `hooks`, `headers`, `framing`, `stats`, `clock`: leaves. The clock is what
//!    every timer waits on.
//! 2. `picker`, `conn_clock`, `access_log`, `tunnel`, `body`: a pool's server choice; a
//!    client connection's phase; the access log line, which only formats (with the hooks'
//!    request id); an upgraded connection's two-way copy; the bodies, which count, report to
//!    a `BodyEnd` and cut a peer that pauses too long (on the clock).
//! 3. `settings`: what the agent hands over.
//! 4. `route`, `upstream`: the routing table built from the settings; the upstream
//!    connection pools.
//! 5. `txn`: one transaction, finished (counters, pooled connection, access log) by its
//!    response body.
//! 6. `handler`: one request: hooks, server choice, upstream exchange.
//! 7. `conn`: one client connection, its timers and hyper's server.
//! 8. `server`: workers, listeners, reload and drain.

/// A hash map for keys that come from the configuration (listen and server addresses, pool
/// names), looked up on every request: foldhash, randomly seeded per map, instead of SipHash,
/// which cost about 40 instructions per lookup of a socket address (callgrind). Maps whose
/// keys a client chooses (the DataScript tables) keep SipHash.
pub(crate) type ConfigMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

mod access_log;
mod body;
mod clock;
mod conn;
mod conn_clock;
mod error;
pub mod framing;
mod handler;
mod headers;
pub mod hooks;
mod picker;
mod route;
mod server;
pub mod settings;
mod stats;
mod tls;
mod tunnel;
mod txn;
mod upstream;

#[cfg(test)]
mod tests;

pub use clock::{ManualClock, ProxyClock, TimedOut};
pub use error::ProxyError;
pub use headers::basic_auth_user;
pub use picker::{PickContext, RoundRobin, ServerPicker};
pub use route::StaticPoolView;
pub use server::{DrainReport, HttpProxy, serve};
pub use settings::{PoolSpec, ProxyConfig, ProxySettings, UpstreamTls, VirtualServiceSpec};
pub use stats::{ProxyStats, ServerStats, VsStats, status_class};
pub use tls::{CipherNames, TlsInfo};
