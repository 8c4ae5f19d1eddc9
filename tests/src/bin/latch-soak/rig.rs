//! What the soak runs against: the harness's client — LB — backends topology with agent A,
//! a second LB host B in its own namespace, a redis-server both replicate through, and the
//! backends as handles the soak can stop and start (the flap).
//!
//! ```text
//!  client ns ── lb ns (agent A: XDP on every veth, proxy on the VIP) ── b1, b2, b3
//!  lbb ns (agent B: XDP on a veth pair of its own, proxy on the VIP; kv /put from inside)
//!  redis-server on a Unix socket in the soak's temp directory: A and B enter only their
//!  network namespaces (the harness's setns), so both reach the same socket file.
//! ```
//!
//! B has no route to the backends: it takes table writes through its local `kv` service and
//! replication, which is what the soak checks on it. Its pools have no health monitor, so it
//! never takes a server out and never removes sessions on its own.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use latch_tests::config::{self, HealthMonitor};
use latch_tests::{
    AgentSettings, ChildGuard, DataScript, LatchAgent, LatchConfig, Netns, Pool, ServeConfig,
    ServerHandle, Topology, VirtualService,
};

pub const HTTP_PORT: u16 = 8080;
pub const UDP_PORT: u16 = 9000;
/// The HTTP service with the JSESSIONID scripts.
pub const SHOP_PORT: u16 = 80;
/// The HTTP service whose script stores and reads entries named by request headers.
pub const KV_PORT: u16 = 81;
/// Layer-4 TCP (to the backends' HTTP port) and UDP services, both in XDP.
pub const L4_TCP_PORT: u16 = 82;
pub const UDP_VS_PORT: u16 = 53;
/// The backend the soak stops and starts (1-based); the known table entries never point at it,
/// since a server taken out loses its sessions by design (`Shared::forget_sessions_on`).
pub const FLAPPED: usize = 3;
pub const BACKENDS: usize = 3;
/// JSESSIONID sessions live this long without a request.
pub const SESSION_LIFETIME_S: u32 = 60;
/// Known entries (`kv` service) live this long: longer than one fault and its check.
pub const KNOWN_LIFETIME_S: u32 = 90;
const REDIS: &str = "redis-server";

/// The `kv` service's script: `/put` stores X-Key = X-Val, `/get` answers the value or `-`.
fn kv_script() -> DataScript {
    DataScript::request(&format!(
        r#"local key = avi.http.get_header("X-Key")
local path = avi.http.get_path()
if path == "/put" then
  avi.vs.table_insert(key, avi.http.get_header("X-Val"), {KNOWN_LIFETIME_S})
  avi.http.response(200, {{}}, "ok")
elseif path == "/get" then
  avi.http.response(200, {{}}, avi.vs.table_lookup(key, 0) or "-")
end
"#
    ))
}

/// A response script whose only effect is a header naming the config generation, so every
/// reload changes a script and the service's VMs are built anew.
fn generation_script(generation: u64) -> DataScript {
    DataScript::response(&format!(
        "avi.http.add_header(\"X-Soak-Gen\", \"{generation}\")\n"
    ))
}

fn vip(port: u16) -> SocketAddr {
    SocketAddr::from((latch_tests::topology::VIP, port))
}

fn servers(port: u16) -> Vec<SocketAddr> {
    (1..=BACKENDS)
        .map(|i| SocketAddr::from((latch_tests::topology::backend_addr(i), port)))
        .collect()
}

fn replication(url: &str, node: &str) -> config::Replication {
    config::Replication::new(
        url,
        node,
        Duration::from_secs(1),
        Duration::from_millis(500),
    )
}

/// Field order is drop order: the processes stop before the namespaces and the directory go.
pub struct Rig {
    pub live: Live,
    pub net: Net,
}

/// What stays put for the whole run: the namespaces and the temp directory (wrk scripts, the
/// Redis socket). The load borrows it while the faults change [`Live`].
pub struct Net {
    pub topo: Topology,
    pub lbb: Netns,
    dir: tempdir::Dir,
}

impl Net {
    pub fn tmp(&self) -> &Path {
        self.dir.path()
    }

    fn redis_sock(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    fn redis_url(&self) -> String {
        format!("unix://{}", self.redis_sock().display())
    }
}

/// The processes the faults stop and start: agents A and B, the backends, redis-server.
/// Field order is drop order: agents stop before the servers and Redis.
pub struct Live {
    pub a: LatchAgent,
    pub b: LatchAgent,
    backends: Vec<Option<ServerHandle>>,
    redis: Option<ChildGuard>,
    generation: u64,
}

impl Rig {
    pub fn build(latch: &Path) -> Result<Self> {
        let topo = Topology::builder().backends(BACKENDS).build()?;
        let lbb = Netns::new("lbb")?;
        lbb.ip(&[
            "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
        ])?;
        for i in ["eth0", "eth1"] {
            lbb.ip(&["link", "set", i, "up"])?;
            lbb.exec(&["ethtool", "-K", i, "tx", "off"])?;
        }
        lbb.ip(&[
            "addr",
            "add",
            &format!("{}/32", latch_tests::topology::VIP),
            "dev",
            "lo",
        ])?;
        let net = Net {
            dir: tempdir::Dir::new()?,
            topo,
            lbb,
        };
        let mut live = Live {
            a: LatchAgent::prepare(latch, net.topo.lb())?,
            b: LatchAgent::prepare(latch, &net.lbb)?,
            backends: Vec::new(),
            redis: None,
            generation: 0,
        };
        for i in 1..=BACKENDS {
            let h = live.start_backend(&net, i)?;
            live.backends.push(Some(h));
        }
        live.start_redis(&net)?;
        live.write_configs(&net)?;
        live.a.start().context("starting agent A")?;
        live.b.start().context("starting agent B")?;
        Ok(Rig { live, net })
    }
}

impl Live {
    fn config_a(&self, net: &Net) -> LatchConfig {
        let config = LatchConfig::new(
            AgentSettings::new(&net.topo.lb_interfaces())
                .bpffs_dir(self.a.bpffs_dir())
                .state_file(&self.a.dir().join("servers.json")),
        )
        .pool(
            Pool::new("web", servers(HTTP_PORT)).health_monitor(
                HealthMonitor::http("/healthz", Duration::from_millis(300))
                    .timeout(Duration::from_millis(200)),
            ),
        )
        .pool(Pool::new("dns", servers(UDP_PORT)))
        .virtual_service(VirtualService::tcp("l4-tcp", vip(L4_TCP_PORT), "web"))
        .virtual_service(VirtualService::udp("l4-udp", vip(UDP_VS_PORT), "dns"));
        self.http_services(config)
            .replication(replication(&net.redis_url(), "lb-a"))
    }

    /// The HTTP services both hosts run: `shop` (JSESSIONID) and `kv`, with this generation.
    fn http_services(&self, config: LatchConfig) -> LatchConfig {
        config
            .virtual_service(
                VirtualService::http("shop", vip(SHOP_PORT), "web")
                    .datascripts(latch_tests::jsession_scripts(SESSION_LIFETIME_S))
                    .datascript(generation_script(self.generation)),
            )
            .virtual_service(
                VirtualService::http("kv", vip(KV_PORT), "web")
                    .datascript(kv_script())
                    .datascript(generation_script(self.generation)),
            )
    }

    fn config_b(&self, net: &Net) -> LatchConfig {
        let config = LatchConfig::new(
            AgentSettings::new(&["eth0".to_string()])
                .bpffs_dir(self.b.bpffs_dir())
                .state_file(&self.b.dir().join("servers.json")),
        )
        .pool(Pool::new("web", servers(HTTP_PORT)));
        self.http_services(config)
            .replication(replication(&net.redis_url(), "lb-b"))
    }

    fn write_configs(&self, net: &Net) -> Result<()> {
        self.a.write_latch_config(&self.config_a(net))?;
        self.b.write_latch_config(&self.config_b(net))?;
        Ok(())
    }

    /// The next config generation written for both hosts (a script changes), for a reload.
    pub fn next_generation(&mut self, net: &Net) -> Result<u64> {
        self.generation += 1;
        self.write_configs(net)?;
        Ok(self.generation)
    }

    fn start_backend(&self, net: &Net, i: usize) -> Result<ServerHandle> {
        let b = net
            .topo
            .backend(i)
            .with_context(|| format!("no backend {i}"))?;
        Ok(ServerHandle::start_in(
            &b.ns,
            ServeConfig {
                name: b.name(),
                http: Some(SocketAddr::from((b.addr, HTTP_PORT))),
                udp: Some(SocketAddr::from((b.addr, UDP_PORT))),
                tls: None,
            },
        )?)
    }

    /// Stops backend `i` (its sockets close: connects are refused, datagrams unanswered).
    pub fn stop_backend(&mut self, i: usize) -> Result<()> {
        if let Some(h) = self.backends.get_mut(i - 1).and_then(Option::take) {
            h.stop()?;
        }
        Ok(())
    }

    pub fn start_backend_again(&mut self, net: &Net, i: usize) -> Result<()> {
        let h = self.start_backend(net, i)?;
        if let Some(slot) = self.backends.get_mut(i - 1) {
            *slot = Some(h);
        }
        Ok(())
    }

    pub fn start_redis(&mut self, net: &Net) -> Result<()> {
        let sock = net.redis_sock().display().to_string();
        let mut cmd = Command::new(REDIS);
        cmd.args([
            "--port",
            "0",
            "--unixsocket",
            &sock,
            "--unixsocketperm",
            "700",
        ])
        .args(["--save", "", "--appendonly", "no"]);
        let redis = latch_tests::start_redis(&mut cmd)?;
        self.redis = Some(redis);
        Ok(())
    }

    pub fn stop_redis(&mut self) -> Result<()> {
        if let Some(r) = self.redis.take() {
            r.terminate(Duration::from_secs(5))?;
        }
        Ok(())
    }
}

/// A private temporary directory removed on drop.
mod tempdir {
    use std::path::{Path, PathBuf};

    use anyhow::{Context, Result};

    pub struct Dir(PathBuf);

    impl Dir {
        pub fn new() -> Result<Self> {
            let p = std::env::temp_dir().join(format!("latch-soak-{}", std::process::id()));
            std::fs::create_dir_all(&p).with_context(|| format!("create {}", p.display()))?;
            Ok(Self(p))
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
