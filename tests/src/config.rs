//! Typed latch configs for tests: build an agent section, pools, virtual services with their
//! DataScripts and replication with typed methods, then [`LatchConfig::to_toml`] serializes
//! it with the `toml` crate. Nothing here formats TOML by hand, so quoting, escaping and
//! multi-line scripts are always valid TOML; tests that are about the TOML text itself (error
//! positions, unknown keys) still write raw text.
//!
//! ```
//! use std::time::Duration;
//! use latch_tests::config::{AgentSettings, HealthMonitor, LatchConfig, Pool, VirtualService};
//!
//! let servers = ["198.51.100.10:8080".parse().unwrap()];
//! let agent = AgentSettings::new(&["vclient".into()]).bpffs_dir("/sys/fs/bpf/t".as_ref());
//! let toml = LatchConfig::new(agent)
//!     .pool(Pool::new("web", servers).health_monitor(HealthMonitor::tcp(Duration::from_millis(300))))
//!     .virtual_service(VirtualService::tcp("web-tcp", "203.0.113.10:80".parse().unwrap(), "web"))
//!     .to_toml()
//!     .unwrap();
//! assert!(toml.contains("[[virtual_service]]"));
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::error::{Error, Result};

/// The admin API address test agents listen on, on their namespace's loopback.
pub const ADMIN_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9180);

/// A whole latch config file.
#[derive(Debug, Clone, Serialize)]
pub struct LatchConfig {
    agent: AgentSettings,
    #[serde(rename = "pool", skip_serializing_if = "Vec::is_empty")]
    pools: Vec<Pool>,
    #[serde(rename = "virtual_service", skip_serializing_if = "Vec::is_empty")]
    virtual_services: Vec<VirtualService>,
    #[serde(skip_serializing_if = "Option::is_none")]
    replication: Option<Replication>,
    #[serde(rename = "ip_group", skip_serializing_if = "Vec::is_empty")]
    ip_groups: Vec<IpGroup>,
    #[serde(rename = "rate_limiter", skip_serializing_if = "Vec::is_empty")]
    rate_limiters: Vec<RateLimiter>,
}

impl LatchConfig {
    /// A config with only the `[agent]` section.
    pub fn new(agent: AgentSettings) -> Self {
        Self {
            agent,
            pools: Vec::new(),
            virtual_services: Vec::new(),
            replication: None,
            ip_groups: Vec::new(),
            rate_limiters: Vec::new(),
        }
    }

    /// Adds an `[[ip_group]]`.
    pub fn ip_group(mut self, group: IpGroup) -> Self {
        self.ip_groups.push(group);
        self
    }

    /// Adds a `[[rate_limiter]]`.
    pub fn rate_limiter(mut self, limiter: RateLimiter) -> Self {
        self.rate_limiters.push(limiter);
        self
    }

    /// Adds a `[[pool]]`.
    pub fn pool(mut self, pool: Pool) -> Self {
        self.pools.push(pool);
        self
    }

    /// Adds a `[[virtual_service]]`.
    pub fn virtual_service(mut self, service: VirtualService) -> Self {
        self.virtual_services.push(service);
        self
    }

    /// Sets the `[replication]` section.
    pub fn replication(mut self, replication: Replication) -> Self {
        self.replication = Some(replication);
        self
    }

    /// The config file's text.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).map_err(|e| Error::Config {
            what: e.to_string(),
        })
    }
}

/// The `[agent]` section.
#[derive(Debug, Clone, Serialize)]
pub struct AgentSettings {
    interfaces: Vec<String>,
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    attach: std::collections::BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bpffs_dir: Option<PathBuf>,
    admin_listen: SocketAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    admin_token_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    workers: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    state_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tunnel_source_ipv4: Option<std::net::Ipv4Addr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tunnel_source_ipv6: Option<std::net::Ipv6Addr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    datascript: Option<ScriptLimits>,
    #[serde(skip_serializing_if = "Option::is_none")]
    capacity: Option<Capacity>,
    /// `[agent.http]` settings, as written in the file (e.g. `drain_timeout = "3s"`).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    http: std::collections::BTreeMap<String, String>,
}

/// `[agent.capacity]`: the kernel map sizes a test sets (latch's defaults otherwise).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Capacity {
    /// CONNTRACK entries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections: Option<u32>,
    /// PERSIST entries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_pins: Option<u32>,
    /// DS_TABLE entries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table_mirror_entries: Option<u32>,
    /// Kernel virtual services.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub virtual_services: Option<u32>,
    /// Kernel servers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub servers: Option<u32>,
}

/// `[agent.datascript]`: the script limits a test sets (latch's defaults otherwise).
#[derive(Clone, Debug, Default, Serialize)]
pub struct ScriptLimits {
    #[serde(skip_serializing_if = "Option::is_none")]
    max_event_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    table_memory_limit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    table_max_entries: Option<u32>,
}

impl AgentSettings {
    /// XDP on `interfaces`, the admin API on [`ADMIN_LISTEN`], pins where latch puts them by
    /// default (agents in tests set their own with [`AgentSettings::bpffs_dir`]).
    pub fn new(interfaces: &[String]) -> Self {
        Self {
            interfaces: interfaces.to_vec(),
            attach: std::collections::BTreeMap::new(),
            bpffs_dir: None,
            admin_listen: ADMIN_LISTEN,
            admin_token_file: None,
            workers: None,
            state_file: None,
            tunnel_source_ipv4: None,
            tunnel_source_ipv6: None,
            datascript: None,
            capacity: None,
            http: std::collections::BTreeMap::new(),
        }
    }

    /// The program at TC ingress instead of XDP on `iface` (`attach = { iface = "tc" }`).
    pub fn attach_tc(mut self, iface: &str) -> Self {
        self.attach.insert(iface.to_owned(), "tc".to_owned());
        self
    }

    /// Pins under `dir`: a test agent's own, see [`crate::LatchAgent::bpffs_dir`].
    pub fn bpffs_dir(mut self, dir: &Path) -> Self {
        self.bpffs_dir = Some(dir.to_path_buf());
        self
    }

    /// The admin API on `addr`.
    pub fn admin_listen(mut self, addr: SocketAddr) -> Self {
        self.admin_listen = addr;
        self
    }

    /// The admin API requires the bearer token stored in `path`.
    pub fn admin_token_file(mut self, path: &Path) -> Self {
        self.admin_token_file = Some(path.to_path_buf());
        self
    }

    /// The server state file (`latch server ...` states): a test agent's own, under
    /// [`crate::LatchAgent::dir`], so nothing is left on the host.
    pub fn state_file(mut self, path: &Path) -> Self {
        self.state_file = Some(path.to_path_buf());
        self
    }

    /// `tunnel_source_ipv4` / `tunnel_source_ipv6`: the outer source of tunnel services of
    /// that family.
    pub fn tunnel_source(mut self, addr: std::net::IpAddr) -> Self {
        match addr {
            std::net::IpAddr::V4(a) => self.tunnel_source_ipv4 = Some(a),
            std::net::IpAddr::V6(a) => self.tunnel_source_ipv6 = Some(a),
        }
        self
    }

    /// `[agent.datascript] max_event_time`, e.g. "2s".
    pub fn max_event_time(mut self, time: &str) -> Self {
        self.datascript.get_or_insert_default().max_event_time = Some(time.to_string());
        self
    }

    /// `[agent.datascript] table_memory_limit`, e.g. "8MiB".
    pub fn table_memory_limit(mut self, limit: &str) -> Self {
        self.datascript.get_or_insert_default().table_memory_limit = Some(limit.to_string());
        self
    }

    /// `[agent.datascript] table_max_entries`.
    pub fn table_max_entries(mut self, entries: u32) -> Self {
        self.datascript.get_or_insert_default().table_max_entries = Some(entries);
        self
    }

    /// `[agent.capacity]`.
    pub fn capacity(mut self, capacity: Capacity) -> Self {
        self.capacity = Some(capacity);
        self
    }

    /// One `[agent.http]` setting, e.g. `http("drain_timeout", "3s")`.
    pub fn http(mut self, key: &str, value: &str) -> Self {
        self.http.insert(key.to_string(), value.to_string());
        self
    }

    /// Proxy worker threads.
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = Some(workers);
        self
    }
}

/// A `[[pool]]` of servers.
#[derive(Debug, Clone, Serialize)]
pub struct Pool {
    name: String,
    servers: Vec<PoolServer>,
    #[serde(skip_serializing_if = "Option::is_none")]
    health_monitor: Option<HealthMonitor>,
    #[serde(
        serialize_with = "optional_duration",
        skip_serializing_if = "Option::is_none"
    )]
    slow_start: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls: Option<PoolTls>,
}

/// A pool's `tls = { ca, server_name, verify }`.
#[derive(Debug, Clone, Serialize)]
struct PoolTls {
    #[serde(skip_serializing_if = "Option::is_none")]
    ca: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    server_name: Option<String>,
    verify: bool,
}

/// One `servers` element: the plain address, or a table once a weight or backup is set.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
enum PoolServer {
    Plain(SocketAddr),
    Table {
        addr: SocketAddr,
        weight: u32,
        backup: bool,
    },
}

impl PoolServer {
    fn addr(&self) -> SocketAddr {
        match self {
            PoolServer::Plain(addr) | PoolServer::Table { addr, .. } => *addr,
        }
    }

    fn with(&self, weight: Option<u32>, backup: Option<bool>) -> Self {
        let (w, b) = match self {
            PoolServer::Plain(_) => (1, false),
            PoolServer::Table { weight, backup, .. } => (*weight, *backup),
        };
        PoolServer::Table {
            addr: self.addr(),
            weight: weight.unwrap_or(w),
            backup: backup.unwrap_or(b),
        }
    }
}

impl Pool {
    pub fn new(name: &str, servers: impl IntoIterator<Item = SocketAddr>) -> Self {
        Self {
            name: name.to_string(),
            servers: servers.into_iter().map(PoolServer::Plain).collect(),
            health_monitor: None,
            slow_start: None,
            tls: None,
        }
    }

    /// `tls = { ca, server_name, verify }`: TLS to the servers.
    pub fn tls(mut self, ca: Option<&Path>, server_name: Option<&str>, verify: bool) -> Self {
        self.tls = Some(PoolTls {
            ca: ca.map(Path::to_path_buf),
            server_name: server_name.map(str::to_string),
            verify,
        });
        self
    }

    pub fn health_monitor(mut self, monitor: HealthMonitor) -> Self {
        self.health_monitor = Some(monitor);
        self
    }

    /// `weight` for `server` (which must be one of the pool's).
    pub fn weight(self, server: SocketAddr, weight: u32) -> Self {
        self.edit(server, Some(weight), None)
    }

    /// `server` becomes a backup.
    pub fn backup(self, server: SocketAddr) -> Self {
        self.edit(server, None, Some(true))
    }

    /// `slow_start` of the pool.
    pub fn slow_start(mut self, ramp: Duration) -> Self {
        self.slow_start = Some(ramp);
        self
    }

    fn edit(mut self, server: SocketAddr, weight: Option<u32>, backup: Option<bool>) -> Self {
        for s in &mut self.servers {
            if s.addr() == server {
                *s = s.with(weight, backup);
            }
        }
        self
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "lowercase")]
enum MonitorKind {
    Tcp,
    Http,
}

/// A pool's `health_monitor`: probes every `interval`; `fall` failures take a server out,
/// `rise` successes bring it back.
#[derive(Debug, Clone, Serialize)]
pub struct HealthMonitor {
    #[serde(rename = "type")]
    kind: MonitorKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    #[serde(serialize_with = "duration")]
    interval: Duration,
    #[serde(serialize_with = "duration")]
    timeout: Duration,
    fall: u32,
    rise: u32,
}

impl HealthMonitor {
    /// TCP connect probes every `interval`, each timing out after two thirds of it; fall and
    /// rise 2.
    pub fn tcp(interval: Duration) -> Self {
        Self {
            kind: MonitorKind::Tcp,
            path: None,
            interval,
            timeout: interval * 2 / 3,
            fall: 2,
            rise: 2,
        }
    }

    /// HTTP GET `path` probes, otherwise as [`HealthMonitor::tcp`].
    pub fn http(path: &str, interval: Duration) -> Self {
        Self {
            kind: MonitorKind::Http,
            path: Some(path.to_string()),
            ..Self::tcp(interval)
        }
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn fall(mut self, fall: u32) -> Self {
        self.fall = fall;
        self
    }

    pub fn rise(mut self, rise: u32) -> Self {
        self.rise = rise;
        self
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "lowercase")]
enum ServiceType {
    Tcp,
    Udp,
    Http,
}

#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "lowercase")]
enum Forwarding {
    Dsr,
    Tunnel,
}

/// The only persistence and fast-path key latch has.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
enum ClientKey {
    ClientIp,
}

#[derive(Debug, Clone, Serialize)]
struct Persistence {
    #[serde(rename = "type")]
    kind: ClientKey,
    #[serde(serialize_with = "duration")]
    timeout: Duration,
}

/// A `[[virtual_service]]`.
#[derive(Debug, Clone, Serialize)]
pub struct VirtualService {
    name: String,
    listen: SocketAddr,
    #[serde(rename = "type")]
    kind: ServiceType,
    pool: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    forwarding: Option<Forwarding>,
    #[serde(skip_serializing_if = "Option::is_none")]
    flow_hash: Option<ClientKey>,
    #[serde(skip_serializing_if = "Option::is_none")]
    persistence: Option<Persistence>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fast_path: Option<ClientKey>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fast_path_max_sessions: Option<u32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    fast_path_exclude: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fast_path_ipv6_prefix: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_limit: Option<RateLimit>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls: Option<Tls>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    datascript: Vec<DataScript>,
}

/// A virtual service's `tls = { certificates = [...], ... }`.
#[derive(Debug, Clone, Serialize)]
pub struct Tls {
    certificates: Vec<TlsCertificate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    min_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    alpn: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_ca: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_cert: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
struct TlsCertificate {
    cert: PathBuf,
    key: PathBuf,
}

impl Tls {
    /// TLS with these certificates, the first the default.
    pub fn new(certificates: &[crate::tls::CertFiles]) -> Self {
        Self {
            certificates: certificates
                .iter()
                .map(|c| TlsCertificate {
                    cert: c.cert.clone(),
                    key: c.key.clone(),
                })
                .collect(),
            min_version: None,
            alpn: None,
            client_ca: None,
            client_cert: None,
        }
    }

    /// `min_version = "1.2"` or `"1.3"`.
    pub fn min_version(mut self, version: &str) -> Self {
        self.min_version = Some(version.to_string());
        self
    }

    /// `alpn = [...]`.
    pub fn alpn(mut self, protocols: &[&str]) -> Self {
        self.alpn = Some(protocols.iter().map(|p| p.to_string()).collect());
        self
    }

    /// `client_ca = "..."` with `client_cert = mode` ("none", "optional", "required").
    pub fn client_certs(mut self, ca: &Path, mode: &str) -> Self {
        self.client_ca = Some(ca.to_path_buf());
        self.client_cert = Some(mode.to_string());
        self
    }
}

/// A virtual service's `rate_limit`: the limiter `avi.vs.rate_limit` counts with (its action
/// is the default, a 429 answer).
#[derive(Debug, Clone, Serialize)]
struct RateLimit {
    limiter: String,
}

/// An `[[ip_group]]` with inline entries (addresses, prefixes, ranges).
#[derive(Debug, Clone, Serialize)]
pub struct IpGroup {
    name: String,
    entries: Vec<String>,
}

impl IpGroup {
    /// A group of `entries`.
    pub fn new(name: &str, entries: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            name: name.to_string(),
            entries: entries.into_iter().map(Into::into).collect(),
        }
    }
}

/// A `[[rate_limiter]]`: `count` per `period`.
#[derive(Debug, Clone, Serialize)]
pub struct RateLimiter {
    name: String,
    count: u64,
    #[serde(serialize_with = "duration")]
    period: Duration,
}

impl RateLimiter {
    /// `count` requests per `period` for each key.
    pub fn new(name: &str, count: u64, period: Duration) -> Self {
        Self {
            name: name.to_string(),
            count,
            period,
        }
    }
}

impl VirtualService {
    fn new(kind: ServiceType, name: &str, listen: SocketAddr, pool: &str) -> Self {
        Self {
            name: name.to_string(),
            listen,
            kind,
            pool: pool.to_string(),
            forwarding: None,
            flow_hash: None,
            persistence: None,
            fast_path: None,
            fast_path_max_sessions: None,
            fast_path_exclude: Vec::new(),
            fast_path_ipv6_prefix: None,
            rate_limit: None,
            tls: None,
            datascript: Vec::new(),
        }
    }

    /// A layer-4 TCP service forwarded by XDP.
    pub fn tcp(name: &str, listen: SocketAddr, pool: &str) -> Self {
        Self::new(ServiceType::Tcp, name, listen, pool)
    }

    /// A layer-4 UDP service forwarded by XDP.
    pub fn udp(name: &str, listen: SocketAddr, pool: &str) -> Self {
        Self::new(ServiceType::Udp, name, listen, pool)
    }

    /// An HTTP service terminated by the proxy.
    pub fn http(name: &str, listen: SocketAddr, pool: &str) -> Self {
        Self::new(ServiceType::Http, name, listen, pool)
    }

    /// Direct server return instead of NAT.
    pub fn dsr(mut self) -> Self {
        self.forwarding = Some(Forwarding::Dsr);
        self
    }

    /// Tunnel mode (IPIP / IP6IP6 to the servers, which answer the client directly).
    pub fn tunnel(mut self) -> Self {
        self.forwarding = Some(Forwarding::Tunnel);
        self
    }

    /// Client-IP persistence that expires after `timeout` without traffic.
    pub fn client_ip_persistence(mut self, timeout: Duration) -> Self {
        self.persistence = Some(Persistence {
            kind: ClientKey::ClientIp,
            timeout,
        });
        self
    }

    /// `flow_hash = "client_ip"`: new connections placed by the client's address, not the
    /// 5-tuple.
    pub fn client_ip_flow_hash(mut self) -> Self {
        self.flow_hash = Some(ClientKey::ClientIp);
        self
    }

    /// `fast_path = "client_ip"`: table entries pin clients to servers in XDP.
    pub fn client_ip_fast_path(mut self) -> Self {
        self.fast_path = Some(ClientKey::ClientIp);
        self
    }

    /// `fast_path_max_sessions`: most session keys a pinned address may carry.
    pub fn fast_path_max_sessions(mut self, max: u32) -> Self {
        self.fast_path_max_sessions = Some(max);
        self
    }

    /// `fast_path_exclude`: `[[ip_group]]`s whose addresses are never pinned.
    pub fn fast_path_exclude(mut self, groups: &[&str]) -> Self {
        self.fast_path_exclude = groups.iter().map(|g| g.to_string()).collect();
        self
    }

    /// `fast_path_ipv6_prefix`: IPv6 clients are pinned by this prefix of their address.
    pub fn fast_path_ipv6_prefix(mut self, prefix: u8) -> Self {
        self.fast_path_ipv6_prefix = Some(prefix);
        self
    }

    /// `rate_limit = { limiter }`: the limiter of `avi.vs.rate_limit`.
    pub fn rate_limit(mut self, limiter: &str) -> Self {
        self.rate_limit = Some(RateLimit {
            limiter: limiter.to_string(),
        });
        self
    }

    /// `tls = { ... }`: TLS termination.
    pub fn tls(mut self, tls: Tls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Adds a `[[virtual_service.datascript]]`.
    pub fn datascript(mut self, script: DataScript) -> Self {
        self.datascript.push(script);
        self
    }

    /// Adds several DataScripts in order.
    pub fn datascripts(mut self, scripts: impl IntoIterator<Item = DataScript>) -> Self {
        self.datascript.extend(scripts);
        self
    }
}

/// The event a DataScript runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Event {
    #[serde(rename = "HTTP_REQ")]
    HttpReq,
    #[serde(rename = "HTTP_RESP")]
    HttpResp,
    #[serde(rename = "HTTP_REQ_DATA")]
    HttpReqData,
    #[serde(rename = "HTTP_RESP_DATA")]
    HttpRespData,
    #[serde(rename = "HTTP_RESP_FAILED")]
    HttpRespFailed,
    #[serde(rename = "HTTP_LB_DONE")]
    HttpLbDone,
}

/// A DataScript given inline.
#[derive(Debug, Clone, Serialize)]
pub struct DataScript {
    event: Event,
    script: String,
}

impl DataScript {
    pub fn new(event: Event, script: &str) -> Self {
        Self {
            event,
            script: script.to_string(),
        }
    }

    /// Runs on every request.
    pub fn request(script: &str) -> Self {
        Self::new(Event::HttpReq, script)
    }

    /// Runs on every response.
    pub fn response(script: &str) -> Self {
        Self::new(Event::HttpResp, script)
    }
}

/// The `[replication]` section.
#[derive(Debug, Clone, Serialize)]
pub struct Replication {
    redis_url: String,
    node_id: String,
    #[serde(serialize_with = "duration")]
    connect_timeout: Duration,
    #[serde(serialize_with = "duration")]
    command_timeout: Duration,
}

impl Replication {
    pub fn new(
        redis_url: &str,
        node_id: &str,
        connect_timeout: Duration,
        command_timeout: Duration,
    ) -> Self {
        Self {
            redis_url: redis_url.to_string(),
            node_id: node_id.to_string(),
            connect_timeout,
            command_timeout,
        }
    }
}

/// Durations as the config reads them: whole milliseconds with a unit ("300ms").
fn optional_duration<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => duration(d, s),
        None => s.serialize_none(),
    }
}

fn duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{}ms", d.as_millis()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn every_section_serializes_to_the_keys_latch_reads() {
        let text = LatchConfig::new(
            AgentSettings::new(&["vclient".into(), "vback".into()])
                .bpffs_dir(Path::new("/sys/fs/bpf/t"))
                .admin_token_file(Path::new("/tmp/token"))
                .workers(2),
        )
        .pool(
            Pool::new(
                "web",
                [addr("198.51.100.10:8080"), addr("198.51.100.11:8080")],
            )
            .health_monitor(HealthMonitor::http("/healthz", Duration::from_millis(300)))
            .weight(addr("198.51.100.11:8080"), 3)
            .backup(addr("198.51.100.11:8080"))
            .slow_start(Duration::from_secs(2)),
        )
        .virtual_service(
            VirtualService::http("shop", addr("203.0.113.10:80"), "web")
                .client_ip_fast_path()
                .datascript(DataScript::request("local x = \"a\"\nlocal y = '''b'''\n")),
        )
        .virtual_service(
            VirtualService::tcp("l4", addr("203.0.113.10:81"), "web")
                .dsr()
                .client_ip_persistence(Duration::from_secs(1)),
        )
        .replication(Replication::new(
            "redis://192.0.2.1:6379",
            "a",
            Duration::from_secs(1),
            Duration::from_millis(300),
        ))
        .to_toml()
        .expect("serializes");
        let v: toml::Table = toml::from_str(&text).expect("parses back");
        let agent = &v["agent"];
        assert_eq!(agent["interfaces"][1].as_str(), Some("vback"));
        assert_eq!(agent["bpffs_dir"].as_str(), Some("/sys/fs/bpf/t"));
        assert_eq!(agent["admin_listen"].as_str(), Some("127.0.0.1:9180"));
        assert_eq!(agent["admin_token_file"].as_str(), Some("/tmp/token"));
        assert_eq!(agent["workers"].as_integer(), Some(2));
        let pool = &v["pool"][0];
        assert_eq!(pool["servers"][0].as_str(), Some("198.51.100.10:8080"));
        let weighted = &pool["servers"][1];
        assert_eq!(weighted["addr"].as_str(), Some("198.51.100.11:8080"));
        assert_eq!(weighted["weight"].as_integer(), Some(3));
        assert_eq!(weighted["backup"].as_bool(), Some(true));
        assert_eq!(pool["slow_start"].as_str(), Some("2000ms"));
        let hm = &pool["health_monitor"];
        assert_eq!(hm["type"].as_str(), Some("http"));
        assert_eq!(hm["path"].as_str(), Some("/healthz"));
        assert_eq!(hm["interval"].as_str(), Some("300ms"));
        assert_eq!(hm["timeout"].as_str(), Some("200ms"));
        assert_eq!(
            (hm["fall"].as_integer(), hm["rise"].as_integer()),
            (Some(2), Some(2))
        );
        let shop = &v["virtual_service"][0];
        assert_eq!(shop["type"].as_str(), Some("http"));
        assert_eq!(shop["fast_path"].as_str(), Some("client_ip"));
        assert_eq!(shop["datascript"][0]["event"].as_str(), Some("HTTP_REQ"));
        assert_eq!(
            shop["datascript"][0]["script"].as_str(),
            Some("local x = \"a\"\nlocal y = '''b'''\n"),
            "scripts survive quotes of both kinds"
        );
        let l4 = &v["virtual_service"][1];
        assert_eq!(l4["forwarding"].as_str(), Some("dsr"));
        assert_eq!(l4["persistence"]["type"].as_str(), Some("client_ip"));
        assert_eq!(l4["persistence"]["timeout"].as_str(), Some("1000ms"));
        assert!(l4.get("datascript").is_none(), "no empty script list");
        assert_eq!(v["replication"]["command_timeout"].as_str(), Some("300ms"));
    }
}
