use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::*;

const CFG: &str = "/etc/latch/latch.toml";

fn errors(text: &str) -> Vec<String> {
    match parse(text, Path::new(CFG)) {
        Ok(_) => Vec::new(),
        Err(e) => e.diagnostics.iter().map(|d| d.to_string()).collect(),
    }
}

fn ok(text: &str) -> Config {
    match parse(text, Path::new(CFG)) {
        Ok(c) => c,
        Err(e) => panic!("config refused:\n{e}"),
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// A valid base; tests append to it. Its last line is line 12.
const BASE: &str = r#"[agent]
interfaces = ["lb-c", "lb-b"]

[[pool]]
name = "web"
servers = ["192.0.2.11:8080", "192.0.2.12:8080"]

[[virtual_service]]
name = "shop"
listen = "198.51.100.10:80"
type = "http"
pool = "web"
"#;

fn with_base(extra: &str) -> String {
    format!("{BASE}{extra}")
}

#[test]
fn base_is_valid_with_defaults() {
    let c = ok(BASE);
    assert_eq!(c.agent.interfaces, ["lb-c", "lb-b"]);
    assert_eq!(c.agent.admin_listen, addr("127.0.0.1:9180"));
    assert_eq!(c.agent.bpffs_dir, Path::new("/sys/fs/bpf/latch"));
    assert_eq!(c.agent.workers, None);
    assert_eq!(c.agent.log_format, LogFormat::Text);
    assert_eq!(c.agent.http.header_read_timeout, Duration::from_secs(10));
    assert_eq!(c.agent.http.idle_timeout, Duration::from_secs(60));
    assert_eq!(
        c.agent.http.upstream_connect_timeout,
        Duration::from_secs(3)
    );
    assert_eq!(
        c.agent.http.upstream_response_timeout,
        Duration::from_secs(30)
    );
    assert_eq!(c.agent.http.max_header_bytes, 16384);
    assert_eq!(c.agent.http.max_headers, 100);
    assert_eq!(c.agent.datascript.instruction_budget, 1_000_000);
    assert_eq!(c.agent.datascript.memory_limit, 16 << 20);
    assert_eq!(c.agent.datascript.max_event_time, Duration::from_millis(50));
    assert_eq!(c.agent.datascript.table_memory_limit, 64 << 20);
    assert_eq!(c.agent.datascript.max_added_headers, 100);
    assert_eq!(c.agent.datascript.max_added_header_bytes, 64 << 10);
    let pool = c.pool("web").expect("pool web");
    assert_eq!(pool.algorithm, Algorithm::RoundRobin);
    assert_eq!(
        pool.servers,
        [addr("192.0.2.11:8080"), addr("192.0.2.12:8080")].map(PoolServer::new)
    );
    assert_eq!(pool.slow_start, None);
    assert_eq!(pool.health_monitor, None);
    let vs = c.virtual_service("shop").expect("vs shop");
    assert_eq!(vs.listen, addr("198.51.100.10:80"));
    assert_eq!(vs.kind, ServiceType::Http);
    assert_eq!(vs.forwarding, Forwarding::Nat);
    assert_eq!(vs.persistence, None);
    assert!(!vs.fast_path);
    assert!(vs.datascripts.is_empty());
    assert_eq!(c.replication, None);
}

#[test]
fn empty_file_is_a_valid_empty_config() {
    let c = ok("");
    assert!(c.pools.is_empty() && c.virtual_services.is_empty());
    assert_eq!(c.agent, AgentConfig::default());
}

#[test]
fn full_schema_resolves() {
    let c = ok(r#"
[agent]
interfaces = ["eth0"]
admin_listen = "127.0.0.1:9999"
bpffs_dir = "/sys/fs/bpf/other"
workers = 2
admin_token_file = "token"
log_format = "json"
[agent.http]
header_read_timeout = "5s"
idle_timeout = "2m"
upstream_connect_timeout = "300ms"
upstream_response_timeout = "1m 30s"
client_body_idle_timeout = "7s"
upstream_body_idle_timeout = "8s"
drain_timeout = "9s"
max_header_bytes = "32KiB"
max_headers = 50
[agent.datascript]
instruction_budget = 5000
memory_limit = 33554432
max_event_time = "20ms"
table_memory_limit = "1MiB"
max_added_headers = 10
max_added_header_bytes = "2KiB"

[[pool]]
name = "hash"
algorithm = "consistent_hash"
hash = { type = "cookie", name = "JSESSIONID" }
servers = ["192.0.2.11:80"]
health_monitor = { type = "http", path = "/healthz", expect_status = [200, "300-302"], interval = "2s", timeout = "1s", fall = 4, rise = 1 }

[[pool]]
name = "lc"
algorithm = "least_connections"
servers = ["192.0.2.12:80"]
health_monitor = { type = "tcp" }

[[virtual_service]]
name = "l4"
listen = "198.51.100.10:443"
type = "tcp"
pool = "lc"
forwarding = "dsr"
persistence = { type = "client_ip", timeout = "10m" }

[[virtual_service]]
name = "fast"
listen = "198.51.100.10:80"
type = "http"
pool = "hash"
forwarding = "dsr"
fast_path = "client_ip"

[replication]
redis_url = "redis://127.0.0.1:6379"
node_id = "lb-1"
command_timeout = "250ms"
"#);
    let a = &c.agent;
    assert_eq!(a.admin_listen, addr("127.0.0.1:9999"));
    assert_eq!(a.bpffs_dir, Path::new("/sys/fs/bpf/other"));
    assert_eq!(a.workers, Some(2));
    assert_eq!(
        a.admin_token_file.as_deref(),
        Some(Path::new("/etc/latch/token"))
    );
    assert_eq!(a.log_format, LogFormat::Json);
    assert_eq!(a.http.header_read_timeout, Duration::from_secs(5));
    assert_eq!(a.http.idle_timeout, Duration::from_secs(120));
    assert_eq!(a.http.upstream_connect_timeout, Duration::from_millis(300));
    assert_eq!(a.http.upstream_response_timeout, Duration::from_secs(90));
    assert_eq!(a.http.client_body_idle_timeout, Duration::from_secs(7));
    assert_eq!(a.http.upstream_body_idle_timeout, Duration::from_secs(8));
    assert_eq!(a.http.drain_timeout, Duration::from_secs(9));
    assert_eq!(a.http.max_header_bytes, 32 * 1024);
    assert_eq!(a.http.max_headers, 50);
    assert_eq!(a.datascript.instruction_budget, 5000);
    assert_eq!(a.datascript.memory_limit, 32 << 20);
    assert_eq!(a.datascript.max_event_time, Duration::from_millis(20));
    assert_eq!(a.datascript.table_memory_limit, 1 << 20);
    assert_eq!(a.datascript.max_added_headers, 10);
    assert_eq!(a.datascript.max_added_header_bytes, 2048);

    let hash = c.pool("hash").expect("pool");
    assert_eq!(
        hash.algorithm,
        Algorithm::ConsistentHash(HashKey::Cookie("JSESSIONID".into()))
    );
    let m = hash.health_monitor.as_ref().expect("monitor");
    assert_eq!(
        (m.interval, m.timeout, m.fall, m.rise),
        (Duration::from_secs(2), Duration::from_secs(1), 4, 1)
    );
    let MonitorKind::Http {
        path,
        expect_status,
    } = &m.kind
    else {
        panic!("http monitor expected, got {:?}", m.kind)
    };
    assert_eq!(path, "/healthz");
    assert!(expect_status.contains(200) && expect_status.contains(301));
    assert!(!expect_status.contains(204) && !expect_status.contains(303));

    let lc = c.pool("lc").expect("pool");
    assert_eq!(lc.algorithm, Algorithm::LeastConnections);
    let m = lc.health_monitor.as_ref().expect("monitor");
    assert_eq!(m.kind, MonitorKind::Tcp);
    assert_eq!(
        (m.interval, m.timeout, m.fall, m.rise),
        (Duration::from_secs(5), Duration::from_secs(2), 3, 2)
    );

    let l4 = c.virtual_service("l4").expect("vs");
    assert_eq!(
        (l4.kind, l4.forwarding),
        (ServiceType::Tcp, Forwarding::Dsr)
    );
    assert_eq!(l4.persistence, Some(Duration::from_secs(600)));
    let fast = c.virtual_service("fast").expect("vs");
    assert!(fast.fast_path);
    assert_eq!(fast.forwarding, Forwarding::Dsr);

    let r = c.replication.as_ref().expect("replication");
    assert_eq!(r.node_id, "lb-1");
    assert_eq!(r.connect_timeout, Duration::from_secs(3));
    assert_eq!(r.command_timeout, Duration::from_millis(250));
}

#[test]
fn default_expect_status_and_persistence_timeout() {
    let c = ok(r#"
[agent]
interfaces = ["eth0"]
[[pool]]
name = "p"
servers = ["192.0.2.11:80"]
health_monitor = { type = "http" }
[[virtual_service]]
name = "u"
listen = "198.51.100.10:53"
type = "udp"
pool = "p"
persistence = { type = "client_ip" }
"#);
    let m = c.pools[0].health_monitor.as_ref().expect("monitor");
    let MonitorKind::Http {
        path,
        expect_status,
    } = &m.kind
    else {
        panic!("{:?}", m.kind)
    };
    assert_eq!(path, "/");
    assert!(expect_status.contains(200) && expect_status.contains(399));
    assert!(!expect_status.contains(199) && !expect_status.contains(400));
    assert_eq!(
        c.virtual_services[0].persistence,
        Some(Duration::from_secs(300))
    );
}

#[test]
fn toml_syntax_error() {
    assert_eq!(
        errors("[agent]\ninterfaces = [\"eth0\"\n"),
        ["/etc/latch/latch.toml:2:21: unclosed array, expected `]`"]
    );
}

#[test]
fn unknown_keys_everywhere_are_all_reported() {
    let text = r#"[agent]
interfaces = ["eth0"]
colour = "blue"

[agent.http]
idle = "1s"

[[pool]]
name = "web"
servers = ["192.0.2.11:80"]
weight = 3

[[virtual_service]]
name = "shop"
listen = "198.51.100.10:80"
type = "http"
pool = "web"
persistance = { type = "client_ip" }

[extra]
"#;
    let e = errors(text);
    assert_eq!(e.len(), 4, "{e:#?}");
    // serde stops at the first problem of one section: `colour` hides `idle`.
    assert!(
        e[0].starts_with("/etc/latch/latch.toml:3:1: unknown field `colour`"),
        "{}",
        e[0]
    );
    assert!(
        e[1].starts_with("/etc/latch/latch.toml:11:1: unknown field `weight`"),
        "{}",
        e[1]
    );
    assert!(
        e[2].starts_with("/etc/latch/latch.toml:18:1: unknown field `persistance`"),
        "{}",
        e[2]
    );
    assert!(
        e[3].starts_with("/etc/latch/latch.toml:20:2: unknown section `extra`"),
        "{}",
        e[3]
    );
    let e = errors("[extra]\n");
    assert_eq!(
        e,
        [
            "/etc/latch/latch.toml:1:2: unknown section `extra`, expected one of `agent`, `pool`, `virtual_service`, `replication`, `string_group`, `ip_group`, `rate_limiter`"
        ]
    );
}

#[test]
fn unknown_key_in_nested_table() {
    let e = errors("[agent.http]\nidle = \"1s\"\n");
    assert_eq!(e.len(), 1);
    assert!(
        e[0].starts_with("/etc/latch/latch.toml:2:1: unknown field `idle`"),
        "{}",
        e[0]
    );
}

#[test]
fn wrong_types() {
    let e = errors(&with_base(
        "\n[[pool]]\nname = \"p2\"\nservers = \"192.0.2.11:80\"\n",
    ));
    assert_eq!(
        e,
        [
            "/etc/latch/latch.toml:16:11: invalid type: string \"192.0.2.11:80\", expected a sequence"
        ]
    );
    let e = errors("[agent]\nworkers = \"4\"\n");
    assert_eq!(
        e,
        ["/etc/latch/latch.toml:2:11: invalid type: string \"4\", expected usize"]
    );
}

#[test]
fn wrong_enum_value() {
    let e = errors(&BASE.replace("type = \"http\"", "type = \"sctp\""));
    assert_eq!(
        e,
        [
            "/etc/latch/latch.toml:11:8: unknown variant `sctp`, expected one of `http`, `tcp`, `udp`"
        ]
    );
}

#[test]
fn missing_required_field() {
    let e = errors("[[pool]]\nname = \"p\"\n");
    assert_eq!(e, ["/etc/latch/latch.toml:1:1: missing field `servers`"]);
}

#[test]
fn bad_durations_are_all_reported() {
    let e = errors(
        "[agent.http]\nidle_timeout = \"60\"\nheader_read_timeout = \"0s\"\nupstream_connect_timeout = \"3 parsecs\"\n",
    );
    assert_eq!(e.len(), 3, "{e:#?}");
    assert!(
        e[0].starts_with("/etc/latch/latch.toml:2:16: invalid duration `60`"),
        "{}",
        e[0]
    );
    assert_eq!(
        e[1],
        "/etc/latch/latch.toml:3:23: duration must be greater than zero"
    );
    assert!(
        e[2].starts_with("/etc/latch/latch.toml:4:28: invalid duration `3 parsecs`"),
        "{}",
        e[2]
    );
}

#[test]
fn bad_addresses() {
    let text = BASE
        .replace("\"192.0.2.12:8080\"", "\"192.0.2.300:8080\"")
        .replace("198.51.100.10:80", "198.51.100.10");
    let e = errors(&text);
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(
        e[0].starts_with("/etc/latch/latch.toml:6:31: invalid server address `192.0.2.300:8080`"),
        "{}",
        e[0]
    );
    assert!(
        e[1].starts_with("/etc/latch/latch.toml:10:10: invalid listen address `198.51.100.10`"),
        "{}",
        e[1]
    );
    let e = errors("[agent]\nadmin_listen = \"127.0.0.1:0\"\n");
    assert_eq!(
        e,
        ["/etc/latch/latch.toml:2:16: admin_listen address `127.0.0.1:0` needs a non-zero port"]
    );
}

#[test]
fn dangling_pool_name() {
    let e = errors(&BASE.replace("pool = \"web\"", "pool = \"wbe\""));
    assert_eq!(
        e,
        ["/etc/latch/latch.toml:12:8: unknown pool `wbe` (known pools: `web`)"]
    );
}

#[test]
fn duplicate_listener_same_proto() {
    let e = errors(&with_base(
        "\n[[virtual_service]]\nname = \"raw\"\nlisten = \"198.51.100.10:80\"\ntype = \"tcp\"\npool = \"web\"\n",
    ));
    assert_eq!(
        e,
        [
            "/etc/latch/latch.toml:16:10: duplicate listener 198.51.100.10:80/tcp: already used by virtual service `shop` (line 10)"
        ]
    );
    // The same address and port over udp is a different listener.
    ok(&with_base(
        "\n[[virtual_service]]\nname = \"dns\"\nlisten = \"198.51.100.10:80\"\ntype = \"udp\"\npool = \"web\"\n",
    ));
}

#[test]
fn duplicate_names() {
    let text = with_base(
        "\n[[pool]]\nname = \"web\"\nservers = [\"192.0.2.13:80\"]\n\n[[virtual_service]]\nname = \"shop\"\nlisten = \"198.51.100.11:80\"\ntype = \"http\"\npool = \"web\"\n",
    );
    let e = errors(&text);
    assert_eq!(
        e,
        [
            "/etc/latch/latch.toml:15:8: duplicate pool name `web` (first defined on line 5)",
            "/etc/latch/latch.toml:19:8: duplicate virtual service name `shop` (first defined on line 9)",
        ]
    );
}

#[test]
fn fast_path_on_l4_is_refused() {
    let e = errors(&BASE.replace(
        "type = \"http\"",
        "type = \"tcp\"\nfast_path = \"client_ip\"",
    ));
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(
        e[0].starts_with("/etc/latch/latch.toml:12:13: fast_path only applies to http services"),
        "{}",
        e[0]
    );
}

#[test]
fn persistence_on_http_is_refused() {
    let e = errors(&with_base(
        "persistence = { type = \"client_ip\", timeout = \"5m\" }\n",
    ));
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(
        e[0].starts_with(
            "/etc/latch/latch.toml:13:15: persistence applies to tcp and udp services"
        ),
        "{}",
        e[0]
    );
}

#[test]
fn forwarding_on_plain_http_is_refused() {
    let e = errors(&with_base("forwarding = \"dsr\"\n"));
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(
        e[0].starts_with("/etc/latch/latch.toml:13:14: forwarding only applies"),
        "{}",
        e[0]
    );
}

/// A tcp service in tunnel mode on `listen`, after an `[agent]` with `agent_extra` lines.
fn tunnel_config(agent_extra: &str, listen: &str) -> String {
    format!(
        "[agent]\ninterfaces = [\"eth0\"]\n{agent_extra}\n[[pool]]\nname = \"web\"\n\
         servers = [\"192.0.2.11:8080\", \"[2001:db8::11]:8080\"]\n\n[[virtual_service]]\n\
         name = \"t\"\nlisten = \"{listen}\"\ntype = \"tcp\"\npool = \"web\"\n\
         forwarding = \"tunnel\"\npersistence = {{ type = \"client_ip\" }}\n"
    )
}

#[test]
fn tunnel_forwarding_takes_the_agents_source_of_its_family() {
    let c = ok(&tunnel_config(
        "tunnel_source_ipv4 = \"192.0.2.1\"\ntunnel_source_ipv6 = \"2001:db8::1\"",
        "198.51.100.10:80",
    )
    .replace(", \"[2001:db8::11]:8080\"", ""));
    assert_eq!(c.virtual_services[0].forwarding, Forwarding::Tunnel);
    assert!(c.virtual_services[0].persistence.is_some());
    assert_eq!(
        c.agent.tunnel_source_ipv4,
        Some(std::net::Ipv4Addr::new(192, 0, 2, 1))
    );
    assert_eq!(
        c.agent.tunnel_source_ipv6,
        Some("2001:db8::1".parse().expect("addr"))
    );

    // An IPv4 service without tunnel_source_ipv4 (the IPv6 one does not count).
    let e = errors(
        &tunnel_config("tunnel_source_ipv6 = \"2001:db8::1\"", "198.51.100.10:80")
            .replace(", \"[2001:db8::11]:8080\"", ""),
    );
    assert_eq!(
        e,
        [
            "/etc/latch/latch.toml:13:14: forwarding = \"tunnel\" for 198.51.100.10:80 needs [agent] tunnel_source_ipv4: the outer source address of the encapsulated packets (an address of this host)"
        ]
    );
    // And an IPv6 one without tunnel_source_ipv6.
    let e = errors(
        &tunnel_config("tunnel_source_ipv4 = \"192.0.2.1\"", "[2001:db8::10]:80")
            .replace("\"192.0.2.11:8080\", ", ""),
    );
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(
        e[0].contains("needs [agent] tunnel_source_ipv6"),
        "{}",
        e[0]
    );
}

#[test]
fn tunnel_sources_of_the_wrong_family_or_kind_are_refused() {
    let e = errors(&tunnel_config(
        "tunnel_source_ipv4 = \"2001:db8::1\"\ntunnel_source_ipv6 = \"0.0.0.0\"",
        "198.51.100.10:80",
    ));
    assert!(
        e.iter().any(|m| m
            .starts_with("/etc/latch/latch.toml:3:22: tunnel_source_ipv4 must be an IPv4 address")),
        "{e:#?}"
    );
    assert!(
        e.iter().any(|m| m.starts_with(
            "/etc/latch/latch.toml:4:22: tunnel_source_ipv6 `0.0.0.0` cannot be a packet's source"
        )),
        "{e:#?}"
    );
    let e = errors(&tunnel_config(
        "tunnel_source_ipv4 = \"192.0.2.1:80\"",
        "198.51.100.10:80",
    ));
    assert!(
        e.iter().any(|m| m
            .starts_with("/etc/latch/latch.toml:3:22: invalid tunnel_source_ipv4 `192.0.2.1:80`")),
        "{e:#?}"
    );
}

#[test]
fn empty_pool() {
    let e = errors(&BASE.replace(
        "servers = [\"192.0.2.11:8080\", \"192.0.2.12:8080\"]",
        "servers = []",
    ));
    assert_eq!(e, ["/etc/latch/latch.toml:6:11: pool `web` has no servers"]);
}

#[test]
fn duplicate_server_in_pool() {
    let e = errors(&BASE.replace("192.0.2.12:8080", "192.0.2.11:8080"));
    assert_eq!(
        e,
        ["/etc/latch/latch.toml:6:31: server 192.0.2.11:8080 is listed twice in pool `web`"]
    );
}

#[test]
fn servers_take_weight_and_backup_and_pools_slow_start() {
    let c = ok(&BASE.replace(
        "servers = [\"192.0.2.11:8080\", \"192.0.2.12:8080\"]",
        "servers = [\"192.0.2.11:8080\", { addr = \"192.0.2.12:8080\", weight = 3 }, \
         { addr = \"192.0.2.13:8080\", backup = true, weight = 0 }]\nslow_start = \"30s\"",
    ));
    let pool = c.pool("web").expect("pool web");
    assert_eq!(
        pool.servers,
        [
            PoolServer::new(addr("192.0.2.11:8080")),
            PoolServer {
                addr: addr("192.0.2.12:8080"),
                weight: 3,
                backup: false
            },
            PoolServer {
                addr: addr("192.0.2.13:8080"),
                weight: 0,
                backup: true
            },
        ]
    );
    assert_eq!(pool.slow_start, Some(Duration::from_secs(30)));
}

#[test]
fn bad_server_tables_are_located() {
    let e = errors(&BASE.replace(
        "servers = [\"192.0.2.11:8080\", \"192.0.2.12:8080\"]",
        "servers = [{ addr = \"192.0.2.11\" }, { addr = \"192.0.2.12:8080\", weight = 257 }, \
         { addr = \"192.0.2.11:8080\", weight = -1 }]\nslow_start = \"soon\"",
    ));
    assert_eq!(e.len(), 4, "{e:#?}");
    assert!(
        e[0].starts_with("/etc/latch/latch.toml:6:21: invalid server address `192.0.2.11`"),
        "{e:#?}"
    );
    assert_eq!(
        e[1],
        "/etc/latch/latch.toml:6:74: server weight must be between 0 and 256, got 257"
    );
    assert!(
        e[2].ends_with("server weight must be between 0 and 256, got -1"),
        "{e:#?}"
    );
    assert!(
        e[3].starts_with("/etc/latch/latch.toml:7:14: invalid duration `soon`"),
        "{e:#?}"
    );
    // Unknown keys and wrong types stop the pool's deserialization, as everywhere.
    let e = errors(&BASE.replace(
        "\"192.0.2.12:8080\"]",
        "{ addr = \"192.0.2.12:8080\", wieght = 2 }]",
    ));
    assert!(
        e[0].starts_with("/etc/latch/latch.toml:6:59: unknown field `wieght`"),
        "{e:#?}"
    );
    let e = errors(&BASE.replace("\"192.0.2.12:8080\"]", "7]"));
    assert!(
        e[0].contains("a server address string or a table"),
        "{e:#?}"
    );
}

#[test]
fn state_file_resolves_and_defaults_per_bpffs_dir() {
    let c = ok(&BASE.replace(
        "interfaces = [\"lb-c\", \"lb-b\"]",
        "interfaces = [\"lb-c\", \"lb-b\"]\nstate_file = \"state/servers.json\"",
    ));
    assert_eq!(
        c.agent.server_state_file(),
        Path::new("/etc/latch/state/servers.json")
    );
    let mut agent = AgentConfig::default();
    assert_eq!(
        agent.server_state_file(),
        Path::new("/var/lib/latch/latch.servers.json")
    );
    agent.bpffs_dir = "/sys/fs/bpf/tests/a1".into();
    assert_eq!(
        agent.server_state_file(),
        Path::new("/var/lib/latch/tests_a1.servers.json")
    );
}

#[test]
fn datascript_on_l4_is_refused() {
    let text = BASE.replace("type = \"http\"", "type = \"tcp\"")
        + "\n[[virtual_service.datascript]]\nevent = \"HTTP_REQ\"\nscript = \"x = 1\"\n";
    let e = errors(&text);
    assert_eq!(
        e,
        ["/etc/latch/latch.toml:14:1: DataScripts only run on http services, not tcp"]
    );
}

#[test]
fn datascript_needs_exactly_one_source() {
    let text = with_base(
        "\n[[virtual_service.datascript]]\nevent = \"HTTP_REQ\"\n\n[[virtual_service.datascript]]\nevent = \"HTTP_RESP\"\nscript = \"x = 1\"\nfile = \"x.lua\"\n",
    );
    let e = errors(&text);
    assert_eq!(
        e,
        [
            "/etc/latch/latch.toml:14:1: datascript needs either `script` or `file`",
            "/etc/latch/latch.toml:20:8: datascript has both `script` and `file`; keep one",
        ]
    );
}

#[test]
fn missing_script_file_points_at_file_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("latch.toml");
    let text = with_base(
        "\n[[virtual_service.datascript]]\nevent = \"HTTP_REQ\"\nfile = \"scripts/nope.lua\"\n",
    );
    let e = match parse(&text, &cfg) {
        Ok(_) => panic!("accepted a missing script file"),
        Err(e) => e,
    };
    assert_eq!(e.len(), 1, "{e}");
    let d = &e.diagnostics[0];
    assert_eq!((d.file.as_path(), d.line, d.col), (cfg.as_path(), 16, 8));
    let expected = format!(
        "cannot read script file {}",
        dir.path().join("scripts/nope.lua").display()
    );
    assert!(d.message.starts_with(&expected), "{}", d.message);
}

#[test]
fn script_files_resolve_relative_to_the_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("scripts")).expect("mkdir");
    let script = dir.path().join("scripts/req.lua");
    std::fs::write(&script, "avi.vs.log('hi')\n").expect("write");
    let cfg = dir.path().join("latch.toml");
    let text = with_base(
        "\n[[virtual_service.datascript]]\nevent = \"HTTP_REQ\"\nfile = \"scripts/req.lua\"\n",
    );
    std::fs::write(&cfg, &text).expect("write");
    let c = load(&cfg).unwrap_or_else(|e| panic!("{e}"));
    let s = &c.virtual_services[0].datascripts[0];
    assert_eq!(s.event, ScriptEvent::HttpReq);
    assert_eq!(s.name, "scripts/req.lua");
    assert_eq!(s.text, "avi.vs.log('hi')\n");
    assert_eq!(s.origin_file, script);
    assert_eq!(s.first_line, 1);
}

#[test]
fn inline_scripts_know_their_config_line() {
    let text = with_base(concat!(
        "\n[[virtual_service.datascript]]\n",            // lines 13-14
        "event = \"HTTP_RESP\"\n",                       // 15
        "script = '''\n",                                // 16
        "if avi.http.get_cookie(\"JSESSIONID\") then\n", // 17: Lua line 1
        "  x = 1\n",
        "end\n",
        "'''\n",
        "\n[[virtual_service.datascript]]\n",
        "event = \"HTTP_REQ\"\n",     // 23
        "script = 'avi.vs.log(1)'\n", // 24
    ));
    let c = ok(&text);
    let vs = &c.virtual_services[0];
    let [resp, req] = &vs.datascripts[..] else {
        panic!("{:?}", vs.datascripts)
    };
    assert_eq!(resp.name, "shop#1");
    assert_eq!(resp.event, ScriptEvent::HttpResp);
    assert!(resp.text.starts_with("if avi.http"), "{:?}", resp.text);
    assert_eq!(resp.origin_file, Path::new(CFG));
    assert_eq!(resp.first_line, 17);
    assert_eq!(resp.origin_line(3), 19);
    assert_eq!((req.name.as_str(), req.first_line), ("shop#2", 24));
    assert_eq!(vs.scripts(ScriptEvent::HttpReq).count(), 1);
}

#[test]
fn interface_names_are_checked() {
    let e = errors("[agent]\ninterfaces = [\"eth0\", \"a/b\", \"abcdefghijklmnop\", \"eth0\"]\n");
    assert_eq!(
        e,
        [
            "/etc/latch/latch.toml:2:23: invalid interface name `a/b`: contains `/`, `:`, whitespace or NUL",
            "/etc/latch/latch.toml:2:30: invalid interface name `abcdefghijklmnop`: longer than 15 bytes",
            "/etc/latch/latch.toml:2:50: interface `eth0` listed twice (first on line 2)",
        ]
    );
}

#[test]
fn attach_per_interface_is_xdp_or_tc() {
    let c = ok(
        "[agent]\ninterfaces = [\"eth0\", \"veth0\"]\nattach = { veth0 = \"tc\", eth0 = \"xdp\" }\n",
    );
    assert_eq!(c.agent.interfaces, ["eth0", "veth0"]);
    assert_eq!(c.agent.tc_interfaces.iter().collect::<Vec<_>>(), ["veth0"]);
    assert!(
        ok("[agent]\ninterfaces = [\"eth0\"]\n")
            .agent
            .tc_interfaces
            .is_empty()
    );
    let e =
        errors("[agent]\ninterfaces = [\"eth0\"]\nattach = { eth0 = \"skb\", eth1 = \"tc\" }\n");
    assert_eq!(
        e,
        [
            "/etc/latch/latch.toml:3:19: attach = \"skb\" for `eth0`: expected \"xdp\" (the default) or \"tc\" (TC ingress, for veths whose senders leave checksums partial)",
            "/etc/latch/latch.toml:3:33: attach names `eth1`, which is not in interfaces",
        ]
    );
}

#[test]
fn flow_hash_is_for_tcp_and_udp_services() {
    let text = r#"[agent]
interfaces = ["eth0"]
[[pool]]
name = "p"
servers = ["192.0.2.1:80"]
[[virtual_service]]
name = "t"
listen = "198.51.100.1:80"
type = "tcp"
pool = "p"
flow_hash = "client_ip"
persistence = { type = "client_ip" }
[[virtual_service]]
name = "u"
listen = "198.51.100.1:53"
type = "udp"
pool = "p"
[[virtual_service]]
name = "w"
listen = "198.51.100.2:80"
type = "http"
pool = "p"
flow_hash = "client_ip"
[[virtual_service]]
name = "x"
listen = "198.51.100.3:80"
type = "tcp"
pool = "p"
flow_hash = "source_port"
"#;
    let e = errors(text);
    assert_eq!(
        e,
        [
            "/etc/latch/latch.toml:23:13: flow_hash applies to tcp and udp services (XDP places their connections); http connections end at the proxy",
            "/etc/latch/latch.toml:29:13: unknown variant `source_port`, expected `connection` or `client_ip`",
        ],
        "{e:#?}"
    );
    let good = text.replace("flow_hash = \"source_port\"\n", "").replace(
        "type = \"http\"\npool = \"p\"\nflow_hash = \"client_ip\"\n",
        "type = \"http\"\npool = \"p\"\n",
    );
    let config = ok(&good);
    assert_eq!(config.virtual_services[0].flow_hash, FlowHash::ClientIp);
    assert_eq!(config.virtual_services[1].flow_hash, FlowHash::Connection);
}

#[test]
fn l4_service_needs_interfaces_and_one_ip_version() {
    // IPv6 VIPs and servers are forwarded by XDP; a service and its servers share a version,
    // and the IPv6 persistence prefix is a prefix length of an IPv6 service.
    let text = r#"[[pool]]
name = "p"
servers = ["192.0.2.1:80", "[2001:db8::1]:80"]
[[virtual_service]]
name = "t"
listen = "[2001:db8::10]:80"
type = "tcp"
pool = "p"
persistence = { type = "client_ip", ipv6_prefix = 200 }
[[virtual_service]]
name = "u"
listen = "198.51.100.1:53"
type = "udp"
pool = "q"
persistence = { type = "client_ip", ipv6_prefix = 64 }
[[pool]]
name = "q"
servers = ["192.0.2.1:53"]
"#;
    let e = errors(text);
    assert_eq!(
        e,
        [
            "/etc/latch/latch.toml:3:12: server 192.0.2.1:80 and the listen address [2001:db8::10]:80 of virtual service `t` are of different IP versions: XDP forwards within one address family",
            "/etc/latch/latch.toml:7:8: this service is forwarded by XDP but [agent] interfaces is empty",
            "/etc/latch/latch.toml:9:51: ipv6_prefix must be a prefix length from 1 to 128, not 200",
            "/etc/latch/latch.toml:13:8: this service is forwarded by XDP but [agent] interfaces is empty",
            "/etc/latch/latch.toml:15:51: ipv6_prefix applies to IPv6 listen addresses; this service listens on IPv4",
        ],
        "{e:#?}"
    );
    let good = format!(
        "[agent]\ninterfaces = [\"eth0\"]\n{}",
        text.replace("ipv6_prefix = 200", "ipv6_prefix = 56")
            .replace(", ipv6_prefix = 64", "")
            .replace("\"192.0.2.1:80\", ", "")
    );
    let config = ok(&good);
    assert_eq!(config.virtual_services[0].persistence_ipv6_prefix, Some(56));
    assert_eq!(config.virtual_services[1].persistence_ipv6_prefix, None);
}

#[test]
fn http_fast_path_on_ipv6_keys_on_a_configurable_prefix() {
    let text = r#"[agent]
interfaces = ["eth0"]
[[pool]]
name = "p"
servers = ["[2001:db8::1]:80"]
[[pool]]
name = "q"
servers = ["192.0.2.1:80"]
[[virtual_service]]
name = "h"
listen = "[2001:db8::10]:80"
type = "http"
pool = "p"
fast_path = "client_ip"
fast_path_ipv6_prefix = 64
[[virtual_service]]
name = "i"
listen = "198.51.100.1:80"
type = "http"
pool = "q"
fast_path = "client_ip"
"#;
    // An IPv6 http service takes the fast path, its clients keyed on the prefix given.
    let config = ok(text);
    assert!(config.virtual_services[0].fast_path);
    assert_eq!(config.virtual_services[0].persistence_ipv6_prefix, Some(64));
    assert_eq!(config.virtual_services[1].persistence_ipv6_prefix, None);
    // Default: the whole address.
    let config = ok(&text.replace("fast_path_ipv6_prefix = 64\n", ""));
    assert_eq!(config.virtual_services[0].persistence_ipv6_prefix, None);
    let bad = text
        .replace("fast_path_ipv6_prefix = 64", "fast_path_ipv6_prefix = 0")
        .replace(
            "pool = \"q\"\nfast_path = \"client_ip\"\n",
            "pool = \"q\"\nfast_path = \"client_ip\"\nfast_path_ipv6_prefix = 64\n",
        );
    let e = errors(&bad);
    assert_eq!(
        e,
        [
            "/etc/latch/latch.toml:15:25: fast_path_ipv6_prefix must be a prefix length from 1 to 128, not 0",
            "/etc/latch/latch.toml:22:25: fast_path_ipv6_prefix applies to IPv6 listen addresses; this service listens on IPv4",
        ],
        "{e:#?}"
    );
    let e = errors(&text.replace(
        "fast_path = \"client_ip\"\nfast_path_ipv6_prefix",
        "fast_path_ipv6_prefix",
    ));
    assert_eq!(
        e,
        [
            "/etc/latch/latch.toml:14:25: fast_path_ipv6_prefix only applies with fast_path = \"client_ip\""
        ],
        "{e:#?}"
    );
}

#[test]
fn health_monitor_checks() {
    let text = r#"[[pool]]
name = "p"
servers = ["192.0.2.11:80"]
health_monitor = { type = "tcp", path = "/x", fall = 0 }
[[pool]]
name = "q"
servers = ["192.0.2.11:80"]
health_monitor = { type = "http", path = "healthz", expect_status = [200, "3xx", 700], interval = "soon" }
"#;
    let e = errors(text);
    assert_eq!(e.len(), 6, "{e:#?}");
    assert_eq!(
        e[0],
        "/etc/latch/latch.toml:4:41: `path` only applies to http monitors"
    );
    assert_eq!(e[1], "/etc/latch/latch.toml:4:54: fall must be at least 1");
    assert_eq!(
        e[2],
        "/etc/latch/latch.toml:8:42: health monitor `path` must start with `/`"
    );
    assert!(
        e[3].starts_with("/etc/latch/latch.toml:8:75: invalid status `3xx`"),
        "{}",
        e[3]
    );
    assert_eq!(
        e[4],
        "/etc/latch/latch.toml:8:82: HTTP status 700 is outside 100-599"
    );
    assert!(
        e[5].starts_with("/etc/latch/latch.toml:8:99: invalid duration `soon`"),
        "{}",
        e[5]
    );
}

#[test]
fn hash_settings_are_checked() {
    let text = r#"[[pool]]
name = "p"
algorithm = "consistent_hash"
hash = { type = "header" }
servers = ["192.0.2.11:80"]
[[pool]]
name = "q"
hash = { type = "client_ip" }
servers = ["192.0.2.11:80"]
"#;
    let e = errors(text);
    assert_eq!(
        e,
        [
            "/etc/latch/latch.toml:4:17: hash types `header` and `cookie` need a `name`",
            "/etc/latch/latch.toml:8:8: `hash` only applies to algorithm = \"consistent_hash\"",
        ]
    );
    let c = ok(
        "[[pool]]\nname = \"p\"\nalgorithm = \"consistent_hash\"\nservers = [\"192.0.2.11:80\"]\n",
    );
    assert_eq!(
        c.pools[0].algorithm,
        Algorithm::ConsistentHash(HashKey::ClientIp)
    );
}

#[test]
fn limits_are_checked() {
    let e = errors(
        "[agent.http]\nmax_header_bytes = \"4KiB\"\n[agent.datascript]\nmemory_limit = \"lots\"\n",
    );
    assert_eq!(e.len(), 2, "{e:#?}");
    assert_eq!(
        e[0],
        "/etc/latch/latch.toml:2:20: size 4096 is below the minimum of 8192 bytes"
    );
    assert!(
        e[1].starts_with("/etc/latch/latch.toml:4:16: invalid size \"lots\""),
        "{}",
        e[1]
    );
}

#[test]
fn sandbox_limits_are_checked() {
    let e = errors(
        "[agent.datascript]\nmax_event_time = \"0s\"\ntable_memory_limit = \"1KiB\"\nmax_added_headers = 0\nmax_added_header_bytes = \"lots\"\n",
    );
    assert_eq!(e.len(), 4, "{e:#?}");
    assert_eq!(
        e[0],
        "/etc/latch/latch.toml:2:18: duration must be greater than zero"
    );
    assert_eq!(
        e[1],
        "/etc/latch/latch.toml:3:22: size 1024 is below the minimum of 65536 bytes"
    );
    assert_eq!(
        e[2],
        "/etc/latch/latch.toml:4:21: max_added_headers must be at least 1"
    );
    assert!(
        e[3].starts_with("/etc/latch/latch.toml:5:26: invalid size \"lots\""),
        "{}",
        e[3]
    );
}

#[test]
fn replication_checks() {
    let e = errors("[replication]\nredis_url = \"http://x\"\nnode_id = \"lb 1\"\n");
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(
        e[0].starts_with("/etc/latch/latch.toml:2:13: invalid redis_url `http://x`"),
        "{}",
        e[0]
    );
    assert_eq!(
        e[1],
        "/etc/latch/latch.toml:3:11: node_id must be non-empty and contain no whitespace"
    );
}

#[test]
fn columns_count_characters() {
    // "é" is two bytes but one column.
    let e = errors("[[pool]] # café\nname = \"é\"\nservers = [\"x\"]\n");
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(
        e[0].starts_with("/etc/latch/latch.toml:3:12: invalid server address `x`"),
        "{}",
        e[0]
    );
}

#[test]
fn unreadable_config_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing.toml");
    let e = match load(&missing) {
        Ok(_) => panic!("loaded a missing file"),
        Err(e) => e,
    };
    let s = e.to_string();
    assert!(
        s.starts_with(&format!("{}: cannot read config", missing.display())),
        "{s}"
    );
}

#[test]
fn diff_names_what_changed() {
    let old = ok(r#"[agent]
interfaces = ["eth0"]
[[pool]]
name = "a"
servers = ["192.0.2.11:80"]
[[pool]]
name = "b"
servers = ["192.0.2.12:80"]
[[virtual_service]]
name = "x"
listen = "198.51.100.10:80"
type = "http"
pool = "a"
[[virtual_service]]
name = "y"
listen = "198.51.100.10:81"
type = "tcp"
pool = "b"
"#);
    assert!(diff(&old, &old).is_empty());

    let new = ok(r#"[agent]
interfaces = ["eth1"]
[agent.http]
idle_timeout = "5s"
[[pool]]
name = "a"
servers = ["192.0.2.11:80", "192.0.2.13:80"]
[[pool]]
name = "c"
servers = ["192.0.2.12:80"]
[[virtual_service]]
name = "x"
listen = "198.51.100.10:80"
type = "http"
pool = "a"
[[virtual_service]]
name = "z"
listen = "198.51.100.10:82"
type = "tcp"
pool = "c"
[replication]
redis_url = "redis://127.0.0.1"
node_id = "n"
"#);
    let d = diff(&old, &new);
    assert_eq!(d.pools_added, ["c"]);
    assert_eq!(d.pools_removed, ["b"]);
    assert_eq!(d.pools_changed, ["a"]);
    assert_eq!(d.services_added, ["z"]);
    assert_eq!(d.services_removed, ["y"]);
    assert!(d.services_changed.is_empty(), "{:?}", d.services_changed);
    assert_eq!(d.restart_required, ["interfaces", "[agent.http]"]);
    assert!(d.agent_changed);
    assert!(d.replication_changed);

    // A changed script changes its service.
    let scripted = |body: &str| {
        ok(&with_base(&format!(
            "\n[[virtual_service.datascript]]\nevent = \"HTTP_REQ\"\nscript = '{body}'\n"
        )))
    };
    let d = diff(&scripted("a = 1"), &scripted("a = 2"));
    assert_eq!(d.services_changed, ["shop"]);
    assert!(d.pools_changed.is_empty() && !d.agent_changed && d.restart_required.is_empty());
}

#[test]
fn shipped_examples_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    for name in ["l4.toml", "jsession.toml"] {
        let c = load(&dir.join(name)).unwrap_or_else(|e| panic!("{name}:\n{e}"));
        assert!(!c.virtual_services.is_empty(), "{name}");
    }
}

#[test]
fn body_buffer_and_event_names_in_both_spellings() {
    assert_eq!(
        ok(BASE).agent.datascript.max_body_buffer,
        DEFAULT_MAX_BODY_BUFFER
    );
    let c = ok(&with_base(
        r#"
[[virtual_service.datascript]]
event = "VS_DATASCRIPT_EVT_HTTP_REQ_DATA"
script = 'local b = avi.http.get_req_body()'

[[virtual_service.datascript]]
event = "HTTP_RESP_FAILED"
script = 'avi.http.response(503)'

[[virtual_service.datascript]]
event = "VS_DATASCRIPT_EVT_HTTP_LB_DONE"
script = 'local ip = avi.pool.server_ip()'

[agent.datascript]
max_body_buffer = "64KiB"
"#,
    ));
    assert_eq!(c.agent.datascript.max_body_buffer, 64 << 10);
    let events: Vec<ScriptEvent> = c.virtual_services[0]
        .datascripts
        .iter()
        .map(|s| s.event)
        .collect();
    assert_eq!(
        events,
        [
            ScriptEvent::HttpReqData,
            ScriptEvent::HttpRespFailed,
            ScriptEvent::HttpLbDone
        ]
    );
    let errs = errors(&with_base(
        "\n[[virtual_service.datascript]]\nevent = \"HTTP_BODY\"\nscript = 'a = 1'\n",
    ));
    assert!(
        errs.iter()
            .any(|e| e.contains("HTTP_BODY") && e.contains("HTTP_REQ_DATA")),
        "{errs:?}"
    );
}

// [[string_group]], [[ip_group]], [[rate_limiter]] and a service's rate_limit.
mod groups;

#[test]
fn capacities_parse_and_a_table_limit_beyond_the_mirror_is_refused() {
    let c = ok(&format!(
        "{BASE}\n[agent.capacity]\nconnections = 8388608\nclient_pins = 4096\n\
         table_mirror_entries = 5000\nvirtual_services = 1024\nservers = 100\n\
         [agent.datascript]\ntable_max_entries = 3976\n"
    ));
    let cap = c.agent.capacity;
    assert_eq!(
        (
            cap.connections,
            cap.client_pins,
            cap.table_mirror_entries,
            cap.services,
            cap.backends
        ),
        (8_388_608, 4096, 5000, 1024, 100)
    );
    assert_eq!(c.agent.datascript.table_max_entries, 3976);
    // The defaults agree with each other.
    let d = ok(BASE);
    assert!(
        d.agent.datascript.table_max_entries + model::MIRROR_RESERVE
            <= d.agent.capacity.table_mirror_entries as usize
    );

    let e = errors(&format!(
        "{BASE}\n[agent.capacity]\ntable_mirror_entries = 5000\n\
         [agent.datascript]\ntable_max_entries = 3977\n"
    ));
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].starts_with("/etc/latch/latch.toml:17:"), "{e:?}");
    assert!(e[0].contains("does not fit the kernel mirror"), "{e:?}");
    // Without table_max_entries the mirror's own key is pointed at.
    let e = errors(&format!(
        "{BASE}\n[agent.capacity]\ntable_mirror_entries = 2000\n"
    ));
    assert!(e.len() == 1 && e[0].contains(":15:"), "{e:?}");
    let e = errors(&format!(
        "{BASE}\n[agent.capacity]\nvirtual_services = 70000\nconnections = 10\n"
    ));
    assert!(
        e.iter()
            .any(|m| m.contains("virtual_services must be at most 65536")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|m| m.contains("connections must be at least 1024")),
        "{e:?}"
    );
}

#[test]
fn fast_path_needs_room_for_its_session_records_in_the_mirror() {
    // 2 x 1988 + 1024 = 5000: entries and one record each fit.
    ok(&with_base(
        "fast_path = \"client_ip\"\n[agent.capacity]\ntable_mirror_entries = 5000\n\
         [agent.datascript]\ntable_max_entries = 1988\n",
    ));
    let e = errors(&with_base(
        "fast_path = \"client_ip\"\n[agent.capacity]\ntable_mirror_entries = 5000\n\
         [agent.datascript]\ntable_max_entries = 1989\n",
    ));
    assert_eq!(e.len(), 1, "{e:?}");
    // The service's fast_path line (BASE has twelve).
    assert!(e[0].starts_with("/etc/latch/latch.toml:13:"), "{e:?}");
    assert!(
        e[0].contains("2 x [agent.datascript] table_max_entries (1989)"),
        "{e:?}"
    );
    // Without fast_path the entries alone must fit.
    ok(&with_base(
        "[agent.capacity]\ntable_mirror_entries = 5000\n\
         [agent.datascript]\ntable_max_entries = 1989\n",
    ));
}

#[test]
fn more_services_or_servers_than_the_kernel_holds_are_refused() {
    let many = |n: usize, capacity: &str| {
        let mut s = format!("[agent]\ninterfaces = []\n{capacity}");
        for v in 0..n {
            s.push_str(&format!(
                "\n[[pool]]\nname = \"p{v}\"\nservers = [\"192.0.2.{}:{}\", \"192.0.2.{}:{}\"]\n\
                 \n[[virtual_service]]\nname = \"vs{v}\"\nlisten = \"198.51.100.10:{}\"\n\
                 type = \"http\"\npool = \"p{v}\"\n",
                1 + v % 250,
                10_000 + v,
                1 + v % 250,
                20_000 + v,
                30_000 + v
            ));
        }
        s
    };
    // Ids run from 1: a capacity of 8 holds 7 services (and 7 servers).
    ok(&many(
        7,
        "[agent.capacity]\nvirtual_services = 8\nservers = 15\n",
    ));
    let e = errors(&many(8, "[agent.capacity]\nvirtual_services = 8\n"));
    assert_eq!(e.len(), 1, "{e:?}");
    // The eighth service's name: block v of ten lines starts on line 5 here.
    assert!(e[0].starts_with("/etc/latch/latch.toml:81:"), "{e:?}");
    assert!(e[0].contains("too many virtual services"), "{e:?}");
    assert!(e[0].contains("holds at most 7"), "{e:?}");
    let e = errors(&many(
        7,
        "[agent.capacity]\nvirtual_services = 8\nservers = 14\n",
    ));
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].starts_with("/etc/latch/latch.toml:5:"), "{e:?}");
    assert!(e[0].contains("14 distinct servers"), "{e:?}");
    // Without a capacity section the first service beyond the default is pointed at.
    let e = errors(&many(256, ""));
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].contains("too many virtual services"), "{e:?}");
    // Block v of ten lines starts on line 3; its service's name is on line 9 + 10 v.
    assert!(e[0].starts_with("/etc/latch/latch.toml:2559:"), "{e:?}");
}
mod tls;

// Servers, workers and durations that parse but cannot be right; non-UTF-8 files.
mod bounds;
// fast_path_max_sessions and fast_path_exclude (issue 18).

#[test]
fn fast_path_options_default_and_parse() {
    let c = ok(&with_base("fast_path = \"client_ip\"\n"));
    let vs = &c.virtual_services[0];
    assert_eq!(vs.fast_path_max_sessions, 1);
    assert!(vs.fast_path_exclude.is_empty());
    let c = ok(&with_base(
        "fast_path = \"client_ip\"\nfast_path_max_sessions = 3\nfast_path_exclude = [\"nat\"]\n\n\
         [[ip_group]]\nname = \"nat\"\nentries = [\"203.0.113.0/28\"]\n",
    ));
    let vs = &c.virtual_services[0];
    assert_eq!(vs.fast_path_max_sessions, 3);
    assert_eq!(vs.fast_path_exclude, ["nat"]);
}

#[test]
fn fast_path_exclude_names_must_be_ip_groups() {
    let e = errors(&with_base(
        "fast_path = \"client_ip\"\nfast_path_exclude = [\"nat\", \"corp\"]\n\n\
         [[ip_group]]\nname = \"nat\"\nentries = [\"203.0.113.0/28\"]\n",
    ));
    assert_eq!(
        e,
        [
            "/etc/latch/latch.toml:14:29: unknown ip_group `corp` in fast_path_exclude (known ip groups: nat)"
        ]
    );
}

#[test]
fn fast_path_options_need_fast_path_and_a_positive_limit() {
    let e = errors(&with_base(
        "fast_path_max_sessions = 2\nfast_path_exclude = []\n",
    ));
    assert_eq!(
        e,
        [
            "/etc/latch/latch.toml:13:26: fast_path_max_sessions only applies with fast_path = \"client_ip\"",
            "/etc/latch/latch.toml:14:21: fast_path_exclude only applies with fast_path = \"client_ip\"",
        ]
    );
    let e = errors(&with_base(
        "fast_path = \"client_ip\"\nfast_path_max_sessions = 0\n",
    ));
    assert_eq!(
        e,
        [
            "/etc/latch/latch.toml:14:26: fast_path_max_sessions must be at least 1 (to pin no address, remove fast_path)"
        ]
    );
}
