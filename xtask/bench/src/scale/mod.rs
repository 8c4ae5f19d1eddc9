//! `cargo xtask bench scale`: how latch behaves as its state grows (issue 17, item 5):
//! - `tables.rs`: DataScript tables with the kernel mirror attached (a real DS_TABLE under a
//!   private pin directory) at 10 k, 100 k and 1 M entries, and the restore after a kill -9
//!   at 1 M entries;
//! - `reload.rs`: config load, `latch check`, agent start and reload with 1,000 virtual
//!   services of 10 servers each;
//! - `conntrack.rs`: the connection table at and beyond its capacity (BPF_PROG_TEST_RUN).
//!
//! Needs root (BPF maps, namespaces). Writes target/bench/scale.{md,json}.

mod conntrack;
mod reload;
mod tables;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::env;
use tables::SizeResult;

/// Which parts run (all by default).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    Tables,
    Config,
    Conntrack,
}

pub struct Options {
    pub rounds: u32,
    pub sizes: Vec<usize>,
    pub parts: Vec<Part>,
}

/// Median, smallest and largest of a measure over the rounds.
#[derive(Clone, Copy, Serialize)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    fn of(v: &[f64]) -> Self {
        Self {
            median: crate::report::median(v),
            min: v.iter().copied().fold(f64::INFINITY, f64::min),
            max: v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        }
    }
}

#[derive(Serialize)]
struct TablesReport {
    sizes: Vec<SizeResult>,
    /// Per round, CPU cost per operation at the largest size over the smallest, as growth in
    /// percent: median and spread over the rounds.
    lookup_cost_growth_percent: Option<Spread>,
    insert_cost_growth_percent: Option<Spread>,
    restore_entries: usize,
    /// Wall clock: the target's measure, but stretched by whatever else runs on the host.
    restore_seconds: Option<Spread>,
    /// CPU time of the same (one thread): what it takes on an idle host.
    restore_cpu_seconds: Option<Spread>,
}

#[derive(Serialize)]
struct Report {
    kernel: String,
    cpus: usize,
    rounds: u32,
    tables: Option<TablesReport>,
    config: Option<reload::ConfigResult>,
    connection_table: Option<conntrack::CtResult>,
    method: Vec<String>,
}

fn tables_part(rounds: u32, sizes: &[usize]) -> Result<TablesReport> {
    let largest = sizes.iter().copied().max().unwrap_or(0);
    let mut per: Vec<Vec<SizeResult>> = sizes.iter().map(|_| Vec::new()).collect();
    let (mut restore, mut restore_cpu) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        for (i, &n) in sizes.iter().enumerate() {
            env::check_stopped()?;
            let dir = env::PinDir::new();
            println!("==> scale: round {}, {n} entries", round + 1);
            let (r, dp, store) = tables::one_size(n, &dir)?;
            println!(
                "    lookup {:.0} ns CPU (p99 {:.2} µs), insert {:.0} ns CPU (p99 {:.2} µs)",
                r.lookup_cpu_ns, r.lookup_p99_us, r.insert_cpu_ns, r.insert_p99_us
            );
            per[i].push(r);
            if n == largest {
                // kill -9: the agent's memory is gone, the pinned maps stay.
                drop(store);
                drop(dp);
                let (secs, cpu) = tables::restore(&dir, n)?;
                println!("    restore of {n} entries: {secs:.2} s ({cpu:.2} s CPU)");
                restore.push(secs);
                restore_cpu.push(cpu);
            }
        }
    }
    // Growth per round (sizes measured back to back in the same round), then spread.
    let growth = |f: fn(&SizeResult) -> f64| -> Option<Spread> {
        let (first, last) = (per.first()?, per.last()?);
        (per.len() > 1).then(|| {
            let g: Vec<f64> = first
                .iter()
                .zip(last)
                .map(|(a, b)| (f(b) / f(a) - 1.0) * 100.0)
                .collect();
            Spread::of(&g)
        })
    };
    let lookup_cost_growth_percent = growth(|r| r.lookup_cpu_ns);
    let insert_cost_growth_percent = growth(|r| r.insert_cpu_ns);
    let sizes_out = per
        .into_iter()
        .map(|rs| {
            let m = |f: fn(&SizeResult) -> f64| {
                crate::report::median(&rs.iter().map(f).collect::<Vec<_>>())
            };
            SizeResult {
                entries: rs[0].entries,
                fill_inserts_per_s: m(|r| r.fill_inserts_per_s),
                insert_cpu_ns: m(|r| r.insert_cpu_ns),
                insert_p50_us: m(|r| r.insert_p50_us),
                insert_p99_us: m(|r| r.insert_p99_us),
                lookup_per_s: m(|r| r.lookup_per_s),
                lookup_cpu_ns: m(|r| r.lookup_cpu_ns),
                lookup_p50_us: m(|r| r.lookup_p50_us),
                lookup_p99_us: m(|r| r.lookup_p99_us),
                // Round 1 only: later rounds reuse the heap the larger sizes left behind.
                rss_bytes_per_entry: rs[0].rss_bytes_per_entry,
                mirrored: rs.iter().map(|r| r.mirrored).min().unwrap_or(0),
            }
        })
        .collect();
    Ok(TablesReport {
        sizes: sizes_out,
        lookup_cost_growth_percent,
        insert_cost_growth_percent,
        restore_entries: largest,
        restore_seconds: (!restore.is_empty()).then(|| Spread::of(&restore)),
        restore_cpu_seconds: (!restore_cpu.is_empty()).then(|| Spread::of(&restore_cpu)),
    })
}

pub fn run(opts: &Options) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!("bench scale needs root (BPF maps, namespaces, BPF_PROG_TEST_RUN)");
    }
    let has = |p: Part| opts.parts.is_empty() || opts.parts.contains(&p);
    let connection_table = if has(Part::Conntrack) {
        println!("==> scale: connection table at and beyond its capacity");
        Some(conntrack::run().context("connection table")?)
    } else {
        None
    };
    let config = if has(Part::Config) {
        println!(
            "==> scale: config of {} services x {} servers (parse, check, start, reload)",
            reload::SERVICES,
            reload::SERVERS
        );
        Some(reload::run(opts.rounds).context("config and reload")?)
    } else {
        None
    };
    let tables = if has(Part::Tables) {
        Some(tables_part(opts.rounds, &opts.sizes)?)
    } else {
        None
    };
    let report = Report {
        kernel: env::kernel_release(),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        rounds: opts.rounds,
        tables,
        config,
        connection_table,
        method: method(),
    };
    write(&report)
}

fn method() -> Vec<String> {
    vec![
        "Tables: one TableStore with the kernel mirror attached (a real DS_TABLE of \
         2,097,152 entries under a private pin directory), as the agent runs them; keys of 17 \
         bytes, values of 15. Each size is filled afresh; then, at that size, inserts of new \
         keys and lookups of live keys spread over the table (a multiplicative walk, so \
         consecutive keys land far apart as real sessions do): 20,000 of each timed one by \
         one on the wall clock (p50/p99) and 100,000 of each on the thread's CPU clock \
         (user + system: the cost per operation, immune to the other sessions sharing the \
         machine). Rounds alternate the sizes; medians of the rounds. Growth: per round, \
         the CPU cost at the largest size over the smallest; median (min..max) over rounds."
            .into(),
        "Insert cost includes the mirror's BPF_MAP_UPDATE_ELEM (the entry is in the kernel \
         when the call returns); lookups never touch the kernel."
            .into(),
        "RSS per entry: growth of the process's resident set while filling, divided by the \
         entries, in round 1 (later rounds reuse freed heap; the 10 k and 100 k sizes also fit \
         in heap the process already had, so only the 1 M figure is telling). User space \
         only: the kernel mirror takes 156 B of key and value per entry plus the hash map's \
         own overhead besides (`latch check` prints the estimate)."
            .into(),
        "Restore: after the largest fill the tables and the data plane are dropped (what a \
         kill -9 leaves: the pinned maps), then timed: opening the data plane (adoption), \
         reading DS_TABLE back and rebuilding the tables, as the agent's start does; checked \
         to bring back every entry."
            .into(),
        "Config: 1,000 http virtual services with one DataScript each over 1,000 pools of 10 \
         servers; `config::parse` (TOML, validation) in process; `latch check` (the same plus \
         compiling every script) as a process; `latch run` in a private namespace from exec \
         to its ready line (no interfaces attached); `latch reload` (admin API, returns once \
         the reload is applied: config read and validated, routes built, proxy and data \
         plane swapped) of the same file, of a file where one pool's servers changed and of \
         one where every service's script changed (a comment), alternated, medians and the \
         slowest. A reload keeps the compiled scripts and the Lua VMs of a service whose \
         scripts and DataScript limits are unchanged; the last row compiles every script \
         again and builds every service's first VM (about 0.6 ms of CPU each, on one thread \
         per CPU; the VMs of the other workers are built at their first request)."
            .into(),
        "Connection table: one UDP NAT service, a table of 131,072 entries; every frame a \
         new 5-tuple run once through latch's XDP program with BPF_PROG_TEST_RUN (the kernel's \
         ns per run, one clock read included), the runner moved between the CPUs every 4,096 \
         flows as RSS would spread them (the table keeps one LRU list per CPU). Evictions: \
         entries written (`conntrack_insert`) less the table's growth (no flow ends here)."
            .into(),
    ]
}

fn spread_text(s: &Spread, unit: &str, digits: usize) -> String {
    format!(
        "{:.*}{unit} ({:.*}..{:.*})",
        digits, s.median, digits, s.min, digits, s.max
    )
}

fn markdown(r: &Report) -> String {
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let mut s = format!(
        "# Scale\n\nkernel {}, {} CPUs, {} rounds (medians)\n\n",
        r.kernel, r.cpus, r.rounds
    );
    if let Some(t) = &r.tables {
        s.push_str(
            "## Tables\n\n\
             | entries | fill inserts/s | insert CPU | insert p50 / p99 | lookups/s (CPU) | lookup CPU | lookup p50 / p99 | RSS/entry | mirrored |\n\
             |---|---|---|---|---|---|---|---|---|\n",
        );
        for z in &t.sizes {
            s.push_str(&format!(
                "| {} | {:.0} | {:.0} ns | {:.2} / {:.2} µs | {:.0} | {:.0} ns | {:.2} / {:.2} µs | {:.0} B | {} |\n",
                z.entries,
                z.fill_inserts_per_s,
                z.insert_cpu_ns,
                z.insert_p50_us,
                z.insert_p99_us,
                z.lookup_per_s,
                z.lookup_cpu_ns,
                z.lookup_p50_us,
                z.lookup_p99_us,
                z.rss_bytes_per_entry,
                z.mirrored
            ));
        }
        let (small, large) = (
            t.sizes.first().map_or(0, |z| z.entries),
            t.sizes.last().map_or(0, |z| z.entries),
        );
        s.push_str("\n| measure | value, median (min..max) | target |\n|---|---|---|\n");
        if let Some(g) = &t.lookup_cost_growth_percent {
            s.push_str(&format!(
                "| lookup CPU cost, {small} → {large} entries | {} | ≤ +20% ({}) |\n",
                spread_text(g, "%", 0),
                verdict(g.median <= 20.0)
            ));
        }
        if let Some(g) = &t.insert_cost_growth_percent {
            s.push_str(&format!(
                "| insert CPU cost (mirror write included), {small} → {large} entries | {} | ≤ +20% ({}) |\n",
                spread_text(g, "%", 0),
                verdict(g.median <= 20.0)
            ));
        }
        if let (Some(rs), Some(cpu)) = (&t.restore_seconds, &t.restore_cpu_seconds) {
            s.push_str(&format!(
                "| restore after kill -9, {} entries, wall clock | {} | < 5 s ({}) |\n\
                 | the same, CPU time (what an idle host takes) | {} | < 5 s ({}) |\n",
                t.restore_entries,
                spread_text(rs, " s", 2),
                verdict(rs.median < 5.0),
                spread_text(cpu, " s", 2),
                verdict(cpu.median < 5.0)
            ));
        }
        s.push('\n');
    }
    if let Some(c) = &r.config {
        s.push_str(&format!(
            "## Config: {} services × {} servers\n\n| measure | seconds (wall) | agent CPU s | target |\n|---|---|---|---|\n\
             | `config::parse` (in process) | {:.3} | | |\n\
             | `latch check` (parse + compile scripts) | {} | | |\n\
             | `latch run` to ready | {:.3} | {:.3} | |\n\
             | `latch reload`, unchanged (median / slowest of {}) | {:.3} / {:.3} | {:.3} | < 1 s ({}) |\n\
             | `latch reload`, one pool changed (median / slowest of {}) | {:.3} / {:.3} | {:.3} | < 1 s ({}) |\n\
             | `latch reload`, every script changed (median / slowest of {}) | {:.3} / {:.3} | {:.3} | (every VM built again) |\n\n",
            c.services,
            c.servers_per_service,
            c.parse_seconds,
            c.check_seconds.map_or("failed".into(), |v| format!("{v:.3}")),
            c.start_seconds,
            c.start_cpu_seconds,
            c.reloads,
            c.reload_unchanged_seconds,
            c.reload_unchanged_max_seconds,
            c.reload_unchanged_cpu_seconds,
            verdict(c.reload_unchanged_seconds < 1.0),
            c.reloads,
            c.reload_changed_seconds,
            c.reload_changed_max_seconds,
            c.reload_changed_cpu_seconds,
            verdict(c.reload_changed_seconds < 1.0),
            c.reloads,
            c.reload_scripts_seconds,
            c.reload_scripts_max_seconds,
            c.reload_scripts_cpu_seconds,
        ));
    }
    if let Some(ct) = &r.connection_table {
        s.push_str(&format!(
            "## Connection table: {} entries, {} CPUs, {:.0} entries per NAT flow\n\n\
             | phase | new flows | ns per new flow | entries written | entries after | evictions |\n\
             |---|---|---|---|---|---|\n",
            ct.capacity, ct.cpus, ct.entries_per_flow
        ));
        for p in &ct.phases {
            s.push_str(&format!(
                "| {} | {} | {:.0} | {} | {} | {} |\n",
                p.label, p.flows, p.ns_per_flow, p.inserts, p.entries_after, p.evictions
            ));
        }
        s.push('\n');
    }
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
