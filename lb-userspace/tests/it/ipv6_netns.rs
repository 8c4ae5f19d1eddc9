//! IPv6 through the XDP data plane with real traffic: the harness's topology (client — LB —
//! backends) given IPv6 addresses from 2001:db8::/32 on top of its IPv4 ones, test servers
//! listening on the backends' IPv6 addresses, and `latch run` with IPv6 VIPs and servers.
//! Needs root: `#[ignore]`d, run with `--include-ignored`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use latch_tests::{
    HealthMonitor, Pool, ServeConfig, Topology, VirtualService, http_get, udp_roundtrip,
};

use crate::netns_config::{HTTP_PORT, TestResult, lb_agent, start_agent as start, wait_for};

const UDP_PORT: u16 = 9000;
pub(crate) const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xf, 0, 0, 0, 0, 0x10);
pub(crate) const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 0x100);
const LB_CLIENT_SIDE6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 1);

/// Backend `i`'s link: 2001:db8:b<i>::/64, the LB at ::1, the backend at ::2.
pub(crate) fn link6(i: usize, host: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0xb0 + i as u16, 0, 0, 0, 0, host)
}

/// Adds IPv6 to `topo`: addresses without duplicate address detection (usable at once),
/// routes both ways, forwarding in the LB namespace only; with `dsr`, the VIP on every
/// backend's loopback. Returns the backends' addresses.
pub(crate) fn add_ipv6(
    topo: &Topology,
    backends: usize,
    dsr: bool,
) -> Result<Vec<Ipv6Addr>, Box<dyn std::error::Error>> {
    let client_iface = "eth0";
    topo.client().ip(&[
        "addr",
        "add",
        &format!("{CLIENT6}/64"),
        "dev",
        client_iface,
        "nodad",
    ])?;
    topo.client().ip(&[
        "-6",
        "route",
        "add",
        "default",
        "via",
        &LB_CLIENT_SIDE6.to_string(),
    ])?;
    let lb = topo.lb();
    lb.ip(&[
        "addr",
        "add",
        &format!("{LB_CLIENT_SIDE6}/64"),
        "dev",
        topo.lb_client_iface(),
        "nodad",
    ])?;
    lb.sysctl(&[("net.ipv6.conf.all.forwarding", "1")])?;
    let mut addrs = Vec::new();
    for i in 1..=backends {
        let b = topo.backend(i).ok_or("no such backend")?;
        lb.ip(&[
            "addr",
            "add",
            &format!("{}/64", link6(i, 1)),
            "dev",
            &b.lb_iface,
            "nodad",
        ])?;
        b.ns.ip(&[
            "addr",
            "add",
            &format!("{}/64", link6(i, 2)),
            "dev",
            "eth0",
            "nodad",
        ])?;
        b.ns.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &link6(i, 1).to_string(),
        ])?;
        if dsr {
            b.ns.ip(&["addr", "add", &format!("{VIP6}/128"), "dev", "lo"])?;
        }
        addrs.push(link6(i, 2));
    }
    Ok(addrs)
}

/// Test servers on every backend's IPv6 address (HTTP and UDP), named b1, b2...; DSR ones on
/// every address (they answer from the VIP they hold).
pub(crate) fn start_servers6(topo: &Topology, addrs: &[Ipv6Addr], dsr: bool) -> TestResult {
    for (i, a) in addrs.iter().enumerate() {
        let b = topo.backend(i + 1).ok_or("no such backend")?;
        let http_ip = if dsr { Ipv6Addr::UNSPECIFIED } else { *a };
        topo.start_server_in(
            &b.ns,
            ServeConfig {
                name: format!("b{}", i + 1),
                http: Some(SocketAddr::from((http_ip, HTTP_PORT))),
                udp: Some(SocketAddr::from((*a, UDP_PORT))),
                tls: None,
            },
        )?;
    }
    Ok(())
}

fn vip(port: u16) -> SocketAddr {
    SocketAddr::from((VIP6, port))
}

/// NAT: TCP and UDP to an IPv6 VIP reach every IPv6 backend, which sees the client's own
/// address, and the replies come back from the VIP.
#[test]
#[ignore = "needs root: creates network namespaces"]
fn ipv6_tcp_and_udp_nat_reach_every_backend_which_sees_the_client() -> TestResult {
    let topo = Topology::builder().backends(2).vip_on_lb(false).build()?;
    let addrs = add_ipv6(&topo, 2, false)?;
    start_servers6(&topo, &addrs, false)?;
    let web: Vec<SocketAddr> = addrs
        .iter()
        .map(|a| SocketAddr::from((*a, HTTP_PORT)))
        .collect();
    let dns: Vec<SocketAddr> = addrs
        .iter()
        .map(|a| SocketAddr::from((*a, UDP_PORT)))
        .collect();
    let _agent = start(&topo, |a| {
        lb_agent(&topo, a)
            .pool(Pool::new("web6", web))
            .pool(Pool::new("dns6", dns))
            .virtual_service(VirtualService::tcp("web6-tcp", vip(80), "web6"))
            .virtual_service(VirtualService::udp("dns6-udp", vip(53), "dns6"))
    })?;
    let (tcp, udp) = topo.client().run(|| -> Result<_, String> {
        let mut tcp = BTreeMap::<String, usize>::new();
        for _ in 0..40 {
            let r = http_get(vip(80), "/", &[]).map_err(|e| e.to_string())?;
            if r.status != 200 {
                return Err(format!("status {}", r.status));
            }
            let seen = r.seen_client.ok_or("no X-Seen-Client")?;
            if seen.ip() != IpAddr::V6(CLIENT6) {
                return Err(format!("backend saw {seen}, expected {CLIENT6}"));
            }
            *tcp.entry(r.backend.ok_or("no X-Backend")?).or_default() += 1;
        }
        let mut udp = BTreeMap::<String, usize>::new();
        for _ in 0..40 {
            let r = udp_roundtrip(vip(53), b"hello", Duration::from_secs(2))
                .map_err(|e| e.to_string())?;
            if r.from != vip(53) {
                return Err(format!("UDP reply from {}, expected the VIP", r.from));
            }
            let seen = r.seen_client().ok_or("no client in UDP reply")?;
            if seen.ip() != IpAddr::V6(CLIENT6) {
                return Err(format!("UDP backend saw {seen}"));
            }
            *udp.entry(r.backend().ok_or("no backend in UDP reply")?.to_string())
                .or_default() += 1;
        }
        Ok((tcp, udp))
    })?;
    assert_eq!(
        tcp.len(),
        2,
        "TCP connections spread over both backends: {tcp:?}"
    );
    assert_eq!(udp.len(), 2, "UDP flows spread over both backends: {udp:?}");
    Ok(())
}

/// DSR: the backends hold the IPv6 VIP and answer the client directly.
#[test]
#[ignore = "needs root: creates network namespaces"]
fn ipv6_dsr_reaches_every_backend_which_answers_from_the_vip() -> TestResult {
    let topo = Topology::builder().backends(2).vip_on_lb(false).build()?;
    let addrs = add_ipv6(&topo, 2, true)?;
    start_servers6(&topo, &addrs, true)?;
    let web: Vec<SocketAddr> = addrs
        .iter()
        .map(|a| SocketAddr::from((*a, HTTP_PORT)))
        .collect();
    let _agent = start(&topo, |a| {
        lb_agent(&topo, a)
            .pool(Pool::new("web6", web))
            .virtual_service(
                VirtualService::tcp("web6-dsr", SocketAddr::from((VIP6, HTTP_PORT)), "web6").dsr(),
            )
    })?;
    let seen = topo.client().run(|| -> Result<_, String> {
        let mut seen = BTreeMap::<String, usize>::new();
        for _ in 0..40 {
            let r = http_get(SocketAddr::from((VIP6, HTTP_PORT)), "/", &[])
                .map_err(|e| e.to_string())?;
            if r.status != 200 {
                return Err(format!("status {}", r.status));
            }
            *seen.entry(r.backend.ok_or("no X-Backend")?).or_default() += 1;
        }
        Ok(seen)
    })?;
    assert_eq!(
        seen.len(),
        2,
        "connections spread over both backends: {seen:?}"
    );
    Ok(())
}

/// An HTTP service on an IPv6 VIP, proxied to IPv6 servers under an HTTP health monitor; the
/// admin CLI drains one server by its IPv6 address (`latch server drain`), after which new
/// requests go to the other only.
#[test]
#[ignore = "needs root: creates network namespaces"]
fn ipv6_http_service_monitor_and_admin_drain() -> TestResult {
    let topo = Topology::builder().backends(2).vip_on_lb(false).build()?;
    let addrs = add_ipv6(&topo, 2, false)?;
    // The proxy's VIP is local to the LB (XDP hands its packets to the stack).
    topo.lb()
        .ip(&["addr", "add", &format!("{VIP6}/128"), "dev", "lo", "nodad"])?;
    start_servers6(&topo, &addrs, false)?;
    let web: Vec<SocketAddr> = addrs
        .iter()
        .map(|a| SocketAddr::from((*a, HTTP_PORT)))
        .collect();
    let agent = start(&topo, |a| {
        lb_agent(&topo, a)
            .pool(
                Pool::new("web6", web.clone())
                    .health_monitor(HealthMonitor::http("/healthz", Duration::from_millis(300))),
            )
            .virtual_service(VirtualService::http("shop6", vip(80), "web6"))
    })?;
    let spread = |n: usize| {
        topo.client().run(|| -> Result<_, String> {
            let mut seen = BTreeMap::<String, usize>::new();
            for _ in 0..n {
                let r = http_get(vip(80), "/", &[]).map_err(|e| e.to_string())?;
                if r.status != 200 {
                    return Err(format!("status {}", r.status));
                }
                *seen.entry(r.backend.ok_or("no X-Backend")?).or_default() += 1;
            }
            Ok(seen)
        })
    };
    let seen = spread(20)?;
    assert_eq!(seen.len(), 2, "both IPv6 servers answer: {seen:?}");
    // The monitor probes the IPv6 servers.
    let probed = wait_for(
        "health probes of both servers",
        Duration::from_secs(10),
        || {
            let counts: Vec<u64> = (1..=2)
                .map(|i| {
                    topo.server(&format!("b{i}"))
                        .map_or(0, |s| s.health_checks())
                })
                .collect();
            Ok(counts.iter().all(|c| *c > 0))
        },
    );
    probed?;
    let out = agent.latch(&["server", "drain", "web6", &web[0].to_string()])?;
    assert!(
        out.status.success(),
        "latch server drain [v6]: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = spread(20)?;
    assert_eq!(
        seen.keys().map(String::as_str).collect::<Vec<_>>(),
        ["b2"],
        "after draining b1 ({}), new requests go to b2 only: {seen:?}",
        web[0]
    );
    Ok(())
}
