//! The faults, in a fixed cycle, each framed by a known set of table entries: inserted before
//! the fault (half on A, half on B, through the `kv` service), seen replicated on both hosts,
//! then after the fault checked on both hosts again. An entry missing or changed once the
//! check's time is up is lost.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use latch_tests::{Netns, config::ADMIN_LISTEN, http_get, strip_ansi};

use crate::rig::{FLAPPED, KV_PORT, Live, Net};
use crate::sampler::Tracked;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Agent A killed with SIGKILL, restarted after 2 s (its pins adopted).
    Kill9,
    /// A new config generation, SIGHUP to both agents.
    Sighup,
    /// redis-server stopped for 3 s (entries inserted on both hosts meanwhile) and started
    /// empty.
    RedisRestart,
    /// Backend b3 stopped until A's health monitor takes it out, then started until it is
    /// back in.
    Flap,
    /// A new config generation, `latch reload` (admin API) on both agents.
    CliReload,
}

pub const CYCLE: [Kind; 5] = [
    Kind::Kill9,
    Kind::Sighup,
    Kind::RedisRestart,
    Kind::Flap,
    Kind::CliReload,
];

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Kill9 => "kill -9 + restart",
            Kind::Sighup => "SIGHUP reload",
            Kind::RedisRestart => "Redis restart",
            Kind::Flap => "backend flap",
            Kind::CliReload => "latch reload",
        }
    }
}

/// Entries per known set (half inserted on each host).
const KNOWN: usize = 20;
/// How long entries may take to show on both hosts (before a fault, and after it).
const CONVERGE: Duration = Duration::from_secs(15);

/// What one fault did and cost.
#[derive(Debug, Clone)]
pub struct FaultRecord {
    pub index: usize,
    pub kind: Kind,
    /// The fault and its recovery, in seconds since the run began.
    pub start_s: f64,
    pub end_s: f64,
    /// Known entries written (put requests answered 200) and those whose put failed.
    pub inserted: usize,
    pub insert_failed: usize,
    /// Known entries not yet on both hosts when the fault began (replication lag).
    pub unreplicated_before: usize,
    /// Known entries missing or changed on A / on B after the fault.
    pub lost_a: usize,
    pub lost_b: usize,
    /// Seconds from the recovery to all entries checked present (or the limit).
    pub check_s: f64,
    /// Something went wrong that is not a lost entry (a refused reload, pins not adopted).
    pub problem: Option<String>,
    pub note: String,
}

/// (key, value) of the known entries, and which host wrote each.
type Known = Vec<(String, String)>;

fn put(ns: &Netns, entries: &[(String, String)]) -> usize {
    ns.run(|| {
        entries
            .iter()
            .filter(|(k, v)| {
                http_get(
                    SocketAddr::from((latch_tests::topology::VIP, KV_PORT)),
                    "/put",
                    &[("x-key", k.as_str()), ("x-val", v.as_str())],
                )
                .is_ok_and(|r| r.status == 200)
            })
            .count()
    })
}

/// GET on the admin API of the agent in `ns`, as JSON.
fn admin_json(ns: &Netns, path: &str) -> Result<serde_json::Value> {
    let r = ns.run(|| http_get(ADMIN_LISTEN, path, &[]))?;
    if r.status != 200 {
        bail!("{path}: status {}", r.status);
    }
    serde_json::from_slice(&r.body).with_context(|| format!("{path}: not JSON"))
}

/// The `kv` entries of the agent in `ns` whose key starts with `prefix`.
fn table(ns: &Netns, prefix: &str) -> Result<BTreeMap<String, String>> {
    let v = admin_json(ns, &format!("/api/v1/tables/kv?prefix={prefix}&limit=1000"))?;
    let entries = v["entries"]
        .as_array()
        .with_context(|| format!("no entries in {v}"))?;
    Ok(entries
        .iter()
        .filter_map(|e| {
            Some((
                e["key"].as_str()?.to_string(),
                e["value"].as_str()?.to_string(),
            ))
        })
        .collect())
}

/// Known entries missing or changed on the host in `ns` (all of them when it cannot be read).
fn missing(ns: &Netns, prefix: &str, known: &Known) -> usize {
    match table(ns, prefix) {
        Ok(t) => known.iter().filter(|(k, v)| t.get(k) != Some(v)).count(),
        Err(_) => known.len(),
    }
}

/// Polls until both hosts hold every known entry or `limit` passes; what is missing then.
fn converge(net: &Net, prefix: &str, known: &Known, limit: Duration) -> (usize, usize, f64) {
    let started = Instant::now();
    loop {
        let a = missing(net.topo.lb(), prefix, known);
        let b = missing(&net.lbb, prefix, known);
        if (a == 0 && b == 0) || started.elapsed() >= limit {
            return (a, b, started.elapsed().as_secs_f64());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `n` entries named `prefix<j>`, their values servers the flap never takes out (a server
/// taken out loses its entries by design).
fn known_set(prefix: &str, n: usize) -> (Known, Known) {
    let (mut on_a, mut on_b) = (Vec::new(), Vec::new());
    for j in 0..n {
        let server = latch_tests::topology::backend_addr(1 + j % 2).to_string();
        let e = (format!("{prefix}{j}"), server);
        if j % 4 < 2 { &mut on_a } else { &mut on_b }.push(e);
    }
    (on_a, on_b)
}

/// Whether server `addr` of pool `web` is up according to A's admin API.
fn web_server_up(net: &Net, addr: SocketAddr) -> Option<bool> {
    let v = admin_json(net.topo.lb(), "/api/v1/pools").ok()?;
    let pool = v.as_array()?.iter().find(|p| p["name"] == "web")?;
    let server = pool["servers"]
        .as_array()?
        .iter()
        .find(|s| s["addr"].as_str() == Some(&addr.to_string()))?;
    server["up"].as_bool()
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> Option<f64> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if f() {
            return Some(started.elapsed().as_secs_f64());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Shared with the load and the sampler.
pub struct Ctx<'a> {
    pub now_s: &'a dyn Fn() -> f64,
    pub flaps: &'a AtomicU64,
    /// Agent A's process, for the sampler (A is the one restarted).
    pub a: &'a Tracked,
}

/// Runs fault number `index` of kind `kind` with its known set; errors of the harness itself
/// (not of latch) end the run.
pub fn run_one(
    live: &mut Live,
    net: &Net,
    ctx: &Ctx,
    index: usize,
    kind: Kind,
) -> Result<FaultRecord> {
    let prefix = format!("f{index}-");
    let (on_a, on_b) = known_set(&prefix, KNOWN);
    let mut known: Known = on_a.iter().chain(&on_b).cloned().collect();
    let mut inserted = put(net.topo.client(), &on_a) + put(&net.lbb, &on_b);
    let (ma, mb, _) = converge(net, &prefix, &known, CONVERGE);
    let unreplicated_before = ma.max(mb);

    let start_s = (ctx.now_s)();
    let mut problem = None;
    let mut note = String::new();
    match kind {
        Kind::Kill9 => {
            live.a.kill9()?;
            ctx.a.clear();
            std::thread::sleep(Duration::from_secs(2));
            live.a.start().context("restarting agent A")?;
            ctx.a.set(live.a.pid());
            let log = strip_ansi(&live.a.log());
            if log.contains("adopted=true") {
                note = "pins adopted".into();
            } else {
                problem = Some("restarted agent did not adopt its pins".into());
            }
        }
        Kind::Sighup => {
            let generation = live.next_generation(net)?;
            for (host, agent) in [("A", &live.a), ("B", &live.b)] {
                let out = agent.reload()?;
                if !out.contains("configuration reloaded") {
                    problem = Some(format!("{host}: reload refused: {out}"));
                }
            }
            note = format!("generation {generation}");
        }
        Kind::CliReload => {
            let generation = live.next_generation(net)?;
            for (host, agent) in [("A", &live.a), ("B", &live.b)] {
                let out = agent.latch(&["reload"])?;
                if !out.status.success() {
                    problem = Some(format!(
                        "{host}: latch reload: {} {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    ));
                }
            }
            note = format!("generation {generation}");
        }
        Kind::RedisRestart => {
            live.stop_redis()?;
            std::thread::sleep(Duration::from_secs(1));
            // Written while Redis is down: they must reach the other host once it is back.
            let (off_a, off_b) = known_set(&format!("{prefix}off-"), KNOWN / 2);
            inserted += put(net.topo.client(), &off_a) + put(&net.lbb, &off_b);
            known.extend(off_a.into_iter().chain(off_b));
            std::thread::sleep(Duration::from_secs(2));
            live.start_redis(net)?;
        }
        Kind::Flap => {
            ctx.flaps.fetch_add(1, Ordering::SeqCst);
            let addr = SocketAddr::from((
                latch_tests::topology::backend_addr(FLAPPED),
                crate::rig::HTTP_PORT,
            ));
            live.stop_backend(FLAPPED)?;
            let down = wait_until(Duration::from_secs(10), || {
                web_server_up(net, addr) == Some(false)
            });
            live.start_backend_again(net, FLAPPED)?;
            let up = wait_until(Duration::from_secs(15), || {
                web_server_up(net, addr) == Some(true)
            });
            match (down, up) {
                (Some(d), Some(u)) => note = format!("out after {d:.1}s, back after {u:.1}s"),
                _ => {
                    problem = Some(format!(
                        "health monitor: taken out {down:?}, back {up:?} (seconds)"
                    ))
                }
            }
        }
    }
    let end_s = (ctx.now_s)();
    let (lost_a, lost_b, check_s) = converge(net, &prefix, &known, CONVERGE);
    Ok(FaultRecord {
        index,
        kind,
        start_s,
        end_s,
        inserted,
        insert_failed: known.len() - inserted.min(known.len()),
        unreplicated_before,
        lost_a,
        lost_b,
        check_s,
        problem,
        note,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_sets_avoid_the_flapped_server_and_split_between_hosts() {
        let (a, b) = known_set("f1-", 20);
        assert_eq!((a.len(), b.len()), (10, 10));
        let flapped = latch_tests::topology::backend_addr(FLAPPED).to_string();
        assert!(a.iter().chain(&b).all(|(_, v)| *v != flapped));
        assert!(a.iter().any(|(_, v)| v.ends_with(".11")));
        assert!(a.iter().any(|(_, v)| v.ends_with(".12")));
    }
}
