//! From TOML text to a validated [`Config`], collecting every problem with its location.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lb_common::{Capacities, SERVICE_ID_LIMIT};
use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::diag::{ConfigErrors, Sink};
use super::geo::GeoDatabase;
use super::groups::{Groups, IpGroup, RateLimiterConfig};
use super::model::*;
use super::raw::*;

/// `[[string_group]]`, `[[ip_group]]`, `[[rate_limiter]]` and a service's `rate_limit`.
mod objects;
/// A virtual service's `tls`.
mod tls;

const TOP_LEVEL: &str =
    "`agent`, `pool`, `virtual_service`, `replication`, `string_group`, `ip_group`, `rate_limiter`";

/// Default persistence timeout when `persistence.timeout` is omitted.
const DEFAULT_PERSISTENCE: Duration = Duration::from_secs(300);
/// The longest duration any setting takes (timeouts, intervals, ramps, persistence): longer
/// is a typo, and timer arithmetic on it could overflow.
const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);
/// The longest `max_event_time`: a script event that may run longer holds a worker that long.
const MAX_EVENT_TIME: Duration = Duration::from_secs(10);
/// Workers per CPU beyond which `workers` is refused.
const MAX_WORKERS_PER_CPU: usize = 4;

pub(crate) fn build(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
    let mut sink = Sink::new(path, text);
    let (doc, syntax_errors) = DeTable::parse_recoverable(text);
    if !syntax_errors.is_empty() {
        // A partially parsed document would produce follow-on errors that only confuse.
        for e in &syntax_errors {
            sink.toml_error(e, 0..0);
        }
        return Err(sink.into_errors());
    }

    let mut raw = RawDoc::default();
    for (key, value) in doc.get_ref() {
        match key.get_ref().as_ref() {
            "agent" => raw.agent = deserialize_one(&mut sink, value, "[agent]"),
            "replication" => raw.replication = deserialize_one(&mut sink, value, "[replication]"),
            "pool" => raw.pools = deserialize_array(&mut sink, value, "pool"),
            "virtual_service" => {
                raw.services = deserialize_array(&mut sink, value, "virtual_service")
            }
            "string_group" => {
                raw.string_groups = deserialize_array(&mut sink, value, "string_group")
            }
            "ip_group" => raw.ip_groups = deserialize_array(&mut sink, value, "ip_group"),
            "rate_limiter" => {
                raw.rate_limiters = deserialize_array(&mut sink, value, "rate_limiter")
            }
            other => sink.error(
                key.span(),
                format!("unknown section `{other}`, expected one of {TOP_LEVEL}"),
            ),
        }
    }

    let base_dir = path.parent().unwrap_or(Path::new("")).to_path_buf();
    let mut v = Validator {
        sink,
        path,
        base_dir,
    };
    let agent = v.agent(raw.agent.as_ref());
    let pools = v.pools(&raw.pools);
    let groups = Groups {
        string: v.string_groups(&raw.string_groups),
        ip: v.ip_groups(&raw.ip_groups),
    };
    let rate_limiters = v.rate_limiters(&raw.rate_limiters);
    let services = v.services(&raw.services, &pools, &agent, &rate_limiters, &groups.ip);
    v.fast_path_records_fit(&raw, &agent);
    v.servers_fit(&raw, &agent, &services, &pools);
    let replication = raw.replication.as_ref().map(|r| v.replication(r));

    let config = Config {
        path: path.to_path_buf(),
        agent,
        pools: pools.into_iter().map(|p| p.config).collect(),
        virtual_services: services,
        replication: replication.flatten(),
        groups: std::sync::Arc::new(groups),
        rate_limiters,
    };
    v.sink.into_result(config)
}

#[derive(Default)]
struct RawDoc {
    agent: Option<RawAgent>,
    pools: Vec<RawPool>,
    services: Vec<RawVs>,
    replication: Option<RawReplication>,
    string_groups: Vec<RawStringGroup>,
    ip_groups: Vec<RawIpGroup>,
    rate_limiters: Vec<RawRateLimiter>,
}

fn deserialize_one<T: for<'de> Deserialize<'de>>(
    sink: &mut Sink<'_>,
    value: &Spanned<DeValue<'_>>,
    what: &str,
) -> Option<T> {
    if !value.get_ref().is_table() {
        sink.error(value.span(), format!("{what} must be a table"));
        return None;
    }
    match T::deserialize(ValueDeserializer::from(value.clone())) {
        Ok(v) => Some(v),
        Err(e) => {
            sink.toml_error(&e, value.span());
            None
        }
    }
}

/// Deserializes each element on its own, so that a mistake in one pool does not hide the
/// mistakes in the others.
fn deserialize_array<T: for<'de> Deserialize<'de>>(
    sink: &mut Sink<'_>,
    value: &Spanned<DeValue<'_>>,
    name: &str,
) -> Vec<T> {
    let Some(items) = value.get_ref().as_array() else {
        sink.error(
            value.span(),
            format!("`{name}` must be an array of tables ([[{name}]])"),
        );
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| deserialize_one(sink, item, &format!("each [[{name}]]")))
        .collect()
}

/// A validated pool plus the locations later checks point at.
struct PoolInfo {
    config: PoolConfig,
    servers_spans: Vec<Range<usize>>,
}

struct Validator<'a> {
    sink: Sink<'a>,
    path: &'a Path,
    base_dir: PathBuf,
}

impl Validator<'_> {
    fn line_of(&self, span: &Range<usize>) -> usize {
        self.sink.line_col(span.start).0
    }

    fn addr(&mut self, s: &SStr, what: &str) -> Option<SocketAddr> {
        self.addr_at(s.get_ref(), s.span(), what)
    }

    fn addr_at(&mut self, text: &str, span: Range<usize>, what: &str) -> Option<SocketAddr> {
        match text.parse::<SocketAddr>() {
            Ok(a) if a.port() == 0 => {
                self.sink
                    .error(span, format!("{what} `{text}` needs a non-zero port"));
                None
            }
            Ok(a) => Some(a),
            Err(_) => {
                self.sink.error(
                    span,
                    format!(
                        "invalid {what} `{text}`: expected ip:port, e.g. 192.0.2.11:8080 or [2001:db8::1]:80"
                    ),
                );
                None
            }
        }
    }

    /// A tunnel source: a unicast address of this host (not checked against the host's
    /// interfaces here: the config may be checked elsewhere).
    fn tunnel_source(&mut self, s: &SStr, what: &str) -> Option<IpAddr> {
        match s.get_ref().parse::<IpAddr>() {
            Ok(a) if a.is_unspecified() || a.is_multicast() || a.is_loopback() => {
                self.sink.error(
                    s.span(),
                    format!(
                        "{what} `{a}` cannot be a packet's source: use a unicast address of this host that the servers route back to"
                    ),
                );
                None
            }
            Ok(a) => Some(a),
            Err(_) => {
                self.sink.error(
                    s.span(),
                    format!(
                        "invalid {what} `{}`: expected an IP address without port, e.g. 192.0.2.1 or 2001:db8::1",
                        s.get_ref()
                    ),
                );
                None
            }
        }
    }

    /// `forwarding = "tunnel"` on a service listening on `listen` needs the agent's tunnel
    /// source of that family.
    fn tunnel_needs_source(&mut self, span: Range<usize>, listen: SocketAddr, agent: &AgentConfig) {
        let (missing, key) = if listen.is_ipv4() {
            (agent.tunnel_source_ipv4.is_none(), "tunnel_source_ipv4")
        } else {
            (agent.tunnel_source_ipv6.is_none(), "tunnel_source_ipv6")
        };
        if missing {
            self.sink.error(
                span,
                format!(
                    "forwarding = \"tunnel\" for {listen} needs [agent] {key}: the outer source address of the encapsulated packets (an address of this host)"
                ),
            );
        }
    }

    /// A positive duration of at most [`MAX_DURATION`], or `default` when absent. Errors leave
    /// the default in place so validation carries on.
    fn duration(&mut self, s: Option<&SStr>, default: Duration) -> Duration {
        self.duration_within(s, default, MAX_DURATION)
    }

    /// Like [`Self::duration`], at most `max`.
    fn duration_within(&mut self, s: Option<&SStr>, default: Duration, max: Duration) -> Duration {
        let Some(s) = s else { return default };
        match humantime::parse_duration(s.get_ref()) {
            Ok(d) if d.is_zero() => {
                self.sink
                    .error(s.span(), "duration must be greater than zero");
                default
            }
            Ok(d) if d > max => {
                self.sink.error(
                    s.span(),
                    format!(
                        "duration `{}` is longer than the maximum of {}",
                        s.get_ref(),
                        humantime::format_duration(max)
                    ),
                );
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.sink.error(
                    s.span(),
                    format!(
                        "invalid duration `{}`: {e}; expected e.g. \"2s\", \"300ms\", \"5m\"",
                        s.get_ref()
                    ),
                );
                default
            }
        }
    }

    fn size(&mut self, s: Option<&Spanned<ByteSize>>, default: usize, min: usize) -> usize {
        let Some(s) = s else { return default };
        match s.get_ref().bytes().map(usize::try_from) {
            Ok(Ok(n)) if n >= min => n,
            Ok(Ok(n)) => {
                self.sink.error(
                    s.span(),
                    format!("size {n} is below the minimum of {min} bytes"),
                );
                default
            }
            Ok(Err(_)) => {
                self.sink.error(s.span(), "size too large");
                default
            }
            Err(msg) => {
                self.sink.error(s.span(), msg);
                default
            }
        }
    }

    fn at_least<T: Copy + PartialOrd + std::fmt::Display>(
        &mut self,
        v: Option<&Spanned<T>>,
        default: T,
        min: T,
        what: &str,
    ) -> T {
        match v {
            None => default,
            Some(v) if *v.get_ref() >= min => *v.get_ref(),
            Some(v) => {
                self.sink
                    .error(v.span(), format!("{what} must be at least {min}"));
                default
            }
        }
    }

    fn relative_path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    /// Every distinct server of the virtual services' pools takes a kernel backend id of
    /// 1..`servers`: a config beyond would pass here and be refused by the agent when it
    /// programs the data plane.
    fn servers_fit(
        &mut self,
        raw: &RawDoc,
        agent: &AgentConfig,
        services: &[VirtualServiceConfig],
        pools: &[PoolInfo],
    ) {
        let caps = agent.capacity;
        let capacity = raw.agent.as_ref().and_then(|a| a.capacity.as_ref());
        let by_name: HashMap<&str, &PoolConfig> = pools
            .iter()
            .map(|p| (p.config.name.as_str(), &p.config))
            .collect();
        let servers: std::collections::HashSet<SocketAddr> = services
            .iter()
            .filter_map(|vs| by_name.get(vs.pool.as_str()))
            .flat_map(|p| p.servers.iter().map(|s| s.addr))
            .collect();
        let most = caps.backends.saturating_sub(1) as usize;
        if servers.len() > most {
            let span = capacity
                .and_then(|c| c.servers.as_ref().map(|v| v.span()))
                .or_else(|| raw.services.last().map(|s| s.pool.span()));
            if let Some(span) = span {
                self.sink.error(
                    span,
                    format!(
                        "the virtual services' pools have {} distinct servers, but \
                         [agent.capacity] servers = {} holds at most {most}: raise it",
                        servers.len(),
                        caps.backends
                    ),
                );
            }
        }
    }

    /// Fast-path services record in the kernel mirror which client address carries which
    /// session (one record per address and table entry, see `dataplane/mirror.rs`), so with
    /// any of them the mirror must hold a record beside every entry a table may hold. Checked
    /// only when the entries alone fit (the rule in [`Self::agent`] reports that case).
    fn fast_path_records_fit(&mut self, raw: &RawDoc, agent: &AgentConfig) {
        let Some(fp) = raw.services.iter().find_map(|s| s.fast_path.as_ref()) else {
            return;
        };
        let mirror = agent.capacity.table_mirror_entries as usize;
        let entries = agent.datascript.table_max_entries;
        if entries + MIRROR_RESERVE > mirror || 2 * entries + MIRROR_RESERVE <= mirror {
            return;
        }
        self.sink.error(
            fp.span(),
            format!(
                "fast_path records each session's client address in the kernel mirror beside \
                 the session's table entry: [agent.capacity] table_mirror_entries ({mirror}) \
                 must hold 2 x [agent.datascript] table_max_entries ({entries}) plus \
                 {MIRROR_RESERVE} name records, or pins would be lost on a restart"
            ),
        );
    }

    fn agent(&mut self, raw: Option<&RawAgent>) -> AgentConfig {
        let mut agent = AgentConfig::default();
        let Some(raw) = raw else { return agent };

        let mut seen: HashMap<&str, usize> = HashMap::new();
        for name in raw.interfaces.iter().flatten() {
            if let Err(why) = check_ifname(name.get_ref()) {
                self.sink.error(
                    name.span(),
                    format!("invalid interface name `{}`: {why}", name.get_ref()),
                );
            } else if let Some(&line) = seen.get(name.get_ref().as_str()) {
                self.sink.error(
                    name.span(),
                    format!(
                        "interface `{}` listed twice (first on line {line})",
                        name.get_ref()
                    ),
                );
            } else {
                seen.insert(name.get_ref(), self.line_of(&name.span()));
                agent.interfaces.push(name.get_ref().clone());
            }
        }
        for (name, hook) in raw.attach.iter().flatten() {
            if !agent.interfaces.contains(name) {
                self.sink.error(
                    hook.span(),
                    format!("attach names `{name}`, which is not in interfaces"),
                );
            }
            match hook.get_ref().as_str() {
                "xdp" => {}
                "tc" => {
                    agent.tc_interfaces.insert(name.clone());
                }
                other => self.sink.error(
                    hook.span(),
                    format!(
                        "attach = \"{other}\" for `{name}`: expected \"xdp\" (the default) or \
                         \"tc\" (TC ingress, for veths whose senders leave checksums partial)"
                    ),
                ),
            }
        }
        if let Some(a) = &raw.admin_listen
            && let Some(addr) = self.addr(a, "admin_listen address")
        {
            agent.admin_listen = addr;
        }
        if let Some(dir) = &raw.bpffs_dir {
            if Path::new(dir.get_ref()).is_absolute() {
                agent.bpffs_dir = PathBuf::from(dir.get_ref());
            } else {
                self.sink.error(
                    dir.span(),
                    "bpffs_dir must be an absolute path under a bpf filesystem",
                );
            }
        }
        if let Some(f) = &raw.state_file {
            agent.state_file = Some(self.relative_path(f.get_ref()));
        }
        agent.ephemeral_pins = raw.ephemeral_pins.unwrap_or(false);
        if let Some(w) = &raw.workers {
            let cpus = std::thread::available_parallelism().map_or(1, usize::from);
            let max = cpus * MAX_WORKERS_PER_CPU;
            let n = self.at_least(Some(w), 1, 1, "workers");
            agent.workers = Some(if n > max {
                self.sink.error(
                    w.span(),
                    format!(
                        "workers = {n} is more than {MAX_WORKERS_PER_CPU} per CPU (this host has {cpus}): at most {max}; more threads than CPUs only add switching"
                    ),
                );
                max
            } else {
                n
            });
        }
        if let Some(f) = &raw.admin_token_file {
            agent.admin_token_file = Some(self.relative_path(f.get_ref()));
        }
        agent.tunnel_source_ipv4 = raw.tunnel_source_ipv4.as_ref().and_then(|a| {
            match self.tunnel_source(a, "tunnel_source_ipv4")? {
                IpAddr::V4(v4) => Some(v4),
                IpAddr::V6(_) => {
                    self.sink.error(
                        a.span(),
                        "tunnel_source_ipv4 must be an IPv4 address (IPv6 services take tunnel_source_ipv6)",
                    );
                    None
                }
            }
        });
        agent.tunnel_source_ipv6 = raw.tunnel_source_ipv6.as_ref().and_then(|a| {
            match self.tunnel_source(a, "tunnel_source_ipv6")? {
                IpAddr::V6(v6) => Some(v6),
                IpAddr::V4(_) => {
                    self.sink.error(
                        a.span(),
                        "tunnel_source_ipv6 must be an IPv6 address (IPv4 services take tunnel_source_ipv4)",
                    );
                    None
                }
            }
        });
        if let Some(f) = raw.log_format {
            agent.log_format = f;
        }
        if let Some(h) = &raw.http {
            let d = HttpLimits::default();
            agent.http = HttpLimits {
                header_read_timeout: self
                    .duration(h.header_read_timeout.as_ref(), d.header_read_timeout),
                idle_timeout: self.duration(h.idle_timeout.as_ref(), d.idle_timeout),
                upstream_connect_timeout: self.duration(
                    h.upstream_connect_timeout.as_ref(),
                    d.upstream_connect_timeout,
                ),
                upstream_response_timeout: self.duration(
                    h.upstream_response_timeout.as_ref(),
                    d.upstream_response_timeout,
                ),
                client_body_idle_timeout: self.duration(
                    h.client_body_idle_timeout.as_ref(),
                    d.client_body_idle_timeout,
                ),
                upstream_body_idle_timeout: self.duration(
                    h.upstream_body_idle_timeout.as_ref(),
                    d.upstream_body_idle_timeout,
                ),
                drain_timeout: self.duration(h.drain_timeout.as_ref(), d.drain_timeout),
                // hyper refuses (panics on) a read buffer below 8 KiB.
                max_header_bytes: self.size(h.max_header_bytes.as_ref(), d.max_header_bytes, 8192),
                max_headers: self.at_least(h.max_headers.as_ref(), d.max_headers, 1, "max_headers"),
            };
        }
        if let Some(ds) = &raw.datascript {
            let d = DataScriptLimits::default();
            agent.datascript = DataScriptLimits {
                geo_database: ds.geo_database.as_ref().and_then(|p| self.geo_database(p)),
                instruction_budget: self.at_least(
                    ds.instruction_budget.as_ref(),
                    d.instruction_budget,
                    1000,
                    "instruction_budget",
                ),
                // LuaJIT needs some room for its own state and the avi.* API tables.
                memory_limit: self.size(ds.memory_limit.as_ref(), d.memory_limit, 1024 * 1024),
                max_event_time: self.duration_within(
                    ds.max_event_time.as_ref(),
                    d.max_event_time,
                    MAX_EVENT_TIME,
                ),
                table_memory_limit: self.size(
                    ds.table_memory_limit.as_ref(),
                    d.table_memory_limit,
                    64 * 1024,
                ),
                table_max_entries: self.at_least(
                    ds.table_max_entries.as_ref(),
                    d.table_max_entries as u32,
                    1,
                    "table_max_entries",
                ) as usize,
                max_added_headers: self.at_least(
                    ds.max_added_headers.as_ref(),
                    d.max_added_headers,
                    1,
                    "max_added_headers",
                ),
                max_added_header_bytes: self.size(
                    ds.max_added_header_bytes.as_ref(),
                    d.max_added_header_bytes,
                    1024,
                ),
                max_body_buffer: self.size(ds.max_body_buffer.as_ref(), d.max_body_buffer, 1024),
            };
        }
        if let Some(c) = &raw.capacity {
            agent.capacity = self.capacity(c);
        }
        let mirror = agent.capacity.table_mirror_entries as usize;
        if agent.datascript.table_max_entries + MIRROR_RESERVE > mirror {
            let span = raw
                .datascript
                .as_ref()
                .and_then(|d| d.table_max_entries.as_ref().map(|v| v.span()))
                .or_else(|| {
                    raw.capacity
                        .as_ref()
                        .and_then(|c| c.table_mirror_entries.as_ref().map(|v| v.span()))
                });
            if let Some(span) = span {
                self.sink.error(
                    span,
                    format!(
                        "[agent.datascript] table_max_entries ({}) does not fit the kernel mirror: \
                         [agent.capacity] table_mirror_entries ({mirror}) must hold it plus \
                         {MIRROR_RESERVE} name records, or entries would be lost on a restart",
                        agent.datascript.table_max_entries
                    ),
                );
            }
        }
        agent
    }

    fn capacity(&mut self, c: &RawCapacity) -> Capacities {
        let d = Capacities::DEFAULT;
        let mut bounded =
            |v: Option<&Spanned<u32>>, default: u32, min: u32, max: u32, what: &str| {
                let n = self.at_least(v, default, min, what);
                if n > max {
                    if let Some(v) = v {
                        self.sink
                            .error(v.span(), format!("{what} must be at most {max}"));
                    }
                    return default;
                }
                n
            };
        Capacities {
            connections: bounded(
                c.connections.as_ref(),
                d.connections,
                1024,
                1 << 28,
                "connections",
            ),
            client_pins: bounded(
                c.client_pins.as_ref(),
                d.client_pins,
                16,
                1 << 28,
                "client_pins",
            ),
            connections_v6: bounded(
                c.connections_v6.as_ref(),
                d.connections_v6,
                1024,
                1 << 28,
                "connections_v6",
            ),
            client_pins_v6: bounded(
                c.client_pins_v6.as_ref(),
                d.client_pins_v6,
                16,
                1 << 28,
                "client_pins_v6",
            ),
            table_mirror_entries: bounded(
                c.table_mirror_entries.as_ref(),
                d.table_mirror_entries,
                MIRROR_RESERVE as u32 + 1,
                1 << 28,
                "table_mirror_entries",
            ),
            services: bounded(
                c.virtual_services.as_ref(),
                d.services,
                2,
                SERVICE_ID_LIMIT,
                "virtual_services",
            ),
            backends: bounded(c.servers.as_ref(), d.backends, 2, 1 << 24, "servers"),
        }
    }

    fn pools(&mut self, raws: &[RawPool]) -> Vec<PoolInfo> {
        let mut out: Vec<PoolInfo> = Vec::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        for raw in raws {
            let name = raw.name.get_ref();
            if name.is_empty() {
                self.sink
                    .error(raw.name.span(), "pool name must not be empty");
                continue;
            }
            if let Some(&line) = names.get(name) {
                self.sink.error(
                    raw.name.span(),
                    format!("duplicate pool name `{name}` (first defined on line {line})"),
                );
                continue;
            }
            names.insert(name.clone(), self.line_of(&raw.name.span()));

            let algorithm = self.algorithm(raw);

            let mut servers = Vec::new();
            let mut spans = Vec::new();
            if raw.servers.get_ref().is_empty() {
                self.sink
                    .error(raw.servers.span(), format!("pool `{name}` has no servers"));
            }
            for s in raw.servers.get_ref() {
                let Some(server) = self.server(s) else {
                    continue;
                };
                if servers.iter().any(|p: &PoolServer| p.addr == server.addr) {
                    self.sink.error(
                        s.span(),
                        format!("server {} is listed twice in pool `{name}`", server.addr),
                    );
                } else {
                    servers.push(server);
                    spans.push(s.span());
                }
            }
            let health_monitor = raw.health_monitor.as_ref().map(|m| self.monitor(m));
            let slow_start = raw
                .slow_start
                .as_ref()
                .map(|d| self.duration(Some(d), Duration::ZERO))
                .filter(|d| !d.is_zero());
            let tls = raw.tls.as_ref().and_then(|t| self.pool_tls(t));
            out.push(PoolInfo {
                config: PoolConfig {
                    name: name.clone(),
                    algorithm,
                    servers,
                    health_monitor,
                    slow_start,
                    tls,
                },
                servers_spans: spans,
            });
        }
        out
    }

    /// A server address that no server can have: unspecified, broadcast or multicast.
    fn server_addr_usable(&mut self, addr: SocketAddr, span: Range<usize>) -> Option<SocketAddr> {
        let ip = addr.ip();
        let why = if ip.is_unspecified() {
            "the unspecified address"
        } else if ip.is_multicast() {
            "a multicast address"
        } else if matches!(ip, std::net::IpAddr::V4(v4) if v4.is_broadcast()) {
            "the broadcast address"
        } else {
            return Some(addr);
        };
        self.sink.error(
            span,
            format!("server address {addr} is {why}, which cannot be a server"),
        );
        None
    }

    /// A server that is the virtual service's own address would send every request back
    /// into latch: refused for every pool a script could select, and for an XDP-forwarded
    /// service also a server on the VIP at another port (XDP would forward to itself).
    fn servers_not_the_listener(
        &mut self,
        pools: &[PoolInfo],
        own: Option<&PoolInfo>,
        listen: SocketAddr,
        kind: ServiceType,
        vs: &str,
    ) {
        for p in pools {
            let is_own = own.is_some_and(|o| std::ptr::eq(o, p));
            for (server, span) in p.config.servers.iter().zip(&p.servers_spans) {
                let same_ip = server.addr.ip() == listen.ip();
                if server.addr == listen {
                    self.sink.error(
                        span.clone(),
                        format!(
                            "server {} is the listen address of virtual service `{vs}`: requests to it would loop back into latch",
                            server.addr
                        ),
                    );
                } else if is_own && same_ip && kind != ServiceType::Http {
                    self.sink.error(
                        span.clone(),
                        format!(
                            "server {} is on the VIP of virtual service `{vs}`, which XDP forwards: it would forward to itself",
                            server.addr
                        ),
                    );
                }
            }
        }
    }

    /// One `servers` element: a plain address, or a table with weight and backup.
    fn server(&mut self, s: &Spanned<RawServer>) -> Option<PoolServer> {
        match s.get_ref() {
            RawServer::Plain(text) => {
                let addr = self.addr_at(text, s.span(), "server address")?;
                self.server_addr_usable(addr, s.span()).map(PoolServer::new)
            }
            RawServer::Table(t) => {
                let addr = self.addr(&t.addr, "server address")?;
                let addr = self.server_addr_usable(addr, t.addr.span())?;
                let weight = match &t.weight {
                    None => 1,
                    Some(w) => match u32::try_from(*w.get_ref()) {
                        Ok(n) if n <= MAX_WEIGHT => n,
                        _ => {
                            self.sink.error(
                                w.span(),
                                format!(
                                    "server weight must be between 0 and {MAX_WEIGHT}, got {}",
                                    w.get_ref()
                                ),
                            );
                            1
                        }
                    },
                };
                Some(PoolServer {
                    addr,
                    weight,
                    backup: t.backup.unwrap_or(false),
                })
            }
        }
    }

    fn algorithm(&mut self, raw: &RawPool) -> Algorithm {
        let alg = raw
            .algorithm
            .as_ref()
            .map(|a| *a.get_ref())
            .unwrap_or(RawAlgorithm::RoundRobin);
        match (alg, &raw.hash) {
            (RawAlgorithm::ConsistentHash, None) => Algorithm::ConsistentHash(HashKey::ClientIp),
            (RawAlgorithm::ConsistentHash, Some(h)) => {
                let h = h.get_ref();
                let key = match (*h.kind.get_ref(), &h.name) {
                    (RawHashType::ClientIp, None) => HashKey::ClientIp,
                    (RawHashType::ClientIp, Some(n)) => {
                        self.sink
                            .error(n.span(), "hash type `client_ip` takes no `name`");
                        HashKey::ClientIp
                    }
                    (RawHashType::Header | RawHashType::Cookie, None) => {
                        self.sink.error(
                            h.kind.span(),
                            "hash types `header` and `cookie` need a `name`",
                        );
                        HashKey::ClientIp
                    }
                    (_, Some(n)) if n.get_ref().is_empty() => {
                        self.sink.error(n.span(), "hash `name` must not be empty");
                        HashKey::ClientIp
                    }
                    (RawHashType::Header, Some(n)) => HashKey::Header(n.get_ref().clone()),
                    (RawHashType::Cookie, Some(n)) => HashKey::Cookie(n.get_ref().clone()),
                };
                Algorithm::ConsistentHash(key)
            }
            (other, Some(h)) => {
                self.sink.error(
                    h.span(),
                    "`hash` only applies to algorithm = \"consistent_hash\"",
                );
                plain_algorithm(other)
            }
            (other, None) => plain_algorithm(other),
        }
    }

    fn monitor(&mut self, m: &Spanned<RawMonitor>) -> HealthMonitor {
        let raw = m.get_ref();
        let kind = match raw.kind.get_ref() {
            RawMonitorType::Tcp => {
                for (key, span) in [
                    ("path", raw.path.as_ref().map(|p| p.span())),
                    (
                        "expect_status",
                        raw.expect_status.as_ref().map(|e| e.span()),
                    ),
                ] {
                    if let Some(span) = span {
                        self.sink
                            .error(span, format!("`{key}` only applies to http monitors"));
                    }
                }
                MonitorKind::Tcp
            }
            RawMonitorType::Http => {
                let path = match &raw.path {
                    None => "/".to_string(),
                    Some(p) if p.get_ref().starts_with('/') => p.get_ref().clone(),
                    Some(p) => {
                        self.sink
                            .error(p.span(), "health monitor `path` must start with `/`");
                        "/".to_string()
                    }
                };
                let expect_status = match &raw.expect_status {
                    None => StatusSet::default(),
                    Some(list) => self.status_set(list),
                };
                MonitorKind::Http {
                    path,
                    expect_status,
                }
            }
        };
        let interval = self.duration(raw.interval.as_ref(), Duration::from_secs(5));
        let timeout = self.duration(raw.timeout.as_ref(), Duration::from_secs(2));
        HealthMonitor {
            kind,
            interval,
            timeout,
            fall: self.at_least(raw.fall.as_ref(), 3, 1, "fall"),
            rise: self.at_least(raw.rise.as_ref(), 2, 1, "rise"),
        }
    }

    fn status_set(&mut self, list: &Spanned<Vec<Spanned<IntOrStr>>>) -> StatusSet {
        if list.get_ref().is_empty() {
            self.sink
                .error(list.span(), "expect_status must not be empty");
            return StatusSet::default();
        }
        let mut ranges = Vec::new();
        for item in list.get_ref() {
            match parse_status_item(item.get_ref()) {
                Ok(r) => ranges.push(r),
                Err(msg) => self.sink.error(item.span(), msg),
            }
        }
        if ranges.is_empty() {
            StatusSet::default()
        } else {
            StatusSet { ranges }
        }
    }

    fn services(
        &mut self,
        raws: &[RawVs],
        pools: &[PoolInfo],
        agent: &AgentConfig,
        rate_limiters: &[RateLimiterConfig],
        ip_groups: &BTreeMap<String, IpGroup>,
    ) -> Vec<VirtualServiceConfig> {
        let mut out = Vec::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut listeners: HashMap<(SocketAddr, u8), (String, usize)> = HashMap::new();
        let mut kernel_services = 0usize;
        for raw in raws {
            let name = raw.name.get_ref().clone();
            if name.is_empty() {
                self.sink
                    .error(raw.name.span(), "virtual service name must not be empty");
            } else if let Some(&line) = names.get(&name) {
                self.sink.error(
                    raw.name.span(),
                    format!(
                        "duplicate virtual service name `{name}` (first defined on line {line})"
                    ),
                );
            } else {
                names.insert(name.clone(), self.line_of(&raw.name.span()));
            }
            let kind = *raw.kind.get_ref();
            let listen = self.addr(&raw.listen, "listen address");

            let pool = pools.iter().find(|p| p.config.name == *raw.pool.get_ref());
            if pool.is_none() {
                let known: Vec<_> = pools
                    .iter()
                    .map(|p| format!("`{}`", p.config.name))
                    .collect();
                let hint = if known.is_empty() {
                    "no pools are defined".to_string()
                } else {
                    format!("known pools: {}", known.join(", "))
                };
                self.sink.error(
                    raw.pool.span(),
                    format!("unknown pool `{}` ({hint})", raw.pool.get_ref()),
                );
            }

            if let Some(l) = listen {
                self.servers_not_the_listener(pools, pool, l, kind, &name);
            }

            if let Some(p) = pool
                && p.config.tls.is_some()
                && kind != ServiceType::Http
            {
                self.sink.error(
                    raw.pool.span(),
                    format!(
                        "pool `{}` speaks TLS to its servers, which only http services do; {} services forward the client's bytes as they are",
                        p.config.name,
                        kind.as_str()
                    ),
                );
            }

            // fast_path and persistence
            let fast_path = match &raw.fast_path {
                Some(fp) if kind != ServiceType::Http => {
                    self.sink.error(
                        fp.span(),
                        format!(
                            "fast_path only applies to http services; {} services are already forwarded by XDP (use `persistence` for client-IP stickiness)",
                            kind.as_str()
                        ),
                    );
                    false
                }
                Some(_) => true,
                None => false,
            };
            let (fast_path_max_sessions, fast_path_exclude) =
                self.fast_path_options(raw, fast_path, ip_groups);
            let persistence = match &raw.persistence {
                Some(p) if kind == ServiceType::Http => {
                    self.sink.error(
                        p.span(),
                        "persistence applies to tcp and udp services; for http use a DataScript table, optionally with fast_path = \"client_ip\"",
                    );
                    None
                }
                Some(p) => Some(self.duration(p.get_ref().timeout.as_ref(), DEFAULT_PERSISTENCE)),
                None => None,
            };
            let persistence_ipv6_prefix = match (
                raw.persistence
                    .as_ref()
                    .and_then(|p| p.get_ref().ipv6_prefix.as_ref()),
                &raw.fast_path_ipv6_prefix,
            ) {
                (Some(prefix), _) => self.ipv6_prefix("ipv6_prefix", prefix, listen),
                (None, Some(prefix)) if !fast_path => {
                    self.sink.error(
                        prefix.span(),
                        "fast_path_ipv6_prefix only applies with fast_path = \"client_ip\"",
                    );
                    None
                }
                (None, Some(prefix)) => self.ipv6_prefix("fast_path_ipv6_prefix", prefix, listen),
                (None, None) => None,
            };
            let flow_hash = match &raw.flow_hash {
                Some(h) if kind == ServiceType::Http => {
                    self.sink.error(
                        h.span(),
                        "flow_hash applies to tcp and udp services (XDP places their connections); http connections end at the proxy",
                    );
                    FlowHash::Connection
                }
                Some(h) => *h.get_ref(),
                None => FlowHash::Connection,
            };
            let forwarding = match &raw.forwarding {
                Some(f) if kind == ServiceType::Http && !fast_path => {
                    self.sink.error(
                        f.span(),
                        "forwarding only applies to tcp/udp services and to http services with fast_path",
                    );
                    Forwarding::Nat
                }
                Some(f) => {
                    if *f.get_ref() == Forwarding::Tunnel
                        && let Some(l) = listen
                    {
                        self.tunnel_needs_source(f.span(), l, agent);
                    }
                    *f.get_ref()
                }
                None => Forwarding::Nat,
            };

            // The XDP data plane handles these, IPv4 and IPv6 alike.
            // Every service takes a kernel service id, plain http ones too (XDP tells their
            // packets apart by it: SYNs to the proxy, stale fast-path flows forgotten).
            kernel_services += 1;
            if kernel_services == agent.capacity.services as usize {
                self.sink.error(
                    raw.name.span(),
                    format!(
                        "too many virtual services: the data plane holds at most {} \
                         ([agent.capacity] virtual_services; http services count too)",
                        agent.capacity.services - 1
                    ),
                );
            }
            let in_kernel = kind != ServiceType::Http || fast_path;
            if in_kernel {
                if agent.interfaces.is_empty() {
                    self.sink.error(
                        raw.kind.span(),
                        "this service is forwarded by XDP but [agent] interfaces is empty",
                    );
                }
                if let (Some(p), Some(l)) = (pool, listen) {
                    for (server, span) in p.config.servers.iter().zip(&p.servers_spans) {
                        let addr = server.addr;
                        if addr.is_ipv4() != l.is_ipv4() {
                            self.sink.error(
                                span.clone(),
                                format!(
                                    "server {addr} and the listen address {l} of virtual service `{name}` are of different IP versions: XDP forwards within one address family"
                                ),
                            );
                        }
                    }
                }
            }

            if let Some(l) = listen {
                let key = (l, kind.ip_proto());
                let proto = if kind == ServiceType::Udp {
                    "udp"
                } else {
                    "tcp"
                };
                if let Some((other, line)) = listeners.get(&key) {
                    self.sink.error(
                        raw.listen.span(),
                        format!(
                            "duplicate listener {l}/{proto}: already used by virtual service `{other}` (line {line})"
                        ),
                    );
                } else {
                    listeners.insert(key, (name.clone(), self.line_of(&raw.listen.span())));
                }
            }

            let tls = raw.tls.as_ref().and_then(|t| self.tls(t, kind, fast_path));
            let datascripts = self.datascripts(raw, kind, &name);
            let rate_limit = raw
                .rate_limit
                .as_ref()
                .and_then(|r| self.vs_rate_limit(r, kind, rate_limiters));

            out.push(VirtualServiceConfig {
                name,
                listen: listen.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
                kind,
                pool: raw.pool.get_ref().clone(),
                forwarding,
                persistence,
                persistence_ipv6_prefix,
                flow_hash,
                fast_path,
                fast_path_max_sessions,
                fast_path_exclude,
                datascripts,
                rate_limit,
                tls,
            });
        }
        out
    }

    /// An IPv6 client prefix length (`key` names it in errors): 1..=128, of an IPv6 service.
    fn ipv6_prefix(
        &mut self,
        key: &str,
        prefix: &Spanned<u32>,
        listen: Option<SocketAddr>,
    ) -> Option<u8> {
        let n = *prefix.get_ref();
        if !(1..=128).contains(&n) {
            self.sink.error(
                prefix.span(),
                format!("{key} must be a prefix length from 1 to 128, not {n}"),
            );
            return None;
        }
        if listen.is_some_and(|l| l.is_ipv4()) {
            self.sink.error(
                prefix.span(),
                format!("{key} applies to IPv6 listen addresses; this service listens on IPv4"),
            );
            return None;
        }
        u8::try_from(n).ok()
    }

    /// `fast_path_max_sessions` (at least 1, default 1) and `fast_path_exclude` (names of
    /// `[[ip_group]]`s), both only with `fast_path`.
    fn fast_path_options(
        &mut self,
        raw: &RawVs,
        fast_path: bool,
        ip_groups: &BTreeMap<String, IpGroup>,
    ) -> (u32, Vec<String>) {
        let mut max = DEFAULT_FAST_PATH_MAX_SESSIONS;
        if let Some(m) = &raw.fast_path_max_sessions {
            if !fast_path {
                self.sink.error(
                    m.span(),
                    "fast_path_max_sessions only applies with fast_path = \"client_ip\"",
                );
            } else if *m.get_ref() == 0 {
                self.sink.error(
                    m.span(),
                    "fast_path_max_sessions must be at least 1 (to pin no address, remove fast_path)",
                );
            } else {
                max = *m.get_ref();
            }
        }
        let mut exclude = Vec::new();
        if let Some(list) = &raw.fast_path_exclude {
            if !fast_path {
                self.sink.error(
                    list.span(),
                    "fast_path_exclude only applies with fast_path = \"client_ip\"",
                );
            }
            for name in list.get_ref() {
                if ip_groups.contains_key(name.get_ref()) {
                    exclude.push(name.get_ref().clone());
                } else {
                    let known: Vec<&str> = ip_groups.keys().map(String::as_str).collect();
                    let hint = if known.is_empty() {
                        "no ip_group is defined".to_string()
                    } else {
                        format!("known ip groups: {}", known.join(", "))
                    };
                    self.sink.error(
                        name.span(),
                        format!(
                            "unknown ip_group `{}` in fast_path_exclude ({hint})",
                            name.get_ref()
                        ),
                    );
                }
            }
        }
        (max, exclude)
    }

    /// The geo database file, read and checked now (relative to the config's directory).
    fn geo_database(&mut self, path: &SStr) -> Option<GeoDatabase> {
        GeoDatabase::open(&self.relative_path(path.get_ref()))
            .map_err(|e| self.sink.error(path.span(), e))
            .ok()
    }

    fn datascripts(&mut self, raw: &RawVs, kind: ServiceType, vs: &str) -> Vec<ScriptSource> {
        let mut out = Vec::new();
        for (i, ds) in raw.datascript.iter().enumerate() {
            if kind != ServiceType::Http {
                self.sink.error(
                    ds.span(),
                    format!(
                        "DataScripts only run on http services, not {}",
                        kind.as_str()
                    ),
                );
                continue;
            }
            let d = ds.get_ref();
            match (&d.script, &d.file) {
                (None, None) => self
                    .sink
                    .error(ds.span(), "datascript needs either `script` or `file`"),
                (Some(_), Some(f)) => self.sink.error(
                    f.span(),
                    "datascript has both `script` and `file`; keep one",
                ),
                (Some(s), None) => out.push(ScriptSource {
                    event: d.event,
                    name: format!("{vs}#{}", i + 1),
                    text: s.get_ref().clone(),
                    origin_file: self.path.to_path_buf(),
                    first_line: self.string_first_line(&s.span()),
                }),
                (None, Some(f)) => {
                    let file = self.relative_path(f.get_ref());
                    match std::fs::read(&file) {
                        Ok(bytes) => match String::from_utf8(bytes) {
                            Ok(text) => out.push(ScriptSource {
                                event: d.event,
                                name: f.get_ref().clone(),
                                text,
                                origin_file: file,
                                first_line: 1,
                            }),
                            Err(e) => {
                                let errors = super::not_utf8(&file, e.as_bytes(), e.utf8_error());
                                for d in errors.diagnostics {
                                    self.sink.push(d);
                                }
                            }
                        },
                        Err(e) => self.sink.error(
                            f.span(),
                            format!("cannot read script file {}: {e}", file.display()),
                        ),
                    }
                }
            }
        }
        out
    }

    /// Line of the config file on which a string value's content starts: TOML drops a newline
    /// right after an opening `'''` or `"""`.
    fn string_first_line(&self, span: &Range<usize>) -> usize {
        let line = self.line_of(span);
        let rest = self.sink.text().get(span.start..).unwrap_or("");
        let after_delim = rest
            .strip_prefix("'''")
            .or_else(|| rest.strip_prefix("\"\"\""));
        match after_delim {
            Some(r) if r.starts_with('\n') || r.starts_with("\r\n") => line + 1,
            _ => line,
        }
    }

    fn replication(&mut self, raw: &RawReplication) -> Option<ReplicationConfig> {
        let url = raw.redis_url.get_ref();
        let scheme_ok = ["redis://", "rediss://", "unix://", "redis+unix://"]
            .iter()
            .any(|s| url.starts_with(s));
        if !scheme_ok {
            self.sink.error(
                raw.redis_url.span(),
                format!(
                    "invalid redis_url `{url}`: expected redis://host:port, rediss:// or unix://"
                ),
            );
        }
        let node = raw.node_id.get_ref();
        if node.is_empty() || node.chars().any(|c| c.is_whitespace() || c.is_control()) {
            self.sink.error(
                raw.node_id.span(),
                "node_id must be non-empty and contain no whitespace",
            );
        }
        Some(ReplicationConfig {
            redis_url: url.clone(),
            node_id: node.clone(),
            connect_timeout: self.duration(raw.connect_timeout.as_ref(), Duration::from_secs(3)),
            command_timeout: self.duration(raw.command_timeout.as_ref(), Duration::from_secs(1)),
        })
    }
}

fn plain_algorithm(a: RawAlgorithm) -> Algorithm {
    match a {
        RawAlgorithm::RoundRobin => Algorithm::RoundRobin,
        RawAlgorithm::LeastConnections => Algorithm::LeastConnections,
        RawAlgorithm::ConsistentHash => Algorithm::ConsistentHash(HashKey::ClientIp),
    }
}

/// Linux's `dev_valid_name`: what the kernel accepts as an interface name.
fn check_ifname(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty");
    }
    if name.len() > 15 {
        return Err("longer than 15 bytes");
    }
    if name == "." || name == ".." {
        return Err("`.` and `..` are reserved");
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '\0')
    {
        return Err("contains `/`, `:`, whitespace or NUL");
    }
    Ok(())
}

/// `200`, `"204"` or `"200-299"`.
fn parse_status_item(item: &IntOrStr) -> Result<(u16, u16), String> {
    let code = |n: i64| -> Result<u16, String> {
        u16::try_from(n)
            .ok()
            .filter(|c| (100..=599).contains(c))
            .ok_or_else(|| format!("HTTP status {n} is outside 100-599"))
    };
    match item {
        IntOrStr::Int(n) => code(*n).map(|c| (c, c)),
        IntOrStr::Str(s) => {
            let bad = || {
                format!(
                    "invalid status `{s}`: expected a code like 200 or a range like \"200-399\""
                )
            };
            let (lo, hi) = match s.split_once('-') {
                Some((a, b)) => (a.trim(), b.trim()),
                None => (s.trim(), s.trim()),
            };
            let lo = code(lo.parse().map_err(|_| bad())?)?;
            let hi = code(hi.parse().map_err(|_| bad())?)?;
            if lo > hi {
                return Err(bad());
            }
            Ok((lo, hi))
        }
    }
}
