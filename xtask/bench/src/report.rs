//! Results, targets and the Markdown/JSON renderings: pure, unit-tested.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

/// The machine a report was measured on (flattened into each report's JSON).
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub kernel: String,
    pub cpus: usize,
    pub unix_time: u64,
}

impl Machine {
    pub fn now() -> Self {
        Self {
            kernel: crate::env::kernel_release(),
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            unix_time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        }
    }
}

/// Writes target/bench/<name>.{md,json,png}; a plot that fails is a warning. Returns the
/// directory.
pub fn write_report<R: Serialize>(
    name: &str,
    report: &R,
    markdown: String,
    png: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    let dir = crate::env::out_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join(format!("{name}.md")), markdown)?;
    std::fs::write(
        dir.join(format!("{name}.json")),
        serde_json::to_string_pretty(report)?,
    )?;
    if let Err(e) = png(&dir.join(format!("{name}.png"))) {
        eprintln!("warning: no plot: {e:#}");
    }
    Ok(dir)
}

/// The Markdown `## Targets` table and `## Method` list that end a report.
pub fn targets_and_method_md(targets: &[Target], method: &[String]) -> String {
    let mut s = String::from(
        "\n## Targets\n\n| target | required | measured | verdict |\n|---|---|---|---|\n",
    );
    for t in targets {
        s.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            t.what,
            t.target,
            t.value,
            verdict(t.met)
        ));
    }
    s.push_str("\n## Method\n\n");
    for m in method {
        s.push_str(&format!("- {m}\n"));
    }
    s
}

/// One BPF_PROG_TEST_RUN path measurement.
#[derive(Clone, Debug, Serialize)]
pub struct PathCost {
    /// Stable key (`conntrack_hit`, ...).
    pub key: &'static str,
    pub label: &'static str,
    /// Mean kernel-reported ns per run of the program.
    pub ns: f64,
    /// Median over samples (per-run samples, or per-call means with repeat).
    pub median_ns: f64,
    /// For 1-run-per-call paths: `ns` minus the per-call overhead measured on the non-VIP
    /// pass (1-run mean minus repeat mean). The targets are judged on this value.
    pub net_ns: Option<f64>,
    /// Program runs measured.
    pub runs: u64,
    pub method: String,
    /// What the counters said about the path taken (the measurement is valid only if every
    /// run took the path).
    pub check: String,
    pub check_ok: bool,
}

/// One Mpps measurement on veth, over every round.
#[derive(Clone, Debug, Serialize)]
pub struct Rate {
    pub key: &'static str,
    pub label: &'static str,
    /// Received Mpps per round, in run order.
    pub rounds_mpps: Vec<f64>,
    /// Median received Mpps.
    pub mpps: f64,
    /// Median Mpps the generator pushed (frames it ran) over the same windows.
    pub generated_mpps: f64,
    pub counted_at: String,
    /// Extra counters (latch path breakdown, nft counter) from the last round.
    pub detail: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Target {
    pub what: String,
    pub target: String,
    pub value: String,
    pub met: Option<bool>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Ratios {
    pub established_vs_ceiling: Option<f64>,
    pub new_flows_vs_ceiling: Option<f64>,
    pub established_vs_nft: Option<f64>,
    pub new_flows_vs_nft: Option<f64>,
    pub nft_vs_ceiling: Option<f64>,
    /// The no-lookup XDP forwarder against the ceiling: what any XDP forwarder can reach here.
    pub redirect_floor_vs_ceiling: Option<f64>,
    /// latch against that forwarder: the share its lookups and rewrites leave.
    pub established_vs_redirect_floor: Option<f64>,
    /// latch IPv6 against IPv4, established flows and new flows.
    pub v6_established_vs_v4: Option<f64>,
    pub v6_new_flows_vs_v4: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    #[serde(flatten)]
    pub machine: Machine,
    pub seconds_per_measurement: u64,
    pub rounds: u32,
    /// CPUs the loop ran on (one circulating population each).
    pub loop_cpus: usize,
    /// The generator of `rates` (the circulating loop), and whether live frames were allowed.
    pub generator: String,
    /// latch against the no-lookup forwarder, and IPv6 against IPv4, by program time; None
    /// if not measured.
    pub program_time: Option<ProgramTime>,
    pub paths: Vec<PathCost>,
    /// The circulating loop's rows (every machine).
    pub rates: Vec<Rate>,
    pub ratios: Ratios,
    /// The live-frames rows (IPv4), where the kernel allows live-frames test runs.
    pub live_rates: Vec<Rate>,
    pub live_ratios: Option<Ratios>,
    pub targets: Vec<Target>,
    pub method: Vec<String>,
}

/// One round of the program-time comparison (ns per program run, kernel run-time statistics).
#[derive(Clone, Debug, Serialize)]
pub struct ProgramTimeRound {
    pub forwarder_ns: f64,
    /// Minus the timing's own cost (the backend counter program's time in the same traffic).
    pub forwarder_net_ns: f64,
    pub forwarder_runs: u64,
    pub latch_ns: f64,
    pub latch_net_ns: f64,
    pub latch_runs: u64,
    /// latch, established flows to the IPv6 VIP.
    pub latch6_ns: f64,
    pub latch6_net_ns: f64,
    pub latch6_runs: u64,
}

impl ProgramTimeRound {
    /// latch / forwarder, both with the timing's cost in (it is in both alike).
    pub fn raw_ratio(&self) -> f64 {
        if self.forwarder_ns > 0.0 {
            self.latch_ns / self.forwarder_ns
        } else {
            f64::NAN
        }
    }

    /// What latch costs per packet beyond the forwarder (the timing's cost cancels out).
    pub fn extra_ns(&self) -> f64 {
        self.latch_ns - self.forwarder_ns
    }

    /// latch IPv6 / IPv4 program time, net of the timing's cost (which would otherwise
    /// pull the ratio towards 1).
    pub fn v6_ratio(&self) -> f64 {
        if self.latch_net_ns > 0.0 {
            self.latch6_net_ns / self.latch_net_ns
        } else {
            f64::NAN
        }
    }
}

/// The generator-independent comparison: medians and ranges over the rounds.
#[derive(Clone, Debug, Serialize)]
pub struct ProgramTime {
    pub rounds: Vec<ProgramTimeRound>,
    pub median_raw_ratio: f64,
    pub min_raw_ratio: f64,
    pub max_raw_ratio: f64,
    pub median_extra_ns: f64,
    pub min_extra_ns: f64,
    pub max_extra_ns: f64,
    pub median_forwarder_net_ns: f64,
    pub median_latch_net_ns: f64,
    pub median_latch6_net_ns: f64,
    /// latch IPv6 / IPv4 (net): median and range.
    pub median_v6_ratio: f64,
    pub min_v6_ratio: f64,
    pub max_v6_ratio: f64,
    /// The timing's own cost per run that the net figures subtract.
    pub timing_floor_ns: f64,
}

impl ProgramTime {
    pub fn from_rounds(rounds: Vec<ProgramTimeRound>, timing_floor_ns: f64) -> Self {
        let of = |f: fn(&ProgramTimeRound) -> f64| -> Vec<f64> { rounds.iter().map(f).collect() };
        let ratios = of(ProgramTimeRound::raw_ratio);
        let extra = of(ProgramTimeRound::extra_ns);
        let v6 = of(ProgramTimeRound::v6_ratio);
        let (min_raw_ratio, max_raw_ratio) = range(&ratios);
        let (min_extra_ns, max_extra_ns) = range(&extra);
        let (min_v6_ratio, max_v6_ratio) = range(&v6);
        Self {
            median_latch6_net_ns: median(&of(|r| r.latch6_net_ns)),
            median_v6_ratio: median(&v6),
            min_v6_ratio,
            max_v6_ratio,
            timing_floor_ns,
            median_raw_ratio: median(&ratios),
            min_raw_ratio,
            max_raw_ratio,
            median_extra_ns: median(&extra),
            min_extra_ns,
            max_extra_ns,
            median_forwarder_net_ns: median(&of(|r| r.forwarder_net_ns)),
            median_latch_net_ns: median(&of(|r| r.latch_net_ns)),
            rounds,
        }
    }
}

pub const CONNTRACK_HIT_MAX_NS: f64 = 150.0;
pub const NEW_FLOW_MAX_NS: f64 = 350.0;
pub const ESTABLISHED_MIN_CEILING_SHARE: f64 = 0.5;
pub const ESTABLISHED_MIN_FORWARDER_SHARE: f64 = 0.9;
pub const ESTABLISHED_MIN_NFT_FACTOR: f64 = 7.0;
/// IPv6 within 10% of IPv4: at least 90% of its rate, at most 1/0.9 of its program time.
pub const V6_MIN_SHARE_OF_V4: f64 = 0.9;

/// Smallest and largest of `v` (infinite for an empty slice).
pub fn range(v: &[f64]) -> (f64, f64) {
    (
        v.iter().copied().fold(f64::INFINITY, f64::min),
        v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    )
}

/// What a loop row's program adds per packet over the ceiling's, in ns of one CPU: each of
/// `cpus` CPUs runs its own loop, so one packet takes `cpus / rate` of a CPU.
pub fn ns_over(mpps: f64, ceiling: Option<f64>, cpus: usize) -> Option<f64> {
    let c = ceiling.filter(|c| *c > 0.0)?;
    (mpps > 0.0).then(|| cpus as f64 * 1e3 * (1.0 / mpps - 1.0 / c))
}

pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

pub fn rate(rates: &[Rate], key: &str) -> Option<f64> {
    rates.iter().find(|r| r.key == key).map(|r| r.mpps)
}

fn path<'a>(paths: &'a [PathCost], key: &str) -> Option<&'a PathCost> {
    paths.iter().find(|p| p.key == key)
}

pub fn ratios(rates: &[Rate]) -> Ratios {
    let ceiling = rate(rates, "ceiling");
    let est = rate(rates, "latch_established");
    let new = rate(rates, "latch_new_flows");
    let nft = rate(rates, "nft_dnat");
    let floor = rate(rates, "xdp_redirect_floor");
    Ratios {
        v6_established_vs_v4: ratio(rate(rates, "latch_established_v6"), est),
        v6_new_flows_vs_v4: ratio(rate(rates, "latch_new_flows_v6"), new),
        redirect_floor_vs_ceiling: ratio(floor, ceiling),
        established_vs_redirect_floor: ratio(est, floor),
        established_vs_ceiling: ratio(est, ceiling),
        new_flows_vs_ceiling: ratio(new, ceiling),
        established_vs_nft: ratio(est, nft),
        new_flows_vs_nft: ratio(new, nft),
        nft_vs_ceiling: ratio(nft, ceiling),
    }
}

/// The targets for this machine kind, from the loop's rows, the live-frames rows
/// where there are some, and the program times. A path whose counters disagree with the path
/// it claims to measure is reported as not measured (`met: None`).
pub fn targets(
    paths: &[PathCost],
    ratios: &Ratios,
    live: Option<&Ratios>,
    program_time: Option<&ProgramTime>,
) -> Vec<Target> {
    let ns_target = |key: &str, what: &str, max: f64| match path(paths, key) {
        Some(p) if p.check_ok => {
            let v = p.net_ns.unwrap_or(p.ns);
            Target {
                what: what.into(),
                target: format!("<= {max:.0} ns/packet"),
                value: match p.net_ns {
                    Some(net) => format!("{net:.0} ns (raw {:.0})", p.ns),
                    None => format!("{v:.0} ns"),
                },
                met: Some(v <= max),
            }
        }
        _ => Target {
            what: what.into(),
            target: format!("<= {max:.0} ns/packet"),
            value: "not measured".into(),
            met: None,
        },
    };
    let share = |what: &str, target: String, v: Option<f64>, min: f64, pct: bool| Target {
        what: what.into(),
        target,
        value: match v {
            Some(v) if pct => format!("{:.0}%", v * 100.0),
            Some(v) => format!("{v:.1}x"),
            None => "not measured".into(),
        },
        met: v.map(|v| v >= min),
    };
    let pct = |min: f64| format!(">= {:.0}%", min * 100.0);
    let mut out = vec![
        ns_target(
            "conntrack_hit",
            "conntrack hit (PROG_TEST_RUN)",
            CONNTRACK_HIT_MAX_NS,
        ),
        ns_target(
            "conntrack_hit_live",
            "conntrack hit (live)",
            CONNTRACK_HIT_MAX_NS,
        ),
        ns_target("new_flow", "new flow (PROG_TEST_RUN)", NEW_FLOW_MAX_NS),
        ns_target(
            "new_flow_live",
            "new flow (live, full table)",
            NEW_FLOW_MAX_NS,
        ),
        share(
            "established vs ceiling (loop)",
            pct(ESTABLISHED_MIN_CEILING_SHARE),
            ratios.established_vs_ceiling,
            ESTABLISHED_MIN_CEILING_SHARE,
            true,
        ),
        share(
            "established vs no-lookup forwarder (loop)",
            pct(ESTABLISHED_MIN_FORWARDER_SHARE),
            ratios.established_vs_redirect_floor,
            ESTABLISHED_MIN_FORWARDER_SHARE,
            true,
        ),
        share(
            "established vs forwarder, program time",
            pct(ESTABLISHED_MIN_FORWARDER_SHARE),
            program_time
                .map(|p| 1.0 / p.median_raw_ratio)
                .filter(|v| v.is_finite()),
            ESTABLISHED_MIN_FORWARDER_SHARE,
            true,
        ),
        share(
            "established vs nftables DNAT (loop)",
            format!(">= {ESTABLISHED_MIN_NFT_FACTOR:.0}x"),
            ratios.established_vs_nft,
            ESTABLISHED_MIN_NFT_FACTOR,
            false,
        ),
        share(
            "IPv6 established vs IPv4 (loop)",
            pct(V6_MIN_SHARE_OF_V4),
            ratios.v6_established_vs_v4,
            V6_MIN_SHARE_OF_V4,
            true,
        ),
        share(
            "IPv6 new flows vs IPv4 (loop)",
            pct(V6_MIN_SHARE_OF_V4),
            ratios.v6_new_flows_vs_v4,
            V6_MIN_SHARE_OF_V4,
            true,
        ),
        share(
            "IPv6 established, program time (net)",
            format!(">= {:.0}% of IPv4's speed", V6_MIN_SHARE_OF_V4 * 100.0),
            program_time
                .map(|p| 1.0 / p.median_v6_ratio)
                .filter(|v| v.is_finite()),
            V6_MIN_SHARE_OF_V4,
            true,
        ),
    ];
    if let Some(l) = live {
        out.push(share(
            "established vs forwarder (live frames)",
            pct(ESTABLISHED_MIN_FORWARDER_SHARE),
            l.established_vs_redirect_floor,
            ESTABLISHED_MIN_FORWARDER_SHARE,
            true,
        ));
        out.push(share(
            "established vs nftables (live frames)",
            format!(">= {ESTABLISHED_MIN_NFT_FACTOR:.0}x"),
            l.established_vs_nft,
            ESTABLISHED_MIN_NFT_FACTOR,
            false,
        ));
    }
    out
}

pub fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "MISSED",
        None => "not measured",
    }
}

fn opt_pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{:.0}%", v * 100.0))
}

fn opt_x(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1}x"))
}

fn rates_md(s: &mut String, rates: &[Rate], cpus: Option<usize>) {
    let ceiling = rate(rates, "ceiling");
    match cpus {
        Some(_) => {
            s.push_str("| measurement | Mpps (median) | rounds | vs ceiling | ns over ceiling (per CPU) | counted at | detail |\n");
            s.push_str("|---|---:|---|---:|---:|---|---|\n");
        }
        None => {
            s.push_str("| measurement | received Mpps (median) | rounds | generated Mpps | vs ceiling | counted at | detail |\n");
            s.push_str("|---|---:|---|---:|---:|---|---|\n");
        }
    }
    for x in rates {
        let rounds: Vec<String> = x.rounds_mpps.iter().map(|v| format!("{v:.2}")).collect();
        let middle = match cpus {
            Some(c) => ns_over(x.mpps, ceiling, c).map_or("-".into(), |v| format!("{v:.0}")),
            None => format!("{:.2}", x.generated_mpps),
        };
        let (a, b) = match cpus {
            Some(_) => (opt_pct(ratio(Some(x.mpps), ceiling)), middle),
            None => (middle, opt_pct(ratio(Some(x.mpps), ceiling))),
        };
        s.push_str(&format!(
            "| {} | {:.2} | {} | {} | {} | {} | {} |\n",
            x.label,
            x.mpps,
            rounds.join(", "),
            a,
            b,
            x.counted_at,
            x.detail
        ));
    }
}

fn ratios_md(s: &mut String, q: &Ratios) {
    s.push_str("| ratio | value |\n|---|---:|\n");
    for (name, v) in [
        (
            "latch established / ceiling",
            opt_pct(q.established_vs_ceiling),
        ),
        ("latch new flows / ceiling", opt_pct(q.new_flows_vs_ceiling)),
        ("nftables DNAT / ceiling", opt_pct(q.nft_vs_ceiling)),
        (
            "latch established / nftables DNAT",
            opt_x(q.established_vs_nft),
        ),
        ("latch new flows / nftables DNAT", opt_x(q.new_flows_vs_nft)),
        (
            "no-lookup XDP forwarder / ceiling",
            opt_pct(q.redirect_floor_vs_ceiling),
        ),
        (
            "latch established / no-lookup XDP forwarder",
            opt_pct(q.established_vs_redirect_floor),
        ),
        (
            "latch established IPv6 / IPv4",
            opt_pct(q.v6_established_vs_v4),
        ),
        ("latch new flows IPv6 / IPv4", opt_pct(q.v6_new_flows_vs_v4)),
    ] {
        if v != "-" {
            s.push_str(&format!("| {name} | {v} |\n"));
        }
    }
}

pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    s.push_str("# latch data plane benchmark\n\n");
    s.push_str(&format!(
        "Kernel {}, {} CPUs; Mpps: {} round(s) of {} s per measurement, interleaved, median \
         reported.\n\n",
        r.machine.kernel, r.machine.cpus, r.rounds, r.seconds_per_measurement
    ));
    s.push_str("## ns/packet (BPF_PROG_TEST_RUN, and live traffic)\n\n");
    s.push_str(
        "| path | mean ns | median ns | net (minus overhead) | runs | method | path check |\n",
    );
    s.push_str("|---|---:|---:|---:|---:|---|---|\n");
    for p in &r.paths {
        s.push_str(&format!(
            "| {} | {:.1} | {:.1} | {} | {} | {} | {}{} |\n",
            p.label,
            p.ns,
            p.median_ns,
            p.net_ns.map_or("-".into(), |v| format!("{v:.1}")),
            p.runs,
            p.method,
            if p.check_ok { "" } else { "FAILED: " },
            p.check
        ));
    }
    s.push_str(&format!(
        "\n## Mpps on veth: circulating loop\n\nGenerator: {}.\n\n\
         Every row here is a closed-loop rate: per packet it includes the reflector's work and \
         two veth crossings besides the program under test, all on one CPU per loop ({} \
         loop(s)). So these rows measure the generator too, equally for every row: the \
         ceiling row is the loop alone (the LB returns frames untouched), 'ns over ceiling' is \
         what each program adds per packet beyond it, and ratios between rows understate the \
         programs' differences. The program-time section below is the generator-independent \
         comparison.\n\n",
        r.generator, r.loop_cpus
    ));
    rates_md(&mut s, &r.rates, Some(r.loop_cpus));
    s.push_str("\n### Ratios (loop, same run)\n\n");
    ratios_md(&mut s, &r.ratios);
    if let Some(q) = &r.live_ratios {
        s.push_str(
            "\n## Mpps on veth: live frames (IPv4)\n\nOpen loop: generators in the client \
             namespace, counters on the receiving side. A row whose 'generated' is not well \
             above 'received' measures the generator.\n\n",
        );
        rates_md(&mut s, &r.live_rates, None);
        s.push_str("\n### Ratios (live frames, same run)\n\n");
        ratios_md(&mut s, q);
    } else {
        s.push_str("\nLive frames: refused by this kernel, no open-loop rows (see Method).\n");
    }
    s.push_str(
        "\n## Program time per packet: latch against the no-lookup forwarder, IPv6 against IPv4\n\n",
    );
    match &r.program_time {
        Some(p) => {
            s.push_str(&format!(
                "Kernel run-time statistics in the loop, rounds in turning order. latch / \
                 forwarder: median {:.2} (range {:.2} to {:.2}); latch adds median {:.1} ns per \
                 packet (range {:.1} to {:.1}); net of the timing's cost ({:.1} ns per run): \
                 forwarder {:.1} ns, latch {:.1} ns, latch IPv6 {:.1} ns (medians); IPv6 / IPv4 \
                 (net) median {:.2} (range {:.2} to {:.2}).\n\n",
                p.median_raw_ratio,
                p.min_raw_ratio,
                p.max_raw_ratio,
                p.median_extra_ns,
                p.min_extra_ns,
                p.max_extra_ns,
                p.timing_floor_ns,
                p.median_forwarder_net_ns,
                p.median_latch_net_ns,
                p.median_latch6_net_ns,
                p.median_v6_ratio,
                p.min_v6_ratio,
                p.max_v6_ratio
            ));
            s.push_str("| round | forwarder ns | net | runs | latch ns | net | runs | IPv6 ns | net | runs | latch / forwarder | extra ns | IPv6 / IPv4 (net) |\n");
            s.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
            for (i, x) in p.rounds.iter().enumerate() {
                s.push_str(&format!(
                    "| {} | {:.1} | {:.1} | {} | {:.1} | {:.1} | {} | {:.1} | {:.1} | {} | {:.2} | {:.1} | {:.2} |\n",
                    i + 1,
                    x.forwarder_ns,
                    x.forwarder_net_ns,
                    x.forwarder_runs,
                    x.latch_ns,
                    x.latch_net_ns,
                    x.latch_runs,
                    x.latch6_ns,
                    x.latch6_net_ns,
                    x.latch6_runs,
                    x.raw_ratio(),
                    x.extra_ns(),
                    x.v6_ratio()
                ));
            }
        }
        None => s.push_str("not measured\n"),
    }
    s.push_str(&targets_and_method_md(&r.targets, &r.method));
    s
}

/// Compact terminal summary of the targets.
pub fn target_lines(targets: &[Target]) -> Vec<String> {
    targets
        .iter()
        .map(|t| {
            format!(
                "{:<48} {:<16} {:<26} {}",
                t.what,
                t.target,
                t.value,
                verdict(t.met)
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cost(key: &'static str, ns: f64, ok: bool) -> PathCost {
        PathCost {
            key,
            label: key,
            ns,
            median_ns: ns,
            net_ns: None,
            runs: 10,
            method: "m".into(),
            check: "c".into(),
            check_ok: ok,
        }
    }

    fn rate_of(key: &'static str, mpps: f64) -> Rate {
        Rate {
            key,
            label: key,
            rounds_mpps: vec![mpps],
            mpps,
            generated_mpps: mpps,
            counted_at: "x".into(),
            detail: String::new(),
        }
    }

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn ratios_and_targets_follow_the_measurements() {
        let rates = vec![
            rate_of("ceiling", 10.0),
            rate_of("latch_established", 6.0),
            rate_of("latch_new_flows", 2.0),
            rate_of("nft_dnat", 1.5),
            rate_of("xdp_redirect_floor", 7.5),
            rate_of("latch_established_v6", 5.7),
            rate_of("latch_new_flows_v6", 1.6),
        ];
        let q = ratios(&rates);
        assert_eq!(q.established_vs_ceiling, Some(0.6));
        assert_eq!(q.established_vs_nft, Some(4.0));
        assert_eq!(q.redirect_floor_vs_ceiling, Some(0.75));
        assert_eq!(q.established_vs_redirect_floor, Some(0.8));
        assert!(
            q.v6_established_vs_v4
                .is_some_and(|v| (v - 0.95).abs() < 1e-9)
        );
        assert!(q.v6_new_flows_vs_v4.is_some_and(|v| (v - 0.8).abs() < 1e-9));
        let paths = vec![
            cost("conntrack_hit", 120.0, true),
            cost("conntrack_hit_live", 160.0, true),
            cost("new_flow", 400.0, true),
        ];
        // Forwarder 100 ns, latch 105: 95% of its speed; IPv6 net 130 against 100 net.
        let p = ProgramTime::from_rounds(vec![round(100.0, 105.0, 135.0)], 5.0);
        let t = targets(&paths, &q, None, Some(&p));
        let met: Vec<Option<bool>> = t.iter().map(|t| t.met).collect();
        assert_eq!(
            met,
            vec![
                Some(true),
                Some(false),
                Some(false),
                None,
                Some(true),
                Some(false),
                Some(true),
                Some(false),
                Some(true),
                Some(false),
                Some(false),
            ]
        );
        // The live-frames targets come only with live-frames rows.
        assert_eq!(targets(&paths, &q, Some(&q), None).len(), t.len() + 2);
    }

    fn round(fwd: f64, latch: f64, latch6: f64) -> ProgramTimeRound {
        ProgramTimeRound {
            forwarder_ns: fwd,
            forwarder_net_ns: fwd - 5.0,
            forwarder_runs: 10,
            latch_ns: latch,
            latch_net_ns: latch - 5.0,
            latch_runs: 10,
            latch6_ns: latch6,
            latch6_net_ns: latch6 - 5.0,
            latch6_runs: 10,
        }
    }

    #[test]
    fn loop_rows_show_what_a_program_adds_over_the_ceiling() {
        // 2 CPUs: 4 Mpps is 500 ns of a CPU per packet, 5 Mpps 400: 100 ns more.
        let v = ns_over(4.0, Some(5.0), 2);
        assert!(v.is_some_and(|v| (v - 100.0).abs() < 1e-9), "{v:?}");
        assert_eq!(ns_over(4.0, None, 2), None);
    }

    #[test]
    fn a_path_that_failed_its_check_or_a_missing_peer_is_not_measured() {
        let q = ratios(&[rate_of("latch_established", 6.0)]);
        assert_eq!(q.established_vs_ceiling, None);
        let t = targets(&[cost("conntrack_hit", 10.0, false)], &q, None, None);
        assert!(t.iter().all(|t| t.met.is_none()));
    }

    #[test]
    fn markdown_has_every_row() {
        let rates = vec![rate_of("ceiling", 10.0), rate_of("nft_dnat", 1.0)];
        let paths = vec![cost("conntrack_hit", 120.0, true)];
        let ratios = ratios(&rates);
        let program_time = ProgramTime::from_rounds(
            vec![round(80.0, 120.0, 125.0), round(100.0, 200.0, 205.0)],
            5.0,
        );
        let r = Report {
            machine: crate::report::Machine {
                kernel: "k".into(),
                cpus: 2,
                unix_time: 0,
            },
            seconds_per_measurement: 3,
            rounds: 1,
            loop_cpus: 2,
            generator: "gen".into(),
            targets: targets(&paths, &ratios, None, Some(&program_time)),
            program_time: Some(program_time),
            paths,
            rates,
            ratios,
            live_rates: Vec::new(),
            live_ratios: None,
            method: vec!["how".into()],
        };
        let md = markdown(&r);
        assert!(md.contains("| conntrack_hit | 120.0 | 120.0 | - |"));
        // 2 CPUs at 1 Mpps against 10: 2000 - 200 ns.
        assert!(
            md.contains("| nft_dnat | 1.00 | 1.00 | 10% | 1800 |"),
            "{md}"
        );
        assert!(md.contains("| nftables DNAT / ceiling | 10% |"));
        assert!(md.contains("not measured"));
        assert!(md.contains("- how"));
        assert!(md.contains("measure the generator too"));
        assert!(md.contains("Live frames: refused"));
        // Ratios 1.5 and 2.0, extra 40 and 100 ns: medians 1.75 and 70.
        assert!(md.contains("median 1.75 (range 1.50 to 2.00)"), "{md}");
        assert!(md.contains("adds median 70.0 ns per packet (range 40.0 to 100.0)"));
        // IPv6 / IPv4 net: 120/115 and 200/195.
        assert!(md.contains("IPv6 / IPv4 (net) median 1.03"), "{md}");
    }
}
