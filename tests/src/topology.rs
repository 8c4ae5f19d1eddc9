//! The standard test layout: `client` — `lb` — `backend1..N`, each in its own namespace.
//!
//! ```text
//!  client ns                 lb ns                                backend ns (one per backend)
//!  eth0 203.0.113.2/24 ── vclient 203.0.113.1/24
//!  default via .1            ip_forward=1
//!                            vb1 192.0.2.1/32, 192.0.2.11/32 ──── eth0 192.0.2.11/32
//!                            vb2 192.0.2.1/32, 192.0.2.12/32 ──── eth0 192.0.2.12/32
//!                            (VIP 198.51.100.10 on lo, optional)   default via 192.0.2.1
//! ```
//!
//! Each backend gets its own point-to-point veth from the LB rather than a shared bridge:
//! XDP_REDIRECT needs a device with `ndo_xdp_xmit`, which a veth has and a bridge does not, and a
//! FIB lookup in the XDP program then resolves each backend to its own veth. The LB side carries
//! 192.0.2.1 as a /32 on every backend veth plus a host route per backend.
//!
//! Veths are created directly inside the namespaces (`ip -n lb link add … peer … netns …`), so
//! nothing ever appears in the host namespace and the short fixed names cannot collide.
//!
//! Two settings make XDP forwarding over veth work, both measured (docs/ARCHITECTURE.md, "Tests"):
//! GRO on the receiving peers (client and backend `eth0`) enables NAPI there, without which a
//! frame redirected into the veth is dropped; and TX checksum offload off on every veth end, so
//! packets carry full checksums (a frame that an XDP program redirects loses the skb's
//! "checksum partial" state, and incremental NAT checksum updates assume a complete one).

use std::net::{Ipv4Addr, SocketAddr};

use crate::error::{Error, Result};
use crate::netns::Netns;
use std::sync::Mutex;

use crate::server::{ServeConfig, ServerHandle, ServerInfo};

pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
pub const LB_CLIENT_SIDE_ADDR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
pub const LB_BACKEND_SIDE_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
pub const MAX_BACKENDS: usize = 8;
/// Extra client addresses are 203.0.113.2.. upward; this caps them well inside the /24.
pub const MAX_CLIENT_ADDRS: usize = 100;

/// Interface names. Each lives only inside its namespace.
pub const LB_CLIENT_IFACE: &str = "vclient";
pub const PEER_IFACE: &str = "eth0";

/// Address of backend `i` (1-based): 192.0.2.11, 192.0.2.12, …
pub fn backend_addr(i: usize) -> Ipv4Addr {
    let last = u8::try_from(10 + i).unwrap_or(u8::MAX);
    Ipv4Addr::new(192, 0, 2, last)
}

/// Address of client address number `i` (0-based): 203.0.113.2, 203.0.113.3, …
pub fn client_addr(i: usize) -> Ipv4Addr {
    let last = u8::try_from(2 + i).unwrap_or(u8::MAX);
    Ipv4Addr::new(203, 0, 113, last)
}

#[derive(Debug, Clone)]
pub struct TopologyBuilder {
    backends: usize,
    dsr: bool,
    vip_on_lb: Option<bool>,
    client_addrs: usize,
    queues: usize,
    tx_offload: bool,
}

impl Default for TopologyBuilder {
    fn default() -> Self {
        Self {
            backends: 2,
            dsr: false,
            vip_on_lb: None,
            client_addrs: 1,
            queues: 1,
            tx_offload: false,
        }
    }
}

impl TopologyBuilder {
    /// Number of backends, 1..=8 (default 2).
    pub fn backends(mut self, n: usize) -> Self {
        self.backends = n;
        self
    }

    /// DSR layout: the VIP on every backend's `lo`, with `arp_ignore=1`/`arp_announce=2` inside
    /// the backend namespaces so they never answer ARP for it. Implies the VIP is NOT local on
    /// the LB (unless [`Self::vip_on_lb`] says otherwise): the LB kernel would drop the
    /// backends' replies, whose source is the VIP, as martians if the VIP were its own address.
    pub fn with_vip_on_backend_loopback(mut self) -> Self {
        self.dsr = true;
        self
    }

    /// Whether the VIP is added to the LB's `lo` (default: yes, unless DSR). The HTTP proxy must
    /// be able to bind the VIP; XDP sees L4 traffic before the LB's stack either way.
    pub fn vip_on_lb(mut self, on: bool) -> Self {
        self.vip_on_lb = Some(on);
        self
    }

    /// Number of client addresses (203.0.113.2 upward, default 1), for runs that need several
    /// source addresses (e.g. to spread conntrack/TIME_WAIT, or per-client persistence).
    pub fn client_addresses(mut self, n: usize) -> Self {
        self.client_addrs = n;
        self
    }

    /// RX/TX queues on every veth end (default 1). A veth hands a frame sent from CPU `c` to
    /// its peer's queue `c % queues`, and each queue has its own NAPI, so with one queue all
    /// CPUs feed one ring that one CPU drains: benchmarks give every CPU its own queue, as
    /// RSS does on a real NIC.
    pub fn queues(mut self, n: usize) -> Self {
        self.queues = n;
        self
    }

    /// Leave TX checksum offload on (the veth default) instead of turning it off everywhere:
    /// senders then hand frames on with partial checksums, as containers do (the case of
    /// `attach = "tc"`).
    pub fn tx_offload(mut self, on: bool) -> Self {
        self.tx_offload = on;
        self
    }

    pub fn build(self) -> Result<Topology> {
        if !(1..=MAX_BACKENDS).contains(&self.backends) {
            return Err(Error::Topology {
                what: format!("backends must be 1..={MAX_BACKENDS}, got {}", self.backends),
            });
        }
        if !(1..=MAX_CLIENT_ADDRS).contains(&self.client_addrs) {
            return Err(Error::Topology {
                what: format!(
                    "client addresses must be 1..={MAX_CLIENT_ADDRS}, got {}",
                    self.client_addrs
                ),
            });
        }
        if !(1..=64).contains(&self.queues) {
            return Err(Error::Topology {
                what: format!("queues must be 1..=64, got {}", self.queues),
            });
        }
        let queues = self.queues.to_string();
        // Namespaces are created first and owned by locals: if any later step fails, dropping
        // them on the error path removes everything built so far.
        let client = Netns::new("client")?;
        let lb = Netns::new("lb")?;
        let mut backends = Vec::with_capacity(self.backends);
        for i in 1..=self.backends {
            backends.push(Backend {
                ns: Netns::new(&format!("b{i}"))?,
                index: i,
                addr: backend_addr(i),
                lb_iface: format!("vb{i}"),
            });
        }

        // Client link.
        lb.ip(&[
            "link",
            "add",
            LB_CLIENT_IFACE,
            "numtxqueues",
            &queues,
            "numrxqueues",
            &queues,
            "type",
            "veth",
            "peer",
            "name",
            PEER_IFACE,
            "numtxqueues",
            &queues,
            "numrxqueues",
            &queues,
            "netns",
            client.name(),
        ])?;
        lb.ip(&[
            "addr",
            "add",
            &format!("{LB_CLIENT_SIDE_ADDR}/24"),
            "dev",
            LB_CLIENT_IFACE,
        ])?;
        lb.ip(&["link", "set", LB_CLIENT_IFACE, "up"])?;
        let client_addrs: Vec<Ipv4Addr> = (0..self.client_addrs).map(client_addr).collect();
        for a in &client_addrs {
            client.ip(&["addr", "add", &format!("{a}/24"), "dev", PEER_IFACE])?;
        }
        client.ip(&["link", "set", PEER_IFACE, "up"])?;
        client.ip(&[
            "route",
            "add",
            "default",
            "via",
            &LB_CLIENT_SIDE_ADDR.to_string(),
        ])?;
        tune_veth(&client, PEER_IFACE, true, self.tx_offload)?;
        tune_veth(&lb, LB_CLIENT_IFACE, false, self.tx_offload)?;

        // Backend links.
        let lb_side = LB_BACKEND_SIDE_ADDR.to_string();
        for b in &backends {
            let addr = b.addr.to_string();
            lb.ip(&[
                "link",
                "add",
                &b.lb_iface,
                "numtxqueues",
                &queues,
                "numrxqueues",
                &queues,
                "type",
                "veth",
                "peer",
                "name",
                PEER_IFACE,
                "numtxqueues",
                &queues,
                "numrxqueues",
                &queues,
                "netns",
                b.ns.name(),
            ])?;
            lb.ip(&["addr", "add", &format!("{lb_side}/32"), "dev", &b.lb_iface])?;
            lb.ip(&["link", "set", &b.lb_iface, "up"])?;
            lb.ip(&[
                "route",
                "add",
                &format!("{addr}/32"),
                "dev",
                &b.lb_iface,
                "src",
                &lb_side,
            ])?;
            b.ns.ip(&["addr", "add", &format!("{addr}/32"), "dev", PEER_IFACE])?;
            b.ns.ip(&["link", "set", PEER_IFACE, "up"])?;
            b.ns.ip(&["route", "add", &format!("{lb_side}/32"), "dev", PEER_IFACE])?;
            b.ns.ip(&[
                "route", "add", "default", "via", &lb_side, "dev", PEER_IFACE,
            ])?;
            tune_veth(&b.ns, PEER_IFACE, true, self.tx_offload)?;
            tune_veth(&lb, &b.lb_iface, false, self.tx_offload)?;
            if self.dsr {
                b.ns.ip(&["addr", "add", &format!("{VIP}/32"), "dev", "lo"])?;
                b.ns.sysctl(&[
                    ("net.ipv4.conf.all.arp_ignore", "1"),
                    ("net.ipv4.conf.all.arp_announce", "2"),
                    ("net.ipv4.conf.eth0.arp_ignore", "1"),
                    ("net.ipv4.conf.eth0.arp_announce", "2"),
                    ("net.ipv4.conf.all.rp_filter", "0"),
                    ("net.ipv4.conf.eth0.rp_filter", "0"),
                ])?;
            }
        }

        // LB: forwarding and no reverse-path filtering, in the LB namespace only.
        let mut sysctls: Vec<(String, &str)> = vec![
            ("net.ipv4.ip_forward".into(), "1"),
            ("net.ipv4.conf.all.rp_filter".into(), "0"),
            ("net.ipv4.conf.default.rp_filter".into(), "0"),
            (format!("net.ipv4.conf.{LB_CLIENT_IFACE}.rp_filter"), "0"),
        ];
        for b in &backends {
            sysctls.push((format!("net.ipv4.conf.{}.rp_filter", b.lb_iface), "0"));
        }
        let refs: Vec<(&str, &str)> = sysctls.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        lb.sysctl(&refs)?;

        let vip_on_lb = self.vip_on_lb.unwrap_or(!self.dsr);
        if vip_on_lb {
            lb.ip(&["addr", "add", &format!("{VIP}/32"), "dev", "lo"])?;
        }

        Ok(Topology {
            servers: Mutex::new(Vec::new()),
            client,
            lb,
            backends,
            client_addrs,
            vip_on_lb,
            dsr: self.dsr,
        })
    }
}

/// TX checksum offload off everywhere (unless `tx_offload`); GRO on where redirected frames
/// are received.
fn tune_veth(ns: &Netns, iface: &str, receiving_peer: bool, tx_offload: bool) -> Result<()> {
    let mut argv = vec!["ethtool", "-K", iface];
    if !tx_offload {
        argv.extend(["tx", "off"]);
    }
    if receiving_peer {
        argv.extend(["gro", "on"]);
    }
    if argv.len() == 3 {
        return Ok(());
    }
    ns.exec(&argv).map(|_| ())
}

#[derive(Debug)]
pub struct Backend {
    pub ns: Netns,
    /// 1-based, as in the namespace role `b<index>` and the server name.
    pub index: usize,
    pub addr: Ipv4Addr,
    /// The LB-side veth facing this backend.
    pub lb_iface: String,
}

impl Backend {
    /// Server name used by [`Topology::start_backends`]: `b1`, `b2`, …
    pub fn name(&self) -> String {
        format!("b{}", self.index)
    }
}

/// A built topology. Dropping it stops the in-process backend servers, then deletes every
/// namespace (and with them every veth and address).
#[derive(Debug)]
pub struct Topology {
    // Field order is drop order: servers hold threads inside the namespaces.
    servers: Mutex<Vec<ServerHandle>>,
    pub client: Netns,
    pub lb: Netns,
    pub backends: Vec<Backend>,
    client_addrs: Vec<Ipv4Addr>,
    vip_on_lb: bool,
    dsr: bool,
}

impl Topology {
    pub fn builder() -> TopologyBuilder {
        TopologyBuilder::default()
    }

    pub fn client(&self) -> &Netns {
        &self.client
    }

    pub fn lb(&self) -> &Netns {
        &self.lb
    }

    /// Backend `i`, 1-based like its name.
    pub fn backend(&self, i: usize) -> Option<&Backend> {
        i.checked_sub(1).and_then(|k| self.backends.get(k))
    }

    pub fn backend_addrs(&self) -> Vec<Ipv4Addr> {
        self.backends.iter().map(|b| b.addr).collect()
    }

    pub fn vip(&self) -> Ipv4Addr {
        VIP
    }

    pub fn vip_on_lb(&self) -> bool {
        self.vip_on_lb
    }

    pub fn is_dsr(&self) -> bool {
        self.dsr
    }

    /// The first (default source) client address.
    pub fn client_addr(&self) -> Ipv4Addr {
        CLIENT_ADDR
    }

    pub fn client_addrs(&self) -> &[Ipv4Addr] {
        &self.client_addrs
    }

    /// The LB interface facing the client.
    pub fn lb_client_iface(&self) -> &str {
        LB_CLIENT_IFACE
    }

    /// The LB interfaces facing the backends, in backend order.
    pub fn lb_backend_ifaces(&self) -> Vec<String> {
        self.backends.iter().map(|b| b.lb_iface.clone()).collect()
    }

    /// Every LB interface, client side first: what `[agent] interfaces` lists.
    pub fn lb_interfaces(&self) -> Vec<String> {
        let mut v = vec![LB_CLIENT_IFACE.to_string()];
        v.extend(self.lb_backend_ifaces());
        v
    }

    /// Names of every namespace in the topology (for leak checks).
    pub fn namespace_names(&self) -> Vec<String> {
        let mut v = vec![self.client.name().to_string(), self.lb.name().to_string()];
        v.extend(self.backends.iter().map(|b| b.ns.name().to_string()));
        v
    }

    /// Starts an in-process test server in every backend namespace (name `b<i>`, HTTP on
    /// `<addr>:http_port`, UDP on `<addr>:udp_port` when given). Owned by the topology, so they
    /// stop before the namespaces go; reach them with [`Topology::server`].
    pub fn start_backends(&self, http_port: u16, udp_port: Option<u16>) -> Result<Vec<ServerInfo>> {
        let mut infos = Vec::with_capacity(self.backends.len());
        for b in &self.backends {
            // DSR backends answer on the VIP they hold on loopback, so listen on every address.
            let http_ip = if self.dsr {
                Ipv4Addr::UNSPECIFIED
            } else {
                b.addr
            };
            let cfg = ServeConfig {
                name: b.name(),
                http: Some(SocketAddr::from((http_ip, http_port))),
                udp: udp_port.map(|p| SocketAddr::from((b.addr, p))),
                tls: None,
            };
            infos.push(self.start_server_in(&b.ns, cfg)?);
        }
        Ok(infos)
    }

    /// Starts an extra in-process server in `ns` (one of this topology's namespaces), owned by
    /// the topology so it stops before the namespaces are deleted.
    pub fn start_server_in(&self, ns: &Netns, cfg: ServeConfig) -> Result<ServerInfo> {
        let handle = ServerHandle::start_in(ns, cfg)?;
        let info = handle.info().clone();
        self.lock_servers().push(handle);
        Ok(info)
    }

    /// The running server named `name` (e.g. `b1`).
    pub fn server(&self, name: &str) -> Option<ServerInfo> {
        self.lock_servers()
            .iter()
            .find(|s| s.info().name() == name)
            .map(|s| s.info().clone())
    }

    fn lock_servers(&self) -> std::sync::MutexGuard<'_, Vec<ServerHandle>> {
        // A panic while holding this lock cannot leave the Vec inconsistent; keep going.
        self.servers.lock().unwrap_or_else(|p| p.into_inner())
    }
}
