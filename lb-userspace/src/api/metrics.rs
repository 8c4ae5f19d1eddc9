//! `/metrics`: a snapshot of every counter, encoded at scrape time in the OpenMetrics text
//! format (which Prometheus scrapes natively).
//!
//! The agent already keeps its counters in their owners (proxy atomics, per-CPU BPF maps,
//! table counters, the monitor), so nothing is registered up front: the agent fills a
//! [`MetricsSnapshot`] per scrape and a prometheus-client collector encodes it. Names follow
//! Prometheus conventions: `latch_` prefix, `_total` on counters, bytes and seconds as units.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use serde::{Deserialize, Serialize};

use super::model::{HttpCounters, L4Counters, ResponseClasses, ServerHttpCounters, TableCounters};

/// Content type of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Proxy counters of one virtual service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsHttpMetrics {
    /// Virtual service name (label `vs`).
    pub vs: String,
    /// Counters.
    pub counters: HttpCounters,
}

/// Proxy counters of one server.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerHttpMetrics {
    /// Server address (label `server`).
    pub server: String,
    /// Counters.
    pub counters: ServerHttpCounters,
    /// Request body bytes sent to the server.
    pub request_bytes: u64,
    /// Response body bytes received from it.
    pub response_bytes: u64,
}

/// One global XDP counter.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct XdpPathMetric {
    /// Name from `dataplane::GLOBAL_COUNTERS` (label `path`).
    pub path: String,
    /// Packets.
    pub packets: u64,
}

/// XDP counters of one service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct L4ServiceMetrics {
    /// Virtual service name (label `vs`).
    pub vs: String,
    /// Counters.
    pub counters: L4Counters,
}

/// XDP counters of one backend.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct L4BackendMetrics {
    /// Backend address (label `server`).
    pub server: String,
    /// Counters.
    pub counters: L4Counters,
}

/// Table counters of one virtual service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableMetrics {
    /// Virtual service name (label `vs`).
    pub vs: String,
    /// Counters.
    pub counters: TableCounters,
}

/// DataScript counters of one virtual service and event.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataScriptMetrics {
    /// Virtual service name (label `vs`).
    pub vs: String,
    /// The event, as the config names it: HTTP_REQ, HTTP_RESP_DATA, ... (label `event`).
    pub event: String,
    /// Script runs.
    pub runs: u64,
    /// Runs that ended in a Lua error.
    pub errors: u64,
    /// Runs stopped by the instruction budget or the time limit (`max_event_time`).
    pub budget_stops: u64,
}

/// Health of one pool member.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerHealthMetrics {
    /// Pool name (label `pool`).
    pub pool: String,
    /// Server address (label `server`).
    pub server: String,
    /// Currently up.
    pub up: bool,
    /// Up/down transitions.
    pub transitions: u64,
    /// Administrative state: ready, drain or maint.
    pub state: String,
    /// Weight in force.
    pub weight: u32,
    /// Percent of its weight it gets now (slow start; 0 unless ready).
    pub effective_weight_percent: u32,
    /// For a drained server: proxy connections to it still open.
    pub drain_connections_left: Option<u64>,
}

/// How full one kernel map is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapMetrics {
    /// `connections`, `client_pins` or `table_mirror` (label `map`).
    pub map: String,
    /// Entries present.
    pub entries: u64,
    /// Capacity (`[agent.capacity]`).
    pub capacity: u64,
    /// Entries evicted to make room (connections; an estimate, see `dataplane::MapFill`).
    pub evictions: u64,
    /// Writes refused because the map was full.
    pub full: u64,
}

/// Everything `/metrics` shows, filled by the agent at scrape time.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricsSnapshot {
    /// Agent start, seconds since the Unix epoch.
    pub start_time_seconds: u64,
    /// Reloads applied.
    pub reloads_applied: u64,
    /// Reloads refused.
    pub reloads_refused: u64,
    /// Proxy, per virtual service.
    pub http_services: Vec<VsHttpMetrics>,
    /// Proxy, per server.
    pub http_servers: Vec<ServerHttpMetrics>,
    /// XDP, per packet path.
    pub xdp_paths: Vec<XdpPathMetric>,
    /// XDP, per service.
    pub l4_services: Vec<L4ServiceMetrics>,
    /// XDP, per backend.
    pub l4_backends: Vec<L4BackendMetrics>,
    /// Tables, per virtual service.
    pub tables: Vec<TableMetrics>,
    /// DataScripts, per virtual service and event.
    pub datascripts: Vec<DataScriptMetrics>,
    /// Health, per pool member.
    pub health: Vec<ServerHealthMetrics>,
    /// Table replication through Redis, when configured.
    pub replication: Option<ReplicationMetrics>,
    /// Kernel map fill, per map (read at the agent's last sweep).
    #[serde(default)]
    pub maps: Vec<MapMetrics>,
    /// The HTTP fast path, per virtual service with `fast_path`.
    #[serde(default)]
    pub fast_path: Vec<FastPathMetrics>,
}

/// The HTTP fast path of one virtual service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FastPathMetrics {
    /// Virtual service.
    pub vs: String,
    /// Client addresses pinned now.
    pub pinned: u64,
    /// Pins removed because their address carried more sessions than allowed.
    pub shared_unpins: u64,
}

/// Counters of table replication through Redis.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicationMetrics {
    /// Local changes queued for Redis.
    pub queued: u64,
    /// Changes merged into a pending one (lookup-extension bursts).
    pub coalesced: u64,
    /// Changes dropped because the queue was full.
    pub dropped: u64,
    /// Changes written to Redis.
    pub sent: u64,
    /// Changes from other hosts applied here.
    pub applied: u64,
    /// Local inserts that lost the cluster-wide race and adopted the winner's value.
    pub adopted: u64,
    /// Reconnections to Redis.
    pub reconnects: u64,
    /// Redis errors.
    pub errors: u64,
    /// Connected to Redis now.
    pub connected: bool,
}

/// Encodes `snapshot` in the OpenMetrics text format (ends with `# EOF`).
pub fn encode(snapshot: MetricsSnapshot) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("latch");
    registry.register_collector(Box::new(SnapshotCollector(snapshot)));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

#[derive(Debug)]
struct SnapshotCollector(MetricsSnapshot);

/// Label values are written verbatim by prometheus-client, so names from the config (and
/// anything else) are escaped here as the exposition format requires.
fn escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

type Labels = Vec<(&'static str, String)>;

/// A counter family read from one field: name, help, getter.
type Field<T> = (&'static str, &'static str, fn(&T) -> u64);

fn labels<const N: usize>(pairs: [(&'static str, &str); N]) -> Labels {
    pairs.iter().map(|&(k, v)| (k, escape(v))).collect()
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

struct Family<'a, 'e> {
    encoder: &'a mut DescriptorEncoder<'e>,
}

impl Family<'_, '_> {
    fn counter(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        samples: impl IntoIterator<Item = (Labels, u64)>,
    ) -> Result<(), std::fmt::Error> {
        let unit = unit.as_ref();
        let mut m = self
            .encoder
            .encode_descriptor(name, help, unit, MetricType::Counter)?;
        for (l, v) in samples {
            // An empty family would print `name{}`; unlabelled samples go on the metric itself.
            if l.is_empty() {
                m.encode_counter::<NoLabelSet, u64, u64>(&v, None)?;
            } else {
                m.encode_family(&l)?
                    .encode_counter::<NoLabelSet, u64, u64>(&v, None)?;
            }
        }
        Ok(())
    }

    fn gauge(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        samples: impl IntoIterator<Item = (Labels, i64)>,
    ) -> Result<(), std::fmt::Error> {
        let unit = unit.as_ref();
        let mut m = self
            .encoder
            .encode_descriptor(name, help, unit, MetricType::Gauge)?;
        for (l, v) in samples {
            if l.is_empty() {
                m.encode_gauge(&v)?;
            } else {
                m.encode_family(&l)?.encode_gauge(&v)?;
            }
        }
        Ok(())
    }
}

fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        let mut f = Family {
            encoder: &mut encoder,
        };

        f.gauge(
            "start_time",
            "Agent start time since the Unix epoch.",
            Some(Unit::Seconds),
            [(Labels::new(), gauge_value(s.start_time_seconds))],
        )?;
        f.counter(
            "reloads",
            "Configuration reloads by result.",
            None,
            [
                (labels([("result", "applied")]), s.reloads_applied),
                (labels([("result", "refused")]), s.reloads_refused),
            ],
        )?;

        // HTTP proxy, per virtual service.
        let hs = &s.http_services;
        let vs = |m: &VsHttpMetrics| labels([("vs", &m.vs)]);
        f.counter(
            "http_requests",
            "HTTP requests received per virtual service.",
            None,
            hs.iter().map(|m| (vs(m), m.counters.requests)),
        )?;
        f.counter(
            "http_responses",
            "HTTP responses sent per virtual service and status class.",
            None,
            hs.iter().flat_map(|m| {
                class_samples(m.counters.responses)
                    .map(move |(c, v)| (labels([("vs", &m.vs), ("code", c)]), v))
            }),
        )?;
        f.counter(
            "http_request_body",
            "Request body bytes received from clients per virtual service.",
            Some(Unit::Bytes),
            hs.iter().map(|m| (vs(m), m.counters.request_bytes)),
        )?;
        f.counter(
            "http_response_body",
            "Response body bytes sent to clients per virtual service.",
            Some(Unit::Bytes),
            hs.iter().map(|m| (vs(m), m.counters.response_bytes)),
        )?;
        f.gauge(
            "http_active_connections",
            "Client connections open per virtual service.",
            None,
            hs.iter()
                .map(|m| (vs(m), gauge_value(m.counters.active_connections))),
        )?;
        f.counter(
            "http_tls_handshakes",
            "TLS handshakes completed per virtual service.",
            None,
            hs.iter().map(|m| (vs(m), m.counters.tls_handshakes)),
        )?;
        f.counter(
            "http_tls_handshake_failures",
            "TLS handshakes that failed or timed out per virtual service.",
            None,
            hs.iter()
                .map(|m| (vs(m), m.counters.tls_handshake_failures)),
        )?;
        f.counter(
            "http_upgrades",
            "Client connections upgraded (101: WebSocket and other Upgrades) per virtual service.",
            None,
            hs.iter().map(|m| (vs(m), m.counters.upgrades)),
        )?;
        f.gauge(
            "http_active_tunnels",
            "Upgraded connections tunnelled now per virtual service.",
            None,
            hs.iter()
                .map(|m| (vs(m), gauge_value(m.counters.active_tunnels))),
        )?;

        // HTTP proxy, per server.
        let ss = &s.http_servers;
        let srv = |m: &ServerHttpMetrics| labels([("server", &m.server)]);
        f.counter(
            "http_server_requests",
            "HTTP requests sent per server.",
            None,
            ss.iter().map(|m| (srv(m), m.counters.requests)),
        )?;
        f.counter(
            "http_server_responses",
            "HTTP responses received per server and status class.",
            None,
            ss.iter().flat_map(|m| {
                class_samples(m.counters.responses)
                    .map(move |(c, v)| (labels([("server", &m.server), ("code", c)]), v))
            }),
        )?;
        f.counter(
            "http_server_request_body",
            "Request body bytes sent per server.",
            Some(Unit::Bytes),
            ss.iter().map(|m| (srv(m), m.request_bytes)),
        )?;
        f.counter(
            "http_server_response_body",
            "Response body bytes received per server.",
            Some(Unit::Bytes),
            ss.iter().map(|m| (srv(m), m.response_bytes)),
        )?;
        f.gauge(
            "http_server_active_requests",
            "Requests in flight per server.",
            None,
            ss.iter()
                .map(|m| (srv(m), gauge_value(m.counters.active_requests))),
        )?;
        f.gauge(
            "http_server_connections",
            "Upstream connections open (busy or pooled) per server.",
            None,
            ss.iter()
                .map(|m| (srv(m), gauge_value(m.counters.connections))),
        )?;
        f.counter(
            "http_server_connect_failures",
            "Upstream connection attempts that failed or timed out per server.",
            None,
            ss.iter().map(|m| (srv(m), m.counters.connect_failures)),
        )?;

        // XDP.
        f.counter(
            "xdp_packets",
            "Packets seen by the XDP program per path and verdict.",
            None,
            s.xdp_paths
                .iter()
                .map(|p| (labels([("path", &p.path)]), p.packets)),
        )?;
        let l4 = |name: &'static str,
                  help: &'static str,
                  unit: Option<Unit>,
                  get: fn(&L4Counters) -> u64,
                  f: &mut Family|
         -> Result<(), std::fmt::Error> {
            f.counter(
                name,
                help,
                unit,
                s.l4_services
                    .iter()
                    .map(|m| (labels([("vs", &m.vs)]), get(&m.counters))),
            )
        };
        l4(
            "l4_packets",
            "Packets forwarded by XDP per virtual service.",
            None,
            |c| c.packets,
            &mut f,
        )?;
        l4(
            "l4",
            "Bytes (L3) forwarded by XDP per virtual service.",
            Some(Unit::Bytes),
            |c| c.bytes,
            &mut f,
        )?;
        l4(
            "l4_new_flows",
            "New flows scheduled by XDP per virtual service.",
            None,
            |c| c.new_flows,
            &mut f,
        )?;
        let be = |name: &'static str,
                  help: &'static str,
                  unit: Option<Unit>,
                  get: fn(&L4Counters) -> u64,
                  f: &mut Family|
         -> Result<(), std::fmt::Error> {
            f.counter(
                name,
                help,
                unit,
                s.l4_backends
                    .iter()
                    .map(|m| (labels([("server", &m.server)]), get(&m.counters))),
            )
        };
        be(
            "l4_backend_packets",
            "Packets forwarded by XDP per backend.",
            None,
            |c| c.packets,
            &mut f,
        )?;
        be(
            "l4_backend",
            "Bytes (L3) forwarded by XDP per backend.",
            Some(Unit::Bytes),
            |c| c.bytes,
            &mut f,
        )?;
        be(
            "l4_backend_new_flows",
            "New flows sent by XDP per backend.",
            None,
            |c| c.new_flows,
            &mut f,
        )?;

        // Tables.
        let table_gauges: [(Field<TableCounters>, Option<Unit>); 3] = [
            (
                (
                    "table_entries",
                    "Persistence table entries stored per virtual service.",
                    |c| c.entries,
                ),
                None,
            ),
            (
                (
                    "table_memory",
                    "Bytes the persistence tables of a virtual service hold (entries charged with their overhead).",
                    |c| c.bytes,
                ),
                Some(Unit::Bytes),
            ),
            (
                (
                    "table_memory_limit",
                    "Bytes the persistence tables of a virtual service may hold; inserts beyond are refused.",
                    |c| c.memory_limit,
                ),
                Some(Unit::Bytes),
            ),
        ];
        for ((name, help, get), unit) in table_gauges {
            f.gauge(
                name,
                help,
                unit,
                s.tables
                    .iter()
                    .map(|t| (labels([("vs", &t.vs)]), gauge_value(get(&t.counters)))),
            )?;
        }
        f.gauge(
            "map_entries",
            "Entries in a kernel map (connections, client_pins, table_mirror), read every 5 s.",
            None,
            s.maps
                .iter()
                .map(|m| (labels([("map", m.map.as_str())]), gauge_value(m.entries))),
        )?;
        f.gauge(
            "map_capacity",
            "Capacity of a kernel map ([agent.capacity]); a warning is logged above 90%.",
            None,
            s.maps
                .iter()
                .map(|m| (labels([("map", m.map.as_str())]), gauge_value(m.capacity))),
        )?;
        f.counter(
            "map_evictions",
            "Entries the connection table evicted to make room (estimated: entries XDP wrote, less the growth and the agent's removals).",
            None,
            s.maps
                .iter()
                .map(|m| (labels([("map", m.map.as_str())]), m.evictions)),
        )?;
        f.counter(
            "map_full",
            "Writes refused because a kernel map was full (client pins by XDP, table entries by the mirror).",
            None,
            s.maps
                .iter()
                .map(|m| (labels([("map", m.map.as_str())]), m.full)),
        )?;
        f.counter(
            "table_unmirrored",
            "Table entry writes the kernel mirror could not take, by reason (full: [agent.capacity] table_mirror_entries; too_large: key or value over 64 bytes; failed: refused by the kernel). Those entries live in user space only and are lost on kill -9.",
            None,
            s.tables.iter().flat_map(|t| {
                [
                    ("full", t.counters.unmirrored_full),
                    ("too_large", t.counters.unmirrored_too_large),
                    ("failed", t.counters.unmirrored_failed),
                ]
                .into_iter()
                .map(|(reason, v)| (labels([("vs", t.vs.as_str()), ("reason", reason)]), v))
            }),
        )?;
        let table_counters: [Field<TableCounters>; 7] = [
            ("table_inserts", "New keys stored.", |c| c.inserts),
            ("table_updates", "Inserts of a live key.", |c| c.updates),
            ("table_hits", "Lookups that found a live key.", |c| c.hits),
            ("table_misses", "Lookups that found nothing.", |c| c.misses),
            ("table_expirations", "Entries expired.", |c| c.expirations),
            (
                "table_removals",
                "Entries removed by scripts, the admin API or flushes.",
                |c| c.removals,
            ),
            (
                "table_failures",
                "Inserts refused (table full, memory limit, key or value too long).",
                |c| c.failures,
            ),
        ];
        for (name, help, get) in table_counters {
            f.counter(
                name,
                help,
                None,
                s.tables
                    .iter()
                    .map(|t| (labels([("vs", &t.vs)]), get(&t.counters))),
            )?;
        }

        // DataScripts.
        let ds_counters: [Field<DataScriptMetrics>; 3] = [
            ("datascript_runs", "DataScript runs.", |d| d.runs),
            (
                "datascript_errors",
                "DataScript runs that ended in an error.",
                |d| d.errors,
            ),
            (
                "datascript_budget_stops",
                "DataScript runs stopped by the instruction budget or the time limit.",
                |d| d.budget_stops,
            ),
        ];
        for (name, help, get) in ds_counters {
            f.counter(
                name,
                help,
                None,
                s.datascripts
                    .iter()
                    .map(|d| (labels([("vs", &d.vs), ("event", &d.event)]), get(d))),
            )?;
        }

        // Health.
        let pool_server =
            |h: &ServerHealthMetrics| labels([("pool", &h.pool), ("server", &h.server)]);
        f.gauge(
            "server_up",
            "1 when the pool member takes new connections.",
            None,
            s.health.iter().map(|h| (pool_server(h), i64::from(h.up))),
        )?;
        f.counter(
            "health_transitions",
            "Up/down transitions of a pool member.",
            None,
            s.health.iter().map(|h| (pool_server(h), h.transitions)),
        )?;
        f.gauge(
            "server_state",
            "1 for a pool member's administrative state (ready, drain, maint), 0 for the others.",
            None,
            s.health.iter().flat_map(|h| {
                ["ready", "drain", "maint"].map(|st| {
                    (
                        labels([("pool", &h.pool), ("server", &h.server), ("state", st)]),
                        i64::from(h.state == st),
                    )
                })
            }),
        )?;
        f.gauge(
            "server_weight",
            "Weight in force of a pool member (configured or set at runtime).",
            None,
            s.health
                .iter()
                .map(|h| (pool_server(h), i64::from(h.weight))),
        )?;
        f.gauge(
            "server_effective_weight_percent",
            "Percent of its weight a pool member gets now: below 100 while slow start ramps, 0 unless ready.",
            None,
            s.health
                .iter()
                .map(|h| (pool_server(h), i64::from(h.effective_weight_percent))),
        )?;
        f.gauge(
            "server_drain_connections",
            "Proxy connections still open to a drained pool member (drain progress).",
            None,
            s.health.iter().filter_map(|h| {
                h.drain_connections_left
                    .map(|n| (pool_server(h), gauge_value(n)))
            }),
        )?;
        let fp = &s.fast_path;
        f.gauge(
            "fast_path_pinned_addresses",
            "Client addresses pinned to a server by the HTTP fast path per virtual service.",
            None,
            fp.iter()
                .map(|m| (labels([("vs", &m.vs)]), gauge_value(m.pinned))),
        )?;
        f.counter(
            "fast_path_shared_unpins",
            "Fast-path pins removed because their address carried several sessions.",
            None,
            fp.iter()
                .map(|m| (labels([("vs", &m.vs)]), m.shared_unpins)),
        )?;
        if let Some(r) = &s.replication {
            f.counter(
                "replication_changes",
                "Local table changes for Redis by outcome.",
                None,
                [
                    (labels([("outcome", "queued")]), r.queued),
                    (labels([("outcome", "coalesced")]), r.coalesced),
                    (labels([("outcome", "dropped")]), r.dropped),
                    (labels([("outcome", "sent")]), r.sent),
                ],
            )?;
            f.counter(
                "replication_remote_changes",
                "Changes from other hosts applied here, and lost insert races adopted.",
                None,
                [
                    (labels([("kind", "applied")]), r.applied),
                    (labels([("kind", "adopted")]), r.adopted),
                ],
            )?;
            f.counter(
                "replication_reconnects",
                "Reconnections to Redis.",
                None,
                [(Labels::new(), r.reconnects)],
            )?;
            f.counter(
                "replication_errors",
                "Redis errors.",
                None,
                [(Labels::new(), r.errors)],
            )?;
            f.gauge(
                "replication_connected",
                "1 while connected to Redis.",
                None,
                [(Labels::new(), i64::from(r.connected))],
            )?;
        }
        Ok(())
    }
}

fn class_samples(r: ResponseClasses) -> impl Iterator<Item = (&'static str, u64)> {
    CLASSES.into_iter().zip(r.to_array())
}
