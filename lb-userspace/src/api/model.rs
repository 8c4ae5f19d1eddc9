//! JSON documents of the admin API. Serialize for the server, Deserialize for the CLI, so both
//! ends share one definition and a field cannot drift between them.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Name of the default table in the API (`?table=` absent), the one `avi.vs.table_*` uses
/// without a table argument.
pub const DEFAULT_TABLE: &str = "";

/// `GET /api/v1/status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusView {
    /// latch version.
    pub version: String,
    /// Agent process id.
    pub pid: u32,
    /// Config file the agent runs.
    pub config_path: String,
    /// Start time, seconds since the Unix epoch.
    pub started_at_unix_seconds: u64,
    /// Seconds since start.
    pub uptime_seconds: u64,
    /// Interfaces the XDP program is attached to.
    pub interfaces: Vec<String>,
    /// Configured virtual services.
    pub virtual_services: usize,
    /// Configured pools.
    pub pools: usize,
    /// Servers (pool members) up.
    pub servers_up: usize,
    /// Servers (pool members) configured.
    pub servers_total: usize,
    /// Reloads applied since start.
    pub reloads_applied: u64,
    /// Reloads refused since start.
    pub reloads_refused: u64,
    /// Time of the last reload attempt, seconds since the Unix epoch.
    pub last_reload_unix_seconds: Option<u64>,
    /// Per virtual service with table entries the kernel mirror could not take: (name,
    /// counters). Those entries are lost when the agent is killed.
    #[serde(default)]
    pub tables_unmirrored: Vec<(String, TableCounters)>,
}

/// Responses by status class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseClasses {
    /// 1xx.
    #[serde(rename = "1xx")]
    pub c1xx: u64,
    /// 2xx.
    #[serde(rename = "2xx")]
    pub c2xx: u64,
    /// 3xx.
    #[serde(rename = "3xx")]
    pub c3xx: u64,
    /// 4xx.
    #[serde(rename = "4xx")]
    pub c4xx: u64,
    /// 5xx.
    #[serde(rename = "5xx")]
    pub c5xx: u64,
}

impl ResponseClasses {
    /// From the proxy's array (index 0 is 1xx).
    pub fn from_array(a: [u64; 5]) -> Self {
        Self {
            c1xx: a[0],
            c2xx: a[1],
            c3xx: a[2],
            c4xx: a[3],
            c5xx: a[4],
        }
    }

    /// Index 0 is 1xx.
    pub fn to_array(self) -> [u64; 5] {
        [self.c1xx, self.c2xx, self.c3xx, self.c4xx, self.c5xx]
    }
}

/// HTTP proxy counters of a virtual service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpCounters {
    /// Requests received.
    pub requests: u64,
    /// Responses sent, by class.
    pub responses: ResponseClasses,
    /// Request body bytes received.
    pub request_bytes: u64,
    /// Response body bytes sent.
    pub response_bytes: u64,
    /// Client connections open now.
    pub active_connections: u64,
    /// TLS handshakes completed.
    #[serde(default)]
    pub tls_handshakes: u64,
    /// TLS handshakes that failed or timed out.
    #[serde(default)]
    pub tls_handshake_failures: u64,
    /// Connections upgraded (WebSocket and other HTTP/1.1 `Upgrade`s).
    #[serde(default)]
    pub upgrades: u64,
    /// Upgraded connections tunnelled now.
    #[serde(default)]
    pub active_tunnels: u64,
}

/// XDP counters of a service or backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct L4Counters {
    /// Packets forwarded.
    pub packets: u64,
    /// Bytes forwarded.
    pub bytes: u64,
    /// New flows.
    pub new_flows: u64,
}

/// Persistence-table counters of a virtual service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableCounters {
    /// Entries stored now.
    pub entries: u64,
    /// New keys stored.
    pub inserts: u64,
    /// Inserts of a live key (lifetime reset).
    pub updates: u64,
    /// Lookups that found a live key.
    pub hits: u64,
    /// Lookups that found nothing.
    pub misses: u64,
    /// Entries expired.
    pub expirations: u64,
    /// Entries removed by scripts, the API or flushes.
    pub removals: u64,
    /// Inserts refused (full, key or value too long).
    pub failures: u64,
    /// Bytes charged for the entries stored (against `memory_limit`).
    #[serde(default)]
    pub bytes: u64,
    /// The tables' memory limit in bytes (`[agent.datascript] table_memory_limit`).
    #[serde(default)]
    pub memory_limit: u64,
    /// Entry writes the kernel mirror could not take because it was full: those entries
    /// live in user space only and do not survive a kill -9.
    #[serde(default)]
    pub unmirrored_full: u64,
    /// Entry writes not mirrored because the key or value is longer than the mirror holds.
    #[serde(default)]
    pub unmirrored_too_large: u64,
    /// Entry writes the kernel refused otherwise.
    #[serde(default)]
    pub unmirrored_failed: u64,
}

impl TableCounters {
    /// Entry writes not mirrored into the kernel, for every reason.
    pub fn unmirrored(&self) -> u64 {
        self.unmirrored_full + self.unmirrored_too_large + self.unmirrored_failed
    }
}

/// `GET /api/v1/virtual-services`: one element.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtualServiceView {
    /// Name.
    pub name: String,
    /// http, tcp or udp.
    pub kind: String,
    /// VIP and port.
    pub listen: String,
    /// Default pool.
    pub pool: String,
    /// nat or dsr.
    pub forwarding: String,
    /// Proxy counters (http services).
    pub http: Option<HttpCounters>,
    /// XDP counters (services the data plane programs).
    pub l4: Option<L4Counters>,
    /// Table counters (http services).
    pub tables: Option<TableCounters>,
}

/// A pool's health monitor.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MonitorView {
    /// tcp or http.
    pub kind: String,
    /// HTTP path.
    pub path: Option<String>,
    /// Accepted statuses ("200-399").
    pub expect_status: Option<String>,
    /// Seconds between probes.
    pub interval_seconds: f64,
    /// Probe timeout in seconds.
    pub timeout_seconds: f64,
    /// Failures that take a server down.
    pub fall: u32,
    /// Successes that bring it back.
    pub rise: u32,
}

/// Proxy counters of one server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerHttpCounters {
    /// Requests sent.
    pub requests: u64,
    /// Responses received, by class.
    pub responses: ResponseClasses,
    /// Requests in flight.
    pub active_requests: u64,
    /// Upstream connections open.
    pub connections: u64,
    /// Failed connection attempts.
    pub connect_failures: u64,
}

/// One server of a pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerView {
    /// Address.
    pub addr: SocketAddr,
    /// Takes new connections.
    pub up: bool,
    /// Since when (seconds since the Unix epoch).
    pub since_unix_seconds: Option<u64>,
    /// Most recent probe failure.
    pub last_error: Option<String>,
    /// Up/down transitions.
    pub transitions: u64,
    /// Proxy counters.
    pub http: Option<ServerHttpCounters>,
    /// XDP counters.
    pub l4: Option<L4Counters>,
    /// The operator's levers and what they give now.
    #[serde(flatten)]
    pub levers: ServerLeversView,
}

/// A server's administrative state and weights.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerLeversView {
    /// `ready`, `drain` or `maint`.
    pub state: String,
    /// Weight in force (configured, or set with `latch server weight`).
    pub weight: u32,
    /// Percent of that weight the server gets now: 100 when ready, less while slow start
    /// ramps, 0 when drained or in maintenance.
    pub effective_weight_percent: u32,
    /// A backup server (used only when no other server can take new sessions).
    pub backup: bool,
}

impl Default for ServerLeversView {
    fn default() -> Self {
        Self {
            state: "ready".to_owned(),
            weight: 1,
            effective_weight_percent: 100,
            backup: false,
        }
    }
}

/// `POST /api/v1/pools/{pool}/servers/{server}`: what to change (one of the two).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerChangeRequest {
    /// New state: `ready`, `drain` or `maint`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// New weight (0 to 256), or `"config"` for the configured one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<String>,
}

/// The answer to a [`ServerChangeRequest`]: the server as it is now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerChangeView {
    /// Pool.
    pub pool: String,
    /// Server.
    pub server: SocketAddr,
    /// Health: up (always without a monitor).
    pub up: bool,
    /// Requests in flight to it through the proxy (what a drain waits for).
    pub active_requests: u64,
    /// State and weights.
    #[serde(flatten)]
    pub levers: ServerLeversView,
}

/// `GET /api/v1/pools`: one element.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PoolView {
    /// Name.
    pub name: String,
    /// Selection algorithm.
    pub algorithm: String,
    /// Health monitor; `None`: servers are always up.
    pub monitor: Option<MonitorView>,
    /// Servers in configured order.
    pub servers: Vec<ServerView>,
}

/// One table entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableEntryView {
    /// Table name ([`DEFAULT_TABLE`] for the default one).
    pub table: String,
    /// Key.
    pub key: String,
    /// Value.
    pub value: String,
    /// Whole seconds until it expires.
    pub expires_in_seconds: u64,
}

/// `GET /api/v1/tables/{vs}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableListView {
    /// Virtual service.
    pub vs: String,
    /// The table asked for; `None`: all tables.
    pub table: Option<String>,
    /// Live entries sorted by table then key.
    pub entries: Vec<TableEntryView>,
    /// More entries matched than `limit`.
    pub truncated: bool,
}

/// `DELETE /api/v1/tables/{vs}/entries/{key}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteView {
    /// Virtual service.
    pub vs: String,
    /// Table.
    pub table: String,
    /// Key removed.
    pub key: String,
}

/// `DELETE /api/v1/tables/{vs}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlushView {
    /// Virtual service.
    pub vs: String,
    /// The table flushed; `None`: all of the service's tables.
    pub table: Option<String>,
    /// Entries removed.
    pub removed: u64,
}

/// `POST /api/v1/reload` (HTTP 200 when applied, 422 when refused).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadView {
    /// The new configuration is running.
    pub applied: bool,
    /// Why it was refused (file:line:col diagnostics, data plane errors).
    pub diagnostics: Vec<String>,
    /// Applied, but with remarks (settings that change only on restart).
    pub warnings: Vec<String>,
}

/// Every error response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorView {
    /// What went wrong, for people.
    pub error: String,
}

/// Query of `GET /api/v1/tables/{vs}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableListQuery {
    /// One table; absent: all tables.
    pub table: Option<String>,
    /// Only keys starting with this.
    pub prefix: Option<String>,
    /// At most this many entries (default [`DEFAULT_LIST_LIMIT`], at most [`MAX_LIST_LIMIT`]).
    pub limit: Option<usize>,
}

/// Query of the single-entry and flush endpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableQuery {
    /// Table; absent: the default table (flush: all tables).
    pub table: Option<String>,
}

/// Entries listed when `limit` is absent.
pub const DEFAULT_LIST_LIMIT: usize = 100;
/// Largest `limit` accepted: a listing is built in memory on the agent.
pub const MAX_LIST_LIMIT: usize = 100_000;
