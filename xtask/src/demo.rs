//! `cargo xtask demo`: latch's main job on a demo topology in network namespaces.
//!
//! Part 1 runs `latch run` with examples/l4.toml (XDP: a TCP service with NAT and client-IP
//! persistence, a UDP service) and shows which backend served each connection. Part 2 runs
//! examples/jsession.toml (the HTTP proxy with the seed's JSESSIONID DataScripts) and shows
//! sessions sticking while cookie-less requests rotate. Everything lives in namespaces this
//! command creates and removes again, also on Ctrl-C or failure.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use latch_tests::{LatchAgent, Topology, http_get, http_get_from, udp_roundtrip};

use crate::proc::{cargo, is_root, repo_root, run_visible};

const HTTP_PORT: u16 = 8080;
const UDP_PORT: u16 = 53;

pub fn run() -> Result<()> {
    anyhow::ensure!(
        is_root(),
        "the demo creates network namespaces: run it as root"
    );
    let stop = ctrl_c_flag()?;
    crate::setup::run()?;
    println!("==> build");
    run_visible(cargo().args(["build", "-p", "lb-userspace"]))?;
    let latch = repo_root().join("target/debug/latch");

    println!("==> topology: client -- LB -- 3 backends, in namespaces");
    let topo = Topology::builder()
        .backends(3)
        .client_addresses(3)
        .vip_on_lb(false)
        .build()?;
    topo.start_backends(HTTP_PORT, Some(UDP_PORT))?;
    println!("    namespaces: {}", topo.namespace_names().join(" "));
    println!(
        "    clients {:?} -> LB [{}] -> backends {:?}",
        topo.client_addrs(),
        topo.lb_interfaces().join(" "),
        topo.backend_addrs()
    );
    check(&stop)?;

    l4_part(&topo, &latch, &stop)?;
    check(&stop)?;
    http_part(&topo, &latch, &stop)?;

    println!("==> tearing down");
    drop(topo);
    println!("demo finished: every namespace, link and pin removed");
    Ok(())
}

/// Sets a flag on SIGINT/SIGTERM, so the demo unwinds through its destructors (which remove
/// namespaces and pins) instead of dying with them in place.
fn ctrl_c_flag() -> Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    let set = Arc::clone(&flag);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut int, mut term) = rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        anyhow::Ok((
            signal(SignalKind::interrupt()).context("SIGINT handler")?,
            signal(SignalKind::terminate()).context("SIGTERM handler")?,
        ))
    })?;
    std::thread::spawn(move || {
        rt.block_on(async {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        });
        eprintln!("\n==> interrupted: cleaning up");
        set.store(true, Ordering::SeqCst);
    });
    Ok(flag)
}

fn check(stop: &AtomicBool) -> Result<()> {
    if stop.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// An example config with `[agent]` pointed at the demo topology and a private pin dir.
fn adapt_example(example: &str, agent: &LatchAgent, topo: &Topology) -> Result<String> {
    let text = std::fs::read_to_string(repo_root().join(example))
        .with_context(|| format!("reading {example}"))?;
    let interfaces = topo
        .lb_interfaces()
        .iter()
        .map(|i| format!("\"{i}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let mut out = String::new();
    for line in text.lines() {
        if line.starts_with("interfaces =") {
            out.push_str(&format!("interfaces = [{interfaces}]\n"));
        } else if line.starts_with("bpffs_dir =") || line.starts_with("admin_listen =") {
            continue;
        } else {
            out.push_str(line);
            out.push('\n');
            if line.trim() == "[agent]" {
                out.push_str(&format!(
                    "bpffs_dir = \"{}\"\nadmin_listen = \"127.0.0.1:9180\"\n",
                    agent.bpffs_dir().display()
                ));
            }
        }
    }
    Ok(out)
}

fn start_agent(topo: &Topology, latch: &Path, example: &str) -> Result<LatchAgent> {
    let mut agent = LatchAgent::prepare(latch, topo.lb())?;
    agent.write_config(&adapt_example(example, &agent, topo)?)?;
    agent
        .start()
        .with_context(|| format!("latch run -c {example}"))?;
    println!(
        "    latch running in {} (pid {}), pins under {}",
        topo.lb().name(),
        agent.pid().unwrap_or_default(),
        agent.bpffs_dir().display()
    );
    Ok(agent)
}

fn l4_part(topo: &Topology, latch: &Path, stop: &AtomicBool) -> Result<()> {
    println!("\n==> part 1: examples/l4.toml (XDP, NAT, client-IP persistence)");
    let agent = start_agent(topo, latch, "examples/l4.toml")?;
    let vip = topo.vip();
    let tcp = SocketAddr::from((vip, 80));
    let udp = SocketAddr::from((vip, UDP_PORT));

    println!("    TCP {tcp}: 4 connections from each client address (new source port each time)");
    let clients: Vec<Ipv4Addr> = topo.client_addrs().to_vec();
    let rows = topo.client().run(|| {
        clients
            .iter()
            .map(|&c| {
                let served: Vec<String> = (0..4)
                    .map(|_| match http_get_from(IpAddr::V4(c), tcp, "/") {
                        Ok(r) => r.backend.unwrap_or_else(|| "?".into()),
                        Err(e) => format!("error: {e}"),
                    })
                    .collect();
                (c, served)
            })
            .collect::<Vec<_>>()
    });
    println!("    {:<15} {:<24} persistence", "client", "served by");
    for (client, served) in &rows {
        let sticky = served.windows(2).all(|w| w[0] == w[1]) && !served[0].starts_with("error");
        println!(
            "    {:<15} {:<24} {}",
            client.to_string(),
            served.join(" "),
            if sticky { "sticky" } else { "NOT sticky" }
        );
    }
    check(stop)?;

    println!("    UDP {udp}: 9 datagrams, each from a new source port (no persistence)");
    let spread = topo.client().run(|| {
        let mut seen = BTreeMap::<String, usize>::new();
        for _ in 0..9 {
            let who = match udp_roundtrip(udp, b"demo", Duration::from_secs(2)) {
                Ok(r) => r.backend().unwrap_or("?").to_string(),
                Err(e) => format!("error: {e}"),
            };
            *seen.entry(who).or_default() += 1;
        }
        seen
    });
    for (backend, n) in &spread {
        println!("    {backend:<10} {n} datagram(s)");
    }

    println!("    data-plane counters (latch stats):");
    match agent.latch(&["stats"]) {
        Ok(out) if out.status.success() => {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                println!("      {line}");
            }
        }
        Ok(out) => println!(
            "      unavailable: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => println!("      unavailable: {e}"),
    }
    drop(agent);
    println!("    latch stopped and `latch down` removed its pins");
    Ok(())
}

fn http_part(topo: &Topology, latch: &Path, stop: &AtomicBool) -> Result<()> {
    println!("\n==> part 2: examples/jsession.toml (HTTP proxy, JSESSIONID DataScripts)");
    // The proxy listens on the VIP, so the LB holds it for this part.
    let vip_cidr = format!("{}/32", topo.vip());
    topo.lb().ip(&["addr", "add", &vip_cidr, "dev", "lo"])?;
    let result = (|| -> Result<()> {
        let _agent = start_agent(topo, latch, "examples/jsession.toml")?;
        let vs = SocketAddr::from((topo.vip(), 80));
        let outcome = topo.client().run(|| -> Result<_, String> {
            let mut sessions = Vec::new();
            for _ in 0..3 {
                let login = http_get(vs, "/login", &[]).map_err(|e| e.to_string())?;
                let cookie = login.set_cookie("JSESSIONID").ok_or("no JSESSIONID")?;
                let first = login.backend.unwrap_or_default();
                let header = format!("JSESSIONID={cookie}");
                let later: Vec<String> = (0..4)
                    .map(|_| {
                        http_get(vs, "/", &[("cookie", header.as_str())])
                            .map(|r| r.backend.unwrap_or_default())
                            .unwrap_or_else(|e| format!("error: {e}"))
                    })
                    .collect();
                sessions.push((cookie, first, later));
            }
            let rotating: Vec<String> = (0..6)
                .map(|_| {
                    http_get(vs, "/", &[])
                        .map(|r| r.backend.unwrap_or_default())
                        .unwrap_or_else(|e| format!("error: {e}"))
                })
                .collect();
            Ok((sessions, rotating))
        });
        let (sessions, rotating) = outcome.map_err(anyhow::Error::msg)?;
        println!(
            "    {:<16} {:<10} next 4 requests with the cookie",
            "session", "issued by"
        );
        for (cookie, first, later) in &sessions {
            println!("    {cookie:<16} {first:<10} {}", later.join(" "));
        }
        println!("    without a cookie (round robin): {}", rotating.join(" "));
        check(stop)
    })();
    let _ = topo.lb().ip(&["addr", "del", &vip_cidr, "dev", "lo"]);
    result
}
