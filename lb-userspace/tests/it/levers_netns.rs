//! The operator's levers on a running agent: drain and maintenance through `latch server`,
//! states kept across SIGHUP and kill -9, backup servers, slow start. Needs root: `#[ignore]`d,
//! run with `--include-ignored`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use latch_tests::{HealthMonitor, HttpConn, LatchAgent, Pool, Topology, VirtualService, http_get};

use crate::netns_config::{
    HTTP_PORT, TestResult, all_backends, lb_agent, shop, start_agent, wait_for,
};

/// Probes every 300 ms; fall and rise 2.
const PROBE_INTERVAL: Duration = Duration::from_millis(300);

fn vip(topo: &Topology) -> SocketAddr {
    SocketAddr::from((topo.vip(), 80))
}

/// Backend `i` (from 1) on the HTTP port, as the pool lists it.
fn server(topo: &Topology, i: usize) -> SocketAddr {
    all_backends(topo, HTTP_PORT)[i - 1]
}

/// `latch server ARGS...` against the agent; its stdout, or why it failed.
fn latch_server(agent: &LatchAgent, args: &[&str]) -> Result<String, String> {
    let mut all = vec!["server"];
    all.extend_from_slice(args);
    let out = agent.latch(&all).map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "latch {all:?}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// (state, weight) of `addr` in pool `web` per `latch status --json`.
fn server_levers(agent: &LatchAgent, addr: SocketAddr) -> Result<(String, u64), String> {
    let out = agent
        .latch(&["status", "--json"])
        .map_err(|e| e.to_string())?;
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    let servers = doc["pools"][0]["servers"]
        .as_array()
        .ok_or("no servers in latch status --json")?;
    let s = servers
        .iter()
        .find(|s| s["addr"].as_str() == Some(addr.to_string().as_str()))
        .ok_or_else(|| format!("{addr} not in latch status"))?;
    Ok((
        s["state"].as_str().unwrap_or_default().to_owned(),
        s["weight"].as_u64().unwrap_or_default(),
    ))
}

/// Backends that answered `n` new requests from the client (each on a fresh connection).
fn spread(
    topo: &Topology,
    target: SocketAddr,
    n: usize,
) -> Result<BTreeMap<String, usize>, String> {
    topo.client().run(|| {
        let mut seen = BTreeMap::new();
        for _ in 0..n {
            let r = http_get(target, "/", &[]).map_err(|e| e.to_string())?;
            *seen.entry(r.backend.unwrap_or_default()).or_default() += 1;
        }
        Ok(seen)
    })
}

/// A JSESSIONID session owned by `owner`, from /login until one lands there.
fn session_on(topo: &Topology, owner: &str) -> Result<String, String> {
    topo.client().run(|| {
        for _ in 0..30 {
            let login = http_get(vip(topo), "/login", &[]).map_err(|e| e.to_string())?;
            let cookie = login.set_cookie("JSESSIONID").ok_or("no JSESSIONID")?;
            if login.backend.as_deref() == Some(owner) {
                // The response script learned the session; a request with it persists.
                return Ok(cookie);
            }
        }
        Err(format!("no session landed on {owner}"))
    })
}

/// The backend a request with session `cookie` reaches, and whether the table knew it.
fn with_session(conn: &mut HttpConn, cookie: &str) -> Result<(String, bool), String> {
    let header = format!("JSESSIONID={cookie}");
    let r = conn
        .get("/", &[("cookie", header.as_str())])
        .map_err(|e| e.to_string())?;
    Ok((
        r.backend.clone().unwrap_or_default(),
        r.header("x-persist") == Some("true"),
    ))
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn drain_keeps_connections_and_sessions_but_gets_no_new_session_and_maint_moves_them() -> TestResult
{
    let topo = Topology::builder().backends(3).build()?;
    topo.start_backends(HTTP_PORT, None)?;
    let l4_vip = SocketAddr::from((topo.vip(), 81));
    let agent = start_agent(&topo, |a| {
        lb_agent(&topo, a)
            .pool(Pool::new("web", all_backends(&topo, HTTP_PORT)))
            .virtual_service(shop(&topo).datascripts(latch_tests::jsession_scripts(60)))
            .virtual_service(VirtualService::tcp("web-tcp", l4_vip, "web"))
    })?;
    let b1 = server(&topo, 1).to_string();
    let cookie = session_on(&topo, "b1")?;
    // An XDP-forwarded connection that Maglev put on b1, kept open across the drain.
    let mut l4_conn = topo.client().run(|| -> Result<HttpConn, String> {
        for _ in 0..30 {
            let mut c =
                HttpConn::connect(l4_vip, Duration::from_secs(5)).map_err(|e| e.to_string())?;
            let r = c.get("/", &[]).map_err(|e| e.to_string())?;
            if r.backend.as_deref() == Some("b1") {
                return Ok(c);
            }
        }
        Err("no L4 connection landed on b1".into())
    })?;
    // A keep-alive connection opened before the drain.
    let mut conn = topo
        .client()
        .run(|| HttpConn::connect(vip(&topo), Duration::from_secs(5)))?;
    assert_eq!(
        topo.client().run(|| with_session(&mut conn, &cookie))?,
        ("b1".to_owned(), true)
    );

    let out = latch_server(&agent, &["drain", "web", &b1])?;
    assert!(out.contains("drain"), "{out}");
    assert_eq!(server_levers(&agent, server(&topo, 1))?.0, "drain");
    // New sessions avoid b1 ...
    let fresh = spread(&topo, vip(&topo), 12)?;
    assert!(
        !fresh.contains_key("b1"),
        "drained b1 got new sessions: {fresh:?}"
    );
    // ... while the kept-alive connection and the persisted session still reach it.
    for _ in 0..5 {
        assert_eq!(
            topo.client().run(|| with_session(&mut conn, &cookie))?,
            ("b1".to_owned(), true)
        );
    }
    let cookieless = topo.client().run(|| {
        (0..6)
            .map(|_| conn.get("/", &[]).map(|r| r.backend.unwrap_or_default()))
            .collect::<Result<Vec<_>, _>>()
    })?;
    // XDP: the established flow stays on b1, new flows avoid it.
    for _ in 0..3 {
        let r = topo.client().run(|| l4_conn.get("/", &[]))?;
        assert_eq!(
            r.backend.as_deref(),
            Some("b1"),
            "established L4 flow moved"
        );
    }
    let l4_fresh = spread(&topo, l4_vip, 12)?;
    assert!(
        !l4_fresh.contains_key("b1"),
        "drained b1 got new L4 flows: {l4_fresh:?}"
    );
    assert!(
        !cookieless.iter().any(|b| b == "b1"),
        "new requests on the old connection avoid b1: {cookieless:?}"
    );

    // Maintenance: out at once, its sessions forgotten and balanced afresh.
    latch_server(&agent, &["maint", "web", &b1])?;
    let (owner, known) = topo.client().run(|| with_session(&mut conn, &cookie))?;
    assert_ne!(owner, "b1", "maint moves the session");
    assert!(
        !known,
        "the session of a server in maintenance is forgotten"
    );
    let status = agent.latch(&["status"])?;
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("maint"), "{text}");

    // Ready brings it back for new sessions.
    latch_server(&agent, &["ready", "web", &b1])?;
    let back = spread(&topo, vip(&topo), 12)?;
    // Smooth round robin resumes from the counters b1 left with: about a third.
    let b1_share = back.get("b1").copied().unwrap_or(0);
    assert!((3..=5).contains(&b1_share), "{back:?}");
    Ok(())
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn server_states_survive_sighup_and_kill9() -> TestResult {
    let topo = Topology::builder().backends(3).build()?;
    topo.start_backends(HTTP_PORT, None)?;
    let mut agent = start_agent(&topo, |a| {
        lb_agent(&topo, a)
            .pool(Pool::new("web", all_backends(&topo, HTTP_PORT)))
            .virtual_service(shop(&topo))
    })?;
    let (b1, b2) = (server(&topo, 1), server(&topo, 2));
    latch_server(&agent, &["drain", "web", &b1.to_string()])?;
    latch_server(&agent, &["weight", "web", &b2.to_string(), "2"])?;
    let check = |agent: &LatchAgent, when: &str| -> TestResult {
        assert_eq!(server_levers(agent, b1)?, ("drain".to_owned(), 1), "{when}");
        assert_eq!(server_levers(agent, b2)?, ("ready".to_owned(), 2), "{when}");
        let seen = spread(&topo, vip(&topo), 30)?;
        assert_eq!(seen.get("b1"), None, "{when}: {seen:?}");
        // Weights 2:1, give or take the one pick smooth round robin may carry over.
        let b2_share = seen.get("b2").copied().unwrap_or(0);
        assert!((19..=21).contains(&b2_share), "{when}: {seen:?}");
        Ok(())
    };
    check(&agent, "at once")?;
    let log = agent.reload()?;
    assert!(log.contains("configuration reloaded"), "{log}");
    check(&agent, "after SIGHUP")?;
    agent.kill9()?;
    agent.start()?;
    check(&agent, "after kill -9 and a restart")?;
    Ok(())
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn a_backup_takes_over_when_the_others_are_down_and_hands_back() -> TestResult {
    let topo = Topology::builder().backends(3).build()?;
    topo.start_backends(HTTP_PORT, None)?;
    let b3 = server(&topo, 3);
    let l4_vip = SocketAddr::from((topo.vip(), 81));
    let _agent = start_agent(&topo, |a| {
        lb_agent(&topo, a)
            .pool(
                Pool::new("web", all_backends(&topo, HTTP_PORT))
                    .backup(b3)
                    .health_monitor(HealthMonitor::http("/healthz", PROBE_INTERVAL)),
            )
            .virtual_service(shop(&topo))
            .virtual_service(VirtualService::tcp("web-tcp", l4_vip, "web"))
    })?;
    for target in [vip(&topo), l4_vip] {
        let seen = spread(&topo, target, 12)?;
        assert_eq!(
            seen.get("b3"),
            None,
            "{target}: backup in rotation: {seen:?}"
        );
    }
    for name in ["b1", "b2"] {
        topo.server(name).ok_or("no server")?.set_healthy(false);
    }
    // Proxy and XDP follow one health event, the data plane a moment later.
    let only = |name: &str| -> Result<bool, String> {
        for target in [vip(&topo), l4_vip] {
            if !spread(&topo, target, 3)?.keys().all(|b| b == name) {
                return Ok(false);
            }
        }
        Ok(true)
    };
    wait_for("the backup takes over", Duration::from_secs(5), || {
        only("b3")
    })?;
    for target in [vip(&topo), l4_vip] {
        let seen = spread(&topo, target, 6)?;
        assert_eq!(seen.get("b3"), Some(&6), "{target}: {seen:?}");
    }
    topo.server("b1").ok_or("no b1")?.set_healthy(true);
    wait_for("b1 takes back", Duration::from_secs(5), || only("b1"))?;
    for target in [vip(&topo), l4_vip] {
        let seen = spread(&topo, target, 6)?;
        assert_eq!(seen.get("b1"), Some(&6), "{target}: {seen:?}");
    }
    Ok(())
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn slow_start_shows_in_the_share_of_new_connections() -> TestResult {
    let topo = Topology::builder().backends(2).build()?;
    topo.start_backends(HTTP_PORT, None)?;
    let ramp = Duration::from_secs(6);
    let agent = start_agent(&topo, |a| {
        lb_agent(&topo, a)
            .pool(Pool::new("web", all_backends(&topo, HTTP_PORT)).slow_start(ramp))
            .virtual_service(shop(&topo))
    })?;
    let b1 = server(&topo, 1).to_string();
    latch_server(&agent, &["maint", "web", &b1])?;
    latch_server(&agent, &["ready", "web", &b1])?;
    let started = Instant::now();
    // First step: a tenth of b1's weight against b2's whole.
    let early = spread(&topo, vip(&topo), 22)?;
    let early_took = started.elapsed();
    let status = latch_server(&agent, &["ready", "web", &b1])?;
    eprintln!("early: {early:?} in {early_took:?}; {status}");
    std::thread::sleep(ramp.saturating_sub(started.elapsed()) + Duration::from_secs(1));
    let late = spread(&topo, vip(&topo), 20)?;
    eprintln!("late: {late:?}");
    let early_b1 = early.get("b1").copied().unwrap_or(0);
    assert!(early_b1 <= 6, "b1 ramps up: {early:?} in {early_took:?}");
    let late_b1 = late.get("b1").copied().unwrap_or(0);
    assert!(
        (9..=11).contains(&late_b1),
        "full weight after the ramp: {late:?}"
    );
    Ok(())
}
