//! The validated configuration: resolved types, defaults applied, ready to use.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::geo::GeoDatabase;
use super::groups::{Groups, RateLimiterConfig, VsRateLimit};
use super::tls::{PoolTls, TlsSettings};

/// A complete, validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// File the configuration was read from (relative paths in it are resolved against its
    /// directory).
    pub path: PathBuf,
    /// `[agent]`.
    pub agent: AgentConfig,
    /// `[[pool]]`, in file order.
    pub pools: Vec<PoolConfig>,
    /// `[[virtual_service]]`, in file order.
    pub virtual_services: Vec<VirtualServiceConfig>,
    /// `[replication]`; `None` keeps tables local to this host.
    pub replication: Option<ReplicationConfig>,
    /// `[[string_group]]` and `[[ip_group]]`, loaded and indexed (shared with the scripts).
    pub groups: std::sync::Arc<Groups>,
    /// `[[rate_limiter]]`, in file order.
    pub rate_limiters: Vec<RateLimiterConfig>,
}

impl Config {
    /// The pool with this name.
    pub fn pool(&self, name: &str) -> Option<&PoolConfig> {
        self.pools.iter().find(|p| p.name == name)
    }

    /// The rate limiter with this name.
    pub fn rate_limiter(&self, name: &str) -> Option<&RateLimiterConfig> {
        self.rate_limiters.iter().find(|r| r.name == name)
    }

    /// The virtual service with this name.
    pub fn virtual_service(&self, name: &str) -> Option<&VirtualServiceConfig> {
        self.virtual_services.iter().find(|v| v.name == name)
    }
}

/// Default admin API address.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9180";
/// Default bpffs directory for pinned maps and links.
pub const DEFAULT_BPFFS_DIR: &str = "/sys/fs/bpf/latch";

/// `[agent]`: process-wide settings.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentConfig {
    /// NICs to attach the XDP program to (syntax checked here; existence by the dataplane).
    pub interfaces: Vec<String>,
    /// Those of `interfaces` where the program runs at TC ingress instead of XDP
    /// (`attach = { NAME = "tc" }`): veths and other senders of partial checksums.
    pub tc_interfaces: std::collections::BTreeSet<String>,
    /// Admin REST API and /metrics. Default 127.0.0.1:9180.
    pub admin_listen: SocketAddr,
    /// Where maps and links are pinned. Default /sys/fs/bpf/latch.
    pub bpffs_dir: PathBuf,
    /// Where the servers' runtime states and weights (`latch server ...`) are kept across
    /// restarts; `None` means [`AgentConfig::server_state_file`]'s default.
    pub state_file: Option<PathBuf>,
    /// Run even where the pins cannot outlive the agent (a private mount namespace, as under
    /// `ip netns exec`). Default false: such a start is refused with the cure.
    pub ephemeral_pins: bool,
    /// Proxy worker threads; `None` means one per core.
    pub workers: Option<usize>,
    /// File holding the bearer token the admin API then requires on every endpoint (resolved
    /// against the config file's directory).
    pub admin_token_file: Option<PathBuf>,
    /// Log line format.
    pub log_format: LogFormat,
    /// `[agent.http]`: proxy limits.
    pub http: HttpLimits,
    /// `[agent.datascript]`: DataScript VM limits.
    pub datascript: DataScriptLimits,
    /// `[agent.capacity]`: sizes of the kernel maps (a change applies at the next start,
    /// which migrates the pinned entries).
    pub capacity: lb_common::Capacities,
    /// The outer source address of IPv4 services in tunnel mode (IPIP), this host's own
    /// (`tunnel_source_ipv4`); required by such services.
    pub tunnel_source_ipv4: Option<std::net::Ipv4Addr>,
    /// The same for IPv6 services (IP6IP6, `tunnel_source_ipv6`).
    pub tunnel_source_ipv6: Option<std::net::Ipv6Addr>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            interfaces: Vec::new(),
            tc_interfaces: std::collections::BTreeSet::new(),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9180)),
            bpffs_dir: PathBuf::from(DEFAULT_BPFFS_DIR),
            state_file: None,
            ephemeral_pins: false,
            workers: None,
            admin_token_file: None,
            log_format: LogFormat::Text,
            http: HttpLimits::default(),
            datascript: DataScriptLimits::default(),
            capacity: lb_common::Capacities::DEFAULT,
            tunnel_source_ipv4: None,
            tunnel_source_ipv6: None,
        }
    }
}

/// Entries of the kernel table mirror kept free beyond `table_max_entries` for the name
/// records (one per virtual service and table name).
pub const MIRROR_RESERVE: usize = 1024;

/// Default of `fast_path_max_sessions`: an address is pinned while it carries one session.
pub const DEFAULT_FAST_PATH_MAX_SESSIONS: u32 = 1;

/// Directory of the default server state files.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/latch";

impl AgentConfig {
    /// The server state file: `state_file`, or one per `bpffs_dir` under
    /// [`DEFAULT_STATE_DIR`] (a bpf filesystem holds no regular files), so two agents with
    /// their own pins never share one: `/sys/fs/bpf/latch` keeps
    /// `/var/lib/latch/latch.servers.json`.
    pub fn server_state_file(&self) -> PathBuf {
        if let Some(f) = &self.state_file {
            return f.clone();
        }
        let dir = self.bpffs_dir.to_string_lossy();
        let name = dir
            .strip_prefix("/sys/fs/bpf/")
            .unwrap_or(&dir)
            .trim_matches('/')
            .replace('/', "_");
        PathBuf::from(DEFAULT_STATE_DIR).join(format!("{name}.servers.json"))
    }
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `[agent.http]`: limits that protect the proxy from slow or abusive peers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Time a client has to send complete request headers. Default 10s.
    pub header_read_timeout: Duration,
    /// Idle keep-alive connections are closed after this. Default 60s.
    pub idle_timeout: Duration,
    /// Time to establish an upstream TCP connection. Default 3s.
    pub upstream_connect_timeout: Duration,
    /// Time for the upstream to send response headers, counted from the end of the request
    /// body. Default 30s.
    pub upstream_response_timeout: Duration,
    /// Longest pause inside a request body the client is sending; then 408. Default 30s.
    pub client_body_idle_timeout: Duration,
    /// Longest pause of a server inside a response body (or in reading a request body); then
    /// the exchange is cut. Default 30s.
    pub upstream_body_idle_timeout: Duration,
    /// How long SIGTERM, and a reload that removes a listener, let requests in flight finish
    /// before their connections are closed. Default 30s.
    pub drain_timeout: Duration,
    /// Largest request head accepted (hyper's `max_buf_size`). Default 16 KiB.
    pub max_header_bytes: usize,
    /// Most header fields accepted in a request. Default 100.
    pub max_headers: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            upstream_connect_timeout: Duration::from_secs(3),
            upstream_response_timeout: Duration::from_secs(30),
            client_body_idle_timeout: Duration::from_secs(30),
            upstream_body_idle_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
            max_header_bytes: 16 * 1024,
            max_headers: 100,
        }
    }
}

/// `[agent.datascript]`: limits that stop runaway scripts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataScriptLimits {
    /// `geo_database`: the MaxMind database of `avi.utils.get_geo_from_ip`, loaded.
    pub geo_database: Option<GeoDatabase>,
    /// Lua instructions one event may run before the script is aborted. Default 1,000,000.
    pub instruction_budget: u64,
    /// Memory one Lua VM may allocate. Default 16 MiB.
    pub memory_limit: usize,
    /// Wall-clock time one script event may run, whatever it calls. Default 50 ms.
    pub max_event_time: Duration,
    /// Bytes the persistence tables of one virtual service may hold (keys, values and
    /// per-entry overhead); an insert beyond it returns false. Default 64 MiB.
    pub table_memory_limit: usize,
    /// `table_max_entries`: entries the persistence tables of one virtual service may hold
    /// (an insert beyond returns false). At most `[agent.capacity] table_mirror_entries`, so
    /// a virtual service's tables always fit the kernel mirror. Default 1,000,000.
    pub table_max_entries: usize,
    /// Headers the scripts of one transaction may add or replace. Default 100.
    pub max_added_headers: usize,
    /// Bytes (names and values) of the headers the scripts of one transaction may add or
    /// replace. Default 64 KiB.
    pub max_added_header_bytes: usize,
    /// `max_body_buffer`: the most of a request or response body buffered for the
    /// HTTP_REQ_DATA / HTTP_RESP_DATA scripts (413 / 502 beyond). Default 4 MiB.
    pub max_body_buffer: usize,
}

/// Default of `[agent.datascript] max_body_buffer`.
pub const DEFAULT_MAX_BODY_BUFFER: usize = 4 * 1024 * 1024;

impl Default for DataScriptLimits {
    fn default() -> Self {
        Self {
            geo_database: None,
            instruction_budget: 1_000_000,
            memory_limit: 16 * 1024 * 1024,
            max_event_time: Duration::from_millis(50),
            table_memory_limit: 64 * 1024 * 1024,
            table_max_entries: 1_000_000,
            max_added_headers: 100,
            max_added_header_bytes: 64 * 1024,
            max_body_buffer: DEFAULT_MAX_BODY_BUFFER,
        }
    }
}

/// `[[pool]]`: a named set of servers and how to choose among them.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolConfig {
    /// Unique pool name (what `avi.pool.select` names).
    pub name: String,
    /// How the HTTP proxy picks a server. L4 services always use the kernel's maglev table.
    pub algorithm: Algorithm,
    /// Servers, in file order, never empty.
    pub servers: Vec<PoolServer>,
    /// Active health checking; `None` means servers are always considered up.
    pub health_monitor: Option<HealthMonitor>,
    /// A server that comes up (health or `latch server ready`) ramps its weight from small
    /// to full over this time; `None` gives it its full weight at once.
    pub slow_start: Option<Duration>,
    /// TLS to the servers (the proxy's requests and the health monitor's probes); `None`
    /// speaks plain TCP/HTTP to them.
    pub tls: Option<PoolTls>,
}

impl PoolConfig {
    /// The servers' addresses, in file order.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.servers.iter().map(|s| s.addr).collect()
    }

    /// The server with this address.
    pub fn server(&self, addr: SocketAddr) -> Option<&PoolServer> {
        self.servers.iter().find(|s| s.addr == addr)
    }
}

/// Highest server weight (HAProxy's bound): keeps weighted tables and rings small.
pub const MAX_WEIGHT: u32 = 256;

/// One member of a pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolServer {
    /// Address and port.
    pub addr: SocketAddr,
    /// Relative share of new sessions, 0 to [`MAX_WEIGHT`]; 0 sends it none. Default 1.
    pub weight: u32,
    /// Used only while no other (non-backup) server of the pool can take new sessions.
    pub backup: bool,
}

impl PoolServer {
    /// A primary server of weight 1 (what a plain address string in the config means).
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            weight: 1,
            backup: false,
        }
    }
}

/// Server selection algorithm of a pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// Each up server in turn.
    RoundRobin,
    /// The up server with the fewest requests in flight.
    LeastConnections,
    /// The same key goes to the same server while it is up; a leaving server moves only its keys.
    ConsistentHash(HashKey),
}

/// What a consistent-hash pool hashes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashKey {
    /// The value of this request header.
    Header(String),
    /// The value of this request cookie.
    Cookie(String),
    /// The client's IP address (the default).
    ClientIp,
}

/// `health_monitor = { ... }` of a pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthMonitor {
    /// Probe kind.
    pub kind: MonitorKind,
    /// Time between probes of one server. Default 5s.
    pub interval: Duration,
    /// A probe not answered within this fails. Default 2s.
    pub timeout: Duration,
    /// Consecutive failures that take an up server down. Default 3.
    pub fall: u32,
    /// Consecutive successes that bring a down server up. Default 2.
    pub rise: u32,
}

/// Probe kind of a health monitor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MonitorKind {
    /// A TCP connect succeeds.
    Tcp,
    /// `GET path` answers with a status in `expect_status`.
    Http {
        /// Request path. Default "/".
        path: String,
        /// Accepted statuses. Default 200-399.
        expect_status: StatusSet,
    },
}

/// A set of HTTP status codes given as codes and inclusive ranges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusSet {
    /// Inclusive ranges; a single code is a range of one.
    pub ranges: Vec<(u16, u16)>,
}

impl Default for StatusSet {
    fn default() -> Self {
        Self {
            ranges: vec![(200, 399)],
        }
    }
}

impl StatusSet {
    /// True when `status` is accepted.
    pub fn contains(&self, status: u16) -> bool {
        self.ranges
            .iter()
            .any(|&(lo, hi)| (lo..=hi).contains(&status))
    }
}

/// Protocol of a virtual service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceType {
    /// Terminated by the agent's HTTP proxy; DataScripts run here.
    Http,
    /// Forwarded by XDP.
    Tcp,
    /// Forwarded by XDP.
    Udp,
}

impl ServiceType {
    /// The IP protocol on the wire (http runs on tcp), for listener clashes and kernel keys.
    pub fn ip_proto(self) -> u8 {
        match self {
            ServiceType::Http | ServiceType::Tcp => lb_common::proto::TCP,
            ServiceType::Udp => lb_common::proto::UDP,
        }
    }

    /// Config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::Http => "http",
            ServiceType::Tcp => "tcp",
            ServiceType::Udp => "udp",
        }
    }
}

/// How XDP forwards to a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Forwarding {
    /// Destination rewrite; replies return through the load balancer.
    #[default]
    Nat,
    /// MAC rewrite only; servers own the VIP and reply directly.
    Dsr,
    /// Encapsulated to the server's address (IPIP, or IP6IP6 for an IPv6 VIP); servers in any
    /// L2 domain decapsulate, own the VIP and reply directly.
    Tunnel,
}

/// `flow_hash`: what places a new connection of a tcp/udp service on a server.
#[derive(Debug, Deserialize, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FlowHash {
    /// The 5-tuple (default): a client's connections spread over the servers.
    #[default]
    Connection,
    /// The client's address without its source port (Katran's `F_HASH_NO_SRC_PORT`): every
    /// connection of a client goes to one server, and every latch host with the same config
    /// sends it to the same one (client-IP persistence that survives an ECMP move).
    ClientIp,
}

/// `[[virtual_service]]`.
#[derive(Clone, Debug, PartialEq)]
pub struct VirtualServiceConfig {
    /// Unique name (avi.vs.name, admin API, table namespace).
    pub name: String,
    /// VIP and port.
    pub listen: SocketAddr,
    /// Protocol.
    pub kind: ServiceType,
    /// Default pool.
    pub pool: String,
    /// Forwarding for L4 services and the HTTP fast path. Default nat.
    pub forwarding: Forwarding,
    /// Native client-IP persistence timeout (tcp and udp services only).
    pub persistence: Option<Duration>,
    /// `persistence.ipv6_prefix` (tcp, udp) or `fast_path_ipv6_prefix` (http): an IPv6
    /// service's clients are pinned by this prefix of their address (1..=128; None: the
    /// whole address).
    pub persistence_ipv6_prefix: Option<u8>,
    /// What places new connections (tcp and udp services).
    pub flow_hash: FlowHash,
    /// Client-IP fast path from DataScript table entries (http services only).
    pub fast_path: bool,
    /// With `fast_path`: an address is pinned only while it carries at most this many live
    /// session keys in the service's tables (`fast_path_max_sessions`, default 1).
    pub fast_path_max_sessions: u32,
    /// With `fast_path`: `[[ip_group]]`s whose addresses are never pinned
    /// (`fast_path_exclude`).
    pub fast_path_exclude: Vec<String>,
    /// DataScripts in configured order (http services only).
    pub datascripts: Vec<ScriptSource>,
    /// The rate limiter `avi.vs.rate_limit` counts with, and what it does beyond the count.
    pub rate_limit: Option<VsRateLimit>,
    /// TLS termination (http services only); `None` serves plain HTTP.
    pub tls: Option<TlsSettings>,
}

impl VirtualServiceConfig {
    /// Scripts of one event, in the order they run.
    pub fn scripts(&self, event: ScriptEvent) -> impl Iterator<Item = &ScriptSource> {
        self.datascripts.iter().filter(move |s| s.event == event)
    }
}

/// The DataScript events. The config takes Avi's names (`HTTP_REQ`) and its API enum names
/// (`VS_DATASCRIPT_EVT_HTTP_REQ`) alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Deserialize)]
pub enum ScriptEvent {
    /// After the request headers, before the body.
    #[serde(rename = "HTTP_REQ", alias = "VS_DATASCRIPT_EVT_HTTP_REQ")]
    HttpReq,
    /// After the response headers.
    #[serde(rename = "HTTP_RESP", alias = "VS_DATASCRIPT_EVT_HTTP_RESP")]
    HttpResp,
    /// Once the whole request body is in (buffered up to `max_body_buffer`).
    #[serde(
        rename = "HTTP_REQ_DATA",
        alias = "VS_DATASCRIPT_EVT_HTTP_REQ_DATA",
        alias = "HTTP_REQUEST_DATA"
    )]
    HttpReqData,
    /// Once the whole response body is in (buffered up to `max_body_buffer`).
    #[serde(rename = "HTTP_RESP_DATA", alias = "VS_DATASCRIPT_EVT_HTTP_RESP_DATA")]
    HttpRespData,
    /// The server could not be reached or gave no valid response head.
    #[serde(
        rename = "HTTP_RESP_FAILED",
        alias = "VS_DATASCRIPT_EVT_HTTP_RESP_FAILED"
    )]
    HttpRespFailed,
    /// After server selection, before the request goes to the server.
    #[serde(rename = "HTTP_LB_DONE", alias = "VS_DATASCRIPT_EVT_HTTP_LB_DONE")]
    HttpLbDone,
}

impl ScriptEvent {
    /// Every event, in the order a transaction meets them.
    pub const ALL: [ScriptEvent; 6] = [
        ScriptEvent::HttpReq,
        ScriptEvent::HttpReqData,
        ScriptEvent::HttpLbDone,
        ScriptEvent::HttpRespFailed,
        ScriptEvent::HttpResp,
        ScriptEvent::HttpRespData,
    ];

    /// Position in [`ScriptEvent::ALL`], for per-event arrays.
    pub fn index(self) -> usize {
        match self {
            ScriptEvent::HttpReq => 0,
            ScriptEvent::HttpReqData => 1,
            ScriptEvent::HttpLbDone => 2,
            ScriptEvent::HttpRespFailed => 3,
            ScriptEvent::HttpResp => 4,
            ScriptEvent::HttpRespData => 5,
        }
    }
}

impl std::fmt::Display for ScriptEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ScriptEvent::HttpReq => "HTTP_REQ",
            ScriptEvent::HttpResp => "HTTP_RESP",
            ScriptEvent::HttpReqData => "HTTP_REQ_DATA",
            ScriptEvent::HttpRespData => "HTTP_RESP_DATA",
            ScriptEvent::HttpRespFailed => "HTTP_RESP_FAILED",
            ScriptEvent::HttpLbDone => "HTTP_LB_DONE",
        })
    }
}

/// One script as the config describes it; the DataScript compiler takes it as it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScriptSource {
    /// The event it runs at.
    pub event: ScriptEvent,
    /// A name for logs (e.g. the file name or "shop/HTTP_RESP#1").
    pub name: String,
    /// Lua source.
    pub text: String,
    /// File the text came from (the config file for inline scripts).
    pub origin_file: PathBuf,
    /// Line of `origin_file` where the text's first line is (1-based). Exact for TOML
    /// literal strings (`'''`); a basic string with `\n` escapes shifts the mapping.
    pub first_line: usize,
}

impl ScriptSource {
    /// Line in `origin_file` of the script's line `lua_line` (1-based).
    pub fn origin_line(&self, lua_line: usize) -> usize {
        self.first_line + lua_line.saturating_sub(1)
    }
}

/// `[replication]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicationConfig {
    /// `redis://`, `rediss://` or `unix://` URL.
    pub redis_url: String,
    /// This host's id; entries it publishes carry it so it ignores its own echoes.
    pub node_id: String,
    /// Time to (re)connect to Redis. Default 3s.
    pub connect_timeout: Duration,
    /// Time for one Redis command. Default 1s.
    pub command_timeout: Duration,
}
