//! Layer-4 services through the XDP data plane with real traffic: client namespace -> LB
//! namespace running `latch run` -> backend namespaces. Needs root: `#[ignore]`d, run with
//! `--include-ignored`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use latch_tests::{
    AgentSettings, HttpConn, LatchAgent, LatchConfig, Pool, Topology, VirtualService, http_get,
    http_get_from, strip_ansi, udp_roundtrip,
};

use crate::LATCH;
use crate::netns_config::{
    HTTP_PORT, TestResult, all_backends, backends, lb_agent, start_agent as start, web_tcp,
};

const UDP_PORT: u16 = 9000;

/// Pool `web` of backends `servers` on their HTTP port behind `tcp` (VIP:80, port mapping to
/// 8080), pool `dns` of the same backends on their UDP port behind a udp VS on VIP:53.
fn l4_config(
    agent: &LatchAgent,
    topo: &Topology,
    tcp: VirtualService,
    servers: &[usize],
) -> LatchConfig {
    with_l4_services(lb_agent(topo, agent), topo, tcp, servers)
}

/// `config` with the pools and services of [`l4_config`].
fn with_l4_services(
    config: LatchConfig,
    topo: &Topology,
    tcp: VirtualService,
    servers: &[usize],
) -> LatchConfig {
    config
        .pool(Pool::new("web", backends(topo, servers, HTTP_PORT)))
        .pool(Pool::new("dns", backends(topo, servers, UDP_PORT)))
        .virtual_service(tcp)
        .virtual_service(VirtualService::udp("dns-udp", vip(topo, 53), "dns"))
}

fn vip(topo: &Topology, port: u16) -> SocketAddr {
    SocketAddr::from((topo.vip(), port))
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn tcp_and_udp_reach_every_backend_and_backends_see_the_client() -> TestResult {
    let topo = Topology::builder().backends(3).vip_on_lb(false).build()?;
    topo.start_backends(HTTP_PORT, Some(UDP_PORT))?;
    let agent = start(&topo, |a| l4_config(a, &topo, web_tcp(&topo), &[1, 2, 3]))?;
    let client = topo.client_addr();
    // The topology's links are veths: the agent says what their senders need (its stderr is
    // collected as it comes, so wait for the line).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let warned = |log: &str| log.contains("XDP on a veth: attach it at TC instead");
    while !warned(&agent.log()) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = agent.log();
    assert!(warned(&log), "no veth warning in the agent's log:\n{log}");

    let (tcp_seen, udp_seen) = topo.client().run(|| -> Result<_, String> {
        let mut tcp = BTreeMap::<String, usize>::new();
        for _ in 0..60 {
            let r = http_get(vip(&topo, 80), "/", &[]).map_err(|e| e.to_string())?;
            if r.status != 200 {
                return Err(format!("status {}", r.status));
            }
            // NAT keeps the client's address: the backend sees it, not the LB's.
            let seen = r.seen_client.ok_or("no X-Seen-Client")?;
            if seen.ip() != IpAddr::V4(client) {
                return Err(format!("backend saw {seen}, expected {client}"));
            }
            *tcp.entry(r.backend.ok_or("no X-Backend")?).or_default() += 1;
        }
        let mut udp = BTreeMap::<String, usize>::new();
        for _ in 0..60 {
            let r = udp_roundtrip(vip(&topo, 53), b"hello", Duration::from_secs(2))
                .map_err(|e| e.to_string())?;
            // The reply must come from the VIP, as the client addressed it.
            if r.from != vip(&topo, 53) {
                return Err(format!("UDP reply from {}, expected the VIP", r.from));
            }
            let seen = r.seen_client().ok_or("no client in UDP reply")?;
            if seen.ip() != IpAddr::V4(client) {
                return Err(format!("UDP backend saw {seen}"));
            }
            *udp.entry(r.backend().ok_or("no backend in UDP reply")?.to_string())
                .or_default() += 1;
        }
        Ok((tcp, udp))
    })?;
    assert_eq!(
        tcp_seen.len(),
        3,
        "TCP connections spread over all backends: {tcp_seen:?}"
    );
    assert_eq!(
        udp_seen.len(),
        3,
        "UDP flows spread over all backends: {udp_seen:?}"
    );
    Ok(())
}

/// Every sender keeps TX checksum offload on (veths then hand frames on with partial
/// checksums, as container hosts do), latch runs at TC ingress on its interfaces: NAT-ed TCP
/// and UDP still reach every backend, which answers through latch, so the backends received
/// frames with valid checksums (their stacks drop any other) and so did the client.
#[test]
#[ignore = "needs root: creates network namespaces"]
fn tc_attach_forwards_frames_with_partial_checksums() -> TestResult {
    let topo = Topology::builder()
        .backends(2)
        .vip_on_lb(false)
        .tx_offload(true)
        .build()?;
    topo.start_backends(HTTP_PORT, Some(UDP_PORT))?;
    let agent = start(&topo, |a| {
        let mut settings = AgentSettings::new(&topo.lb_interfaces())
            .bpffs_dir(a.bpffs_dir())
            .state_file(&a.dir().join("servers.json"));
        for iface in topo.lb_interfaces() {
            settings = settings.attach_tc(&iface);
        }
        with_l4_services(LatchConfig::new(settings), &topo, web_tcp(&topo), &[1, 2])
    })?;
    let client = topo.client_addr();
    let (tcp_seen, udp_seen) = topo.client().run(|| -> Result<_, String> {
        let mut tcp = BTreeSet::new();
        for _ in 0..30 {
            // 100 kB back: many full data segments, not only handshakes.
            let r = http_get(vip(&topo, 80), "/download?bytes=100000", &[])
                .map_err(|e| e.to_string())?;
            if r.status != 200 || r.body_len != 100_000 {
                return Err(format!("status {}, {} bytes", r.status, r.body_len));
            }
            let seen = r.seen_client.ok_or("no X-Seen-Client")?;
            if seen.ip() != IpAddr::V4(client) {
                return Err(format!("backend saw {seen}, expected {client}"));
            }
            tcp.insert(r.backend.ok_or("no X-Backend")?);
        }
        let mut udp = BTreeSet::new();
        for _ in 0..30 {
            let r = udp_roundtrip(vip(&topo, 53), b"hello", Duration::from_secs(2))
                .map_err(|e| e.to_string())?;
            if r.from != vip(&topo, 53) {
                return Err(format!("UDP reply from {}, expected the VIP", r.from));
            }
            udp.insert(r.backend().ok_or("no backend in UDP reply")?.to_string());
        }
        Ok((tcp, udp))
    })?;
    assert_eq!(tcp_seen.len(), 2, "TCP over both backends: {tcp_seen:?}");
    assert_eq!(udp_seen.len(), 2, "UDP over both backends: {udp_seen:?}");
    let log = agent.log();
    assert!(
        log.contains("hook=Tc") && !log.contains("XDP on a veth"),
        "attached at TC, no XDP veth warning:\n{log}"
    );
    Ok(())
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn client_ip_persistence_sticks_and_expires() -> TestResult {
    let topo = Topology::builder()
        .backends(3)
        .client_addresses(4)
        .vip_on_lb(false)
        .build()?;
    topo.start_backends(HTTP_PORT, Some(UDP_PORT))?;
    let _agent = start(&topo, |a| {
        l4_config(
            a,
            &topo,
            web_tcp(&topo).client_ip_persistence(Duration::from_secs(1)),
            &[1, 2, 3],
        )
    })?;
    let clients: Vec<IpAddr> = topo.client_addrs().iter().map(|&a| IpAddr::V4(a)).collect();

    // Every client address sticks to one backend over many connections (many source ports).
    let sticky = topo.client().run(|| -> Result<Vec<String>, String> {
        let mut pinned = Vec::new();
        for &from in &clients {
            let mut seen = BTreeSet::new();
            for _ in 0..15 {
                let r = http_get_from(from, vip(&topo, 80), "/").map_err(|e| e.to_string())?;
                seen.insert(r.backend.ok_or("no X-Backend")?);
            }
            if seen.len() != 1 {
                return Err(format!(
                    "{from} was spread over {seen:?} despite persistence"
                ));
            }
            pinned.extend(seen);
        }
        Ok(pinned)
    })?;
    assert_eq!(sticky.len(), clients.len());

    // After the timeout the pin is gone and the next connection is balanced afresh. Each
    // round lands on the old backend with probability 1/3; 8 rounds make a false failure a
    // 1-in-6561 event.
    let first = clients[0];
    let moved = topo.client().run(|| -> Result<bool, String> {
        let mut current = sticky[0].clone();
        for _ in 0..8 {
            std::thread::sleep(Duration::from_millis(1500));
            let r = http_get_from(first, vip(&topo, 80), "/").map_err(|e| e.to_string())?;
            let now = r.backend.ok_or("no X-Backend")?;
            if now != current {
                return Ok(true);
            }
            current = now;
        }
        Ok(false)
    })?;
    assert!(
        moved,
        "client {first} never moved after its persistence expired"
    );
    Ok(())
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn dsr_reaches_every_backend_which_answers_from_the_vip() -> TestResult {
    let topo = Topology::builder()
        .backends(3)
        .with_vip_on_backend_loopback()
        .build()?;
    topo.start_backends(HTTP_PORT, None)?;
    let _agent = start(&topo, |a| {
        lb_agent(&topo, a)
            .pool(Pool::new("web", all_backends(&topo, HTTP_PORT)))
            .virtual_service(VirtualService::tcp("dsr", vip(&topo, HTTP_PORT), "web").dsr())
    })?;
    let client = topo.client_addr();
    let seen = topo.client().run(|| -> Result<BTreeSet<String>, String> {
        let mut seen = BTreeSet::new();
        for _ in 0..45 {
            let r = http_get(vip(&topo, HTTP_PORT), "/", &[]).map_err(|e| e.to_string())?;
            let c = r.seen_client.ok_or("no X-Seen-Client")?;
            if c.ip() != IpAddr::V4(client) {
                return Err(format!("backend saw {c}"));
            }
            seen.insert(r.backend.ok_or("no X-Backend")?);
        }
        Ok(seen)
    })?;
    assert_eq!(seen.len(), 3, "DSR spread over all backends: {seen:?}");
    Ok(())
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn reload_removing_a_backend_keeps_other_flows_and_stops_new_ones_to_it() -> TestResult {
    let topo = Topology::builder().backends(3).vip_on_lb(false).build()?;
    topo.start_backends(HTTP_PORT, Some(UDP_PORT))?;
    let agent = start(&topo, |a| l4_config(a, &topo, web_tcp(&topo), &[1, 2, 3]))?;

    // A long-lived keep-alive connection; whichever backend it lands on stays in the pool.
    let (conn_backend, mut conn) = topo.client().run(|| -> Result<_, String> {
        let mut conn =
            HttpConn::connect(vip(&topo, 80), Duration::from_secs(5)).map_err(|e| e.to_string())?;
        let first = conn.get("/", &[]).map_err(|e| e.to_string())?;
        Ok((first.backend.ok_or("no X-Backend")?, conn))
    })?;
    let index = |name: &str| name.trim_start_matches('b').parse::<usize>().unwrap_or(0);
    let removed = (1..=3)
        .find(|&i| i != index(&conn_backend))
        .ok_or("no backend to remove")?;

    let keep: Vec<usize> = (1..=3).filter(|&i| i != removed).collect();
    agent.write_latch_config(&l4_config(&agent, &topo, web_tcp(&topo), &keep))?;
    let outcome = agent.reload()?;
    assert!(
        outcome.contains("configuration reloaded"),
        "reload: {outcome}"
    );

    let removed_name = format!("b{removed}");
    let removed_before = topo
        .server(&removed_name)
        .map(|s| s.requests())
        .ok_or("no removed server")?;
    topo.client().run(|| -> Result<(), String> {
        // The established connection survives the reload on its backend.
        for _ in 0..5 {
            let r = conn
                .get("/", &[])
                .map_err(|e| format!("kept connection broke: {e}"))?;
            if r.backend.as_deref() != Some(conn_backend.as_str()) {
                return Err(format!("kept connection moved to {:?}", r.backend));
            }
        }
        // New connections never reach the removed backend.
        for _ in 0..40 {
            let r = http_get(vip(&topo, 80), "/", &[]).map_err(|e| e.to_string())?;
            if r.backend.as_deref() == Some(removed_name.as_str()) {
                return Err(format!(
                    "new connection reached removed backend {removed_name}"
                ));
            }
        }
        Ok(())
    })?;
    let removed_after = topo
        .server(&removed_name)
        .map(|s| s.requests())
        .ok_or("no removed server")?;
    assert_eq!(
        removed_before, removed_after,
        "removed backend got requests"
    );
    Ok(())
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn bad_config_on_reload_is_refused_and_traffic_goes_on() -> TestResult {
    let topo = Topology::builder().backends(2).vip_on_lb(false).build()?;
    topo.start_backends(HTTP_PORT, Some(UDP_PORT))?;
    let agent = start(&topo, |a| l4_config(a, &topo, web_tcp(&topo), &[1, 2]))?;
    // web-tcp names a pool that does not exist.
    let unknown_pool = VirtualService::tcp("web-tcp", vip(&topo, 80), "nope");
    agent.write_latch_config(&l4_config(&agent, &topo, unknown_pool, &[1, 2]))?;
    let outcome = agent.reload()?;
    assert!(outcome.contains("reload refused"), "reload: {outcome}");
    assert!(
        outcome.contains("latch.toml:"),
        "refusal names file:line:col: {outcome}"
    );
    topo.client().run(|| -> Result<(), String> {
        for _ in 0..10 {
            let r = http_get(vip(&topo, 80), "/", &[]).map_err(|e| e.to_string())?;
            if r.status != 200 {
                return Err(format!("status {}", r.status));
            }
        }
        Ok(())
    })?;
    Ok(())
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn second_agent_and_unknown_interface_are_refused_clearly() -> TestResult {
    let topo = Topology::builder().backends(1).vip_on_lb(false).build()?;
    topo.start_backends(HTTP_PORT, Some(UDP_PORT))?;
    let first = start(&topo, |a| l4_config(a, &topo, web_tcp(&topo), &[1]))?;

    // Same pin directory: refused by the lock, naming the directory.
    let second = LatchAgent::prepare(LATCH.as_ref(), topo.lb())?;
    second.write_config(&std::fs::read_to_string(first.config_path())?)?;
    let (status, stderr) = second.run_expecting_exit(Duration::from_secs(20))?;
    assert!(!status.success());
    assert!(
        strip_ansi(&stderr).contains(&format!(
            "another latch agent (pid {}) is running",
            first.pid().ok_or("no pid")?
        )),
        "second agent: {stderr}"
    );

    // Other pins, same interfaces: the XDP program in place is named, not "File exists".
    let other_pins = LatchAgent::prepare(LATCH.as_ref(), topo.lb())?;
    let config = std::fs::read_to_string(first.config_path())?;
    let first_dir = first.bpffs_dir().display().to_string();
    other_pins
        .write_config(&config.replace(&first_dir, &other_pins.bpffs_dir().display().to_string()))?;
    let (status, stderr) = other_pins.run_expecting_exit(Duration::from_secs(20))?;
    assert!(!status.success());
    let stderr = strip_ansi(&stderr);
    assert!(
        stderr.contains("already has an XDP program attached that is not this agent's")
            && !stderr.contains("File exists"),
        "agent with other pins: {stderr}"
    );

    let third = LatchAgent::prepare(LATCH.as_ref(), topo.lb())?;
    // The client-side interface replaced by one that does not exist.
    let mut interfaces = topo.lb_interfaces();
    interfaces[0] = "nosuch0".to_string();
    let config = with_l4_services(
        LatchConfig::new(AgentSettings::new(&interfaces).bpffs_dir(third.bpffs_dir())),
        &topo,
        web_tcp(&topo),
        &[1],
    );
    third.write_latch_config(&config)?;
    let (status, stderr) = third.run_expecting_exit(Duration::from_secs(20))?;
    assert!(!status.success());
    assert!(
        stderr.contains("nosuch0"),
        "unknown interface named: {stderr}"
    );
    // The refused start left the first agent's traffic alone.
    let r = topo.client().run(|| http_get(vip(&topo, 80), "/", &[]))?;
    assert_eq!(r.status, 200);
    Ok(())
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn a_start_under_ip_netns_exec_is_refused_naming_the_cure() -> TestResult {
    let topo = Topology::builder().backends(1).vip_on_lb(false).build()?;
    let agent = LatchAgent::prepare(LATCH.as_ref(), topo.lb())?;
    agent.write_latch_config(&l4_config(&agent, &topo, web_tcp(&topo), &[1]))?;
    // `ip netns exec` gives latch a private mount namespace with a fresh /sys: a bpffs it
    // mounted there would take every pin with it when it exits.
    let ns = topo.lb().name().to_string();
    let (status, stderr) =
        agent.run_wrapped_expecting_exit(&["ip", "netns", "exec", &ns], Duration::from_secs(20))?;
    assert!(!status.success(), "started: {stderr}");
    assert!(
        stderr.contains("private mount namespace") && stderr.contains("nsenter --net="),
        "refusal names the cure: {stderr}"
    );
    Ok(())
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn missing_privileges_are_named_with_the_capabilities_needed() -> TestResult {
    let topo = Topology::builder().backends(1).vip_on_lb(false).build()?;
    let agent = LatchAgent::prepare(LATCH.as_ref(), topo.lb())?;
    agent.write_latch_config(&l4_config(&agent, &topo, web_tcp(&topo), &[1]))?;
    // Root's uid but no capabilities at all: BPF and netlink operations are refused.
    let (status, stderr) = agent.run_wrapped_expecting_exit(
        &["setpriv", "--bounding-set=-all", "--inh-caps=-all"],
        Duration::from_secs(20),
    )?;
    assert!(!status.success(), "{status}: {stderr}");
    assert!(stderr.contains("permission denied"), "{status}: {stderr}");
    assert!(
        stderr.contains("CAP_BPF") && stderr.contains("CAP_NET_ADMIN"),
        "{stderr}"
    );
    Ok(())
}
