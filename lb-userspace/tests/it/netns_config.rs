//! Pieces of agent configs the namespace tests share, built with `latch_tests::config` (typed
//! and serialized with the `toml` crate, never formatted by hand).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use latch_tests::{AgentSettings, LatchAgent, LatchConfig, Netns, Pool, Topology, VirtualService};

/// The port every test backend serves HTTP on.
pub const HTTP_PORT: u16 = 8080;

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The `[agent]` section for `agent` running in the LB namespace of `topo` (its pins and its
/// server state file its own).
pub fn lb_agent(topo: &Topology, agent: &LatchAgent) -> LatchConfig {
    LatchConfig::new(
        AgentSettings::new(&topo.lb_interfaces())
            .bpffs_dir(agent.bpffs_dir())
            .state_file(&agent.dir().join("servers.json")),
    )
}

/// Backends `which` (numbered from 1, as b1, b2...) of `topo` on `port`.
pub fn backends(topo: &Topology, which: &[usize], port: u16) -> Vec<SocketAddr> {
    let addrs = topo.backend_addrs();
    which
        .iter()
        .map(|&i| SocketAddr::from((addrs[i - 1], port)))
        .collect()
}

/// Every backend of `topo` on `port`.
pub fn all_backends(topo: &Topology, port: u16) -> Vec<SocketAddr> {
    let which: Vec<usize> = (1..=topo.backend_addrs().len()).collect();
    backends(topo, &which, port)
}

/// Pool `web`: every backend's HTTP port.
pub fn web_pool(topo: &Topology) -> Pool {
    Pool::new("web", all_backends(topo, HTTP_PORT))
}

/// HTTP virtual service `shop` on the VIP's port 80, balancing over pool `web`.
pub fn shop(topo: &Topology) -> VirtualService {
    VirtualService::http("shop", SocketAddr::from((topo.vip(), 80)), "web")
}

/// Layer-4 TCP virtual service `web-tcp` on the VIP's port 80, over pool `web`.
pub fn web_tcp(topo: &Topology) -> VirtualService {
    VirtualService::tcp("web-tcp", SocketAddr::from((topo.vip(), 80)), "web")
}

/// Polls `check` every 50 ms until it holds; how long that took, or an error naming `what`.
pub fn wait_for(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> Result<bool, String>,
) -> Result<Duration, String> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if check()? {
            return Ok(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("{what}: not within {limit:?}"))
}

/// The value of `name{vs="<vs>"}` in the agent's /metrics (admin API on the LB namespace's
/// loopback, no token).
pub fn vs_metric(topo: &Topology, name: &str, vs: &str) -> Result<f64, String> {
    let text = topo.lb().run(|| {
        latch_tests::http_get(latch_tests::config::ADMIN_LISTEN, "/metrics", &[])
            .map(|r| String::from_utf8_lossy(&r.body).into_owned())
            .map_err(|e| e.to_string())
    })?;
    let label = format!("vs=\"{vs}\"");
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")) && l.contains(&label))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .ok_or(format!("no {name} for {vs} in {text}"))
}

/// Peak resident memory (VmHWM) of process `pid`, in kB.
pub fn peak_rss_kb(pid: u32) -> Result<u64, String> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .ok_or_else(|| "no VmHWM".to_string())
}

/// Prepares an agent in the LB namespace, writes the config `config` builds for it and starts
/// it.
pub fn start_agent(
    topo: &Topology,
    config: impl FnOnce(&LatchAgent) -> LatchConfig,
) -> Result<LatchAgent, Box<dyn std::error::Error>> {
    let mut agent = LatchAgent::prepare(crate::LATCH.as_ref(), topo.lb())?;
    agent.write_latch_config(&config(&agent))?;
    agent.start()?;
    Ok(agent)
}

/// latch_xdp_packets_total{path="<path>"} of the agent in `ns`.
pub fn xdp_packets(ns: &Netns, path: &str) -> Result<f64, String> {
    let text = ns.run(|| {
        latch_tests::http_get(latch_tests::config::ADMIN_LISTEN, "/metrics", &[])
            .map(|r| String::from_utf8_lossy(&r.body).into_owned())
            .map_err(|e| e.to_string())
    })?;
    let prefix = format!("latch_xdp_packets_total{{path=\"{path}\"}} ");
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0))
}

/// Every builder method the namespace tests use yields a config the agent accepts, checked
/// without root so a serialization slip shows up in a plain `cargo test`.
#[test]
fn the_built_configs_parse_as_latch_configs() -> TestResult {
    use latch_tests::{DataScript, HealthMonitor, Replication};

    let servers = [SocketAddr::from(([198, 51, 100, 10], HTTP_PORT))];
    let vip = |port| SocketAddr::from(([203, 0, 113, 10], port));
    let scripts = latch_tests::jsession_scripts(60);
    let v6_server: std::net::Ipv6Addr = "2001:db8:b1::2".parse()?;
    let v6_vip: std::net::Ipv6Addr = "2001:db8:f::10".parse()?;
    let text = LatchConfig::new(
        AgentSettings::new(&["lo".to_string()])
            .bpffs_dir("/sys/fs/bpf/latch-parse-test".as_ref())
            .admin_token_file("/nonexistent/token".as_ref())
            .workers(2),
    )
    .pool(Pool::new("web", servers).health_monitor(HealthMonitor::tcp(Duration::from_millis(300))))
    .pool(
        Pool::new("probed", servers).health_monitor(
            HealthMonitor::http("/healthz", Duration::from_millis(300))
                .fall(3)
                .rise(1),
        ),
    )
    .virtual_service(VirtualService::http("shop", vip(80), "web").datascripts(scripts))
    .virtual_service(
        VirtualService::http("fast", vip(81), "probed")
            .client_ip_fast_path()
            .datascript(DataScript::response(
                "avi.http.add_header(\"X-A\", '''b''')\n",
            )),
    )
    .virtual_service(
        VirtualService::tcp("l4", vip(82), "web").client_ip_persistence(Duration::from_secs(1)),
    )
    .virtual_service(VirtualService::tcp("dsr", vip(83), "web").dsr())
    .virtual_service(VirtualService::udp("dns", vip(53), "web"))
    .pool(Pool::new(
        "web6",
        [SocketAddr::from((v6_server, HTTP_PORT))],
    ))
    .virtual_service(
        VirtualService::http("fast6", SocketAddr::from((v6_vip, 80)), "web6")
            .client_ip_fast_path()
            .fast_path_ipv6_prefix(64),
    )
    .replication(Replication::new(
        "redis://192.0.2.50:6379",
        "a",
        Duration::from_secs(1),
        Duration::from_millis(300),
    ))
    .to_toml()?;
    let config =
        latch::config::parse(&text, "built.toml".as_ref()).map_err(|e| format!("{e}\n{text}"))?;
    assert_eq!(config.virtual_services.len(), 6);
    let fast6 = &config.virtual_services[5];
    assert!(fast6.fast_path);
    assert_eq!(fast6.persistence_ipv6_prefix, Some(64));
    let fast = &config.virtual_services[1];
    assert!(fast.fast_path);
    assert_eq!(fast.datascripts.len(), 1);
    assert_eq!(
        config.virtual_services[2].persistence,
        Some(Duration::from_secs(1))
    );
    let monitor = config.pools[1]
        .health_monitor
        .as_ref()
        .ok_or("no monitor")?;
    assert_eq!((monitor.fall, monitor.rise), (3, 1));
    assert_eq!(monitor.timeout, Duration::from_millis(200));
    assert_eq!(config.agent.workers, Some(2));
    assert!(config.replication.is_some());
    Ok(())
}

/// TX checksum offload off on a veth end (frames then carry full checksums, which XDP's
/// redirect does not finish), and GRO on where redirected frames are received (NAPI on the
/// receiving veth, without which they are dropped).
fn tune(ns: &latch_tests::Netns, iface: &str, receives_redirects: bool) -> latch_tests::Result<()> {
    let mut argv = vec!["ethtool", "-K", iface, "tx", "off"];
    if receives_redirects {
        argv.extend(["gro", "on"]);
    }
    ns.exec(&argv).map(|_| ())
}

/// A veth pair from `a` (named `a_if`) to `b` (named `b_if`), both up, TX offload off (the
/// hand-built labs of `ecmp_netns` and `tunnel_netns`).
pub fn veth_link(
    a: &latch_tests::Netns,
    a_if: &str,
    b: &latch_tests::Netns,
    b_if: &str,
    b_receives_redirects: bool,
) -> latch_tests::Result<()> {
    a.ip(&[
        "link",
        "add",
        a_if,
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ])?;
    a.ip(&["link", "set", "dev", a_if, "up"])?;
    b.ip(&["link", "set", "dev", b_if, "up"])?;
    tune(a, a_if, false)?;
    tune(b, b_if, b_receives_redirects)
}
