//! Table replication through Redis (`[replication]`), against Debian's redis-server.
//!
//! `two_hosts_share_through_a_local_redis` runs the library in-process against a redis-server
//! on a Unix socket (no network at all). The namespace tests run two `latch run` hosts, a
//! redis-server and two backends, each in its own namespace, joined by a bridge in a further
//! namespace; clients are threads inside the LB namespaces. They need root; every test skips
//! without redis-server.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
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
/// to that server on B, and A's removal, replicated, unpins it there.
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
// Namespaces: two LB hosts, Redis and two backends on one bridge.

const LB_ADDRS: [Ipv4Addr; 2] = [Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 2)];
const REDIS_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 50);
const BACKEND_ADDRS: [Ipv4Addr; 2] = [Ipv4Addr::new(192, 0, 2, 11), Ipv4Addr::new(192, 0, 2, 12)];
const VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const HTTP_PORT: u16 = 8080;

/// The seed's JSESSIONID scripts (as in http_netns.rs, a longer lifetime), and a `kv` virtual
/// service whose script stores and reads entries named by request headers.
fn config(lb: &LatchAgent, node: &str) -> LatchConfig {
    let servers = BACKEND_ADDRS.map(|b| SocketAddr::from((b, HTTP_PORT)));
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
    LatchConfig::new(AgentSettings::new(&["eth0".to_string()]).bpffs_dir(lb.bpffs_dir()))
        .pool(Pool::new("web", servers))
        .virtual_service(
            VirtualService::http("shop", SocketAddr::from((VIP, 80)), "web")
                .datascripts(latch_tests::jsession_scripts(60)),
        )
        .virtual_service(
            VirtualService::http("kv", SocketAddr::from((VIP, 81)), "web").datascript(kv_script),
        )
        .replication(config::Replication::new(
            &format!("redis://{REDIS_ADDR}:6379"),
            node,
            Duration::from_secs(1),
            Duration::from_millis(300),
        ))
}

/// GET from a client inside `ns`.
fn get_in(
    ns: &Netns,
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<latch_tests::Response, String> {
    ns.run(|| http_get(SocketAddr::from((VIP, port)), path, headers).map_err(|e| e.to_string()))
}

/// Fields drop in order: agents, servers and Redis stop before their namespaces go.
struct Cluster {
    agents: Vec<LatchAgent>,
    servers: Vec<ServerHandle>,
    redis: Option<ChildGuard>,
    lbs: Vec<Netns>,
    redis_ns: Netns,
    _backends: Vec<Netns>,
    _bridge: Netns,
}

fn attach(bridge: &Netns, ns: &Netns, port: &str, addr: Ipv4Addr) -> TestResult {
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
    ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
    ns.ip(&["link", "set", "eth0", "up"])?;
    Ok(())
}

fn redis_in(ns: &Netns) -> Result<ChildGuard, Box<dyn std::error::Error>> {
    let bind = REDIS_ADDR.to_string();
    start_redis(&mut ns.command(&[
        REDIS,
        "--port",
        "6379",
        "--bind",
        &bind,
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "no",
    ]))
}

impl Cluster {
    fn build() -> Result<Self, Box<dyn std::error::Error>> {
        let bridge = Netns::new("rbr")?;
        let lbs = vec![Netns::new("rlba")?, Netns::new("rlbb")?];
        let redis_ns = Netns::new("redis")?;
        let backends = vec![Netns::new("rb1")?, Netns::new("rb2")?];
        bridge.ip(&["link", "add", "br0", "type", "bridge"])?;
        bridge.ip(&["link", "set", "br0", "up"])?;
        for (i, (ns, addr)) in lbs.iter().zip(LB_ADDRS).enumerate() {
            attach(&bridge, ns, &format!("plb{i}"), addr)?;
            ns.ip(&["addr", "add", &format!("{VIP}/32"), "dev", "lo"])?;
        }
        attach(&bridge, &redis_ns, "predis", REDIS_ADDR)?;
        for (i, (ns, addr)) in backends.iter().zip(BACKEND_ADDRS).enumerate() {
            attach(&bridge, ns, &format!("pb{i}"), addr)?;
        }
        let mut cluster = Cluster {
            agents: Vec::new(),
            servers: Vec::new(),
            redis: None,
            lbs,
            redis_ns,
            _backends: Vec::new(),
            _bridge: bridge,
        };
        for (i, (ns, addr)) in backends.iter().zip(BACKEND_ADDRS).enumerate() {
            cluster.servers.push(ServerHandle::start_in(
                ns,
                ServeConfig {
                    name: format!("b{}", i + 1),
                    http: Some(SocketAddr::from((addr, HTTP_PORT))),
                    udp: None,
                    tls: None,
                },
            )?);
        }
        cluster._backends = backends;
        cluster.redis = Some(redis_in(&cluster.redis_ns)?);
        for (ns, node) in cluster.lbs.iter().zip(["lb-a", "lb-b"]) {
            let mut agent = LatchAgent::prepare(LATCH.as_ref(), ns)?;
            agent.write_latch_config(&config(&agent, node))?;
            agent.start()?;
            cluster.agents.push(agent);
        }
        Ok(cluster)
    }

    /// GET on host `lb` (0 = A, 1 = B) from a client inside its namespace.
    fn get(
        &self,
        lb: usize,
        port: u16,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<latch_tests::Response, String> {
        get_in(&self.lbs[lb], port, path, headers)
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

    fn logs(&self) -> String {
        self.agents
            .iter()
            .map(LatchAgent::log)
            .collect::<Vec<_>>()
            .join("\n----\n")
    }
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn sessions_and_removals_cross_hosts_and_survive_a_redis_restart() -> TestResult {
    if redis_missing() {
        return Ok(());
    }
    let mut cl = Cluster::build()?;

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
    cl.redis = Some(redis_in(&cl.redis_ns)?);
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
fn concurrent_inserts_on_two_hosts_converge_on_one_value() -> TestResult {
    if redis_missing() {
        return Ok(());
    }
    let cl = Cluster::build()?;
    let keys: Vec<String> = (0..20).map(|i| format!("k{i}")).collect();
    std::thread::scope(|s| {
        for (lb, val) in [(0, "a"), (1, "b")] {
            let ns = &cl.lbs[lb];
            let keys = &keys;
            s.spawn(move || {
                for k in keys {
                    let _ = get_in(ns, 81, "/put", &[("x-key", k), ("x-val", val)]);
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
