//! The summary: failures by generator, cause and phase, the faults and their known entries,
//! RSS and fds over time, the growth verdicts; printed and written to the output directory
//! (`soak.md`, `soak.json`, `samples.csv`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::json;

use crate::faults::{CYCLE, FaultRecord};
use crate::growth::{self, Tolerance, Verdict};
use crate::load::Tally;
use crate::sampler::Sample;

/// A failure this close after a fault's recovery still counts as that fault's: clients
/// reconnect, the health monitor's rise and slow start finish.
pub const SETTLE_S: f64 = 3.0;
/// RSS may grow by ten percent plus 8 MiB between the first and last third of a run.
pub const RSS_TOL: Tolerance = Tolerance {
    rel: 0.10,
    abs: 8.0 * 1024.0,
};
/// Open descriptors may grow by 16 between the first and last third (connections in flight).
pub const FD_TOL: Tolerance = Tolerance {
    rel: 0.0,
    abs: 16.0,
};
/// Once the load stopped and pooled connections timed out, fds within 8 of the count before
/// the load started.
pub const FD_QUIET_TOL: Tolerance = Tolerance { rel: 0.0, abs: 8.0 };
/// Seconds of each process's life not judged (pools, VMs and tables filling).
pub const LIFE_WARMUP_S: f64 = 20.0;
/// A life of A shorter than this (after its warm-up) is reported but not judged on its own.
pub const MIN_LIFE_S: f64 = 60.0;

/// A host's open fds with no load: before it started, and after it stopped and the pools'
/// idle connections timed out (waiting at most `waited_s`), with what they were.
pub struct Quiet {
    pub host: &'static str,
    pub before: u64,
    pub before_kinds: String,
    pub after: u64,
    pub after_kinds: String,
    /// `ss` lines of the process's TCP sockets when it is out of band.
    pub sockets: String,
    pub waited_s: f64,
}

pub struct Inputs<'a> {
    pub minutes: f64,
    pub profile: &'a str,
    pub fault_every_s: f64,
    pub warmup_s: f64,
    pub tally: &'a Tally,
    pub faults: &'a [FaultRecord],
    pub samples: &'a [Sample],
    pub quiet: &'a [Quiet],
    pub load_before: String,
    pub load_after: String,
    pub harness_error: Option<String>,
}

/// A fault's name when `[start, end]` overlaps its window (plus [`SETTLE_S`]), else "steady".
fn phase(faults: &[FaultRecord], start: f64, end: f64) -> &'static str {
    faults
        .iter()
        .find(|f| start <= f.end_s + SETTLE_S && end >= f.start_s)
        .map_or("steady", |f| f.kind.name())
}

struct Judged {
    series: String,
    samples: usize,
    verdict: Verdict,
}

fn judge_series(name: String, points: &[(f64, f64)], warmup_s: f64, tol: Tolerance) -> Judged {
    let t0 = points.first().map_or(0.0, |p| p.0);
    let warm = points.iter().take_while(|p| p.0 - t0 < warmup_s).count();
    let values: Vec<f64> = points.iter().map(|p| p.1).collect();
    Judged {
        series: name,
        samples: values.len(),
        verdict: growth::judge(&values, warm, tol),
    }
}

/// RSS and fds of `samples` (one host, in time order), judged after `warmup_s`.
fn judge_both(out: &mut Vec<Judged>, what: &str, samples: &[&Sample], warmup_s: f64) {
    let rss: Vec<(f64, f64)> = samples.iter().map(|s| (s.t_s, s.rss_kib as f64)).collect();
    let fds: Vec<(f64, f64)> = samples.iter().map(|s| (s.t_s, s.fds as f64)).collect();
    out.push(judge_series(format!("{what} RSS"), &rss, warmup_s, RSS_TOL));
    out.push(judge_series(format!("{what} fds"), &fds, warmup_s, FD_TOL));
}

fn judgements(samples: &[Sample], warmup_s: f64) -> Vec<Judged> {
    let mut out = Vec::new();
    for host in ["A", "B"] {
        let of_host: Vec<&Sample> = samples.iter().filter(|s| s.host == host).collect();
        judge_both(&mut out, &format!("{host} whole run,"), &of_host, warmup_s);
        let lives: std::collections::BTreeSet<u32> = of_host.iter().map(|s| s.life).collect();
        if lives.len() < 2 {
            continue;
        }
        for life in lives {
            let l: Vec<&Sample> = of_host.iter().copied().filter(|s| s.life == life).collect();
            let span = l.last().map_or(0.0, |s| s.t_s) - l.first().map_or(0.0, |s| s.t_s);
            if span >= LIFE_WARMUP_S + MIN_LIFE_S {
                judge_both(
                    &mut out,
                    &format!("{host} process {life},"),
                    &l,
                    LIFE_WARMUP_S,
                );
            }
        }
    }
    out
}

fn verdict_cells(v: &Verdict, unit_div: f64) -> (String, String, String, &'static str) {
    let word = match v {
        Verdict::Bounded { .. } => "bounded",
        Verdict::Grows { .. } => "GROWS",
        Verdict::TooShort { .. } => "too short",
    };
    let [a, b, c] = match v.peaks() {
        Some((first, last, limit)) => [first, last, limit].map(|x| format!("{:.1}", x / unit_div)),
        None => ["-", "-", "-"].map(String::from),
    };
    (a, b, c, word)
}

/// Writes the report; returns whether the run passed and the reasons it did not.
pub fn write(out: &Path, i: &Inputs) -> Result<(bool, String)> {
    std::fs::create_dir_all(out).with_context(|| format!("create {}", out.display()))?;
    let mut md = String::new();
    let mut reasons: Vec<String> = Vec::new();
    if let Some(e) = &i.harness_error {
        reasons.push(format!("the soak itself failed: {e}"));
    }
    let _ = writeln!(md, "# latch soak\n");
    let _ = writeln!(
        md,
        "{:.1} minutes, latch built `{}`, a fault every {:.0} s after {:.0} s of warm-up, \
         cycle: {}. Load average (1/5/15 min) before: {}, after: {}.\n",
        i.minutes,
        i.profile,
        i.fault_every_s,
        i.warmup_s,
        CYCLE.map(|k| k.name()).join(", "),
        i.load_before,
        i.load_after
    );

    // Requests and failures.
    let phases: Vec<&'static str> = std::iter::once("steady")
        .chain(CYCLE.iter().map(|k| k.name()))
        .collect();
    let mut by: BTreeMap<(&str, &str), BTreeMap<&str, u64>> = BTreeMap::new();
    let mut per_gen: BTreeMap<&str, BTreeMap<&str, u64>> = BTreeMap::new();
    for f in &i.tally.failures {
        let p = phase(i.faults, f.start_s, f.end_s);
        *by.entry((f.generator, f.cause))
            .or_default()
            .entry(p)
            .or_default() += f.count;
        *per_gen
            .entry(f.generator)
            .or_default()
            .entry(p)
            .or_default() += f.count;
    }
    let _ = writeln!(md, "## Requests\n");
    let _ = writeln!(
        md,
        "| generator | requests | failed | failed in steady state | {} |",
        CYCLE.map(|k| format!("failed in {}", k.name())).join(" | ")
    );
    let _ = writeln!(md, "|---|---:|---:|---:|{}", "---:|".repeat(CYCLE.len()));
    let mut steady_failures = 0;
    for (g, n) in &i.tally.requests {
        let counts = per_gen.get(g).cloned().unwrap_or_default();
        let total: u64 = counts.values().sum();
        let steady = counts.get("steady").copied().unwrap_or(0);
        steady_failures += steady;
        let cells: Vec<String> = CYCLE
            .iter()
            .map(|k| counts.get(k.name()).copied().unwrap_or(0).to_string())
            .collect();
        let _ = writeln!(
            md,
            "| {g} | {n} | {total} | {steady} | {} |",
            cells.join(" | ")
        );
    }
    let _ = writeln!(
        md,
        "\nwrk counts failed attempts, not requests: while nothing listens it reconnects at \
         once, so during a kill -9 its failures outnumber its requests."
    );
    let _ = writeln!(
        md,
        "\nSticky sessions re-balanced because their server was taken out (expected): {}.\n",
        i.tally.rebalanced
    );
    if steady_failures > 0 {
        reasons.push(format!(
            "{steady_failures} requests failed outside every fault window"
        ));
    }
    let _ = writeln!(md, "## Failed requests by cause\n");
    if by.is_empty() {
        let _ = writeln!(md, "None.\n");
    } else {
        let _ = writeln!(
            md,
            "| generator | cause | {} | example |",
            phases.join(" | ")
        );
        let _ = writeln!(md, "|---|---|{}---|", "---:|".repeat(phases.len()));
        for ((g, c), counts) in &by {
            let cells: Vec<String> = phases
                .iter()
                .map(|p| counts.get(p).copied().unwrap_or(0).to_string())
                .collect();
            let example = i
                .tally
                .examples
                .get(&(*g, *c))
                .map(|e| e.replace('|', "/").replace('\n', " "))
                .unwrap_or_default();
            let example: String = example.chars().take(100).collect();
            let _ = writeln!(md, "| {g} | {c} | {} | {example} |", cells.join(" | "));
        }
        let _ = writeln!(md);
    }

    // Faults and known entries.
    let _ = writeln!(md, "## Faults and known table entries\n");
    let _ = writeln!(
        md,
        "| # | fault | at s | took s | entries | put failed | not replicated before | lost on A | lost on B | check s | note |"
    );
    let _ = writeln!(md, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    let (mut lost, mut put_failed) = (0, 0);
    for f in i.faults {
        lost += f.lost_a + f.lost_b;
        put_failed += f.insert_failed;
        let note = match &f.problem {
            Some(p) => {
                reasons.push(format!("fault {} ({}): {p}", f.index, f.kind.name()));
                format!("PROBLEM: {p}")
            }
            None => f.note.clone(),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {:.1} | {} | {} | {} | {} | {} | {:.1} | {} |",
            f.index,
            f.kind.name(),
            f.start_s,
            f.end_s - f.start_s,
            f.inserted,
            f.insert_failed,
            f.unreplicated_before,
            f.lost_a,
            f.lost_b,
            f.check_s,
            note.replace('|', "/").replace('\n', " ")
        );
    }
    let _ = writeln!(
        md,
        "\nLost entries in all: {lost} (of {} inserted); puts that failed: {put_failed}.\n",
        i.faults.iter().map(|f| f.inserted).sum::<usize>()
    );
    if lost > 0 {
        reasons.push(format!("{lost} known table entries lost"));
    }
    if put_failed > 0 {
        reasons.push(format!("{put_failed} known-entry puts failed"));
    }

    // RSS and fds over time, per minute.
    let _ = writeln!(md, "## RSS and open fds over time (maximum per minute)\n");
    let _ = writeln!(
        md,
        "| minute | A RSS MiB | A fds | A processes | B RSS MiB | B fds |"
    );
    let _ = writeln!(md, "|---:|---:|---:|---:|---:|---:|");
    let minutes = i
        .samples
        .iter()
        .map(|s| (s.t_s / 60.0) as u64)
        .max()
        .unwrap_or(0);
    for m in 0..=minutes {
        let of = |host: &'static str| {
            i.samples
                .iter()
                .filter(move |s| s.host == host && (s.t_s / 60.0) as u64 == m)
        };
        let rss = |host: &'static str| {
            of(host)
                .map(|s| s.rss_kib)
                .max()
                .map_or("-".into(), |v| format!("{:.1}", v as f64 / 1024.0))
        };
        let fds = |host: &'static str| {
            of(host)
                .map(|s| s.fds)
                .max()
                .map_or("-".into(), |v| v.to_string())
        };
        let lives: std::collections::BTreeSet<u32> = of("A").map(|s| s.life).collect();
        let _ = writeln!(
            md,
            "| {m} | {} | {} | {} | {} | {} |",
            rss("A"),
            fds("A"),
            lives.len(),
            rss("B"),
            fds("B")
        );
    }
    let _ = writeln!(md);

    // Growth.
    let _ = writeln!(md, "## Growth\n");
    let _ = writeln!(
        md,
        "Rule (tests/src/bin/latch-soak/growth.rs): after the warm-up, the last third's peak \
         must stay within the first third's peak × (1 + rel) + abs. RSS: rel {:.2}, abs {:.0} \
         MiB; fds: rel {:.2}, abs {:.0}. Each process of A that lived at least {:.0} s after a \
         {:.0} s warm-up is judged on its own as well; the whole-run series of A spans its \
         restarts, so state that outlives a restart and grows with each one shows there.\n",
        RSS_TOL.rel,
        RSS_TOL.abs / 1024.0,
        FD_TOL.rel,
        FD_TOL.abs,
        MIN_LIFE_S,
        LIFE_WARMUP_S
    );
    let _ = writeln!(
        md,
        "| series | samples | first third peak | last third peak | limit | verdict |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---|");
    let judged = judgements(i.samples, i.warmup_s);
    let mut growth_json = Vec::new();
    for j in &judged {
        let div = if j.series.contains("RSS") {
            1024.0
        } else {
            1.0
        };
        let unit = if j.series.contains("RSS") {
            " (MiB)"
        } else {
            ""
        };
        let (a, b, c, v) = verdict_cells(&j.verdict, div);
        if j.verdict.grows() {
            reasons.push(format!("{} grows: {a} -> {b} (limit {c}){unit}", j.series));
        }
        let _ = writeln!(
            md,
            "| {}{unit} | {} | {a} | {b} | {c} | {v} |",
            j.series, j.samples
        );
        growth_json.push(
            json!({"series": j.series, "samples": j.samples, "verdict": v,
            "first_third_peak": a, "last_third_peak": b, "limit": c}),
        );
    }
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "Open fds with no load (before it started / after it stopped and the pools' idle \
         connections timed out), band +{:.0}:\n",
        FD_QUIET_TOL.abs
    );
    for q in i.quiet {
        let (host, before, after) = (q.host, q.before, q.after);
        let ok = growth::back_in_band(before as f64, after as f64, FD_QUIET_TOL);
        if !ok {
            reasons.push(format!(
                "{host}: {after} fds after the load, {before} before it"
            ));
        }
        let _ = writeln!(
            md,
            "- {host}: {before} before ({}), {after} after ({}; waited {:.0} s): {}",
            q.before_kinds,
            q.after_kinds,
            q.waited_s,
            if ok {
                "back in band"
            } else {
                "NOT back in band"
            }
        );
        if !q.sockets.is_empty() {
            let _ = writeln!(
                md,
                "\n  Its TCP sockets then (`ss -tanp`):\n\n```\n{}```",
                q.sockets
            );
        }
    }
    let _ = writeln!(md);

    let passed = reasons.is_empty();
    let _ = writeln!(md, "## Verdict\n");
    if passed {
        let _ = writeln!(md, "PASS");
    } else {
        let _ = writeln!(md, "FAIL");
        for r in &reasons {
            let _ = writeln!(md, "- {r}");
        }
    }

    std::fs::write(out.join("soak.md"), &md).context("write soak.md")?;
    let mut csv = String::from("t_s,host,process,pid,rss_kib,fds\n");
    for s in i.samples {
        let _ = writeln!(
            csv,
            "{:.1},{},{},{},{},{}",
            s.t_s, s.host, s.life, s.pid, s.rss_kib, s.fds
        );
    }
    std::fs::write(out.join("samples.csv"), csv).context("write samples.csv")?;
    let failures: Vec<_> = by
        .iter()
        .map(|((g, c), counts)| json!({"generator": g, "cause": c, "by_phase": counts}))
        .collect();
    let faults: Vec<_> = i
        .faults
        .iter()
        .map(|f| {
            json!({"index": f.index, "kind": f.kind.name(), "start_s": f.start_s,
                "end_s": f.end_s, "inserted": f.inserted, "insert_failed": f.insert_failed,
                "unreplicated_before": f.unreplicated_before, "lost_a": f.lost_a,
                "lost_b": f.lost_b, "check_s": f.check_s, "problem": f.problem, "note": f.note})
        })
        .collect();
    let summary = json!({
        "minutes": i.minutes, "profile": i.profile, "passed": passed, "reasons": reasons,
        "requests": i.tally.requests, "failures": failures, "rebalanced": i.tally.rebalanced,
        "faults": faults, "growth": growth_json,
        "quiet_fds": i.quiet.iter().map(|q| json!({"host": q.host, "before": q.before,
            "before_kinds": q.before_kinds, "after": q.after, "after_kinds": q.after_kinds,
            "waited_s": q.waited_s})).collect::<Vec<_>>(),
    });
    std::fs::write(
        out.join("soak.json"),
        serde_json::to_string_pretty(&summary).context("JSON")?,
    )
    .context("write soak.json")?;
    Ok((passed, md))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::Kind;

    fn fault(kind: Kind, start_s: f64, end_s: f64) -> FaultRecord {
        FaultRecord {
            index: 0,
            kind,
            start_s,
            end_s,
            inserted: 0,
            insert_failed: 0,
            unreplicated_before: 0,
            lost_a: 0,
            lost_b: 0,
            check_s: 0.0,
            problem: None,
            note: String::new(),
        }
    }

    #[test]
    fn failures_are_placed_in_the_fault_window_they_overlap() {
        let f = [
            fault(Kind::Kill9, 10.0, 15.0),
            fault(Kind::Flap, 40.0, 45.0),
        ];
        assert_eq!(phase(&f, 5.0, 5.0), "steady");
        assert_eq!(phase(&f, 12.0, 12.0), "kill -9 + restart");
        assert_eq!(phase(&f, 17.9, 17.9), "kill -9 + restart", "settle margin");
        assert_eq!(phase(&f, 18.5, 18.5), "steady");
        // A wrk slice that spans the start of a fault.
        assert_eq!(phase(&f, 36.0, 41.0), "backend flap");
    }
}
