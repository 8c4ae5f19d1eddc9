//! Path-MTU discovery through latch's NAT, IPv4 and IPv6, with real traffic: the server sits
//! behind a router (backend 1's namespace) whose link to it has an MTU of 1280, while the
//! server's own side of that link has 1500, so the MSS it advertises lets the client send
//! segments too big for the router. The router's error (IPv4 fragmentation needed, ICMPv6
//! packet too big) quotes the packet as latch sent it (client -> server); latch translates it
//! for the client (from the VIP, quoting the VIP), whose kernel lowers the path MTU to the VIP
//! and resends: an upload of 1 MB completes. Untranslated, the error names a connection the
//! client does not have and the upload stalls (a path-MTU black hole; checked for both
//! families by disabling the translation). Needs root: `#[ignore]`d.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use latch_tests::{
    AgentSettings, LatchConfig, Netns, Pool, ServeConfig, Topology, VirtualService, http_upload,
};

use crate::ipv6_netns::{VIP6, add_ipv6, link6};
use crate::netns_config::{HTTP_PORT, TestResult, lb_agent, start_agent as start, xdp_packets};

/// The router's link to the server: its MTU, the only thing that differs from a plain path.
const SMALL_MTU: &str = "1280";

/// What differs between the families' runs.
struct Plan {
    /// `ip`'s family flag.
    family: &'static str,
    /// The router's forwarding sysctl.
    forwarding: &'static str,
    /// Extra words for `ip addr add` (IPv6: no duplicate address detection, usable at once).
    addr_flags: &'static [&'static str],
    /// The router's and the server's addresses on their link, and its prefix length.
    router: IpAddr,
    server: IpAddr,
    prefix: u8,
    /// Backend 1's address as the LB reaches it (the LB's next hop to the server).
    router_from_lb: IpAddr,
    vip: IpAddr,
}

impl Plan {
    /// IPv4 on the harness's own addresses: the server's link 198.51.100.128/30 (the VIP,
    /// 198.51.100.10, is outside it).
    fn v4(topo: &Topology) -> Result<Self, Box<dyn std::error::Error>> {
        Ok(Self {
            family: "-4",
            forwarding: "net.ipv4.ip_forward",
            addr_flags: &[],
            router: IpAddr::V4(Ipv4Addr::new(198, 51, 100, 129)),
            server: IpAddr::V4(Ipv4Addr::new(198, 51, 100, 130)),
            prefix: 30,
            router_from_lb: IpAddr::V4(topo.backend(1).ok_or("no such backend")?.addr),
            vip: IpAddr::V4(topo.vip()),
        })
    }

    /// IPv6 added to the harness's topology (`ipv6_netns::add_ipv6`).
    fn v6(topo: &Topology) -> Result<Self, Box<dyn std::error::Error>> {
        add_ipv6(topo, 1, false)?;
        Ok(Self {
            family: "-6",
            forwarding: "net.ipv6.conf.all.forwarding",
            addr_flags: &["nodad"],
            router: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x5, 0, 0, 0, 0, 1)),
            server: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x5, 0, 0, 0, 0, 2)),
            prefix: 64,
            router_from_lb: IpAddr::V6(link6(1, 2)),
            vip: IpAddr::V6(VIP6),
        })
    }

    /// `ip addr add <addr>/<prefix> dev <dev>` with the family's flags.
    fn add_addr(&self, ns: &Netns, addr: IpAddr, dev: &str) -> TestResult {
        let cidr = format!("{addr}/{}", self.prefix);
        let mut argv = vec!["addr", "add", &cidr, "dev", dev];
        argv.extend(self.addr_flags);
        ns.ip(&argv)?;
        Ok(())
    }
}

/// One family's run, at XDP or (`tc`) at TC ingress.
fn path_mtu_discovery_through_nat(v6: bool, tc: bool) -> TestResult {
    let server_ns = Netns::new("srv")?;
    let topo = Topology::builder().backends(1).vip_on_lb(false).build()?;
    let plan = if v6 {
        Plan::v6(&topo)?
    } else {
        Plan::v4(&topo)?
    };
    let router = &topo.backend(1).ok_or("no such backend")?.ns;
    router.ip(&[
        "link",
        "add",
        "r0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        server_ns.name(),
    ])?;
    router.ip(&["link", "set", "r0", "mtu", SMALL_MTU, "up"])?;
    plan.add_addr(router, plan.router, "r0")?;
    router.sysctl(&[(plan.forwarding, "1")])?;
    server_ns.ip(&["link", "set", "eth0", "mtu", "1500", "up"])?;
    plan.add_addr(&server_ns, plan.server, "eth0")?;
    server_ns.ip(&[
        plan.family,
        "route",
        "add",
        "default",
        "via",
        &plan.router.to_string(),
    ])?;
    topo.lb().ip(&[
        plan.family,
        "route",
        "add",
        // A host route: the server's address alone.
        &plan.server.to_string(),
        "via",
        &plan.router_from_lb.to_string(),
    ])?;
    let server = SocketAddr::new(plan.server, HTTP_PORT);
    topo.start_server_in(
        &server_ns,
        ServeConfig {
            name: "s1".into(),
            http: Some(server),
            udp: None,
            tls: None,
        },
    )?;
    let vip = SocketAddr::new(plan.vip, 80);
    let agent = start(&topo, |a| {
        let mut config = lb_agent(&topo, a);
        if tc {
            let mut settings = AgentSettings::new(&topo.lb_interfaces())
                .bpffs_dir(a.bpffs_dir())
                .state_file(&a.dir().join("servers.json"));
            for iface in topo.lb_interfaces() {
                settings = settings.attach_tc(&iface);
            }
            config = LatchConfig::new(settings);
        }
        config
            .pool(Pool::new("web", vec![server]))
            .virtual_service(VirtualService::tcp("web-tcp", vip, "web"))
    })?;
    let received = topo
        .client()
        .run(|| http_upload(vip, 1_000_000, Duration::from_secs(20)).map_err(|e| e.to_string()))?;
    assert_eq!(received, 1_000_000, "bytes the server received");
    let route = topo
        .client()
        .ip(&[plan.family, "route", "get", &plan.vip.to_string()])?;
    let route = String::from_utf8_lossy(&route.stdout).into_owned();
    assert!(
        route.contains(&format!("mtu {SMALL_MTU}")),
        "the client learnt the path MTU to the VIP: {route}"
    );
    let translated = xdp_packets(topo.lb(), "icmp_to_client")?;
    assert!(
        translated >= 1.0,
        "errors about the server's too-big packets translated for the client: {translated}"
    );
    drop(agent);
    Ok(())
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn ipv4_path_mtu_discovery_works_through_nat_at_xdp() -> TestResult {
    path_mtu_discovery_through_nat(false, false)
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn ipv4_path_mtu_discovery_works_through_nat_at_tc() -> TestResult {
    path_mtu_discovery_through_nat(false, true)
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn ipv6_path_mtu_discovery_works_through_nat_at_xdp() -> TestResult {
    path_mtu_discovery_through_nat(true, false)
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn ipv6_path_mtu_discovery_works_through_nat_at_tc() -> TestResult {
    path_mtu_discovery_through_nat(true, true)
}
