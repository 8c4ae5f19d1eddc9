//! `latch-soak`: the soak run behind `cargo xtask soak --minutes N` (which builds latch and this
//! binary and passes `--latch` and `--out`). Needs root (namespaces, BPF).
//!
//! For N minutes: wrk keep-alive and connection-per-request traffic through the JSESSIONID
//! scripts, a sticky-session checker, layer-4 TCP and UDP through XDP, and replication to a
//! second host through Redis, while a cycle of faults runs (kill -9 and restart of the agent,
//! SIGHUP, Redis restart, backend flap, `latch reload`), each framed by a known set of table
//! entries checked on both hosts. The agents' RSS and open fds are sampled once a second.
//! Writes `soak.md`, `soak.json` and `samples.csv` to `--out`; exits non-zero when a series
//! grows without bound, fds do not return to their band, an entry is lost, a fault goes wrong
//! or a request fails outside every fault window (see report.rs).

mod faults;
mod growth;
mod load;
mod report;
mod rig;
mod sampler;

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Parser;

use crate::faults::{CYCLE, Ctx, FaultRecord};
use crate::load::{Env, Recorder};
use crate::rig::Rig;
use crate::sampler::Tracked;

#[derive(Parser)]
#[command(about = "latch soak run (through `cargo xtask soak`)")]
struct Args {
    /// Length of the run (0.5 to 240; fractions allowed: 0.75 is 45 s).
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// The `latch` binary to run.
    #[arg(long)]
    latch: PathBuf,
    /// Where the report goes.
    #[arg(long, default_value = "target/soak")]
    out: PathBuf,
    /// Seconds between faults (default: 25, less for runs under five minutes so that every
    /// kind of fault happens at least once).
    #[arg(long)]
    fault_every: Option<f64>,
    /// Which build of latch this is, for the report.
    #[arg(long, default_value = "release")]
    profile: String,
    /// HTTP requests per second of wrk keep-alive (8 connections); connection-per-request
    /// runs at a quarter of it (4 connections).
    #[arg(long, default_value_t = 200)]
    rate: u32,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn stopped() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// No new fault starts this close to the end (a fault and its check take up to ~30 s).
const TAIL_S: f64 = 20.0;
/// After the load: how long to wait for pooled connections to time out (upstream idle
/// timeout 30 s, swept every 15 s) before the quiet fd count.
const QUIET_WAIT: Duration = Duration::from_secs(60);

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<bool> {
    let args = Args::parse();
    if !(0.5..=240.0).contains(&args.minutes) {
        bail!("--minutes must be between 0.5 and 240");
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the soak needs root (network namespaces, BPF)");
    }
    if !args.latch.exists() {
        bail!("no latch binary at {}", args.latch.display());
    }
    let handler: extern "C" fn(libc::c_int) = on_sigint;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe { libc::signal(libc::SIGINT, handler as libc::sighandler_t) };

    let total_s = args.minutes * 60.0;
    let warmup_s = if total_s >= 300.0 { 20.0 } else { 10.0 };
    let fault_every = args
        .fault_every
        .unwrap_or_else(|| ((total_s - warmup_s - TAIL_S) / CYCLE.len() as f64).clamp(4.0, 25.0))
        .clamp(2.0, 600.0);
    let load_before = loadavg();
    println!("==> building the soak rig (namespaces, backends, redis-server, agents A and B)");
    let mut rig = Rig::build(&args.latch)?;
    // Disjoint borrows: the load reads the namespaces while the faults restart processes.
    let (live, net) = (&mut rig.live, &rig.net);
    let (ta, tb) = (Tracked::default(), Tracked::default());
    ta.set(live.a.pid());
    tb.set(live.b.pid());
    std::thread::sleep(Duration::from_secs(2));
    let quiet_before: Vec<(&'static str, u64, String)> = [("A", live.a.pid()), ("B", live.b.pid())]
        .into_iter()
        .map(|(h, pid)| {
            let pid = pid.unwrap_or(0);
            let fds = sampler::read(pid).map_or(0, |r| r.1);
            (h, fds, sampler::fd_kinds(pid))
        })
        .collect();

    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(total_s);
    let rec = Recorder::new(t0);
    let flaps = AtomicU64::new(0);
    let samples = Mutex::new(Vec::new());
    let load_running = AtomicBool::new(true);
    let stop_fn = || stopped();
    let now_s = || t0.elapsed().as_secs_f64();
    println!(
        "==> {:.1} min of load; faults every {fault_every:.0} s after {warmup_s:.0} s: {}",
        args.minutes,
        CYCLE.map(|k| k.name()).join(", ")
    );
    let mut records: Vec<FaultRecord> = Vec::new();
    let mut harness_error: Option<String> = None;
    let env = Env {
        rec: &rec,
        client: net.topo.client(),
        deadline,
        flaps: &flaps,
        stop: &stop_fn,
    };
    let sampler_running = || load_running.load(Ordering::SeqCst);
    let hosts = [("A", &ta), ("B", &tb)];
    let ctx = Ctx {
        now_s: &now_s,
        flaps: &flaps,
        a: &ta,
    };
    std::thread::scope(|s| {
        let env = &env;
        s.spawn(|| sampler::run(t0, &hosts, &samples, &sampler_running));
        let rate = args.rate.max(4);
        let tmp = net.tmp();
        let gens = [
            s.spawn(move || load::wrk(env, "wrk keep-alive", tmp, 8, rate, false)),
            s.spawn(move || load::wrk(env, "wrk connection: close", tmp, 4, rate / 4, true)),
        ];
        let own = [
            s.spawn(move || env.client.run(|| load::sticky(env, 10))),
            s.spawn(move || env.client.run(|| load::l4_tcp(env, 10))),
            s.spawn(move || env.client.run(|| load::udp(env, 20))),
        ];

        // The faults, on this thread (it owns the processes).
        let mut next = warmup_s;
        let mut index = 0;
        while !stopped() {
            let now = now_s();
            if now + TAIL_S > total_s {
                break;
            }
            if now < next {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            let kind = CYCLE[index % CYCLE.len()];
            index += 1;
            println!("    {:>5.0}s fault {index}: {}", now, kind.name());
            match faults::run_one(live, net, &ctx, index, kind) {
                Ok(r) => {
                    if r.lost_a + r.lost_b > 0 || r.problem.is_some() {
                        println!(
                            "           lost A {} B {}; {}",
                            r.lost_a,
                            r.lost_b,
                            r.problem.as_deref().unwrap_or("")
                        );
                    }
                    records.push(r);
                }
                Err(e) => {
                    harness_error = Some(format!("fault {index} ({}): {e:#}", kind.name()));
                    STOP.store(true, Ordering::Relaxed);
                    break;
                }
            }
            next = (next + fault_every).max(now_s() + 3.0);
        }
        for g in gens {
            let failed = match g.join() {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(format!("wrk: {e:#}")),
                Err(_) => Some("a wrk thread panicked".to_string()),
            };
            if let Some(f) = failed {
                harness_error.get_or_insert(f);
            }
        }
        for g in own {
            if g.join().is_err() {
                harness_error.get_or_insert("a client thread panicked".into());
            }
        }
        load_running.store(false, Ordering::SeqCst);
    });

    println!("==> load stopped; waiting for pooled connections to time out");
    let started = Instant::now();
    let band = |before: u64, pid: Option<u32>| {
        pid.and_then(sampler::read)
            .is_some_and(|r| growth::back_in_band(before as f64, r.1 as f64, report::FD_QUIET_TOL))
    };
    while started.elapsed() < QUIET_WAIT
        && !(band(quiet_before[0].1, live.a.pid()) && band(quiet_before[1].1, live.b.pid()))
    {
        std::thread::sleep(Duration::from_millis(500));
    }
    let waited = started.elapsed().as_secs_f64();
    let quiet: Vec<report::Quiet> = quiet_before
        .into_iter()
        .zip([(live.a.pid(), net.topo.lb()), (live.b.pid(), &net.lbb)])
        .map(|((host, before, before_kinds), (pid, ns))| {
            let pid = pid.unwrap_or(0);
            let after = sampler::read(pid).map_or(0, |r| r.1);
            // The TCP sockets the process still holds, as evidence when it holds too many.
            let sockets = if growth::back_in_band(before as f64, after as f64, report::FD_QUIET_TOL)
            {
                String::new()
            } else {
                sampler::tcp_sockets(ns, pid)
            };
            report::Quiet {
                host,
                before,
                before_kinds,
                after,
                after_kinds: sampler::fd_kinds(pid),
                sockets,
                waited_s: waited,
            }
        })
        .collect();
    if stopped() && harness_error.is_none() {
        // A run cut short proves less than it claims: never a pass.
        harness_error = Some("interrupted before the end".into());
    }
    let tally = rec.take();
    let samples = samples.into_inner().unwrap_or_else(|p| p.into_inner());
    let (passed, md) = report::write(
        &args.out,
        &report::Inputs {
            minutes: args.minutes,
            profile: &args.profile,
            fault_every_s: fault_every,
            warmup_s,
            tally: &tally,
            faults: &records,
            samples: &samples,
            quiet: &quiet,
            load_before,
            load_after: loadavg(),
            harness_error,
        },
    )?;
    println!("{md}");
    println!("report: {}", args.out.join("soak.md").display());
    if stopped() {
        println!("(interrupted)");
    }
    // The processes stop before their namespaces go (field order of `Rig`).
    drop(rig);
    Ok(passed)
}
