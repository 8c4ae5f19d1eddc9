//! Builds the API's documents and the metrics snapshot from what the agent has: the running
//! config, the proxy's and the data plane's counter snapshots, the monitor's health snapshot,
//! and table and DataScript counters. Pure, so an [`super::AdminBackend`] implementation is a
//! few lines: gather the snapshots into [`Sources`], call a method.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use super::metrics::{
    DataScriptMetrics, L4BackendMetrics, L4ServiceMetrics, MetricsSnapshot, ServerHealthMetrics,
    ServerHttpMetrics, TableMetrics, VsHttpMetrics, XdpPathMetric,
};
use super::model::{
    HttpCounters, L4Counters, MonitorView, PoolView, ResponseClasses, ServerHttpCounters,
    ServerView, StatusView, TableCounters, VirtualServiceView,
};
use crate::config::{
    Algorithm, Config, Forwarding, HealthMonitor, MonitorKind, VirtualServiceConfig,
};
use crate::dataplane::DataplaneStats;
use crate::monitor::{PoolHealth, format_status_set};
use crate::proxy::{ProxyStats, ServerStats};

/// Seconds since the Unix epoch (0 before it).
pub fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Everything the views are built from, borrowed from the agent for one request.
#[derive(Debug, Clone, Copy)]
pub struct Sources<'a> {
    /// The running configuration.
    pub config: &'a Config,
    /// `HttpProxy::stats()`; `None` when no proxy runs.
    pub proxy: Option<&'a ProxyStats>,
    /// `Dataplane::stats()`; `None` when it could not be read.
    pub dataplane: Option<&'a DataplaneStats>,
    /// `MonitorHandle::snapshot()`.
    pub health: &'a [PoolHealth],
    /// Table counters per virtual service name.
    pub tables: &'a [(String, TableCounters)],
    /// DataScript counters per virtual service and event.
    pub datascripts: &'a [DataScriptMetrics],
    /// Agent start.
    pub started: SystemTime,
    /// Reloads applied since start.
    pub reloads_applied: u64,
    /// Reloads refused since start.
    pub reloads_refused: u64,
    /// Last reload attempt.
    pub last_reload: Option<SystemTime>,
}

/// Config spelling of an algorithm.
pub fn algorithm_name(a: &Algorithm) -> &'static str {
    match a {
        Algorithm::RoundRobin => "round_robin",
        Algorithm::LeastConnections => "least_connections",
        Algorithm::ConsistentHash(_) => "consistent_hash",
    }
}

fn forwarding_name(f: Forwarding) -> &'static str {
    match f {
        Forwarding::Nat => "nat",
        Forwarding::Dsr => "dsr",
    }
}

/// A monitor as the API shows it.
pub fn monitor_view(m: &HealthMonitor) -> MonitorView {
    let (kind, path, expect_status) = match &m.kind {
        MonitorKind::Tcp => ("tcp", None, None),
        MonitorKind::Http {
            path,
            expect_status,
        } => (
            "http",
            Some(path.clone()),
            Some(format_status_set(expect_status)),
        ),
    };
    MonitorView {
        kind: kind.to_owned(),
        path,
        expect_status,
        interval_seconds: m.interval.as_secs_f64(),
        timeout_seconds: m.timeout.as_secs_f64(),
        fall: m.fall,
        rise: m.rise,
    }
}

fn http_counters_of_server(s: &ServerStats) -> ServerHttpCounters {
    ServerHttpCounters {
        requests: s.requests,
        responses: ResponseClasses::from_array(s.responses),
        active_requests: s.active_requests,
        connections: s.connections,
        connect_failures: s.connect_failures,
    }
}

fn l4(c: &lb_common::TrafficCounters) -> L4Counters {
    L4Counters {
        packets: c.packets,
        bytes: c.bytes,
        new_flows: c.new_flows,
    }
}

impl Sources<'_> {
    fn l4_of_service(&self, vs: &VirtualServiceConfig) -> Option<L4Counters> {
        let SocketAddr::V4(listen) = vs.listen else {
            return None;
        };
        self.dataplane?
            .services
            .iter()
            .find(|s| {
                s.vip == *listen.ip()
                    && s.port == listen.port()
                    && s.proto.number() == vs.kind.ip_proto()
            })
            .map(|s| l4(&s.counters))
    }

    fn l4_of_server(&self, addr: SocketAddr) -> Option<L4Counters> {
        let SocketAddr::V4(addr) = addr else {
            return None;
        };
        self.dataplane?
            .backends
            .iter()
            .find(|b| b.addr == addr)
            .map(|b| l4(&b.counters))
    }

    fn table_counters(&self, vs: &str) -> Option<TableCounters> {
        self.tables.iter().find(|(n, _)| n == vs).map(|(_, c)| *c)
    }

    fn health_of(
        &self,
        pool: &str,
        addr: SocketAddr,
    ) -> Option<&crate::monitor::ServerHealthStatus> {
        self.health
            .iter()
            .find(|p| p.pool == pool)?
            .servers
            .iter()
            .find(|s| s.addr == addr)
    }

    /// `GET /api/v1/status` at `now`.
    pub fn status(&self, now: SystemTime) -> StatusView {
        let (servers_up, servers_total) = self.servers_up();
        StatusView {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            config_path: self.config.path.display().to_string(),
            started_at_unix_seconds: unix_seconds(self.started),
            uptime_seconds: now.duration_since(self.started).map_or(0, |d| d.as_secs()),
            interfaces: self.config.agent.interfaces.clone(),
            virtual_services: self.config.virtual_services.len(),
            pools: self.config.pools.len(),
            servers_up,
            servers_total,
            reloads_applied: self.reloads_applied,
            reloads_refused: self.reloads_refused,
            last_reload_unix_seconds: self.last_reload.map(unix_seconds),
        }
    }

    /// `GET /api/v1/virtual-services`.
    pub fn virtual_services(&self) -> Vec<VirtualServiceView> {
        self.config
            .virtual_services
            .iter()
            .map(|vs| {
                let http = self
                    .proxy
                    .and_then(|p| p.vs(&vs.name))
                    .map(|s| HttpCounters {
                        requests: s.requests,
                        responses: ResponseClasses::from_array(s.responses),
                        request_bytes: s.request_bytes,
                        response_bytes: s.response_bytes,
                        active_connections: s.active_connections,
                    });
                VirtualServiceView {
                    name: vs.name.clone(),
                    kind: vs.kind.as_str().to_owned(),
                    listen: vs.listen.to_string(),
                    pool: vs.pool.clone(),
                    forwarding: forwarding_name(vs.forwarding).to_owned(),
                    http,
                    l4: self.l4_of_service(vs),
                    tables: self.table_counters(&vs.name),
                }
            })
            .collect()
    }

    /// `GET /api/v1/pools`.
    pub fn pools(&self) -> Vec<PoolView> {
        self.config
            .pools
            .iter()
            .map(|p| PoolView {
                name: p.name.clone(),
                algorithm: algorithm_name(&p.algorithm).to_owned(),
                monitor: p.health_monitor.as_ref().map(monitor_view),
                servers: p
                    .servers
                    .iter()
                    .map(|&addr| {
                        let h = self.health_of(&p.name, addr);
                        ServerView {
                            addr,
                            up: h.is_none_or(|h| h.up),
                            since_unix_seconds: h.map(|h| unix_seconds(h.since)),
                            last_error: h.and_then(|h| h.last_error.clone()),
                            transitions: h.map_or(0, |h| h.transitions),
                            http: self
                                .proxy
                                .and_then(|s| s.server(addr))
                                .map(http_counters_of_server),
                            l4: self.l4_of_server(addr),
                        }
                    })
                    .collect(),
            })
            .collect()
    }

    /// (up, total) over every pool member.
    pub fn servers_up(&self) -> (usize, usize) {
        let mut up = 0;
        let mut total = 0;
        for p in &self.config.pools {
            for &s in &p.servers {
                total += 1;
                if self.health_of(&p.name, s).is_none_or(|h| h.up) {
                    up += 1;
                }
            }
        }
        (up, total)
    }

    /// `/metrics`.
    pub fn metrics(&self) -> MetricsSnapshot {
        let config = self.config;
        let http_services = self
            .proxy
            .map(|p| {
                p.virtual_services
                    .iter()
                    .map(|s| VsHttpMetrics {
                        vs: s.name.clone(),
                        counters: HttpCounters {
                            requests: s.requests,
                            responses: ResponseClasses::from_array(s.responses),
                            request_bytes: s.request_bytes,
                            response_bytes: s.response_bytes,
                            active_connections: s.active_connections,
                        },
                    })
                    .collect()
            })
            .unwrap_or_default();
        let http_servers = self
            .proxy
            .map(|p| {
                p.servers
                    .iter()
                    .map(|s| ServerHttpMetrics {
                        server: s.addr.to_string(),
                        counters: http_counters_of_server(s),
                        request_bytes: s.request_bytes,
                        response_bytes: s.response_bytes,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let xdp_paths = self
            .dataplane
            .map(|d| {
                d.global
                    .iter()
                    .map(|g| XdpPathMetric {
                        path: g.name.to_owned(),
                        packets: g.value,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let l4_services = config
            .virtual_services
            .iter()
            .filter_map(|vs| {
                self.l4_of_service(vs).map(|counters| L4ServiceMetrics {
                    vs: vs.name.clone(),
                    counters,
                })
            })
            .collect();
        let l4_backends = self
            .dataplane
            .map(|d| {
                d.backends
                    .iter()
                    .map(|b| L4BackendMetrics {
                        server: b.addr.to_string(),
                        counters: l4(&b.counters),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let tables = self
            .tables
            .iter()
            .map(|(vs, counters)| TableMetrics {
                vs: vs.clone(),
                counters: *counters,
            })
            .collect();
        let health = config
            .pools
            .iter()
            .flat_map(|p| {
                p.servers.iter().map(move |&addr| {
                    let h = self.health_of(&p.name, addr);
                    ServerHealthMetrics {
                        pool: p.name.clone(),
                        server: addr.to_string(),
                        up: h.is_none_or(|h| h.up),
                        transitions: h.map_or(0, |h| h.transitions),
                    }
                })
            })
            .collect();
        MetricsSnapshot {
            start_time_seconds: unix_seconds(self.started),
            reloads_applied: self.reloads_applied,
            reloads_refused: self.reloads_refused,
            http_services,
            http_servers,
            xdp_paths,
            l4_services,
            l4_backends,
            tables,
            datascripts: self.datascripts.to_vec(),
            health,
        }
    }
}
