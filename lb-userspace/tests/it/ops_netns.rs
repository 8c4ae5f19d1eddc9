//! Operating a running agent: health monitors taking servers out and back, /metrics moving
//! with traffic, the admin token, and the CLI's table commands. Needs root: `#[ignore]`d, run
//! with `--include-ignored`.

use std::net::SocketAddr;
use std::time::Duration;

use latch_tests::config::ADMIN_LISTEN;
use latch_tests::{
    AgentSettings, DataScript, HealthMonitor, LatchAgent, LatchConfig, Topology, http_get,
};

use crate::LATCH;
use crate::netns_config::{
    HTTP_PORT, TestResult, lb_agent, shop, start_agent as start, wait_for, web_pool, web_tcp,
};

/// Probes every 300 ms, each timing out after 200 ms; fall and rise 2.
const PROBE_INTERVAL: Duration = Duration::from_millis(300);

/// GET on the admin API from inside the LB namespace.
fn admin_get(topo: &Topology, path: &str, token: Option<&str>) -> Result<(u16, String), String> {
    let auth = token.map(|t| format!("Bearer {t}"));
    topo.lb().run(|| {
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        http_get(ADMIN_LISTEN, path, &headers)
            .map(|r| (r.status, String::from_utf8_lossy(&r.body).into_owned()))
            .map_err(|e| e.to_string())
    })
}

/// `up` of `server` in `pool` according to GET /api/v1/pools.
fn server_up(topo: &Topology, pool: &str, server: &str) -> Result<Option<bool>, String> {
    let (status, body) = admin_get(topo, "/api/v1/pools", None)?;
    if status != 200 {
        return Err(format!("pools: {status} {body}"));
    }
    let pools: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    let list = pools
        .as_array()
        .or_else(|| pools.get("pools").and_then(|p| p.as_array()));
    Ok(list
        .into_iter()
        .flatten()
        .filter(|p| p.get("name").and_then(|n| n.as_str()) == Some(pool))
        .flat_map(|p| {
            p.get("servers")
                .and_then(|s| s.as_array())
                .cloned()
                .unwrap_or_default()
        })
        .find(|s| s.get("addr").and_then(|a| a.as_str()) == Some(server))
        .and_then(|s| s.get("up").and_then(|u| u.as_bool())))
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn a_stopped_backend_is_taken_out_within_fall_intervals_and_back_after_rise() -> TestResult {
    let topo = Topology::builder().backends(3).vip_on_lb(false).build()?;
    topo.start_backends(HTTP_PORT, None)?;
    let _agent = start(&topo, |a| {
        lb_agent(&topo, a)
            .pool(web_pool(&topo).health_monitor(HealthMonitor::tcp(PROBE_INTERVAL)))
            .virtual_service(web_tcp(&topo))
    })?;
    let b2 = topo.backend(2).ok_or("no b2")?;
    let b2_addr = format!("{}:{HTTP_PORT}", b2.addr);
    let vip = SocketAddr::from((topo.vip(), 80));
    wait_for("b2 up at start", Duration::from_secs(5), || {
        Ok(server_up(&topo, "web", &b2_addr)? == Some(true))
    })?;

    // Stop b2: its link goes down, so probes (and any connection) time out.
    b2.ns.ip(&["link", "set", "eth0", "down"])?;
    // fall x interval = 600 ms, plus one probe timeout and scheduling slack.
    let took = wait_for("b2 marked down", Duration::from_secs(3), || {
        Ok(server_up(&topo, "web", &b2_addr)? == Some(false))
    })?;
    eprintln!("b2 marked down after {took:?}");
    let before = topo
        .server("b2")
        .map(|s| s.requests())
        .ok_or("no b2 server")?;
    b2.ns.ip(&["link", "set", "eth0", "up"])?;
    b2.ns
        .ip(&["route", "replace", "192.0.2.1/32", "dev", "eth0"])?;
    b2.ns.ip(&[
        "route",
        "replace",
        "default",
        "via",
        "192.0.2.1",
        "dev",
        "eth0",
    ])?;
    // Until `rise` probes succeed, new connections avoid b2 although it answers again.
    let served = topo.client().run(|| -> Result<Vec<String>, String> {
        (0..12)
            .map(|_| {
                http_get(vip, "/", &[])
                    .map_err(|e| e.to_string())
                    .map(|r| r.backend.unwrap_or_default())
            })
            .collect()
    });
    let served = served?;
    let up_again = wait_for("b2 back up", Duration::from_secs(5), || {
        Ok(server_up(&topo, "web", &b2_addr)? == Some(true))
    });
    // Either b2 came back during those requests (then it may have served some) or none of
    // them went to it; a down b2 must not have been sent a request.
    let after_down_phase = topo
        .server("b2")
        .map(|s| s.requests())
        .ok_or("no b2 server")?;
    if !served.iter().any(|b| b == "b2") {
        assert_eq!(before, after_down_phase, "b2 got requests while down");
    }
    up_again?;
    let seen_b2 = topo.client().run(|| {
        (0..30).any(|_| {
            http_get(vip, "/", &[])
                .map(|r| r.backend.as_deref() == Some("b2"))
                .unwrap_or(false)
        })
    });
    assert!(seen_b2, "b2 takes new connections again after rise");
    Ok(())
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn http_monitor_takes_an_unhealthy_server_out_of_rotation() -> TestResult {
    let topo = Topology::builder().backends(3).build()?;
    topo.start_backends(HTTP_PORT, None)?;
    let _agent = start(&topo, |a| {
        lb_agent(&topo, a)
            .pool(web_pool(&topo).health_monitor(HealthMonitor::http("/healthz", PROBE_INTERVAL)))
            .virtual_service(shop(&topo))
    })?;
    let vip = SocketAddr::from((topo.vip(), 80));
    let b3 = topo.server("b3").ok_or("no b3")?;
    let b3_addr = format!("{}:{HTTP_PORT}", topo.backend_addrs()[2]);
    b3.set_healthy(false);
    wait_for("b3 marked down", Duration::from_secs(3), || {
        Ok(server_up(&topo, "web", &b3_addr)? == Some(false))
    })?;
    let before = b3.requests();
    let served: Vec<String> = topo.client().run(|| {
        (0..15)
            .filter_map(|_| http_get(vip, "/", &[]).ok().and_then(|r| r.backend))
            .collect()
    });
    assert_eq!(served.len(), 15);
    assert!(
        !served.iter().any(|b| b == "b3"),
        "down server in rotation: {served:?}"
    );
    assert_eq!(b3.requests(), before);

    // Every server down: 503, not a hang.
    for name in ["b1", "b2"] {
        topo.server(name).ok_or("no server")?.set_healthy(false);
    }
    wait_for("all down", Duration::from_secs(3), || {
        Ok(server_up(
            &topo,
            "web",
            &format!("{}:{HTTP_PORT}", topo.backend_addrs()[0]),
        )? == Some(false)
            && server_up(
                &topo,
                "web",
                &format!("{}:{HTTP_PORT}", topo.backend_addrs()[1]),
            )? == Some(false))
    })?;
    let status = topo
        .client()
        .run(|| http_get(vip, "/", &[]).map(|r| r.status))?;
    assert_eq!(status, 503);
    Ok(())
}

/// Value of the first sample line of `name` whose labels contain every `labels` item.
fn sample(metrics: &str, name: &str, labels: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' '))
        .find(|l| labels.iter().all(|x| l.contains(x)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn metrics_move_with_traffic_and_the_token_is_enforced() -> TestResult {
    let topo = Topology::builder().backends(2).build()?;
    topo.start_backends(HTTP_PORT, None)?;
    let mut agent = LatchAgent::prepare(LATCH.as_ref(), topo.lb())?;
    let token_file = agent.dir().join("token");
    std::fs::write(&token_file, "s3cret-token\n")?;
    let config = LatchConfig::new(
        AgentSettings::new(&topo.lb_interfaces())
            .bpffs_dir(agent.bpffs_dir())
            .admin_token_file(&token_file),
    )
    .pool(web_pool(&topo))
    .virtual_service(shop(&topo));
    agent.write_latch_config(&config)?;
    agent.start()?;

    assert_eq!(admin_get(&topo, "/metrics", None)?.0, 401, "no token");
    assert_eq!(
        admin_get(&topo, "/api/v1/status", Some("wrong"))?.0,
        401,
        "wrong token"
    );
    let (status, before) = admin_get(&topo, "/metrics", Some("s3cret-token"))?;
    assert_eq!(status, 200);
    let count =
        |text: &str| sample(text, "latch_http_requests_total", &["vs=\"shop\""]).unwrap_or(0.0);
    let vip = SocketAddr::from((topo.vip(), 80));
    topo.client().run(|| -> Result<(), String> {
        for _ in 0..7 {
            http_get(vip, "/", &[]).map_err(|e| e.to_string())?;
        }
        Ok(())
    })?;
    let (_, after) = admin_get(&topo, "/metrics", Some("s3cret-token"))?;
    assert_eq!(
        count(&after) - count(&before),
        7.0,
        "requests counted:\n{after}"
    );
    assert!(
        after.contains("# TYPE latch_http_requests counter")
            || after.contains("# TYPE latch_http_requests_total counter")
    );
    assert!(
        after.contains("latch_xdp_packets_total"),
        "XDP counters exported:\n{after}"
    );

    // The CLI reads the token from the config's admin_token_file.
    let out = agent.latch(&["status"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn cli_lists_gets_and_deletes_table_entries() -> TestResult {
    let topo = Topology::builder().backends(2).build()?;
    topo.start_backends(HTTP_PORT, None)?;
    let store_sessions = DataScript::response(
        r#"if avi.http.get_cookie("JSESSIONID") then
  avi.vs.table_insert(avi.http.get_cookie("JSESSIONID"), avi.pool.server_ip(), 600)
end
"#,
    );
    let agent = start(&topo, |a| {
        lb_agent(&topo, a)
            .pool(web_pool(&topo))
            .virtual_service(shop(&topo).datascript(store_sessions))
    })?;
    let vip = SocketAddr::from((topo.vip(), 80));
    let cookies = topo.client().run(|| -> Result<Vec<String>, String> {
        (0..2)
            .map(|_| {
                http_get(vip, "/login", &[])
                    .map_err(|e| e.to_string())?
                    .set_cookie("JSESSIONID")
                    .ok_or_else(|| "no cookie".to_string())
            })
            .collect()
    })?;

    let out = agent.latch(&["table", "list", "shop"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for c in &cookies {
        assert!(text.contains(c.as_str()), "{c} listed:\n{text}");
    }
    let out = agent.latch(&["table", "list", "shop", "--json"])?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(json["entries"].as_array().map(Vec::len), Some(2), "{json}");

    let out = agent.latch(&["table", "delete", "shop", &cookies[0]])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = agent.latch(&["table", "get", "shop", &cookies[0]])?;
    assert!(!out.status.success(), "deleted entry still found");
    let out = agent.latch(&["table", "get", "shop", &cookies[1]])?;
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("192.0.2."));
    Ok(())
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn a_session_on_a_down_server_is_balanced_and_re_learned() -> TestResult {
    let topo = Topology::builder().backends(2).build()?;
    topo.start_backends(HTTP_PORT, None)?;
    // Insert-if-absent keyed on the request's cookie, as examples/header_persist.toml does.
    let scripts = [
        DataScript::request(
            r#"local id = avi.http.get_cookie("sid")
if id then
  local server = avi.vs.table_lookup(id)
  if server then avi.pool.select("web", server) end
  avi.vs.reqvar.id = id
end
"#,
        ),
        DataScript::response(
            r#"if avi.vs.reqvar.id then
  avi.vs.table_insert(avi.vs.reqvar.id, avi.pool.server_ip(), 600)
end
"#,
        ),
    ];
    let _agent = start(&topo, |a| {
        lb_agent(&topo, a)
            .pool(web_pool(&topo).health_monitor(HealthMonitor::http("/healthz", PROBE_INTERVAL)))
            .virtual_service(shop(&topo).datascripts(scripts))
    })?;
    let vip = SocketAddr::from((topo.vip(), 80));
    let with_session = || -> Result<String, String> {
        topo.client().run(|| {
            http_get(vip, "/", &[("cookie", "sid=abc")])
                .map_err(|e| e.to_string())?
                .backend
                .ok_or_else(|| "no X-Backend".to_string())
        })
    };
    let first = with_session()?;
    assert_eq!(with_session()?, first, "session sticks");
    let (first_addr, other) = if first == "b1" {
        (topo.backend_addrs()[0], "b2")
    } else {
        (topo.backend_addrs()[1], "b1")
    };
    let first_server = topo.server(&first).ok_or("no server")?;
    first_server.set_healthy(false);
    wait_for("session server down", Duration::from_secs(3), || {
        Ok(server_up(&topo, "web", &format!("{first_addr}:{HTTP_PORT}"))? == Some(false))
    })?;
    // Balanced to the other server and re-learned there...
    assert_eq!(with_session()?, other);
    first_server.set_healthy(true);
    wait_for("session server back", Duration::from_secs(3), || {
        Ok(server_up(&topo, "web", &format!("{first_addr}:{HTTP_PORT}"))? == Some(true))
    })?;
    // ...so it stays there when the first server returns.
    for _ in 0..5 {
        assert_eq!(with_session()?, other, "session re-pinned to {other}");
    }
    Ok(())
}
