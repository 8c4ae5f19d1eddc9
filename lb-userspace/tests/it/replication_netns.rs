//! Table replication through Redis (`[replication]`), against Debian's redis-server.
//!
//! `two_hosts_share_through_a_local_redis` runs the library in-process against a redis-server
//! on a Unix socket (no network at all). The namespace tests run two `latch run` hosts, a
//! redis-server and two backends, each in its own namespace, joined by a bridge in a further
//! namespace; clients are threads inside the LB namespaces. The cluster is generic over the
//! address family: the `ipv6_` test runs it all over IPv6 (Redis too), the others over IPv4.
//! They need root; every test skips without redis-server.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use latch::agent::fastpath::{FastPath, PinSink, ServiceAddr};
use latch::config::ReplicationConfig;
use latch::dataplane::{DataplaneError, PinRecord};
use latch::datascript::ScriptTableObserver;
use latch::proxy::hooks::{RequestId, TxnInfo};
use latch::replication::Replication;
use latch::tables::{
    Mirror, Mirrors, MonotonicClock, NoMirror, RemoveReason, TableLimits, TableStore, VsTables,
};
use latch_tests::config::{self, AgentSettings, DataScript, LatchConfig, Pool, VirtualService};
use latch_tests::{ChildGuard, LatchAgent, Netns, ServeConfig, ServerHandle, http_get};
use parking_lot::Mutex;

use crate::LATCH;
const REDIS: &str = "/usr/bin/redis-server";
/// How long a change may take to show on the other host before the test fails.
const CONVERGE: Duration = Duration::from_secs(8);

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn redis_missing() -> bool {
    if Path::new(REDIS).exists() {
        return false;
    }
    eprintln!("skipped: {REDIS} is not installed (apt-get install redis-server)");
    true
}

/// Polls `f` every 20 ms until it holds or `within` has passed.
fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start_redis(cmd: &mut Command) -> Result<ChildGuard, Box<dyn std::error::Error>> {
    Ok(latch_tests::start_redis(cmd)?)
}

fn repl_config(url: &str, node: &str) -> ReplicationConfig {
    ReplicationConfig {
        redis_url: url.to_string(),
        node_id: node.to_string(),
        connect_timeout: Duration::from_secs(1),
        command_timeout: Duration::from_millis(500),
    }
}

/// Records what reaches a host's local mirror (the kernel mirror's place).
#[derive(Default)]
struct Rec(Mutex<Vec<String>>);

impl Mirror for Rec {
    fn upsert(&self, vs: &str, table: &str, key: &str, value: &str, _: u64) {
        self.0.lock().push(format!("up {vs}/{table}/{key}={value}"));
    }
    fn remove(&self, vs: &str, table: &str, key: &str, reason: RemoveReason) {
        self.0
            .lock()
            .push(format!("rm {vs}/{table}/{key} {reason:?}"));
    }
}

struct Host {
    tables: Arc<TableStore>,
    shop: Arc<VsTables>,
    mirror: Arc<Rec>,
    replication: Replication,
}

fn host(url: &str, node: &str) -> Result<Host, Box<dyn std::error::Error>> {
    let mirror = Arc::new(Rec::default());
    let tables = Arc::new(TableStore::new(TableLimits::default(), Arc::new(NoMirror)));
    tables.set_mirror(mirror.clone());
    let shop = tables.vs("shop");
    let replication = Replication::start(
        &repl_config(url, node),
        Arc::clone(&tables),
        Arc::new(MonotonicClock),
    )?;
    Ok(Host {
        tables,
        shop,
        mirror,
        replication,
    })
}

fn now() -> u64 {
    use latch::tables::Clock;
    MonotonicClock.now_ns()
}

fn value(h: &Host, key: &str) -> Option<String> {
    h.shop.get("", key, now()).map(|e| e.value)
}

/// A redis-server on a Unix socket in `dir`, without persistence: the command that starts it
/// (again after a stop) and its URL.
fn local_redis(dir: &Path) -> (impl Fn() -> Command, String) {
    let sock_s = dir.join("redis.sock").display().to_string();
    let url = format!("unix://{sock_s}");
    let cmd = move || {
        let mut c = Command::new(REDIS);
        c.args(["--port", "0", "--unixsocket", &sock_s])
            .args(["--save", "", "--appendonly", "no"]);
        c
    };
    (cmd, url)
}

#[test]
fn two_hosts_share_through_a_local_redis() -> TestResult {
    if redis_missing() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let (redis_cmd, url) = local_redis(dir.path());
    let mut redis = Some(start_redis(&mut redis_cmd())?);
    let a = host(&url, "a")?;
    let b = host(&url, "b")?;

    // An insert on A reaches B's table and B's local mirror; A hears no echo of its own.
    a.shop.insert("", "s1", "192.0.2.11", 60, now())?;
    assert!(eventually(CONVERGE, || value(&b, "s1").as_deref()
        == Some("192.0.2.11")));
    assert!(
        b.mirror
            .0
            .lock()
            .contains(&"up shop//s1=192.0.2.11".to_string())
    );
    assert_eq!(a.replication.stats().applied, 0);
    // A remove on A reaches B and its mirror.
    assert!(a.shop.remove("", "s1", now()));
    assert!(eventually(CONVERGE, || value(&b, "s1").is_none()));
    assert!(
        b.mirror
            .0
            .lock()
            .contains(&"rm shop//s1 Removed".to_string())
    );

    // Insert-if-absent holds across hosts: concurrent inserts of one key converge on one value.
    let keys: Vec<String> = (0..20).map(|i| format!("race{i}")).collect();
    std::thread::scope(|s| {
        s.spawn(|| {
            for k in &keys {
                let _ = a.shop.insert("", k, "from-a", 60, now());
            }
        });
        s.spawn(|| {
            for k in &keys {
                let _ = b.shop.insert("", k, "from-b", 60, now());
            }
        });
    });
    assert!(
        eventually(CONVERGE, || keys.iter().all(|k| {
            let (va, vb) = (value(&a, k), value(&b, k));
            va.is_some() && va == vb
        })),
        "not converged: {:?}",
        keys.iter()
            .map(|k| (value(&a, k), value(&b, k)))
            .collect::<Vec<_>>()
    );

    // A host that joins loads the entries before start returns.
    let c = host(&url, "c")?;
    for k in &keys {
        assert_eq!(value(&c, k), value(&a, k), "{k}");
    }
    drop(c);

    // Redis goes away: tables keep working locally; a change made meanwhile reaches the
    // other host once Redis is back (empty: it kept nothing).
    drop(redis.take());
    assert!(eventually(CONVERGE, || !a.replication.stats().connected));
    a.shop.insert("", "offline", "192.0.2.12", 60, now())?;
    assert_eq!(value(&a, "offline").as_deref(), Some("192.0.2.12"));
    redis = Some(start_redis(&mut redis_cmd())?);
    assert!(eventually(CONVERGE, || value(&b, "offline").as_deref()
        == Some("192.0.2.12")));
    assert!(a.replication.stats().reconnects >= 1);
    // ... and entries both hosts held survive in Redis again (reconciled).
    let d = host(&url, "d")?;
    assert_eq!(value(&d, "race0"), value(&a, "race0"));
    assert!(d.tables.vs_names().contains(&"shop".to_string()));
    drop(redis);
    Ok(())
}

/// Records the fast path's kernel calls (the kernel's place).
#[derive(Default)]
struct PinRec(Mutex<Vec<String>>);

impl PinRec {
    fn has(&self, call: &str) -> bool {
        self.0.lock().iter().any(|c| c == call)
    }
}

impl PinSink for PinRec {
    fn pin(
        &self,
        _: ServiceAddr,
        client: IpAddr,
        server: SocketAddr,
        _: u64,
    ) -> Result<(), DataplaneError> {
        self.0.lock().push(format!("pin {client} {server}"));
        Ok(())
    }
    fn unpin(&self, _: ServiceAddr, client: IpAddr) {
        self.0.lock().push(format!("unpin {client}"));
    }
    fn record(&self, _: &str, client: IpAddr, _: &str, key: &str) {
        self.0.lock().push(format!("record {client} {key}"));
    }
    fn forget(&self, _: &str, client: IpAddr, _: &str, key: &str) {
        self.0.lock().push(format!("forget {client} {key}"));
    }
    fn forget_hashed(&self, _: &PinRecord) {}
}

/// Host B of an IPv6 fast-path service: shop on [2001:db8:f::10]:80 over two IPv6 servers.
const SHOP6: &str = r#"[agent]
interfaces = ["eth0"]
[[pool]]
name = "web"
servers = ["[2001:db8:b1::2]:8080", "[2001:db8:b2::2]:8080"]
[[virtual_service]]
name = "shop"
listen = "[2001:db8:f::10]:80"
type = "http"
pool = "web"
fast_path = "client_ip"
"#;

/// A session stored on host A whose value is an IPv6 `[addr]:port` server reaches host B
/// intact; a client's request on B that looks it up (the script's observer) pins the client
/// to that server on B, and A's removal, replicated, unpins it there. The kernel's place is a
/// recorder: this covers the fast-path pin on B, which the namespace test
/// `ipv6_sessions_and_removals_cross_hosts_and_survive_a_redis_restart` (real hosts, proxied
/// HTTP, no fast path) does not.
#[test]
fn an_ipv6_server_value_replicates_and_pins_on_the_other_host() -> TestResult {
    if redis_missing() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let (redis_cmd, url) = local_redis(dir.path());
    let _redis = start_redis(&mut redis_cmd())?;
    let a = host(&url, "a")?;
    let b = host(&url, "b")?;
    let pins = Arc::new(PinRec::default());
    let fastpath = Arc::new(FastPath::new(pins.clone()));
    fastpath.configure(&latch::config::parse(SHOP6, Path::new("b.toml"))?);
    b.tables.set_mirror(Arc::new(Mirrors(vec![
        b.mirror.clone() as Arc<dyn Mirror>,
        fastpath.clone() as Arc<dyn Mirror>,
    ])));

    let server = "[2001:db8:b1::2]:8080";
    a.shop.insert("", "s6", server, 60, now())?;
    assert!(eventually(CONVERGE, || value(&b, "s6").as_deref() == Some(server)));
    let entry = b.shop.get("", "s6", now()).ok_or("no entry on B")?;
    let txn = TxnInfo {
        vs_name: "shop".into(),
        vs_addr: "[2001:db8:f::10]:80".parse()?,
        client: "[2001:db8:c::100]:40000".parse()?,
        request_id: RequestId(1),
        tls: None,
    };
    fastpath.upserted(&txn, &entry);
    assert_eq!(
        *pins.0.lock(),
        [
            "record 2001:db8:c::100 s6",
            &format!("pin 2001:db8:c::100 {server}")
        ]
    );
    assert_eq!(fastpath.pinned_clients("shop"), 1);

    assert!(a.shop.remove("", "s6", now()));
    assert!(
        eventually(CONVERGE, || pins.has("unpin 2001:db8:c::100")),
        "{:?}",
        pins.0.lock()
    );
    assert!(pins.has("forget 2001:db8:c::100 s6"));
    assert_eq!(fastpath.pinned_clients("shop"), 0);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Namespaces: two LB hosts, Redis and two backends on one bridge, all over one address family.

/// The address family a cluster runs on. Host `n` of the bridge's subnet is 192.0.2.n/24 or
/// in 2001:db8:2::/64 (`n` the last group); the VIP, on each LB's loopback, 198.51.100.10 or
/// 2001:db8:f::10.
#[derive(Clone, Copy, Debug)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn host(self, n: u8) -> IpAddr {
        match self {
            Family::V4 => Ipv4Addr::new(192, 0, 2, n).into(),
            Family::V6 => Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, n.into()).into(),
        }
    }

    fn vip(self) -> IpAddr {
        match self {
            Family::V4 => Ipv4Addr::new(198, 51, 100, 10).into(),
            Family::V6 => Ipv6Addr::new(0x2001, 0xdb8, 0xf, 0, 0, 0, 0, 0x10).into(),
        }
    }

    /// The bridge subnet's and a single address's prefix lengths.
    fn prefixes(self) -> (u8, u8) {
        match self {
            Family::V4 => (24, 32),
            Family::V6 => (64, 128),
        }
    }
}

/// Host numbers on the bridge's subnet.
const LB_HOSTS: [u8; 2] = [1, 2];
const REDIS_HOST: u8 = 50;
const BACKEND_HOSTS: [u8; 2] = [11, 12];
const HTTP_PORT: u16 = 8080;
const REDIS_PORT: u16 = 6379;

/// The IPv6 session scripts: the seed's request script, and a response script that stores the
/// server as `[addr]:port` (which `avi.pool.select` takes back) and shows in `X-Stored` the
/// value the table holds for the request's cookie (on the other host: the replicated one).
fn session_scripts(family: Family) -> [DataScript; 2] {
    let scripts = latch_tests::jsession_scripts(60);
    match family {
        Family::V4 => scripts,
        Family::V6 => {
            let [request, _] = scripts;
            let response = DataScript::response(
                r#"local session = avi.http.get_cookie("JSESSIONID", avi.HTTP_REQUEST)
if session then
  avi.http.add_header("X-Stored", avi.vs.table_lookup(session, 0) or "-")
end
local id = avi.http.get_cookie("JSESSIONID")
if id then
  local ip, port = avi.pool.get_server_info()
  avi.vs.table_insert(id, string.format("[%s]:%d", ip, port), 60)
end
avi.http.add_header("X-Persist", tostring(avi.vs.reqvar.hit))
"#,
            );
            [request, response]
        }
    }
}

/// The seed's JSESSIONID scripts (as in http_netns.rs, a longer lifetime; IPv6 storing
/// `[addr]:port`), and a `kv` virtual service whose script stores and reads entries named by
/// request headers.
fn config(lb: &LatchAgent, node: &str, family: Family) -> LatchConfig {
    let servers = BACKEND_HOSTS.map(|n| SocketAddr::new(family.host(n), HTTP_PORT));
    let kv_script = DataScript::request(
        r#"local key = avi.http.get_header("X-Key")
local path = avi.http.get_path()
if path == "/put" then
  avi.vs.table_insert(key, avi.http.get_header("X-Val"), 60)
  avi.http.response(200, {}, "ok")
elseif path == "/get" then
  avi.http.response(200, {}, avi.vs.table_lookup(key, 0) or "-")
end
"#,
    );
    let redis = SocketAddr::new(family.host(REDIS_HOST), REDIS_PORT);
    LatchConfig::new(AgentSettings::new(&["eth0".to_string()]).bpffs_dir(lb.bpffs_dir()))
        .pool(Pool::new("web", servers))
        .virtual_service(
            VirtualService::http("shop", SocketAddr::new(family.vip(), 80), "web")
                .datascripts(session_scripts(family)),
        )
        .virtual_service(
            VirtualService::http("kv", SocketAddr::new(family.vip(), 81), "web")
                .datascript(kv_script),
        )
        .replication(config::Replication::new(
            &format!("redis://{redis}"),
            node,
            Duration::from_secs(1),
            Duration::from_millis(300),
        ))
}

/// GET to `vip` from a client inside `ns`.
fn get_in(
    ns: &Netns,
    vip: IpAddr,
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<latch_tests::Response, String> {
    ns.run(|| http_get(SocketAddr::new(vip, port), path, headers).map_err(|e| e.to_string()))
}

/// Fields drop in order: agents, servers and Redis stop before their namespaces go.
struct Cluster {
    family: Family,
    agents: Vec<LatchAgent>,
    servers: Vec<ServerHandle>,
    redis: Option<ChildGuard>,
    lbs: Vec<Netns>,
    redis_ns: Netns,
    _backends: Vec<Netns>,
    _bridge: Netns,
}

/// Links `ns`'s eth0 to the bridge as host `n`: addresses without duplicate address detection
/// (usable at once), TX checksum offload off on both veth ends as the other IPv6 namespace
/// tests have it.
fn attach(bridge: &Netns, ns: &Netns, port: &str, family: Family, n: u8) -> TestResult {
    bridge.ip(&[
        "link",
        "add",
        port,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        ns.name(),
    ])?;
    bridge.ip(&["link", "set", port, "master", "br0", "up"])?;
    bridge.exec(&["ethtool", "-K", port, "tx", "off"])?;
    let addr = format!("{}/{}", family.host(n), family.prefixes().0);
    ns.ip(&["addr", "add", &addr, "dev", "eth0", "nodad"])?;
    ns.exec(&["ethtool", "-K", "eth0", "tx", "off"])?;
    ns.ip(&["link", "set", "eth0", "up"])?;
    Ok(())
}

impl Cluster {
    fn build(family: Family) -> Result<Self, Box<dyn std::error::Error>> {
        let bridge = Netns::new("rbr")?;
        let lbs = vec![Netns::new("rlba")?, Netns::new("rlbb")?];
        let redis_ns = Netns::new("redis")?;
        let backends = vec![Netns::new("rb1")?, Netns::new("rb2")?];
        bridge.ip(&["link", "add", "br0", "type", "bridge"])?;
        bridge.ip(&["link", "set", "br0", "up"])?;
        let vip = format!("{}/{}", family.vip(), family.prefixes().1);
        for (i, (ns, n)) in lbs.iter().zip(LB_HOSTS).enumerate() {
            attach(&bridge, ns, &format!("plb{i}"), family, n)?;
            ns.ip(&["addr", "add", &vip, "dev", "lo"])?;
        }
        attach(&bridge, &redis_ns, "predis", family, REDIS_HOST)?;
        for (i, (ns, n)) in backends.iter().zip(BACKEND_HOSTS).enumerate() {
            attach(&bridge, ns, &format!("pb{i}"), family, n)?;
        }
        let mut cluster = Cluster {
            family,
            agents: Vec::new(),
            servers: Vec::new(),
            redis: None,
            lbs,
            redis_ns,
            _backends: Vec::new(),
            _bridge: bridge,
        };
        for (i, (ns, n)) in backends.iter().zip(BACKEND_HOSTS).enumerate() {
            cluster.servers.push(ServerHandle::start_in(
                ns,
                ServeConfig {
                    name: format!("b{}", i + 1),
                    http: Some(SocketAddr::new(family.host(n), HTTP_PORT)),
                    udp: None,
                    tls: None,
                },
            )?);
        }
        cluster._backends = backends;
        cluster.start_redis()?;
        for (ns, node) in cluster.lbs.iter().zip(["lb-a", "lb-b"]) {
            let mut agent = LatchAgent::prepare(LATCH.as_ref(), ns)?;
            agent.write_latch_config(&config(&agent, node, family))?;
            agent.start()?;
            cluster.agents.push(agent);
        }
        Ok(cluster)
    }

    /// (Re)starts the redis-server, empty, on its host address.
    fn start_redis(&mut self) -> TestResult {
        let bind = self.family.host(REDIS_HOST).to_string();
        let port = REDIS_PORT.to_string();
        self.redis = Some(start_redis(&mut self.redis_ns.command(&[
            REDIS,
            "--port",
            &port,
            "--bind",
            &bind,
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
        ]))?);
        Ok(())
    }

    /// GET on host `lb` (0 = A, 1 = B) from a client inside its namespace.
    fn get(
        &self,
        lb: usize,
        port: u16,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<latch_tests::Response, String> {
        get_in(&self.lbs[lb], self.family.vip(), port, path, headers)
    }

    fn with_cookie(
        &self,
        lb: usize,
        path: &str,
        cookie: &str,
    ) -> Result<latch_tests::Response, String> {
        let header = format!("JSESSIONID={cookie}");
        self.get(lb, 80, path, &[("cookie", header.as_str())])
    }

    /// Logs in through host `lb`: the session cookie and the backend that owns it.
    fn login(&self, lb: usize) -> Result<(String, String), String> {
        let r = self.get(lb, 80, "/login", &[])?;
        let cookie = r.set_cookie("JSESSIONID").ok_or("no JSESSIONID")?;
        let owner = r.backend.ok_or("no X-Backend")?;
        Ok((cookie, owner))
    }

    /// Whether host `lb` routes `cookie` by a table hit to `owner` (a few requests in a row).
    fn honours(&self, lb: usize, cookie: &str, owner: &str) -> bool {
        (0..4).all(|_| {
            self.with_cookie(lb, "/", cookie).is_ok_and(|r| {
                r.header("x-persist") == Some("true") && r.backend.as_deref() == Some(owner)
            })
        })
    }

    /// The address of the backend the test server calls `name` (b1, b2).
    fn server_named(&self, name: &str) -> Result<SocketAddr, String> {
        let i = name
            .strip_prefix('b')
            .and_then(|n| n.parse::<usize>().ok())
            .and_then(|n| BACKEND_HOSTS.get(n.wrapping_sub(1)))
            .ok_or(format!("no backend {name}"))?;
        Ok(SocketAddr::new(self.family.host(*i), HTTP_PORT))
    }

    fn logs(&self) -> String {
        self.agents
            .iter()
            .map(LatchAgent::log)
            .collect::<Vec<_>>()
            .join("\n----\n")
    }
}

/// The second half of both two-host tests: Redis stops and comes back empty, then B restarts.
fn survive_a_redis_restart(cl: &mut Cluster) -> TestResult {
    // Redis killed: both hosts keep answering, and sessions stay local meanwhile.
    drop(cl.redis.take());
    let (offline_cookie, offline_owner) = cl.login(1)?;
    for lb in 0..2 {
        for _ in 0..5 {
            assert_eq!(cl.get(lb, 80, "/", &[])?.status, 200);
        }
    }
    assert!(cl.honours(1, &offline_cookie, &offline_owner));

    // Redis back (empty): what B learned meanwhile and what it learns now both reach A.
    cl.start_redis()?;
    let (cookie, owner) = cl.login(1)?;
    assert!(
        eventually(CONVERGE, || cl.honours(0, &cookie, &owner)),
        "A does not honour B's session after the Redis restart\n{}",
        cl.logs()
    );
    assert!(
        eventually(CONVERGE, || cl.honours(0, &offline_cookie, &offline_owner)),
        "B's session learned while Redis was down did not reach A\n{}",
        cl.logs()
    );

    // What B applied from A reached B's kernel mirror too: with Redis gone again, a restarted
    // B restores A's session from its pinned map alone.
    let (cookie, owner) = cl.login(0)?;
    assert!(eventually(CONVERGE, || cl.honours(1, &cookie, &owner)));
    drop(cl.redis.take());
    cl.agents[1].stop(Duration::from_secs(10))?;
    cl.agents[1].start()?;
    assert!(
        cl.honours(1, &cookie, &owner),
        "restarted B lost A's session\n{}",
        cl.logs()
    );
    Ok(())
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn sessions_and_removals_cross_hosts_and_survive_a_redis_restart() -> TestResult {
    if redis_missing() {
        return Ok(());
    }
    let mut cl = Cluster::build(Family::V4)?;

    // A session learned through A is honoured by B.
    let (cookie, owner) = cl.login(0)?;
    assert!(cl.honours(0, &cookie, &owner));
    assert!(
        eventually(CONVERGE, || cl.honours(1, &cookie, &owner)),
        "B does not honour A's session\n{}",
        cl.logs()
    );
    // A remove on A reaches B.
    cl.with_cookie(0, "/logout", &cookie)?;
    assert!(
        eventually(CONVERGE, || cl
            .with_cookie(1, "/", &cookie)
            .is_ok_and(|r| r.header("x-persist") == Some("false"))),
        "B still routes A's removed session\n{}",
        cl.logs()
    );

    survive_a_redis_restart(&mut cl)
}

/// A session made through host `made_on` is honoured by the other host, whose table holds
/// the server's `[addr]:port` from the first; its removal through host `removed_on` reaches
/// the other host of the two.
fn session_crosses(cl: &Cluster, made_on: usize, removed_on: usize) -> TestResult {
    let stored_on = |lb: usize, cookie: &str| {
        cl.with_cookie(lb, "/", cookie)
            .ok()
            .and_then(|r| r.header("x-stored").map(str::to_string))
    };
    let (cookie, owner) = cl.login(made_on)?;
    assert!(cl.honours(made_on, &cookie, &owner), "{}", cl.logs());
    let other = 1 - made_on;
    assert!(
        eventually(CONVERGE, || cl.honours(other, &cookie, &owner)),
        "host {other} does not honour host {made_on}'s session\n{}",
        cl.logs()
    );
    let server = cl.server_named(&owner)?;
    assert_eq!(stored_on(other, &cookie), Some(server.to_string()));

    cl.with_cookie(removed_on, "/logout", &cookie)?;
    let other = 1 - removed_on;
    assert!(
        eventually(CONVERGE, || stored_on(other, &cookie).as_deref()
            == Some("-")),
        "host {other} still holds the session host {removed_on} removed\n{}",
        cl.logs()
    );
    assert_eq!(
        cl.with_cookie(other, "/", &cookie)?.header("x-persist"),
        Some("false")
    );
    Ok(())
}

/// The IPv6 twin: VIPs, servers, clients and Redis all on IPv6 (2001:db8:2::/64 on the bridge).
/// A session made on either host is honoured by the other, from the server's `[addr]:port`
/// it stored; a removal crosses each way; then the IPv4 test's Redis restart and B restart.
#[test]
#[ignore = "needs root: creates network namespaces"]
fn ipv6_sessions_and_removals_cross_hosts_and_survive_a_redis_restart() -> TestResult {
    if redis_missing() {
        return Ok(());
    }
    let mut cl = Cluster::build(Family::V6)?;
    session_crosses(&cl, 0, 1)?;
    session_crosses(&cl, 1, 0)?;
    survive_a_redis_restart(&mut cl)
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn concurrent_inserts_on_two_hosts_converge_on_one_value() -> TestResult {
    if redis_missing() {
        return Ok(());
    }
    let cl = Cluster::build(Family::V4)?;
    let keys: Vec<String> = (0..20).map(|i| format!("k{i}")).collect();
    std::thread::scope(|s| {
        for (lb, val) in [(0, "a"), (1, "b")] {
            let ns = &cl.lbs[lb];
            let (keys, vip) = (&keys, cl.family.vip());
            s.spawn(move || {
                for k in keys {
                    let _ = get_in(ns, vip, 81, "/put", &[("x-key", k), ("x-val", val)]);
                }
            });
        }
    });
    let read = |lb: usize, k: &str| {
        cl.get(lb, 81, "/get", &[("x-key", k)])
            .map(|r| r.body_text())
            .unwrap_or_default()
    };
    let converged = eventually(CONVERGE, || {
        keys.iter().all(|k| {
            let (a, b) = (read(0, k), read(1, k));
            (a == "a" || a == "b") && a == b
        })
    });
    assert!(
        converged,
        "{:?}\n{}",
        keys.iter()
            .map(|k| (read(0, k), read(1, k)))
            .collect::<Vec<_>>(),
        cl.logs()
    );
    Ok(())
}
