//! Builds the API's documents and the metrics snapshot from what the agent has: the running
//! config, the proxy's and the data plane's counter snapshots, the monitor's health snapshot,
//! and table and DataScript counters. Pure, so an [`crate::api::AdminBackend`] implementation is a
//! few lines: gather the snapshots into [`Sources`], call a method.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::api::metrics::{
    DataScriptMetrics, L4BackendMetrics, L4ServiceMetrics, MetricsSnapshot, ServerHealthMetrics,
    ServerHttpMetrics, TableMetrics, VsHttpMetrics, XdpPathMetric,
};
use crate::api::model::{
    HttpCounters, L4Counters, MonitorView, PoolView, ResponseClasses, ServerHttpCounters,
    ServerLeversView, ServerView, StatusView, TableCounters, VirtualServiceView,
};
use crate::balancer::algorithm::ServerStatus;
use crate::balancer::levers::{AdminState, WEIGHT_SCALE};
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
    /// The pools' balancer state per server (administrative state, weights), by pool name.
    pub servers: &'a [(String, Vec<ServerStatus>)],
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
        Forwarding::Tunnel => "tunnel",
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

/// The API's view of a server's levers.
pub fn levers_view(s: &ServerStatus) -> ServerLeversView {
    let full = u64::from(s.weight) * u64::from(WEIGHT_SCALE);
    let percent = if s.state == AdminState::Ready {
        (u64::from(s.effective_weight) * 100)
            .checked_div(full)
            .map_or(100, |p| u32::try_from(p).unwrap_or(100))
    } else {
        0
    };
    ServerLeversView {
        state: s.state.as_str().to_owned(),
        weight: s.weight,
        effective_weight_percent: percent,
        backup: s.backup,
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
        let listen = vs.listen;
        self.dataplane?
            .services
            .iter()
            .find(|s| {
                s.vip == listen.ip()
                    && s.port == listen.port()
                    && s.proto.number() == vs.kind.ip_proto()
            })
            .map(|s| l4(&s.counters))
    }

    fn l4_of_server(&self, addr: SocketAddr) -> Option<L4Counters> {
        self.dataplane?
            .backends
            .iter()
            .find(|b| b.addr == addr)
            .map(|b| l4(&b.counters))
    }

    fn balancer_of(&self, pool: &str, addr: SocketAddr) -> Option<&ServerStatus> {
        self.servers
            .iter()
            .find(|(p, _)| p == pool)?
            .1
            .iter()
            .find(|s| s.addr == addr)
    }

    fn levers_of(&self, pool: &str, addr: SocketAddr) -> ServerLeversView {
        self.balancer_of(pool, addr)
            .map(levers_view)
            .unwrap_or_default()
    }

    /// Health up and not in maintenance.
    fn serves(&self, pool: &str, addr: SocketAddr) -> bool {
        self.health_of(pool, addr).is_none_or(|h| h.up)
            && self
                .balancer_of(pool, addr)
                .is_none_or(|s| s.state != AdminState::Maint)
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
            tables_unmirrored: self
                .tables
                .iter()
                .filter(|(_, c)| c.unmirrored() > 0)
                .cloned()
                .collect(),
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
                        tls_handshakes: s.tls_handshakes,
                        tls_handshake_failures: s.tls_handshake_failures,
                        upgrades: s.upgrades,
                        active_tunnels: s.active_tunnels,
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
                    .addrs()
                    .into_iter()
                    .map(|addr| {
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
                            levers: self.levers_of(&p.name, addr),
                        }
                    })
                    .collect(),
            })
            .collect()
    }

    /// (up, total) over every pool member; a server in maintenance is not up.
    pub fn servers_up(&self) -> (usize, usize) {
        let mut up = 0;
        let mut total = 0;
        for p in &self.config.pools {
            for s in &p.servers {
                total += 1;
                if self.serves(&p.name, s.addr) {
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
                            tls_handshakes: s.tls_handshakes,
                            tls_handshake_failures: s.tls_handshake_failures,
                            upgrades: s.upgrades,
                            active_tunnels: s.active_tunnels,
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
                p.servers.iter().map(move |s| {
                    let addr = s.addr;
                    let h = self.health_of(&p.name, addr);
                    let levers = self.levers_of(&p.name, addr);
                    let drain_connections_left = (levers.state == "drain").then(|| {
                        self.proxy
                            .and_then(|st| st.server(addr))
                            .map_or(0, |st| st.connections)
                    });
                    ServerHealthMetrics {
                        pool: p.name.clone(),
                        server: addr.to_string(),
                        up: h.is_none_or(|h| h.up),
                        transitions: h.map_or(0, |h| h.transitions),
                        state: levers.state,
                        weight: levers.weight,
                        effective_weight_percent: levers.effective_weight_percent,
                        drain_connections_left,
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
            // Filled by the agent, which owns the replication handle and the fast path.
            replication: None,
            // Filled by the agent too, from its last sweep.
            maps: Vec::new(),
            fast_path: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4};
    use std::path::Path;
    use std::time::{Duration, UNIX_EPOCH};

    use lb_common::TrafficCounters;

    use super::{AdminState, ServerStatus, Sources};
    use crate::api::model::TableCounters;
    use crate::dataplane::{
        BackendCounters, DataplaneStats, GlobalCounter, Proto, ServiceCounters,
    };
    use crate::monitor::{PoolHealth, ServerHealthStatus};
    use crate::proxy::{ProxyStats, ServerStats, VsStats};

    const CONFIG: &str = r#"[agent]
interfaces = ["lb0"]

[[pool]]
name = "web"
servers = ["192.0.2.11:8080", "192.0.2.12:8080"]
health_monitor = { type = "http", path = "/healthz", interval = "2s", timeout = "1s", fall = 3, rise = 2 }

[[virtual_service]]
name = "shop"
listen = "198.51.100.10:80"
type = "http"
pool = "web"

[[virtual_service]]
name = "dns"
listen = "198.51.100.10:53"
type = "udp"
pool = "web"
"#;

    fn sa(s: &str) -> std::net::SocketAddr {
        s.parse().expect("addr")
    }

    #[test]
    fn views_and_metrics_from_agent_snapshots() {
        let config =
            crate::config::parse(CONFIG, Path::new("/etc/latch/latch.toml")).expect("config");
        let proxy = ProxyStats {
            virtual_services: vec![VsStats {
                name: "shop".into(),
                requests: 5,
                responses: [0, 4, 0, 0, 1],
                request_bytes: 10,
                response_bytes: 20,
                active_connections: 1,
                tls_handshakes: 0,
                tls_handshake_failures: 0,
                upgrades: 0,
                active_tunnels: 0,
            }],
            servers: vec![ServerStats {
                addr: sa("192.0.2.11:8080"),
                requests: 5,
                responses: [0, 4, 0, 0, 1],
                request_bytes: 10,
                response_bytes: 20,
                active_requests: 0,
                connections: 2,
                connect_failures: 1,
            }],
        };
        let traffic = TrafficCounters {
            packets: 8,
            bytes: 800,
            new_flows: 2,
        };
        let dp = DataplaneStats {
            global: vec![GlobalCounter {
                index: 9,
                name: "drop_no_backend",
                value: 3,
            }],
            services: vec![ServiceCounters {
                vip: Ipv4Addr::new(198, 51, 100, 10).into(),
                port: 53,
                proto: Proto::Udp,
                counters: traffic,
            }],
            backends: vec![BackendCounters {
                addr: SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 12), 8080).into(),
                counters: traffic,
            }],
        };
        let since = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let health = vec![PoolHealth {
            pool: "web".into(),
            monitor: None,
            servers: vec![ServerHealthStatus {
                addr: sa("192.0.2.12:8080"),
                up: false,
                since,
                last_error: Some("connect: refused".into()),
                transitions: 1,
            }],
        }];
        let tables = vec![(
            "shop".to_owned(),
            TableCounters {
                entries: 3,
                ..TableCounters::default()
            },
        )];
        let [first, second] = [0, 1].map(|i| config.pools[0].servers[i].addr);
        let status = |addr, state, weight, effective_weight| ServerStatus {
            addr,
            up: true,
            state,
            backup: false,
            weight,
            effective_weight,
            active: 0,
        };
        let servers = vec![(
            config.pools[0].name.clone(),
            vec![
                status(first, AdminState::Drain, 3, 48),
                status(second, AdminState::Ready, 2, 16),
            ],
        )];
        let src = Sources {
            config: &config,
            servers: &servers,
            proxy: Some(&proxy),
            dataplane: Some(&dp),
            health: &health,
            tables: &tables,
            datascripts: &[],
            started: since,
            reloads_applied: 0,
            reloads_refused: 0,
            last_reload: None,
        };

        let vs = src.virtual_services();
        assert_eq!(vs[0].http.map(|h| h.responses.c5xx), Some(1));
        assert_eq!(vs[0].tables.map(|t| t.entries), Some(3));
        assert_eq!(vs[0].l4, None, "no data-plane counters for shop");
        assert_eq!(
            (vs[1].kind.as_str(), vs[1].forwarding.as_str()),
            ("udp", "nat")
        );
        assert_eq!(vs[1].l4.map(|l| l.packets), Some(8));
        assert_eq!(vs[1].http, None);

        let pools = src.pools();
        let m = pools[0].monitor.as_ref().expect("monitor");
        assert_eq!(
            (
                m.kind.as_str(),
                m.path.as_deref(),
                m.expect_status.as_deref()
            ),
            ("http", Some("/healthz"), Some("200-399"))
        );
        let [a, b] = &pools[0].servers[..] else {
            panic!("two servers")
        };
        assert!(a.up, "a server missing from the health snapshot is up");
        assert_eq!(a.http.map(|h| h.connect_failures), Some(1));
        assert!(!b.up);
        assert_eq!(b.since_unix_seconds, Some(1_700_000_000));
        assert_eq!(b.l4.map(|l| l.new_flows), Some(2));
        assert_eq!(
            (
                a.levers.state.as_str(),
                a.levers.weight,
                a.levers.effective_weight_percent
            ),
            ("drain", 3, 0)
        );
        assert_eq!(
            (b.levers.state.as_str(), b.levers.effective_weight_percent),
            ("ready", 50),
            "slow start half way"
        );
        assert_eq!(src.servers_up(), (1, 2), "a drained server is still up");

        let snap = src.metrics();
        assert_eq!(snap.xdp_paths[0].path, "drop_no_backend");
        assert_eq!(snap.l4_services.len(), 1);
        assert_eq!(snap.l4_services[0].vs, "dns");
        assert_eq!(snap.l4_backends[0].server, "192.0.2.12:8080");
        assert_eq!(snap.health.len(), 2);
        assert!(snap.health[0].up && !snap.health[1].up);
        assert_eq!(snap.health[0].state, "drain");
        assert_eq!(
            snap.health[0].drain_connections_left,
            Some(2),
            "the proxy stats' open connections"
        );
        assert_eq!(snap.health[1].drain_connections_left, None);
        assert_eq!(snap.start_time_seconds, 1_700_000_000);
        assert_eq!(snap.http_servers[0].response_bytes, 20);

        let st = src.status(since + Duration::from_secs(90));
        assert_eq!(st.uptime_seconds, 90);
        assert_eq!((st.servers_up, st.servers_total), (1, 2));
        assert_eq!((st.virtual_services, st.pools), (2, 1));
        assert_eq!(st.config_path, "/etc/latch/latch.toml");
        assert_eq!(st.interfaces, ["lb0"]);
    }
}
