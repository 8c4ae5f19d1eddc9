//! Scale-out behind ECMP, Katran's way: two latch hosts with the same configuration build the
//! same Maglev tables, so a DSR flow that a routing change moves from one host to the other
//! keeps its server. Needs root: `#[ignore]`d, run with `--include-ignored`.
//!
//! ```text
//!  client ns            router ns                   lb-a / lb-b ns            backend ns (b1..b4)
//!  eth0 203.0.113.2 ─── vclient 203.0.113.1/24
//!                       va 192.0.2.65/30 ────────── uplink 192.0.2.66/30 (lb-a)
//!                       vb 192.0.2.69/30 ────────── uplink 192.0.2.70/30 (lb-b)
//!                       VIP/32 via .66, later .70   vb<i> 192.0.2.1 (a) / .2 (b) ── la / lb 192.0.2.1<i>
//!                       vr<i> 192.0.2.3/32 ──────────────────────────────────────── rt 192.0.2.2<i>
//!                                                                                   VIP on lo,
//!                                                                                   default via rt
//! ```
//!
//! Each LB host reaches every backend over its own veth (XDP_REDIRECT needs a device with
//! `ndo_xdp_xmit`), and the backends answer the client straight through the router: the LB
//! hosts see only the client's direction, as in a DSR deployment.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use latch_tests::{
    AgentSettings, HttpConn, LatchAgent, LatchConfig, Netns, Pool, ServeConfig, ServerHandle,
    VirtualService,
};

use crate::netns_config::{TestResult, veth_link, xdp_packets};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
/// DSR keeps the destination port: the servers listen on the VIP's port.
const PORT: u16 = 8080;
const BACKENDS: usize = 4;
/// Connections moved at once. Each lands on the right server by chance with probability 1/4
/// if the second host chose independently, so a false pass needs 1 in 4^6.
const CONNECTIONS: usize = 6;
const LB_UPLINK: &str = "uplink";

/// One LB host: its namespace, its router-side address and its backend-side address.
struct LbHost {
    ns: Netns,
    uplink_addr: Ipv4Addr,
    router_addr: Ipv4Addr,
    backend_side: Ipv4Addr,
}

/// The namespaces, and the servers, which must stop before their namespaces go (fields drop
/// in declaration order).
struct Lab {
    _servers: Vec<ServerHandle>,
    client: Netns,
    router: Netns,
    lbs: [LbHost; 2],
    _backends: Vec<Netns>,
}

fn backend_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, 10 + i as u8)
}

fn backend_uplink_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, 20 + i as u8)
}

fn build_lab() -> latch_tests::Result<Lab> {
    let client = Netns::new("client")?;
    let router = Netns::new("router")?;
    let lbs = [
        LbHost {
            ns: Netns::new("lb-a")?,
            uplink_addr: Ipv4Addr::new(192, 0, 2, 66),
            router_addr: Ipv4Addr::new(192, 0, 2, 65),
            backend_side: Ipv4Addr::new(192, 0, 2, 1),
        },
        LbHost {
            ns: Netns::new("lb-b")?,
            uplink_addr: Ipv4Addr::new(192, 0, 2, 70),
            router_addr: Ipv4Addr::new(192, 0, 2, 69),
            backend_side: Ipv4Addr::new(192, 0, 2, 2),
        },
    ];
    let mut backends = Vec::new();
    for i in 1..=BACKENDS {
        backends.push(Netns::new(&format!("b{i}"))?);
    }

    // Client and router.
    veth_link(&router, "vclient", &client, "eth0", false)?;
    client.ip(&["addr", "add", "203.0.113.2/24", "dev", "eth0"])?;
    client.ip(&["route", "add", "default", "via", "203.0.113.1"])?;
    router.ip(&["addr", "add", "203.0.113.1/24", "dev", "vclient"])?;
    let mut router_sysctls = vec![
        ("net.ipv4.ip_forward".to_string(), "1"),
        ("net.ipv4.conf.all.rp_filter".to_string(), "0"),
        ("net.ipv4.conf.default.rp_filter".to_string(), "0"),
    ];

    // Router to each LB host; each LB host to each backend.
    for (lb, router_if) in lbs.iter().zip(["va", "vb"]) {
        veth_link(&router, router_if, &lb.ns, LB_UPLINK, false)?;
        router.ip(&[
            "addr",
            "add",
            &format!("{}/30", lb.router_addr),
            "dev",
            router_if,
        ])?;
        lb.ns.ip(&[
            "addr",
            "add",
            &format!("{}/30", lb.uplink_addr),
            "dev",
            LB_UPLINK,
        ])?;
        router_sysctls.push((format!("net.ipv4.conf.{router_if}.rp_filter"), "0"));
        let mut sysctls = vec![
            ("net.ipv4.ip_forward".to_string(), "1"),
            ("net.ipv4.conf.all.rp_filter".to_string(), "0"),
            ("net.ipv4.conf.default.rp_filter".to_string(), "0"),
            (format!("net.ipv4.conf.{LB_UPLINK}.rp_filter"), "0"),
        ];
        for (i, b) in backends.iter().enumerate() {
            let i = i + 1;
            let (lb_if, b_if) = (
                format!("vb{i}"),
                if lb.backend_side.octets()[3] == 1 {
                    "la"
                } else {
                    "lb"
                },
            );
            veth_link(&lb.ns, &lb_if, b, b_if, true)?;
            lb.ns.ip(&[
                "addr",
                "add",
                &format!("{}/32", lb.backend_side),
                "dev",
                &lb_if,
            ])?;
            lb.ns.ip(&[
                "route",
                "add",
                &format!("{}/32", backend_addr(i)),
                "dev",
                &lb_if,
                "src",
                &lb.backend_side.to_string(),
            ])?;
            b.ip(&[
                "addr",
                "add",
                &format!("{}/32", backend_addr(i)),
                "dev",
                b_if,
            ])?;
            b.ip(&[
                "route",
                "add",
                &format!("{}/32", lb.backend_side),
                "dev",
                b_if,
            ])?;
            sysctls.push((format!("net.ipv4.conf.{lb_if}.rp_filter"), "0"));
        }
        let refs: Vec<(&str, &str)> = sysctls.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        lb.ns.sysctl(&refs)?;
    }

    // Backends: the VIP on lo (never answered for in ARP), replies straight to the router.
    let router_side = "192.0.2.3";
    for (i, b) in backends.iter().enumerate() {
        let i = i + 1;
        let router_if = format!("vr{i}");
        veth_link(&router, &router_if, b, "rt", false)?;
        router.ip(&[
            "addr",
            "add",
            &format!("{router_side}/32"),
            "dev",
            &router_if,
        ])?;
        router.ip(&[
            "route",
            "add",
            &format!("{}/32", backend_uplink_addr(i)),
            "dev",
            &router_if,
        ])?;
        router_sysctls.push((format!("net.ipv4.conf.{router_if}.rp_filter"), "0"));
        b.ip(&[
            "addr",
            "add",
            &format!("{}/32", backend_uplink_addr(i)),
            "dev",
            "rt",
        ])?;
        b.ip(&["route", "add", &format!("{router_side}/32"), "dev", "rt"])?;
        b.ip(&["route", "add", "default", "via", router_side, "dev", "rt"])?;
        b.ip(&["addr", "add", &format!("{VIP}/32"), "dev", "lo"])?;
        let mut sysctls = vec![
            ("net.ipv4.conf.all.arp_ignore".to_string(), "1"),
            ("net.ipv4.conf.all.arp_announce".to_string(), "2"),
            ("net.ipv4.conf.all.rp_filter".to_string(), "0"),
            ("net.ipv4.conf.default.rp_filter".to_string(), "0"),
        ];
        for iface in ["la", "lb", "rt"] {
            sysctls.push((format!("net.ipv4.conf.{iface}.rp_filter"), "0"));
        }
        let refs: Vec<(&str, &str)> = sysctls.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        b.sysctl(&refs)?;
    }
    let refs: Vec<(&str, &str)> = router_sysctls
        .iter()
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    router.sysctl(&refs)?;

    let mut servers = Vec::new();
    for (i, b) in backends.iter().enumerate() {
        servers.push(ServerHandle::start_in(
            b,
            ServeConfig {
                name: format!("b{}", i + 1),
                // DSR: the server answers on the VIP it holds on lo.
                http: Some(SocketAddr::from((Ipv4Addr::UNSPECIFIED, PORT))),
                udp: None,
                tls: None,
            },
        )?);
    }
    Ok(Lab {
        _servers: servers,
        client,
        router,
        lbs,
        _backends: backends,
    })
}

/// The same services on both hosts: only the `[agent]` section (interfaces, pins, state file)
/// is the host's own. The servers are listed in another order on the second host, which must
/// not matter.
/// The DSR service both hosts run (host B lists its servers in reverse order), with `tweak`
/// applied to it.
fn config(
    agent: &LatchAgent,
    reversed: bool,
    tweak: fn(VirtualService) -> VirtualService,
) -> LatchConfig {
    let mut interfaces = vec![LB_UPLINK.to_string()];
    interfaces.extend((1..=BACKENDS).map(|i| format!("vb{i}")));
    let mut servers: Vec<SocketAddr> = (1..=BACKENDS)
        .map(|i| SocketAddr::from((backend_addr(i), PORT)))
        .collect();
    if reversed {
        servers.reverse();
    }
    LatchConfig::new(
        AgentSettings::new(&interfaces)
            .bpffs_dir(agent.bpffs_dir())
            .state_file(&agent.dir().join("servers.json")),
    )
    .pool(Pool::new("web", servers))
    .virtual_service(tweak(
        VirtualService::tcp("web-dsr", SocketAddr::from((VIP, PORT)), "web").dsr(),
    ))
}

/// An agent on each LB host with the service `tweak` makes, each knowing its backends'
/// MACs, and the router sending the VIP to host A.
fn start_agents(
    lab: &Lab,
    tweak: fn(VirtualService) -> VirtualService,
) -> Result<Vec<LatchAgent>, Box<dyn std::error::Error>> {
    let mut agents = Vec::new();
    for (n, lb) in lab.lbs.iter().enumerate() {
        let mut agent = LatchAgent::prepare(crate::LATCH.as_ref(), &lb.ns)?;
        agent.write_latch_config(&config(&agent, n == 1, tweak))?;
        agent.start()?;
        agents.push(agent);
    }
    for lb in &lab.lbs {
        wait_for_neighbours(lb)?;
    }
    route_vip_via(&lab.router, lab.lbs[0].uplink_addr)?;
    Ok(agents)
}

/// Waits until `lb` knows every backend's MAC. The agent solicits them when it starts (XDP
/// cannot resolve ARP, and a DSR packet it passes to the stack has nowhere to go); a host
/// that takes traffic before the answers arrive loses its first packets.
fn wait_for_neighbours(lb: &LbHost) -> Result<(), String> {
    crate::netns_config::wait_for("backend neighbours", Duration::from_secs(10), || {
        for i in 1..=BACKENDS {
            let out = lb
                .ns
                .ip(&["neigh", "show", &backend_addr(i).to_string()])
                .map_err(|e| e.to_string())?;
            if !String::from_utf8_lossy(&out.stdout).contains("lladdr") {
                return Ok(false);
            }
        }
        Ok(true)
    })
    .map(|_| ())
}

fn route_vip_via(router: &Netns, next_hop: Ipv4Addr) -> latch_tests::Result<()> {
    router
        .ip(&[
            "route",
            "replace",
            &format!("{VIP}/32"),
            "via",
            &next_hop.to_string(),
        ])
        .map(|_| ())
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn an_ecmp_move_to_the_other_lb_host_keeps_every_tcp_connection_on_its_server() -> TestResult {
    let lab = build_lab()?;
    let agents = start_agents(&lab, |s| s)?;

    // Connections through host A, each with one exchange.
    let mut conns = lab
        .client
        .run(|| -> Result<Vec<(HttpConn, String)>, String> {
            let mut conns = Vec::new();
            for _ in 0..CONNECTIONS {
                let mut c =
                    HttpConn::connect(SocketAddr::from((VIP, PORT)), Duration::from_secs(5))
                        .map_err(|e| format!("connect through host A: {e}"))?;
                let r = c.get("/", &[]).map_err(|e| e.to_string())?;
                conns.push((c, r.backend.ok_or("no X-Backend")?));
            }
            Ok(conns)
        })?;
    let spread: BTreeMap<&str, usize> = conns.iter().fold(BTreeMap::new(), |mut m, (_, b)| {
        *m.entry(b.as_str()).or_default() += 1;
        m
    });
    assert!(
        spread.len() >= 2,
        "host A balanced {CONNECTIONS} connections over one server only: {spread:?}"
    );
    let b_maglev_before = xdp_packets(&lab.lbs[1].ns, "new_flow_maglev")?;
    assert_eq!(
        b_maglev_before, 0.0,
        "host B forwarded a flow before the route moved"
    );

    // The router now sends the VIP to host B, which has never seen these connections.
    route_vip_via(&lab.router, lab.lbs[1].uplink_addr)?;
    let a_before = xdp_packets(&lab.lbs[0].ns, "new_flow_maglev")?
        + xdp_packets(&lab.lbs[0].ns, "conntrack_hit")?;
    lab.client.run(|| -> Result<(), String> {
        for round in 1..=3 {
            for (c, backend) in conns.iter_mut() {
                let r = c.get("/", &[]).map_err(|e| {
                    format!("round {round}: a connection to {backend} broke after the move: {e}")
                })?;
                let now = r.backend.ok_or("no X-Backend")?;
                if now != *backend {
                    return Err(format!("a connection moved from {backend} to {now}"));
                }
            }
        }
        Ok(())
    })?;
    // Host B carried them: each connection's first packet there missed its connection table
    // and was placed by Maglev (not dropped, not reset), later ones hit the entry it made.
    let b_maglev = xdp_packets(&lab.lbs[1].ns, "new_flow_maglev")?;
    let b_hits = xdp_packets(&lab.lbs[1].ns, "conntrack_hit")?;
    assert!(
        b_maglev >= CONNECTIONS as f64,
        "host B placed {b_maglev} flows by Maglev, expected one per connection ({CONNECTIONS})"
    );
    assert!(
        b_hits >= CONNECTIONS as f64,
        "host B: {b_hits} conntrack hits"
    );
    let a_after = xdp_packets(&lab.lbs[0].ns, "new_flow_maglev")?
        + xdp_packets(&lab.lbs[0].ns, "conntrack_hit")?;
    assert_eq!(a_after, a_before, "host A still forwarded after the move");
    drop(conns);
    for mut agent in agents {
        agent.stop(Duration::from_secs(5))?;
    }
    Ok(())
}

/// Client addresses of the persistence test (the client namespace's eth0 holds them all).
const PERSISTENT_CLIENTS: u8 = 8;

fn persistent_client(i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(203, 0, 113, 2 + i))
}

/// Client-IP persistence with `flow_hash = "client_ip"`: a client's connections land on one
/// server by a hash of its address, which both hosts compute alike, so host B, which has
/// none of host A's pins, keeps both the moved connections and the client's new ones on the
/// server host A pinned it to. With the 5-tuple hash host B would place each flow anew (one
/// in four lands right by chance; eight clients make a false pass 1 in 4^8).
#[test]
#[ignore = "needs root: creates network namespaces"]
fn an_ecmp_move_keeps_client_ip_persistence_with_the_client_hash() -> TestResult {
    let lab = build_lab()?;
    for i in 1..PERSISTENT_CLIENTS {
        lab.client.ip(&[
            "addr",
            "add",
            &format!("{}/24", persistent_client(i)),
            "dev",
            "eth0",
        ])?;
    }
    let agents = start_agents(&lab, |s| {
        s.client_ip_persistence(Duration::from_secs(300))
            .client_ip_flow_hash()
    })?;
    let vip = SocketAddr::from((VIP, PORT));

    // Two connections of every client through host A: pinned to one server per client.
    let mut conns = lab
        .client
        .run(|| -> Result<Vec<(IpAddr, HttpConn, String)>, String> {
            let mut conns = Vec::new();
            for i in 0..PERSISTENT_CLIENTS {
                let from = persistent_client(i);
                for _ in 0..2 {
                    let mut c = HttpConn::connect_from(from, vip, Duration::from_secs(5))
                        .map_err(|e| format!("connect from {from} through host A: {e}"))?;
                    let r = c.get("/", &[]).map_err(|e| e.to_string())?;
                    conns.push((from, c, r.backend.ok_or("no X-Backend")?));
                }
            }
            Ok(conns)
        })?;
    let mut server_of: BTreeMap<IpAddr, String> = BTreeMap::new();
    for (from, _, backend) in &conns {
        let first = server_of.entry(*from).or_insert_with(|| backend.clone());
        assert_eq!(first, backend, "{from}'s connections went to two servers");
    }
    let servers: std::collections::BTreeSet<&String> = server_of.values().collect();
    assert!(
        servers.len() >= 2,
        "{PERSISTENT_CLIENTS} clients all went to one server: {servers:?}"
    );

    // The route moves to host B: the open connections and new ones keep their server. The
    // connections go in reverse order, so that host B first sees each client's second
    // connection, which host A placed by its pin, not by that connection's own hash (in
    // order, host B would re-create host A's pins from the first connections by chance).
    route_vip_via(&lab.router, lab.lbs[1].uplink_addr)?;
    lab.client.run(|| -> Result<(), String> {
        for (from, c, backend) in conns.iter_mut().rev() {
            let r = c
                .get("/", &[])
                .map_err(|e| format!("{from}'s connection to {backend} broke after the move: {e}"))?;
            let now = r.backend.ok_or("no X-Backend")?;
            if now != *backend {
                return Err(format!("{from}'s connection moved from {backend} to {now}"));
            }
        }
        for (from, backend) in &server_of {
            for _ in 0..2 {
                let r = latch_tests::http_get_from(*from, vip, "/").map_err(|e| e.to_string())?;
                let now = r.backend.ok_or("no X-Backend")?;
                if now != *backend {
                    return Err(format!(
                        "a new connection of {from} went to {now} through host B, not to its server {backend}"
                    ));
                }
            }
        }
        Ok(())
    })?;
    let b_placed = xdp_packets(&lab.lbs[1].ns, "new_flow_maglev")?;
    assert!(
        b_placed >= f64::from(PERSISTENT_CLIENTS),
        "host B placed {b_placed} flows by Maglev"
    );
    drop(conns);
    for mut agent in agents {
        agent.stop(Duration::from_secs(5))?;
    }
    Ok(())
}
