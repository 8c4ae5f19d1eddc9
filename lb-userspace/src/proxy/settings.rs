//! What the agent hands the proxy: tunables, virtual services and pools, free of TOML types.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::clock::ProxyClock;
use super::hooks::HookFactory;
use super::picker::ServerPicker;

/// Time a client has to send a complete request head once it starts one (and for the first
/// request of a new connection). Short, because a slow head is the slowloris attack.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Time an idle keep-alive client connection is kept between two requests.
pub const DEFAULT_CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Time to establish a TCP connection to a server.
pub const DEFAULT_UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Time from the end of the request body (as the server got it) until the response head has
/// arrived: a slow upload is the client's time, not the server's.
pub const DEFAULT_UPSTREAM_RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest pause inside a request body the client is sending; then 408 and the connection
/// closes (a stalled upload would otherwise hold a worker's connection and a server's).
pub const DEFAULT_CLIENT_BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest pause of a server inside a response body, or in taking a request body: the
/// exchange is then cut (504 if nothing was answered yet) and blamed on the server.
pub const DEFAULT_UPSTREAM_BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Time an idle upstream connection stays pooled. Kept below the keep-alive timeout of common
/// servers (nginx 75 s) so that the proxy, not the server, closes idle connections.
pub const DEFAULT_UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle upstream connections kept per server and worker.
pub const DEFAULT_MAX_IDLE_PER_SERVER: usize = 64;
/// Largest request head (request line and headers) accepted; larger ones get 431.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;
/// Most request headers accepted; more get 431.
pub const DEFAULT_MAX_HEADERS: usize = 100;
/// How long connections of a listener removed by a reload, or of every listener at SIGTERM,
/// may finish their requests before they are closed.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Streams one HTTP/2 client connection may have open at once (RFC 9113 suggests at least
/// 100); more are refused with RST_STREAM(REFUSED_STREAM).
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 100;
/// Streams an HTTP/2 client may reset before the proxy accepted them, at once; beyond it the
/// connection gets GOAWAY(ENHANCE_YOUR_CALM): the rapid-reset defence (CVE-2023-44487).
pub const H2_MAX_PENDING_ACCEPT_RESETS: usize = 20;
/// Streams the proxy may reset because of a client's protocol errors before it closes the
/// connection with GOAWAY (the same attack through errors the client provokes).
pub const H2_MAX_LOCAL_ERROR_RESETS: usize = 256;

/// Accept backlog of every listening socket.
pub const DEFAULT_LISTEN_BACKLOG: u32 = 1024;

/// Proxy tunables fixed for the life of an [`HttpProxy`](super::HttpProxy).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxySettings {
    /// Worker threads, each with its own runtime and SO_REUSEPORT listener per virtual
    /// service; 0 means one per CPU.
    pub workers: usize,
    /// See [`DEFAULT_HEADER_READ_TIMEOUT`].
    pub header_read_timeout: Duration,
    /// See [`DEFAULT_CLIENT_IDLE_TIMEOUT`].
    pub client_idle_timeout: Duration,
    /// See [`DEFAULT_UPSTREAM_CONNECT_TIMEOUT`].
    pub upstream_connect_timeout: Duration,
    /// See [`DEFAULT_UPSTREAM_RESPONSE_TIMEOUT`].
    pub upstream_response_timeout: Duration,
    /// See [`DEFAULT_CLIENT_BODY_IDLE_TIMEOUT`].
    pub client_body_idle_timeout: Duration,
    /// See [`DEFAULT_UPSTREAM_BODY_IDLE_TIMEOUT`].
    pub upstream_body_idle_timeout: Duration,
    /// See [`DEFAULT_UPSTREAM_IDLE_TIMEOUT`].
    pub upstream_idle_timeout: Duration,
    /// See [`DEFAULT_MAX_IDLE_PER_SERVER`].
    pub max_idle_per_server: usize,
    /// See [`DEFAULT_MAX_HEADER_BYTES`].
    pub max_header_bytes: usize,
    /// See [`DEFAULT_MAX_HEADERS`].
    pub max_headers: usize,
    /// See [`DEFAULT_DRAIN_TIMEOUT`].
    pub drain_timeout: Duration,
    /// See [`DEFAULT_LISTEN_BACKLOG`].
    pub listen_backlog: u32,
    /// What every timeout and drain deadline is measured on: tokio's clock unless a test
    /// drives a [`ManualClock`](super::ManualClock).
    pub clock: ProxyClock,
}

impl Default for ProxySettings {
    fn default() -> Self {
        Self {
            workers: 0,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            client_idle_timeout: DEFAULT_CLIENT_IDLE_TIMEOUT,
            upstream_connect_timeout: DEFAULT_UPSTREAM_CONNECT_TIMEOUT,
            upstream_response_timeout: DEFAULT_UPSTREAM_RESPONSE_TIMEOUT,
            client_body_idle_timeout: DEFAULT_CLIENT_BODY_IDLE_TIMEOUT,
            upstream_body_idle_timeout: DEFAULT_UPSTREAM_BODY_IDLE_TIMEOUT,
            upstream_idle_timeout: DEFAULT_UPSTREAM_IDLE_TIMEOUT,
            max_idle_per_server: DEFAULT_MAX_IDLE_PER_SERVER,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            listen_backlog: DEFAULT_LISTEN_BACKLOG,
            clock: ProxyClock::default(),
        }
    }
}

impl ProxySettings {
    /// Worker count with 0 resolved to the number of CPUs.
    pub fn effective_workers(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }
}

/// One `type = "http"` virtual service.
#[derive(Clone)]
pub struct VirtualServiceSpec {
    /// Name, for logs, stats and avi.vs.name.
    pub name: String,
    /// VIP:port to listen on; it identifies the listener across reloads.
    pub listen: SocketAddr,
    /// Default pool when no script selects one.
    pub pool: String,
    /// DataScripts of this service, if any.
    pub hooks: Option<Arc<dyn HookFactory>>,
    /// TLS termination: the handshake's configuration (certificates, versions, ALPN, client
    /// certificates); `None` serves plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl fmt::Debug for VirtualServiceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VirtualServiceSpec")
            .field("name", &self.name)
            .field("listen", &self.listen)
            .field("pool", &self.pool)
            .field("hooks", &self.hooks.is_some())
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// How the proxy speaks TLS to the servers of a pool.
#[derive(Clone, Debug)]
pub struct UpstreamTls {
    /// Roots, verification and ALPN.
    pub config: Arc<rustls::ClientConfig>,
    /// The name sent as SNI and checked; `None` uses each server's IP address.
    pub server_name: Option<rustls::pki_types::ServerName<'static>>,
}

/// One pool: its name and the algorithm that owns its servers and their health.
#[derive(Clone)]
pub struct PoolSpec {
    /// Name, as virtual services and avi.pool.select refer to it.
    pub name: String,
    /// Chooses among the pool's servers.
    pub picker: Arc<dyn ServerPicker>,
    /// TLS to its servers; `None` speaks plain HTTP.
    pub tls: Option<UpstreamTls>,
}

impl fmt::Debug for PoolSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolSpec")
            .field("name", &self.name)
            .field("servers", &self.picker.servers())
            .finish()
    }
}

/// The swappable part of the proxy: what [`HttpProxy::reload`](super::HttpProxy::reload)
/// replaces atomically.
#[derive(Clone, Debug, Default)]
pub struct ProxyConfig {
    /// HTTP virtual services.
    pub virtual_services: Vec<VirtualServiceSpec>,
    /// Pools the services and scripts refer to.
    pub pools: Vec<PoolSpec>,
}
