//! The HTTP fast path (`fast_path = "client_ip"`) with real traffic: a DataScript table write
//! pins the client to its server in the kernel, XDP then forwards the client's new
//! connections straight to that server; table_remove and a server leaving the pool release
//! the client back to the proxy. Needs root: `#[ignore]`d, run with `--include-ignored`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use aya::maps::{Map, MapData, PerCpuArray};
use latch_tests::{DataScript, LatchAgent, LatchConfig, Pool, Topology, http_get_from, strip_ansi};
use lb_common::{map_names, stat};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::LATCH;
use crate::netns_config::{HTTP_PORT, TestResult, backends, lb_agent, shop};

/// Sessions learned at /login (lifetime 60 s), looked up without extension, removed at
/// /logout.
fn scripts() -> [DataScript; 2] {
    [
        DataScript::request(
            r#"local id = avi.http.get_cookie("JSESSIONID")
if id then
  if avi.http.get_path() == "/logout" then
    avi.vs.table_remove(id)
  else
    local server = avi.vs.table_lookup(id, 0)
    if server then
      avi.pool.select("web", server)
    end
  end
end
"#,
        ),
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
        .virtual_service(shop(topo).client_ip_fast_path().datascripts(scripts()))
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
    from: Ipv4Addr,
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
            let sock = tokio::net::TcpSocket::new_v4()?;
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
    let vip = SocketAddr::from((topo.vip(), 80));
    let r = http_get_from(IpAddr::V4(from), vip, "/login").map_err(|e| e.to_string())?;
    Ok((
        r.set_cookie("JSESSIONID").ok_or("no JSESSIONID")?,
        r.backend.ok_or("no X-Backend")?,
        r.seen_client.ok_or("no X-Seen-Client")?,
    ))
}

/// `n` new connections from `from`: the backends that answered and the client addresses
/// they saw.
fn connections(topo: &Topology, from: Ipv4Addr, n: usize) -> Result<Vec<(String, IpAddr)>, String> {
    let vip = SocketAddr::from((topo.vip(), 80));
    (0..n)
        .map(|_| {
            let r = http_get_from(IpAddr::V4(from), vip, "/").map_err(|e| e.to_string())?;
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
        .run(|| get_with_cookie_from(b, vip, "/logout", &cookie))?;
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
