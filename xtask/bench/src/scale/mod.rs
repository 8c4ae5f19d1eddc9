//! `cargo xtask bench scale`: how latch behaves as its state grows (issue 17, item 5). In one
//! process, as the agent runs them: DataScript tables with the kernel mirror attached (a
//! real DS_TABLE under a private pin directory) at 10 k, 100 k and 1 M entries, the restore
//! after a kill -9 at 1 M entries, and the config load of 1,000 virtual services of 10
//! servers each. Needs root (BPF maps). Writes target/bench/scale.{md,json}.
//!
//! Not measured here (yet): the connection table at and beyond its capacity.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use latch::dataplane::{Dataplane, monotonic_now_ns};
use latch::tables::{Mirror, TableLimits, TableStore};
use lb_common::Capacities;
use serde::Serialize;

use crate::env;
use crate::replication::percentile;

const VS: &str = "shop";
const VALUE: &str = "192.0.2.11:8080";
/// Operations timed one by one at each size, for the latency percentiles.
const SAMPLES: usize = 20_000;

#[derive(Serialize)]
struct SizeResult {
    entries: usize,
    /// Inserts of new keys per second while filling up to `entries` (mirror included).
    fill_inserts_per_s: f64,
    insert_p50_us: f64,
    insert_p99_us: f64,
    lookup_per_s: f64,
    lookup_p50_us: f64,
    lookup_p99_us: f64,
    /// Agent RSS growth per entry while filling (user space only).
    rss_bytes_per_entry: f64,
    /// Kernel mirror entries after the fill (all should be there).
    mirrored: u64,
}

#[derive(Serialize)]
struct Report {
    kernel: String,
    cpus: usize,
    rounds: u32,
    sizes: Vec<SizeResult>,
    lookup_cost_growth_10k_to_1m_percent: f64,
    insert_cost_growth_10k_to_1m_percent: f64,
    restore_entries: usize,
    restore_seconds: f64,
    config_services: usize,
    config_servers_per_service: usize,
    config_parse_seconds: f64,
    latch_check_seconds: Option<f64>,
    method: Vec<String>,
}

fn median(v: Vec<f64>) -> f64 {
    crate::report::median(&v)
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

fn caps() -> Capacities {
    Capacities {
        table_mirror_entries: 2_097_152,
        connections: 65_536,
        client_pins: 1024,
        ..Capacities::DEFAULT
    }
}

fn limits() -> TableLimits {
    TableLimits {
        max_entries: 2_000_000,
        max_bytes: 2 << 30,
        ..TableLimits::default()
    }
}

/// Fills a fresh store (mirrored into a fresh DS_TABLE) with `n` entries and times inserts
/// and lookups at that size. Returns the store and data plane for the restore measurement.
fn one_size(n: usize, dir: &env::PinDir) -> Result<(SizeResult, Dataplane, TableStore)> {
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
    // Inserts of new keys at this size, timed one by one (then removed again).
    let mut ins = Vec::with_capacity(SAMPLES);
    for i in 0..SAMPLES {
        let k = key(n + i);
        let t = Instant::now();
        vs.insert("", &k, VALUE, 3600, now)
            .map_err(|e| anyhow::anyhow!("insert: {e:?}"))?;
        ins.push(t.elapsed().as_secs_f64() * 1e6);
    }
    for i in 0..SAMPLES {
        vs.remove("", &key(n + i), now);
    }
    // Lookups of live keys spread over the table (no extension: a read only).
    let mut look = Vec::with_capacity(SAMPLES);
    let stride = (n / SAMPLES).max(1);
    let t_all = Instant::now();
    for i in 0..SAMPLES {
        let k = key((i * stride + i / 7) % n);
        let t = Instant::now();
        let hit = vs.lookup("", &k, 0, now);
        look.push(t.elapsed().as_secs_f64() * 1e6);
        anyhow::ensure!(hit.is_some(), "{k} missing");
    }
    let look_all = t_all.elapsed().as_secs_f64();
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
            insert_p50_us: percentile(&ins, 0.5),
            insert_p99_us: percentile(&ins, 0.99),
            lookup_per_s: SAMPLES as f64 / look_all,
            lookup_p50_us: percentile(&look, 0.5),
            lookup_p99_us: percentile(&look, 0.99),
            rss_bytes_per_entry: rss,
            mirrored,
        },
        dp,
        tables,
    ))
}

fn config_text(services: usize, servers: usize) -> String {
    let mut s = String::from("[agent]\ninterfaces = []\n");
    for v in 0..services {
        s.push_str(&format!("\n[[pool]]\nname = \"p{v}\"\nservers = ["));
        for k in 0..servers {
            let n = v * servers + k;
            s.push_str(&format!(
                "{}\"192.0.2.{}:{}\"",
                if k == 0 { "" } else { ", " },
                1 + n % 250,
                10_000 + n / 250
            ));
        }
        s.push_str(&format!(
            "]\n\n[[virtual_service]]\nname = \"vs{v}\"\nlisten = \"198.51.100.10:{}\"\n\
             type = \"http\"\npool = \"p{v}\"\n\n[[virtual_service.datascript]]\n\
             event = \"HTTP_REQ\"\nscript = '''\nlocal s = avi.vs.table_lookup(avi.http.get_cookie(\"sid\") or \"\")\n\
             if s then avi.pool.select(\"p{v}\", s) end\n'''\n",
            20_000 + v
        ));
    }
    s
}

pub fn run(rounds: u32) -> Result<()> {
    let sizes = [10_000usize, 100_000, 1_000_000];
    let mut per: Vec<Vec<SizeResult>> = sizes.iter().map(|_| Vec::new()).collect();
    let mut restore = Vec::new();
    for round in 0..rounds {
        for (i, &n) in sizes.iter().enumerate() {
            env::check_stopped()?;
            let dir = env::PinDir::new();
            println!("==> scale: round {}, {n} entries", round + 1);
            let (r, dp, tables) = one_size(n, &dir)?;
            per[i].push(r);
            if n == 1_000_000 {
                // kill -9: the agent's memory is gone, the pinned maps stay.
                drop(tables);
                drop(dp);
                let t = Instant::now();
                let dp = Dataplane::open_with(&dir.0, &caps())?;
                let store = TableStore::new(limits(), Arc::new(latch::tables::NoMirror));
                let restored = dp
                    .kernel_mirror()
                    .restore(&[VS.to_owned()], monotonic_now_ns())?;
                let mut back = 0;
                for (vs, list) in restored.entries {
                    back += store.vs(&vs).restore(list, monotonic_now_ns());
                }
                restore.push(t.elapsed().as_secs_f64());
                anyhow::ensure!(back == n, "restored {back} of {n}");
            }
        }
    }
    let sizes_out: Vec<SizeResult> = per
        .into_iter()
        .map(|rs| {
            let m = |f: fn(&SizeResult) -> f64| median(rs.iter().map(f).collect());
            SizeResult {
                entries: rs[0].entries,
                fill_inserts_per_s: m(|r| r.fill_inserts_per_s),
                insert_p50_us: m(|r| r.insert_p50_us),
                insert_p99_us: m(|r| r.insert_p99_us),
                lookup_per_s: m(|r| r.lookup_per_s),
                lookup_p50_us: m(|r| r.lookup_p50_us),
                lookup_p99_us: m(|r| r.lookup_p99_us),
                // Round 1 only: later rounds reuse the heap the larger sizes left behind.
                rss_bytes_per_entry: rs[0].rss_bytes_per_entry,
                mirrored: rs.iter().map(|r| r.mirrored).min().unwrap_or(0),
            }
        })
        .collect();
    let growth = |a: f64, b: f64| (b / a - 1.0) * 100.0;
    let (first, last) = (&sizes_out[0], &sizes_out[sizes_out.len() - 1]);

    let text = config_text(1000, 10);
    let mut parse = Vec::new();
    for _ in 0..rounds.max(3) {
        let t = Instant::now();
        latch::config::parse(&text, std::path::Path::new("/tmp/scale.toml"))
            .map_err(|e| anyhow::anyhow!("generated config refused: {e}"))?;
        parse.push(t.elapsed().as_secs_f64());
    }
    let check = latch_check(&text);

    let report = Report {
        kernel: env::kernel_release(),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        rounds,
        lookup_cost_growth_10k_to_1m_percent: growth(first.lookup_p50_us, last.lookup_p50_us),
        insert_cost_growth_10k_to_1m_percent: growth(first.insert_p50_us, last.insert_p50_us),
        sizes: sizes_out,
        restore_entries: 1_000_000,
        restore_seconds: median(restore),
        config_services: 1000,
        config_servers_per_service: 10,
        config_parse_seconds: median(parse),
        latch_check_seconds: check,
        method: vec![
            "Tables: one TableStore with the kernel mirror attached (a real DS_TABLE of \
             2,097,152 entries under a private pin directory), as the agent runs them; keys \
             of 17 bytes, values of 15. Each size is filled afresh; then 20,000 inserts of new \
             keys and 20,000 lookups of live keys spread over the table are timed one by one. \
             Rounds alternate the sizes; medians of the rounds."
                .into(),
            "Insert latency includes the mirror's BPF_MAP_UPDATE_ELEM (the entry is in the \
             kernel when the call returns); lookups never touch the kernel."
                .into(),
            "RSS per entry: growth of the process's resident set while filling, divided by the \
             entries, in round 1 (later rounds reuse freed heap; the 10 k and 100 k sizes also \
             fit in heap the process already had, so only the 1 M figure is telling). User \
             space only: the kernel mirror takes 256 B per entry besides."
                .into(),
            "Restore: after the 1 M fill the tables and the data plane are dropped (what a \
             kill -9 leaves: the pinned maps), then timed: opening the data plane (adoption), \
             reading DS_TABLE back and rebuilding the tables, as the agent's start does."
                .into(),
            "Config: 1,000 http virtual services with one DataScript each over 1,000 pools of \
             10 servers; `config::parse` (TOML, validation) in process, and `latch check` (the \
             same plus compiling every script) as a process. A reload does both and swaps the \
             routing table; the swap itself is not timed here."
                .into(),
            "Not measured: the connection table at and beyond its capacity (new-flow cost and \
             evictions)."
                .into(),
        ],
    };
    write(&report)
}

fn latch_check(text: &str) -> Option<f64> {
    let dir = std::env::temp_dir().join(format!("latch-scale-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let path = dir.join("scale.toml");
    std::fs::write(&path, text).ok()?;
    let bin = env::repo_root().join("target/release/latch");
    let t = Instant::now();
    let out = std::process::Command::new(&bin)
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .ok()?;
    let secs = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);
    out.status.success().then_some(secs)
}

fn markdown(r: &Report) -> String {
    let mut s = format!(
        "# Scale\n\nkernel {}, {} CPUs, {} rounds (medians)\n\n\
         | entries | fill inserts/s | insert p50 / p99 | lookups/s | lookup p50 / p99 | RSS/entry | mirrored |\n\
         |---|---|---|---|---|---|---|\n",
        r.kernel, r.cpus, r.rounds
    );
    for z in &r.sizes {
        s.push_str(&format!(
            "| {} | {:.0} | {:.2} / {:.2} µs | {:.0} | {:.2} / {:.2} µs | {:.0} B | {} |\n",
            z.entries,
            z.fill_inserts_per_s,
            z.insert_p50_us,
            z.insert_p99_us,
            z.lookup_per_s,
            z.lookup_p50_us,
            z.lookup_p99_us,
            z.rss_bytes_per_entry,
            z.mirrored
        ));
    }
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    s.push_str(&format!(
        "\n| measure | value | target |\n|---|---|---|\n\
         | lookup cost, 10 k → 1 M entries | {:+.0}% | ≤ +20% ({}) |\n\
         | insert cost, 10 k → 1 M entries | {:+.0}% | ≤ +20% ({}) |\n\
         | restore after kill -9, {} entries | {:.2} s | < 5 s ({}) |\n\
         | config parse, {} services × {} servers | {:.3} s | |\n\
         | `latch check` of it (parse + compile scripts) | {} | reload < 1 s |\n\n",
        r.lookup_cost_growth_10k_to_1m_percent,
        verdict(r.lookup_cost_growth_10k_to_1m_percent <= 20.0),
        r.insert_cost_growth_10k_to_1m_percent,
        verdict(r.insert_cost_growth_10k_to_1m_percent <= 20.0),
        r.restore_entries,
        r.restore_seconds,
        verdict(r.restore_seconds < 5.0),
        r.config_services,
        r.config_servers_per_service,
        r.config_parse_seconds,
        r.latch_check_seconds
            .map_or("not run (build target/release/latch)".into(), |v| format!(
                "{v:.3} s ({})",
                verdict(v < 1.0)
            )),
    ));
    for m in &r.method {
        s.push_str(&format!("- {m}\n"));
    }
    s
}

fn write(report: &Report) -> Result<()> {
    let dir = env::out_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let md = markdown(report);
    std::fs::write(dir.join("scale.md"), &md)?;
    std::fs::write(
        dir.join("scale.json"),
        serde_json::to_string_pretty(report)?,
    )?;
    println!("{md}");
    println!("==> wrote {}/scale.{{md,json}}", dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_config_is_accepted_with_every_service() {
        let text = config_text(30, 10);
        let c = latch::config::parse(&text, std::path::Path::new("/tmp/x.toml"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.virtual_services.len(), 30);
        assert!(c.pools.iter().all(|p| p.servers.len() == 10));
    }
}
