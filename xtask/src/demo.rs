//! `cargo xtask demo`: the topology from the test harness with latch in the LB namespace.
//! Skeleton: the topology, backends and teardown work; running latch and sending traffic
//! through it are the two TODO(lead) hooks below.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use latch_tests::{ChildGuard, Topology, http_get, udp_roundtrip};
use tokio::signal::unix::{SignalKind, signal};

use crate::proc::{cargo, is_root, repo_root, run_visible};

const CONFIG: &str = "examples/l4.toml";
const HTTP_PORT: u16 = 8080;
const UDP_PORT: u16 = 9000;

pub fn run() -> Result<()> {
    anyhow::ensure!(
        is_root(),
        "the demo creates network namespaces: run it as root"
    );
    // Signal handlers go in before any namespace exists, so Ctrl-C at any point unwinds
    // through the destructors instead of killing the process with namespaces left behind.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut int, mut term) = rt.block_on(async {
        anyhow::Ok((
            signal(SignalKind::interrupt()).context("SIGINT handler")?,
            signal(SignalKind::terminate()).context("SIGTERM handler")?,
        ))
    })?;

    crate::setup::run()?;
    println!("==> build");
    run_visible(cargo().args(["build", "-p", "lb-userspace"]))?;

    println!("==> topology");
    let topo = Topology::builder().backends(2).build()?;
    topo.start_backends(HTTP_PORT, Some(UDP_PORT))?;
    println!("    namespaces: {}", topo.namespace_names().join(" "));
    println!("    LB interfaces: {}", topo.lb_interfaces().join(" "));
    println!(
        "    client {} -> VIP {} -> backends {:?}",
        topo.client_addr(),
        topo.vip(),
        topo.backend_addrs()
    );

    let latch = start_latch(&topo)?;
    send_traffic(&topo)?;

    println!("==> running; Ctrl-C to stop");
    rt.block_on(async {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    });
    println!("==> tearing down");
    drop(latch);
    drop(topo);
    Ok(())
}

/// TODO(lead): run latch in the LB namespace. The topology's interface names are fixed
/// (`vclient`, `vb1`, `vb2`), so examples/l4.toml can name them in `[agent] interfaces`.
/// What is missing: a readiness signal from `latch run` to wait for (a log line or
/// polling the admin API) instead of the fixed pause below.
fn start_latch(topo: &Topology) -> Result<Option<ChildGuard>> {
    let root = repo_root();
    let config = root.join(CONFIG);
    let binary = root.join("target/debug/latch");
    if !config.exists() {
        println!("    TODO: {CONFIG} does not exist yet; running without latch");
        return Ok(None);
    }
    let (bin, cfg) = (binary.to_string_lossy(), config.to_string_lossy());
    let mut child = topo.lb().spawn(&[&bin, "run", "-c", &cfg])?;
    std::thread::sleep(Duration::from_secs(1));
    if let Some(status) = child.try_wait()? {
        anyhow::bail!("latch exited at once ({status}): {}", child.stderr());
    }
    println!(
        "    latch running in {} (pid {})",
        topo.lb().name(),
        child.pid()
    );
    Ok(Some(child))
}

/// TODO(lead): send traffic to the VIP through latch and print which backend answered.
/// For now it shows the topology works: the client reaches each backend directly through
/// kernel forwarding in the LB namespace.
fn send_traffic(topo: &Topology) -> Result<()> {
    for addr in topo.backend_addrs() {
        let http = SocketAddr::from((addr, HTTP_PORT));
        let udp = SocketAddr::from((addr, UDP_PORT));
        let (r, u) = topo.client().run(|| {
            (
                http_get(http, "/", &[]),
                udp_roundtrip(udp, b"demo", Duration::from_secs(2)),
            )
        });
        match r {
            Ok(r) => println!("    GET http://{http}/ -> {} {}", r.status, r.body_text()),
            Err(e) => println!("    GET http://{http}/ failed: {e}"),
        }
        match u {
            Ok(u) => println!("    UDP {udp} -> {}", u.text),
            Err(e) => println!("    UDP {udp} failed: {e}"),
        }
    }
    Ok(())
}
