//! WebSocket (HTTP/1.1 `Upgrade`) through `latch run`: the upgrade request runs the request
//! scripts and is balanced like any request, the 101 turns the connection into a tunnel both
//! ways, counted in /metrics. Needs root: `#[ignore]`d, run with `--include-ignored`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use latch_tests::{DataScript, Topology, WsClient};

use crate::netns_config::{
    HTTP_PORT, TestResult, lb_agent, shop, start_agent, vs_metric, wait_for, web_pool,
};

#[test]
#[ignore = "needs root: creates network namespaces"]
fn websocket_echo_through_the_proxy_runs_scripts_balances_and_is_counted() -> TestResult {
    let topo = Topology::builder().backends(2).build()?;
    topo.start_backends(HTTP_PORT, None)?;
    let _agent = start_agent(&topo, |agent| {
        lb_agent(&topo, agent)
            .pool(web_pool(&topo))
            .virtual_service(shop(&topo).datascript(DataScript::request(
                r#"avi.http.add_header("X-Script", "ran")"#,
            )))
    })?;
    let vip = SocketAddr::from((topo.vip(), 80));
    let timeout = Duration::from_secs(5);
    let mut sockets = topo.client().run(|| -> Result<Vec<WsClient>, String> {
        (0..2)
            .map(|_| WsClient::connect(vip, "/ws", timeout).map_err(|e| e.to_string()))
            .collect()
    })?;
    let mut backends = BTreeSet::new();
    for ws in &mut sockets {
        let hello = ws.recv()?;
        let (backend, script) = hello.split_once(' ').ok_or(format!("hello: {hello}"))?;
        assert_eq!(
            script, "x-script=ran",
            "the request script did not run: {hello}"
        );
        backends.insert(backend.to_string());
    }
    assert_eq!(
        backends.len(),
        2,
        "the upgrades were not balanced: {backends:?}"
    );
    for (i, ws) in sockets.iter_mut().enumerate() {
        for n in 0..3 {
            let text = format!("message {n} on socket {i}");
            assert_eq!(ws.echo(&text)?, text);
        }
    }
    assert_eq!(vs_metric(&topo, "latch_http_upgrades_total", "shop")?, 2.0);
    assert_eq!(vs_metric(&topo, "latch_http_active_tunnels", "shop")?, 2.0);
    for ws in sockets {
        ws.close();
    }
    wait_for("the tunnels to close", Duration::from_secs(5), || {
        Ok(vs_metric(&topo, "latch_http_active_tunnels", "shop")? == 0.0)
    })?;
    // Plain requests still work on the same service.
    let r = topo
        .client()
        .run(|| latch_tests::http_get(vip, "/", &[]).map_err(|e| e.to_string()))?;
    assert_eq!(r.status, 200);
    Ok(())
}
