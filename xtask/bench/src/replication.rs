//! `bench replication`: two hosts' tables replicated through a redis-server (Debian's) on
//! loopback in a private namespace. Measures the latency from an insert on host A to the
//! entry being applied on host B (timestamped by B's table mirror, where the kernel mirror
//! sits in the agent), and the sustained insert rate A→Redis→B.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use latch::config::ReplicationConfig;
use latch::replication::{Replication, ReplicationStats};
use latch::tables::{
    Clock, Mirror, MonotonicClock, NoMirror, RemoveReason, TableLimits, TableStore, VsTables,
};
use latch_tests::Netns;
use serde::Serialize;

use crate::env;

const REDIS: &str = "/usr/bin/redis-server";
const WAIT_ONE: Duration = Duration::from_secs(2);
const WAIT_ALL: Duration = Duration::from_secs(120);
/// The bench keeps A's queue below this (the agent's queue holds 100k): it measures what
/// the pipeline carries, not how many changes a full queue drops.
const MAX_BACKLOG: u64 = 50_000;

/// B's table mirror: when each key arrived.
#[derive(Default)]
struct Seen {
    at: std::sync::Mutex<HashMap<String, u64>>,
    count: AtomicU64,
}

impl Mirror for Seen {
    fn upsert(&self, _: &str, _: &str, key: &str, _: &str, _: u64) {
        let now = MonotonicClock.now_ns();
        if let Ok(mut at) = self.at.lock() {
            at.entry(key.to_string()).or_insert(now);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
    }
    fn remove(&self, _: &str, _: &str, _: &str, _: RemoveReason) {}
}

struct Host {
    shop: Arc<VsTables>,
    replication: Replication,
}

fn host(node: &str, mirror: Arc<dyn Mirror>) -> Result<Host> {
    let tables = Arc::new(TableStore::new(TableLimits::default(), mirror));
    let shop = tables.vs("shop");
    let cfg = ReplicationConfig {
        redis_url: "redis://127.0.0.1:6379".into(),
        node_id: node.into(),
        connect_timeout: Duration::from_secs(1),
        command_timeout: Duration::from_secs(1),
    };
    let replication = Replication::start(&cfg, tables, Arc::new(MonotonicClock))
        .context("starting replication")?;
    if !replication.stats().connected {
        bail!("host {node} did not connect to Redis");
    }
    Ok(Host { shop, replication })
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub kernel: String,
    pub cpus: usize,
    pub redis: String,
    pub latency_samples: usize,
    pub latency_missing: usize,
    pub latency_p50_us: f64,
    pub latency_p99_us: f64,
    pub latency_max_us: f64,
    pub inserts: usize,
    pub seconds: f64,
    pub inserts_per_s: f64,
    /// A's side alone: inserts / time until A had written all of them to Redis.
    pub sender_inserts_per_s: f64,
    pub sender_dropped: u64,
    pub sender_sent: u64,
    pub method: Vec<String>,
}

/// The value at rank `p` (0..=1) of `sorted`; 0 when empty.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn wait(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while !f() {
        if Instant::now() >= deadline || env::stopped() {
            return false;
        }
        std::thread::sleep(Duration::from_micros(50));
    }
    true
}

fn measure(samples: usize, inserts: usize) -> Result<Measured> {
    let seen = Arc::new(Seen::default());
    let a = host("bench-a", Arc::new(NoMirror))?;
    let _b = host("bench-b", seen.clone())?;

    // Latency: one insert at a time, A's insert to B's mirror.
    let mut lat = Vec::with_capacity(samples);
    let mut missing = 0;
    for i in 0..samples {
        env::check_stopped()?;
        let key = format!("lat{i}");
        let t0 = MonotonicClock.now_ns();
        a.shop.insert("", &key, "192.0.2.11", 300, t0)?;
        let mut at = None;
        if wait(WAIT_ONE, || {
            at = seen.at.lock().ok().and_then(|m| m.get(&key).copied());
            at.is_some()
        }) && let Some(t) = at
        {
            lat.push(t.saturating_sub(t0) as f64 / 1_000.0);
        } else {
            missing += 1;
        }
    }

    // Throughput: as fast as A's queue drains, until B applied every one.
    let base = seen.count.load(Ordering::Relaxed);
    let sent_base = a.replication.stats().sent;
    let start = Instant::now();
    for i in 0..inserts {
        if i % 1000 == 0 {
            env::check_stopped()?;
            wait(WAIT_ALL, || {
                let s = a.replication.stats();
                s.queued.saturating_sub(s.sent) < MAX_BACKLOG
            });
        }
        a.shop.insert(
            "",
            &format!("tp{i}"),
            "192.0.2.12",
            300,
            MonotonicClock.now_ns(),
        )?;
    }
    let mut sender_secs = None;
    let all = wait(WAIT_ALL, || {
        if sender_secs.is_none() && a.replication.stats().sent - sent_base >= inserts as u64 {
            sender_secs = Some(start.elapsed().as_secs_f64());
        }
        seen.count.load(Ordering::Relaxed) - base >= inserts as u64
    });
    let secs = start.elapsed().as_secs_f64();
    if !all {
        bail!(
            "B applied only {} of {inserts} inserts",
            seen.count.load(Ordering::Relaxed) - base
        );
    }
    Ok(Measured {
        lat,
        missing,
        secs,
        sender_secs: sender_secs.unwrap_or(secs),
        stats: a.replication.stats(),
    })
}

struct Measured {
    lat: Vec<f64>,
    missing: usize,
    secs: f64,
    sender_secs: f64,
    stats: ReplicationStats,
}

pub fn run(samples: usize, inserts: usize) -> Result<()> {
    if !std::path::Path::new(REDIS).exists() {
        bail!("{REDIS} is missing (cargo xtask setup installs redis-server)");
    }
    let redis_version = std::process::Command::new(REDIS)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let ns = Netns::new("rbench")?;
    let redis = latch_tests::start_redis(&mut ns.command(&[
        REDIS,
        "--port",
        "6379",
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]))?;
    println!("==> replication: {samples} latency samples, then {inserts} inserts");
    let Measured {
        mut lat,
        missing,
        secs,
        sender_secs,
        stats,
    } = ns.run(|| measure(samples, inserts))?;
    drop(redis);
    drop(ns);
    lat.sort_by(f64::total_cmp);
    let report = Report {
        kernel: env::kernel_release(),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        redis: redis_version,
        latency_samples: lat.len(),
        latency_missing: missing,
        latency_p50_us: percentile(&lat, 0.5),
        latency_p99_us: percentile(&lat, 0.99),
        latency_max_us: lat.last().copied().unwrap_or(0.0),
        inserts,
        seconds: secs,
        inserts_per_s: inserts as f64 / secs,
        sender_inserts_per_s: inserts as f64 / sender_secs,
        sender_dropped: stats.dropped,
        sender_sent: stats.sent,
        method: vec![
            "Two in-process hosts (TableStore + Replication, as the agent runs them) and one \
             redis-server on 127.0.0.1 inside a private namespace."
                .into(),
            "Latency: one insert at a time on A; measured from before A's insert to B's table \
             mirror seeing the entry (the point where the agent writes the kernel map)."
                .into(),
            "Throughput: inserts of distinct keys on A, paced only to keep A's queue under \
             50k, until B applied all of them; inserts/s = inserts / that time."
                .into(),
        ],
    };
    write(&report)
}

fn markdown(r: &Report) -> String {
    format!(
        "# Replication through Redis\n\n{} on kernel {}, {} CPUs\n\n\
         | measure | value |\n|---|---|\n\
         | insert on A → applied on B, p50 | {:.0} µs |\n\
         | insert on A → applied on B, p99 | {:.0} µs |\n\
         | insert on A → applied on B, max | {:.0} µs |\n\
         | samples (missing) | {} ({}) |\n\
         | sustained inserts A→Redis→B | {:.0} /s ({} in {:.2} s) |\n\
         | of which A→Redis alone | {:.0} /s |\n\
         | A's queue drops | {} |\n\n{}\n",
        r.redis,
        r.kernel,
        r.cpus,
        r.latency_p50_us,
        r.latency_p99_us,
        r.latency_max_us,
        r.latency_samples,
        r.latency_missing,
        r.inserts_per_s,
        r.inserts,
        r.seconds,
        r.sender_inserts_per_s,
        r.sender_dropped,
        r.method
            .iter()
            .map(|m| format!("- {m}"))
            .collect::<Vec<_>>()
            .join("\n")
    )
}

fn write(report: &Report) -> Result<()> {
    let dir = env::out_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let md = markdown(report);
    std::fs::write(dir.join("replication.md"), &md)?;
    std::fs::write(
        dir.join("replication.json"),
        serde_json::to_string_pretty(report)?,
    )?;
    println!("{md}");
    println!("==> wrote {}/replication.{{md,json}}", dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_ranks() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 51.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
    }
}
