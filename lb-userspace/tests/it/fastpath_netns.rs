//! The HTTP fast path (`fast_path = "client_ip"`) with real traffic: a DataScript table write
//! pins the client to its server in the kernel, XDP then forwards the client's new
//! connections straight to that server; table_remove and a server leaving the pool release
//! the client back to the proxy. An address that carries a second session is unpinned (its
//! users reach their own servers, its new users are balanced) and pinned again when back to
//! one; an excluded address is never pinned; all of it across kill -9. The same on an IPv6
//! VIP with IPv6 clients and servers. Needs root: `#[ignore]`d, run with `--include-ignored`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use aya::maps::{Map, MapData, PerCpuArray};
use latch_tests::config::ADMIN_LISTEN;
use latch_tests::{
    DataScript, HttpConn, IpGroup, LatchAgent, LatchConfig, Pool, Topology, VirtualService,
    http_get, http_get_from, strip_ansi,
};
use lb_common::{map_names, stat};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::LATCH;
use crate::ipv6_netns::{CLIENT6, VIP6, add_ipv6, start_servers6};
use crate::netns_config::{HTTP_PORT, TestResult, backends, lb_agent, shop};

/// Sessions learned at /login (lifetime 60 s), looked up with an extension of `extension_s`
/// (0: none; otherwise every proxied request of a user tells the fast path which address
/// carries its key, as with the seed's scripts), removed at /logout.
fn scripts(extension_s: u32) -> [DataScript; 2] {
    [
        DataScript::request(&format!(
            r#"local id = avi.http.get_cookie("JSESSIONID")
if id then
  if avi.http.get_path() == "/logout" then
    avi.vs.table_remove(id)
  else
    local server = avi.vs.table_lookup(id, {extension_s})
    if server then
      avi.pool.select("web", server)
    end
  end
end
"#
        )),
        DataScript::response(
            r#"if avi.http.get_cookie("JSESSIONID") then
  avi.vs.table_insert(avi.http.get_cookie("JSESSIONID"), avi.pool.server_ip(), 60)
end
"#,
        ),
    ]
}

/// Pool `web` of backends `servers` and the fast-path HTTP service `shop` on VIP:80.
fn config(agent: &LatchAgent, topo: &Topology, servers: &[usize]) -> LatchConfig {
    lb_agent(topo, agent)
        .pool(Pool::new("web", backends(topo, servers, HTTP_PORT)))
        .virtual_service(shop(topo).client_ip_fast_path().datascripts(scripts(0)))
}

/// Sum over CPUs of one global counter, read from the agent's pinned STATS map.
fn global_counter(bpffs_dir: &Path, index: u32) -> Result<u64, Box<dyn std::error::Error>> {
    let path = latch::dataplane::versioned_dir(bpffs_dir).join(map_names::STATS);
    let map = Map::from_map_data(MapData::from_pin(&path)?)?;
    let stats: PerCpuArray<MapData, u64> = PerCpuArray::try_from(map)?;
    Ok(stats.get(&index, 0)?.iter().sum())
}

/// `GET path` from source address `from` with a JSESSIONID cookie, on a fresh connection;
/// returns the whole answer as text.
fn get_with_cookie_from(
    from: IpAddr,
    addr: SocketAddr,
    path: &str,
    cookie: &str,
) -> Result<String, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let work = async {
            let sock = if from.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            sock.bind(SocketAddr::from((from, 0)))?;
            let mut s = sock.connect(addr).await?;
            let req = format!(
                "GET {path} HTTP/1.1\r\nHost: latch\r\nCookie: JSESSIONID={cookie}\r\n\
                 Connection: close\r\n\r\n"
            );
            s.write_all(req.as_bytes()).await?;
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).await?;
            Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf).into_owned())
        };
        tokio::time::timeout(Duration::from_secs(5), work)
            .await
            .map_err(|_| format!("GET {path} from {from} timed out"))?
            .map_err(|e| e.to_string())
    })
}

/// Logs in from `from` (a proxied connection) and returns (cookie, owner, seen client).
fn login(topo: &Topology, from: Ipv4Addr) -> Result<(String, String, SocketAddr), String> {
    login_at(SocketAddr::from((topo.vip(), 80)), from.into())
}

/// [`login`] to the service at `vip`.
fn login_at(vip: SocketAddr, from: IpAddr) -> Result<(String, String, SocketAddr), String> {
    let r = http_get_from(from, vip, "/login").map_err(|e| e.to_string())?;
    Ok((
        r.set_cookie("JSESSIONID").ok_or("no JSESSIONID")?,
        r.backend.ok_or("no X-Backend")?,
        r.seen_client.ok_or("no X-Seen-Client")?,
    ))
}

/// `n` new connections from `from`: the backends that answered and the client addresses
/// they saw.
fn connections(topo: &Topology, from: Ipv4Addr, n: usize) -> Result<Vec<(String, IpAddr)>, String> {
    connections_at(SocketAddr::from((topo.vip(), 80)), from.into(), n)
}

/// [`connections`] to the service at `vip`.
fn connections_at(
    vip: SocketAddr,
    from: IpAddr,
    n: usize,
) -> Result<Vec<(String, IpAddr)>, String> {
    (0..n)
        .map(|_| {
            let r = http_get_from(from, vip, "/").map_err(|e| e.to_string())?;
            if r.status != 200 {
                return Err(format!("status {}", r.status));
            }
            Ok((
                r.backend.ok_or("no X-Backend")?,
                r.seen_client.ok_or("no X-Seen-Client")?.ip(),
            ))
        })
        .collect()
}

/// Three backends serving, two client addresses, and an agent over the three (pool `web`,
/// service `shop`).
fn start_over_three_backends() -> Result<(Topology, LatchAgent), Box<dyn std::error::Error>> {
    let topo = Topology::builder()
        .backends(3)
        .client_addresses(2)
        .build()?;
    topo.start_backends(HTTP_PORT, None)?;
    let mut agent = LatchAgent::prepare(LATCH.as_ref(), topo.lb())?;
    agent.write_latch_config(&config(&agent, &topo, &[1, 2, 3]))?;
    agent.start()?;
    Ok((topo, agent))
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn pinned_client_bypasses_the_proxy_until_removed_or_its_server_leaves() -> TestResult {
    // Bound in this order so the agent stops before its namespaces go.
    let (topo, mut agent) = start_over_three_backends()?;
    let (a, b) = (topo.client_addrs()[0], topo.client_addrs()[1]);
    let vip = SocketAddr::from((topo.vip(), 80));

    // Client B talks to the proxy once so the LB has its neighbour entry too.
    topo.client()
        .run(|| connections(&topo, b, 1))
        .map_err(|e| format!("client B: {e}"))?;

    // The first connection is proxied: the backend sees the LB, not the client.
    let (cookie, owner, seen) = topo.client().run(|| login(&topo, a))?;
    assert_ne!(seen.ip(), IpAddr::V4(a), "login went through the proxy");
    let fast_before = global_counter(agent.bpffs_dir(), stat::FAST_PATH)?;

    // The script's table_insert pinned A to its server: new connections go straight there
    // and XDP's NAT keeps A's own address.
    let fast = topo.client().run(|| connections(&topo, a, 6))?;
    for (backend, seen) in &fast {
        assert_eq!(
            backend, &owner,
            "fast-path connection reached another server"
        );
        assert_eq!(*seen, IpAddr::V4(a), "fast-path connection was proxied");
    }
    let fast_after = global_counter(agent.bpffs_dir(), stat::FAST_PATH)?;
    assert!(
        fast_after >= fast_before + 6,
        "FAST_PATH counter {fast_before} -> {fast_after}"
    );
    // B is not pinned: its connections are proxied and counted apart.
    let proxied_before = global_counter(agent.bpffs_dir(), stat::PASS_TO_PROXY)?;
    let b_seen = topo.client().run(|| connections(&topo, b, 2))?;
    assert!(b_seen.iter().all(|(_, s)| *s != IpAddr::V4(b)));
    assert!(global_counter(agent.bpffs_dir(), stat::PASS_TO_PROXY)? > proxied_before);
    assert_eq!(
        global_counter(agent.bpffs_dir(), stat::FAST_PATH)?,
        fast_after,
        "B's connections took the fast path"
    );

    // B logs A's session out (A itself bypasses the scripts now): table_remove unpins A.
    let answer = topo
        .client()
        .run(|| get_with_cookie_from(b.into(), vip, "/logout", &cookie))?;
    assert!(answer.starts_with("HTTP/1.1 200"), "logout: {answer}");
    let after_remove = topo.client().run(|| connections(&topo, a, 3))?;
    assert!(
        after_remove.iter().all(|(_, s)| *s != IpAddr::V4(a)),
        "A still bypasses the proxy after table_remove: {after_remove:?}"
    );

    // A logs in again and is pinned again; its server then leaves the pool on reload.
    let (_cookie, owner, _) = topo.client().run(|| login(&topo, a))?;
    let fast = topo.client().run(|| connections(&topo, a, 3))?;
    assert!(
        fast.iter()
            .all(|(be, s)| *be == owner && *s == IpAddr::V4(a)),
        "second pin: {fast:?}"
    );

    // kill -9: the pin keeps working while no agent runs, and the next agent adopts it with
    // its owning table entry.
    agent.kill9()?;
    let while_down = topo.client().run(|| connections(&topo, a, 3))?;
    assert!(
        while_down
            .iter()
            .all(|(be, s)| *be == owner && *s == IpAddr::V4(a)),
        "pin without an agent: {while_down:?}"
    );
    agent.start()?;
    let log = strip_ansi(&agent.log());
    assert!(log.contains("entries=1 pins=1"), "{log}");
    let fast = topo.client().run(|| connections(&topo, a, 2))?;
    assert!(
        fast.iter()
            .all(|(be, s)| *be == owner && *s == IpAddr::V4(a)),
        "pin after restart: {fast:?}"
    );

    let owner_index: usize = owner.trim_start_matches('b').parse()?;
    let keep: Vec<usize> = (1..=3).filter(|&i| i != owner_index).collect();
    agent.write_latch_config(&config(&agent, &topo, &keep))?;
    let outcome = agent.reload()?;
    assert!(outcome.contains("configuration reloaded"), "{outcome}");
    let after_reload = topo.client().run(|| connections(&topo, a, 4))?;
    for (backend, seen) in &after_reload {
        assert_ne!(backend, &owner, "a connection reached the removed server");
        assert_ne!(*seen, IpAddr::V4(a), "A still pinned after its server left");
    }
    assert!(
        agent.log().contains("fast-path clients unpinned"),
        "reload unpinned explicitly: {}",
        agent.log()
    );
    agent.stop(Duration::from_secs(10))?;
    Ok(())
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn a_pin_to_a_drained_server_keeps_working_and_maint_removes_it() -> TestResult {
    let (topo, agent) = start_over_three_backends()?;
    let (a, b) = (topo.client_addrs()[0], topo.client_addrs()[1]);
    topo.client().run(|| connections(&topo, b, 1))?;
    let (_cookie, owner, _) = topo.client().run(|| login(&topo, a))?;
    let owner_index: usize = owner.trim_start_matches('b').parse()?;
    let owner_addr = backends(&topo, &[owner_index], HTTP_PORT)[0].to_string();
    let pinned = |conns: &[(String, IpAddr)]| {
        conns
            .iter()
            .all(|(be, s)| *be == owner && *s == IpAddr::V4(a))
    };
    assert!(pinned(&topo.client().run(|| connections(&topo, a, 3))?));

    let latch_server = |state: &str| -> TestResult {
        let out = agent.latch(&["server", state, "web", &owner_addr])?;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    latch_server("drain")?;
    // The pin goes on (HAProxy's drain keeps persistence), unpinned clients avoid the server.
    let a_conns = topo.client().run(|| connections(&topo, a, 3))?;
    assert!(pinned(&a_conns), "pin to a drained server: {a_conns:?}");
    let b_conns = topo.client().run(|| connections(&topo, b, 6))?;
    assert!(
        b_conns.iter().all(|(be, _)| *be != owner),
        "a drained server got a new session: {b_conns:?}"
    );

    latch_server("maint")?;
    let a_conns = topo.client().run(|| connections(&topo, a, 3))?;
    assert!(
        a_conns
            .iter()
            .all(|(be, s)| *be != owner && *s != IpAddr::V4(a)),
        "maint removes the pin: {a_conns:?}"
    );
    Ok(())
}

// ---- addresses shared by several users (issue 18) ---------------------------------------------

/// `GET path` with cookie JSESSIONID=`cookie` on a fresh connection from `from`: (backend,
/// client address the backend saw).
fn get_as(
    topo: &Topology,
    from: Ipv4Addr,
    path: &str,
    cookie: &str,
) -> Result<(String, IpAddr), String> {
    let vip = SocketAddr::from((topo.vip(), 80));
    let cookie = format!("JSESSIONID={cookie}");
    topo.client().run(|| {
        let mut c = HttpConn::connect_from(IpAddr::V4(from), vip, Duration::from_secs(5))
            .map_err(|e| e.to_string())?;
        let r = c
            .get(path, &[("cookie", cookie.as_str())])
            .map_err(|e| e.to_string())?;
        if r.status != 200 {
            return Err(format!("{path} from {from}: status {}", r.status));
        }
        Ok((
            r.backend.ok_or("no X-Backend")?,
            r.seen_client.ok_or("no X-Seen-Client")?.ip(),
        ))
    })
}

/// `/login` on a kept-alive connection: (cookie, owner).
fn login_on(conn: &mut HttpConn) -> Result<(String, String), String> {
    let r = conn.get("/login", &[]).map_err(|e| e.to_string())?;
    Ok((
        r.set_cookie("JSESSIONID").ok_or("no JSESSIONID")?,
        r.backend.ok_or("no X-Backend")?,
    ))
}

/// The value of the fast-path metric `name` of service `shop` in /metrics.
fn shop_metric(topo: &Topology, name: &str) -> Result<f64, String> {
    let body = topo.lb().run(|| {
        http_get(ADMIN_LISTEN, "/metrics", &[])
            .map(|r| String::from_utf8_lossy(&r.body).into_owned())
            .map_err(|e| e.to_string())
    })?;
    let prefix = format!("{name}{{vs=\"shop\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("no {prefix} in /metrics:\n{body}"))
}

/// All of `conns` bypassed the proxy to `owner` (the backend saw `from` itself).
fn all_pinned(conns: &[(String, IpAddr)], owner: &str, from: impl Into<IpAddr>) -> bool {
    let from = from.into();
    conns.iter().all(|(be, s)| be == owner && *s == from)
}

/// None of `conns` bypassed the proxy.
fn all_proxied(conns: &[(String, IpAddr)], from: impl Into<IpAddr>) -> bool {
    let from = from.into();
    conns.iter().all(|(_, s)| *s != from)
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn a_shared_address_is_unpinned_its_users_reach_their_servers_and_it_survives_kill9() -> TestResult
{
    let topo = Topology::builder()
        .backends(3)
        .client_addresses(3)
        .build()?;
    topo.start_backends(HTTP_PORT, None)?;
    let mut agent = LatchAgent::prepare(LATCH.as_ref(), topo.lb())?;
    // x: B's own address; s: shared by A, C and (later) B; e: a known NAT, excluded.
    let (x, s, e) = (
        topo.client_addrs()[0],
        topo.client_addrs()[1],
        topo.client_addrs()[2],
    );
    let config = lb_agent(&topo, &agent)
        .ip_group(IpGroup::new("corp-nat", [e.to_string()]))
        .pool(Pool::new("web", backends(&topo, &[1, 2, 3], HTTP_PORT)))
        .virtual_service(
            shop(&topo)
                .client_ip_fast_path()
                .fast_path_exclude(&["corp-nat"])
                .datascripts(scripts(60)),
        );
    agent.write_latch_config(&config)?;
    agent.start()?;
    let vip = SocketAddr::from((topo.vip(), 80));
    for from in [x, s, e] {
        topo.client().run(|| connections(&topo, from, 1))?;
    }

    // A and C have connections to the proxy from s (opened before s was pinned).
    let (mut a_conn, mut c_conn) = topo.client().run(|| {
        let open = || HttpConn::connect_from(IpAddr::V4(s), vip, Duration::from_secs(5));
        Ok::<_, String>((
            open().map_err(|e| e.to_string())?,
            open().map_err(|e| e.to_string())?,
        ))
    })?;
    let (cookie_a, owner_a) = topo.client().run(|| login_on(&mut a_conn))?;
    // One session: s is pinned to A's server and bypasses the proxy.
    let fast = topo.client().run(|| connections(&topo, s, 2))?;
    assert!(
        all_pinned(&fast, &owner_a, s),
        "s with one session: {fast:?}"
    );
    assert_eq!(shop_metric(&topo, "latch_fast_path_pinned_addresses")?, 1.0);

    // B logs in from its own address, on another server (round robin).
    let (cookie_b, owner_b, _) = topo.client().run(|| login(&topo, x))?;
    assert_ne!(owner_b, owner_a, "B's session must live on another server");
    // C logs in on its proxied connection from s: a second session unpins s.
    let (cookie_c, _owner_c) = topo.client().run(|| login_on(&mut c_conn))?;
    assert_eq!(
        shop_metric(&topo, "latch_fast_path_shared_unpins_total")?,
        1.0
    );
    // B, now behind s too, reaches B's server, through the proxy, every time.
    for _ in 0..4 {
        let (be, seen) = get_as(&topo, s, "/", &cookie_b)?;
        assert_eq!(be, owner_b, "B's request from s went to another server");
        assert_ne!(seen, IpAddr::V4(s), "B's request from s bypassed the proxy");
    }
    // New users behind s are proxied and balanced.
    let new_users = topo.client().run(|| connections(&topo, s, 12))?;
    assert!(all_proxied(&new_users, s), "{new_users:?}");
    let spread: std::collections::BTreeSet<&String> = new_users.iter().map(|(b, _)| b).collect();
    assert!(
        spread.len() >= 2,
        "new users behind s all went to {spread:?}"
    );
    // x carries B's session alone: still pinned to B's server.
    let fast = topo.client().run(|| connections(&topo, x, 3))?;
    assert!(
        all_pinned(&fast, &owner_b, x),
        "x with one session: {fast:?}"
    );
    // e is excluded: one session, never pinned.
    let (cookie_e, _, _) = topo.client().run(|| login(&topo, e))?;
    get_as(&topo, e, "/", &cookie_e)?;
    let from_e = topo.client().run(|| connections(&topo, e, 3))?;
    assert!(
        all_proxied(&from_e, e),
        "excluded address pinned: {from_e:?}"
    );
    assert_eq!(shop_metric(&topo, "latch_fast_path_pinned_addresses")?, 1.0);

    // kill -9 and a new agent: pins and per-address counts are rebuilt from DS_TABLE.
    drop((a_conn, c_conn));
    agent.kill9()?;
    agent.start()?;
    let fast = topo.client().run(|| connections(&topo, x, 2))?;
    assert!(all_pinned(&fast, &owner_b, x), "x after restart: {fast:?}");
    let from_s = topo.client().run(|| connections(&topo, s, 3))?;
    assert!(
        all_proxied(&from_s, s),
        "s pinned after restart: {from_s:?}"
    );
    // A's request from s extends A's key from s: s still carries A, B and C, so it stays
    // unpinned (an agent that forgot the counts would pin s to A's server here).
    let (be, _) = get_as(&topo, s, "/", &cookie_a)?;
    assert_eq!(be, owner_a);
    let from_s = topo.client().run(|| connections(&topo, s, 3))?;
    assert!(
        all_proxied(&from_s, s),
        "s pinned by A alone after restart: {from_s:?}"
    );
    get_as(&topo, e, "/", &cookie_e)?;
    let from_e = topo.client().run(|| connections(&topo, e, 2))?;
    assert!(
        all_proxied(&from_e, e),
        "excluded after restart: {from_e:?}"
    );

    // B and C log out: s is back to one session (A's) and pinned to A's server again.
    get_as(&topo, s, "/logout", &cookie_b)?;
    let from_s = topo.client().run(|| connections(&topo, s, 2))?;
    assert!(all_proxied(&from_s, s), "s with A and C: {from_s:?}");
    get_as(&topo, s, "/logout", &cookie_c)?;
    let fast = topo.client().run(|| connections(&topo, s, 3))?;
    assert!(
        all_pinned(&fast, &owner_a, s),
        "s back to one session: {fast:?}"
    );
    // x lost B's session with the logout: it is no longer pinned.
    let from_x = topo.client().run(|| connections(&topo, x, 2))?;
    assert!(
        all_proxied(&from_x, x),
        "x pinned without a session: {from_x:?}"
    );

    // And once more across kill -9: s stays pinned, x and e are not.
    agent.kill9()?;
    agent.start()?;
    let fast = topo.client().run(|| connections(&topo, s, 2))?;
    assert!(
        all_pinned(&fast, &owner_a, s),
        "s after the second restart: {fast:?}"
    );
    assert_eq!(shop_metric(&topo, "latch_fast_path_pinned_addresses")?, 1.0);
    let from_e = topo.client().run(|| connections(&topo, e, 2))?;
    assert!(all_proxied(&from_e, e), "{from_e:?}");
    agent.stop(Duration::from_secs(10))?;
    Ok(())
}

// ---- IPv6 -------------------------------------------------------------------------------------

/// A second client address, in the first one's /64.
const CLIENT6_B: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 0x101);

/// The fast path of an IPv6 http service (VIP, clients and servers in 2001:db8::/32): the
/// login is proxied and its table_insert pins the client in PERSIST6, XDP then forwards the
/// client's new connections straight to its server (which sees the client's own address);
/// another address of the same /64 is not pinned (the default prefix is the whole address);
/// the pin works while no agent runs and is adopted by the next; table_remove ends it. With
/// `fast_path_ipv6_prefix = 64` the other address follows the pin; the server leaving the
/// pool ends it.
#[test]
#[ignore = "needs root: creates network namespaces"]
fn ipv6_pinned_client_bypasses_the_proxy_across_kill9_until_removed() -> TestResult {
    let topo = Topology::builder().backends(2).vip_on_lb(false).build()?;
    let addrs = add_ipv6(&topo, 2, false)?;
    // The proxy's VIP is local to the LB (XDP hands its proxied packets to the stack).
    topo.lb()
        .ip(&["addr", "add", &format!("{VIP6}/128"), "dev", "lo", "nodad"])?;
    topo.client().ip(&[
        "addr",
        "add",
        &format!("{CLIENT6_B}/64"),
        "dev",
        "eth0",
        "nodad",
    ])?;
    start_servers6(&topo, &addrs, false)?;
    let web: Vec<SocketAddr> = addrs
        .iter()
        .map(|a| SocketAddr::from((*a, HTTP_PORT)))
        .collect();
    let vip = SocketAddr::from((VIP6, 80));
    let config = |agent: &LatchAgent, servers: &[SocketAddr], prefix: Option<u8>| {
        let mut shop = VirtualService::http("shop", vip, "web")
            .client_ip_fast_path()
            .datascripts(scripts(0));
        if let Some(p) = prefix {
            shop = shop.fast_path_ipv6_prefix(p);
        }
        lb_agent(&topo, agent)
            .pool(Pool::new("web", servers.to_vec()))
            .virtual_service(shop)
    };
    let mut agent = LatchAgent::prepare(LATCH.as_ref(), topo.lb())?;
    agent.write_latch_config(&config(&agent, &web, None))?;
    agent.start()?;
    let (a, b) = (IpAddr::V6(CLIENT6), IpAddr::V6(CLIENT6_B));

    // B talks to the proxy once so the LB has its neighbour entry too.
    topo.client()
        .run(|| connections_at(vip, b, 1))
        .map_err(|e| format!("client B: {e}"))?;

    // The login is proxied: the backend sees the LB, not the client; the script pins A.
    let (cookie, owner, seen) = topo.client().run(|| login_at(vip, a))?;
    assert_ne!(seen.ip(), a, "login went through the proxy");
    assert_eq!(shop_metric(&topo, "latch_fast_path_pinned_addresses")?, 1.0);
    let fast_before = global_counter(agent.bpffs_dir(), stat::FAST_PATH)?;

    // XDP forwards A's new connections straight to its server, keeping A's address.
    let fast = topo.client().run(|| connections_at(vip, a, 6))?;
    assert!(all_pinned(&fast, &owner, a), "A pinned: {fast:?}");
    let fast_after = global_counter(agent.bpffs_dir(), stat::FAST_PATH)?;
    assert!(
        fast_after >= fast_before + 6,
        "FAST_PATH counter {fast_before} -> {fast_after}"
    );
    // B, in A's /64, is another address (prefix 128): proxied, not counted as fast.
    let from_b = topo.client().run(|| connections_at(vip, b, 3))?;
    assert!(all_proxied(&from_b, b), "B bypassed the proxy: {from_b:?}");
    assert_eq!(
        global_counter(agent.bpffs_dir(), stat::FAST_PATH)?,
        fast_after,
        "B's connections took the fast path"
    );

    // kill -9: the pin keeps working while no agent runs, and the next agent adopts it with
    // its table entry.
    agent.kill9()?;
    let while_down = topo.client().run(|| connections_at(vip, a, 3))?;
    assert!(
        all_pinned(&while_down, &owner, a),
        "pin without an agent: {while_down:?}"
    );
    agent.start()?;
    let log = strip_ansi(&agent.log());
    assert!(log.contains("entries=1 pins=1"), "{log}");
    let fast = topo.client().run(|| connections_at(vip, a, 2))?;
    assert!(all_pinned(&fast, &owner, a), "pin after restart: {fast:?}");

    // B logs A's session out (A bypasses the scripts now): table_remove unpins A.
    let answer = topo
        .client()
        .run(|| get_with_cookie_from(b, vip, "/logout", &cookie))?;
    assert!(answer.starts_with("HTTP/1.1 200"), "logout: {answer}");
    let after_remove = topo.client().run(|| connections_at(vip, a, 3))?;
    assert!(
        all_proxied(&after_remove, a),
        "A still bypasses the proxy after table_remove: {after_remove:?}"
    );
    assert_eq!(shop_metric(&topo, "latch_fast_path_pinned_addresses")?, 0.0);

    // With fast_path_ipv6_prefix = 64 the pin is of A's /64: B, in it, follows A's pin (XDP
    // looks B up by the same prefix), keeping its own address.
    agent.write_latch_config(&config(&agent, &web, Some(64)))?;
    let outcome = agent.reload()?;
    assert!(outcome.contains("configuration reloaded"), "{outcome}");
    let (_cookie, owner, _) = topo.client().run(|| login_at(vip, a))?;
    let fast = topo.client().run(|| connections_at(vip, a, 2))?;
    assert!(all_pinned(&fast, &owner, a), "A by its /64: {fast:?}");
    let from_b = topo.client().run(|| connections_at(vip, b, 3))?;
    assert!(all_pinned(&from_b, &owner, b), "B in A's /64: {from_b:?}");
    assert_eq!(shop_metric(&topo, "latch_fast_path_pinned_addresses")?, 1.0);

    // The server leaves the pool on reload: the /64 is unpinned.
    let owner_index: usize = owner.trim_start_matches('b').parse()?;
    let keep: Vec<SocketAddr> = (1..=web.len())
        .filter(|&i| i != owner_index)
        .map(|i| web[i - 1])
        .collect();
    agent.write_latch_config(&config(&agent, &keep, Some(64)))?;
    let outcome = agent.reload()?;
    assert!(outcome.contains("configuration reloaded"), "{outcome}");
    for from in [a, b] {
        let after = topo.client().run(|| connections_at(vip, from, 3))?;
        assert!(
            after.iter().all(|(be, s)| *be != owner && *s != from),
            "{from} still pinned after its server left: {after:?}"
        );
    }
    assert!(
        agent.log().contains("fast-path clients unpinned"),
        "reload unpinned explicitly: {}",
        agent.log()
    );
    agent.stop(Duration::from_secs(10))?;
    Ok(())
}
