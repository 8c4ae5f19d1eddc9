//! DataScript tables at 10 k, 100 k and 1 M entries with the kernel mirror attached, and the
//! restore after a kill -9.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use latch::dataplane::{Dataplane, monotonic_now_ns};
use latch::tables::{Mirror, TableLimits, TableStore};
use lb_common::Capacities;
use serde::Serialize;

use crate::env;
use crate::replication::percentile;

pub const VS: &str = "shop";
const VALUE: &str = "192.0.2.11:8080";
/// Operations timed one by one at each size, for the latency percentiles.
const SAMPLES: usize = 20_000;
/// Operations timed together on the thread's CPU clock, for the cost per operation.
const BATCH: usize = 100_000;

#[derive(Clone, Serialize)]
pub struct SizeResult {
    pub entries: usize,
    /// Inserts of new keys per second while filling up to `entries` (mirror included).
    pub fill_inserts_per_s: f64,
    /// CPU time (user + system, this thread) per insert of a new key, mirror write included.
    pub insert_cpu_ns: f64,
    pub insert_p50_us: f64,
    pub insert_p99_us: f64,
    /// Lookups per CPU second (1e9 / `lookup_cpu_ns`).
    pub lookup_per_s: f64,
    /// CPU time per lookup of a live key spread over the table.
    pub lookup_cpu_ns: f64,
    pub lookup_p50_us: f64,
    pub lookup_p99_us: f64,
    /// Agent RSS growth per entry while filling (user space only).
    pub rss_bytes_per_entry: f64,
    /// Kernel mirror entries after the fill (all should be there).
    pub mirrored: u64,
}

/// CPU time of the calling thread (user and system) in ns: immune to the other sessions
/// that share this machine, unlike the wall clock.
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    pages * page
}

fn key(i: usize) -> String {
    format!("sess-{i:012}")
}

pub fn caps() -> Capacities {
    Capacities {
        table_mirror_entries: 2_097_152,
        connections: 65_536,
        client_pins: 1024,
        ..Capacities::DEFAULT
    }
}

pub fn limits() -> TableLimits {
    TableLimits {
        max_entries: 2_000_000,
        max_bytes: 2 << 30,
        ..TableLimits::default()
    }
}

/// `count` live keys spread over a table of `n` (a multiplicative walk, so consecutive
/// lookups land far apart in the hash table as real sessions do), starting at `seed`.
fn spread_keys(n: usize, count: usize, seed: usize) -> Vec<String> {
    // 2654435761 is odd and coprime with every n here, so the walk visits distinct keys.
    (0..count)
        .map(|i| key((seed + i).wrapping_mul(2_654_435_761) % n))
        .collect()
}

/// Fills a fresh store (mirrored into a fresh DS_TABLE) with `n` entries and times inserts
/// and lookups at that size. Returns the store and data plane for the restore measurement.
pub fn one_size(n: usize, dir: &env::PinDir) -> Result<(SizeResult, Dataplane, TableStore)> {
    let dp = Dataplane::open_with(&dir.0, &caps()).context("opening the data plane")?;
    let tables = TableStore::new(limits(), dp.kernel_mirror() as Arc<dyn Mirror>);
    let vs = tables.vs(VS);
    let rss0 = rss_bytes();
    let now = monotonic_now_ns();
    let t = Instant::now();
    for i in 0..n {
        vs.insert("", &key(i), VALUE, 3600, now)
            .map_err(|e| anyhow::anyhow!("insert {i}: {e:?}"))?;
    }
    let fill = t.elapsed().as_secs_f64();
    let rss = rss_bytes().saturating_sub(rss0) as f64 / n as f64;

    // Inserts of new keys at this size: one by one (latency), then a batch (CPU time); all
    // removed again so the size stays `n`.
    let fresh: Vec<String> = (0..SAMPLES + BATCH).map(|i| key(n + i)).collect();
    let mut ins = Vec::with_capacity(SAMPLES);
    for k in &fresh[..SAMPLES] {
        let t = Instant::now();
        vs.insert("", k, VALUE, 3600, now)
            .map_err(|e| anyhow::anyhow!("insert: {e:?}"))?;
        ins.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let cpu0 = thread_cpu_ns();
    for k in &fresh[SAMPLES..] {
        vs.insert("", k, VALUE, 3600, now)
            .map_err(|e| anyhow::anyhow!("insert: {e:?}"))?;
    }
    let insert_cpu_ns = (thread_cpu_ns() - cpu0) as f64 / BATCH as f64;
    for k in &fresh {
        vs.remove("", k, now);
    }
    drop(fresh);

    // Lookups of live keys spread over the table (no extension: a read only), the latency
    // pass and the CPU pass on different keys so neither finds the other's in the cache.
    let mut look = Vec::with_capacity(SAMPLES);
    for k in spread_keys(n, SAMPLES, 0) {
        let t = Instant::now();
        let hit = vs.lookup("", &k, 0, now);
        look.push(t.elapsed().as_secs_f64() * 1e6);
        anyhow::ensure!(hit.is_some(), "{k} missing");
    }
    let keys = spread_keys(n, BATCH, n / 2);
    let mut hits = 0usize;
    let cpu0 = thread_cpu_ns();
    for k in &keys {
        hits += usize::from(vs.lookup("", k, 0, now).is_some());
    }
    let lookup_cpu_ns = (thread_cpu_ns() - cpu0) as f64 / BATCH as f64;
    anyhow::ensure!(hits == BATCH, "{} of {BATCH} keys missing", BATCH - hits);
    ins.sort_by(f64::total_cmp);
    look.sort_by(f64::total_cmp);
    let mirrored = dp
        .map_fill()?
        .iter()
        .find(|m| m.map == "table_mirror")
        .map_or(0, |m| m.entries);
    Ok((
        SizeResult {
            entries: n,
            fill_inserts_per_s: n as f64 / fill,
            insert_cpu_ns,
            insert_p50_us: percentile(&ins, 0.5),
            insert_p99_us: percentile(&ins, 0.99),
            lookup_per_s: 1e9 / lookup_cpu_ns,
            lookup_cpu_ns,
            lookup_p50_us: percentile(&look, 0.5),
            lookup_p99_us: percentile(&look, 0.99),
            rss_bytes_per_entry: rss,
            mirrored,
        },
        dp,
        tables,
    ))
}

/// What a kill -9 leaves (the pinned maps) read back as the agent's start does: opening the
/// data plane (adoption), reading DS_TABLE and rebuilding the tables. Wall and CPU seconds
/// (this thread, the kernel's work for its syscalls included), checked to bring back all
/// `n` entries.
pub fn restore(dir: &env::PinDir, n: usize) -> Result<(f64, f64)> {
    let t = Instant::now();
    let cpu0 = thread_cpu_ns();
    let dp = Dataplane::open_with(&dir.0, &caps())?;
    let (t1, cpu1) = (t.elapsed().as_secs_f64(), thread_cpu_ns());
    let store = TableStore::new(limits(), dp.kernel_mirror() as Arc<dyn Mirror>);
    let restored = dp
        .kernel_mirror()
        .restore(&[VS.to_owned()], monotonic_now_ns())?;
    let (t2, cpu2) = (t.elapsed().as_secs_f64(), thread_cpu_ns());
    let mut back = 0;
    for (vs, list) in restored.entries {
        back += store.vs(&vs).restore(list, monotonic_now_ns());
    }
    let secs = t.elapsed().as_secs_f64();
    let cpu = (thread_cpu_ns() - cpu0) as f64 / 1e9;
    let ms = |ns: u64| ns as f64 / 1e6;
    println!(
        "    restore phases (wall / CPU ms): open {:.0} / {:.0}, read DS_TABLE {:.0} / {:.0}, \
         rebuild tables {:.0} / {:.0}",
        t1 * 1e3,
        ms(cpu1 - cpu0),
        (t2 - t1) * 1e3,
        ms(cpu2 - cpu1),
        (secs - t2) * 1e3,
        cpu * 1e3 - ms(cpu2 - cpu0)
    );
    anyhow::ensure!(back == n, "restored {back} of {n}");
    Ok((secs, cpu))
}
