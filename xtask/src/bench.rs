//! `cargo xtask bench <what>`: builds and runs the `xtask-bench` binary (crate xtask/bench),
//! which links the agent library and the eBPF objects. Kept out of the plain `xtask` binary
//! so that `cargo xtask setup` builds on a machine without the eBPF toolchain.

use std::process::Command;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

#[derive(Subcommand)]
pub enum BenchCmd {
    /// XDP data plane: ns/packet per path (BPF_PROG_TEST_RUN) and Mpps on veth against an
    /// XDP_DROP ceiling and nftables DNAT. Writes target/bench/dataplane.{md,json,png}.
    Dataplane(DataplaneArgs),
    /// Table replication through Redis: latency from an insert on one host to the entry
    /// applied on another (p50/p99) and sustained inserts/s. Writes
    /// target/bench/replication.{md,json}.
    Replication(ReplicationArgs),
    /// HTTP: req/s and p50/p99 with wrk, keep-alive and connection per request, for the
    /// direct backend, latch (no scripts, JSESSIONID DataScripts, fast path), HAProxy with a
    /// stick table and nginx with Lua, at equal worker counts; table ops/s and bytes/entry.
    /// Writes target/bench/http.{md,json,png}.
    Http(HttpArgs),
    /// TLS: latch beside HAProxy (same certificate) at equal worker counts: full handshakes/s
    /// with ECDSA P-256 and RSA 2048 certificates, TLS keep-alive req/s (wrk) and HTTP/2
    /// req/s (h2load), CPU per request. Writes target/bench/tls.{md,json,png}.
    Tls(LoadArgs),
    /// Scale: DataScript table inserts and lookups per second with p50/p99 at 10 k, 100 k and
    /// 1 M entries (kernel mirror attached), RSS per entry, restore time after a kill -9 at
    /// 1 M entries, config load, start and reload with 1,000 virtual services of 10 servers
    /// each, and the connection table at and beyond its capacity. Writes
    /// target/bench/scale.{md,json}.
    Scale(ScaleArgs),
}

#[derive(Args)]
pub struct ScaleArgs {
    /// Rounds (the sizes alternate within each round; the median is reported).
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Table sizes, smallest first (comma-separated, 1,000 to 2,000,000).
    #[arg(long, default_value = "10000,100000,1000000")]
    pub sizes: String,
    /// Only these parts (comma-separated: tables, config, conntrack); default all.
    #[arg(long)]
    pub only: Option<String>,
}

#[derive(Args)]
pub struct ReplicationArgs {
    /// Inserts timed one at a time.
    #[arg(long, default_value_t = 2000)]
    pub samples: usize,
    /// Inserts for the throughput run.
    #[arg(long, default_value_t = 200_000)]
    pub inserts: usize,
}

/// The load knobs `bench http` and `bench tls` share.
#[derive(Args)]
pub struct LoadArgs {
    /// Seconds of each run (http: 19 runs per round, tls: 16, at the default worker counts).
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Rounds (targets alternate within each round; the median is reported).
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Client connections (wrk, h2load, the TLS handshake client's threads).
    #[arg(long, default_value_t = 50)]
    pub connections: u32,
    /// LB worker counts to compare, comma-separated.
    #[arg(long, default_value = "1,2")]
    pub workers: String,
    /// Skip the flame graphs of latch recorded after the measured rounds.
    #[arg(long)]
    pub no_flame: bool,
}

impl LoadArgs {
    fn argv(self, what: &str) -> Vec<String> {
        vec![
            what.into(),
            "--duration".into(),
            self.duration.to_string(),
            "--rounds".into(),
            self.rounds.to_string(),
            "--connections".into(),
            self.connections.to_string(),
            "--workers".into(),
            self.workers,
        ]
        .into_iter()
        .chain(self.no_flame.then(|| "--no-flame".to_string()))
        .collect()
    }
}

#[derive(Args)]
pub struct HttpArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    /// Skip the datascript/tables measurement tests (they build lb-userspace's tests in release).
    #[arg(long)]
    pub no_tables: bool,
    /// Keep latch's per-request access log on (the peers run without access logs).
    #[arg(long)]
    pub latch_access_log: bool,
}

#[derive(Args)]
pub struct DataplaneArgs {
    /// Seconds of traffic per Mpps measurement.
    #[arg(long, default_value_t = 3)]
    pub seconds: u64,
    /// Rounds of the Mpps measurements (interleaved; the median is reported).
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Instead: compare these latch-xdp objects (variants of lb-ebpf built elsewhere;
    /// `builtin`: the bench's own) by program time of established flows, IPv4 and IPv6, in
    /// alternating rounds.
    #[arg(long, value_delimiter = ',')]
    pub compare: Vec<String>,
}

impl DataplaneArgs {
    fn argv(self) -> Vec<String> {
        let mut v = vec![
            "dataplane".into(),
            "--seconds".into(),
            self.seconds.to_string(),
            "--rounds".into(),
            self.rounds.to_string(),
        ];
        if !self.compare.is_empty() {
            v.push("--compare".into());
            v.push(self.compare.join(","));
        }
        v
    }
}

pub fn run(cmd: BenchCmd) -> Result<bool> {
    let args: Vec<String> = match cmd {
        BenchCmd::Dataplane(a) => a.argv(),
        BenchCmd::Replication(a) => vec![
            "replication".into(),
            "--samples".into(),
            a.samples.to_string(),
            "--inserts".into(),
            a.inserts.to_string(),
        ],
        BenchCmd::Scale(a) => {
            let mut v = vec![
                "scale".into(),
                "--rounds".into(),
                a.rounds.to_string(),
                "--sizes".into(),
                a.sizes,
            ];
            if let Some(only) = a.only {
                v.extend(["--only".into(), only]);
            }
            v
        }
        BenchCmd::Http(a) => {
            let mut v = a.load.argv("http");
            if a.no_tables {
                v.push("--no-tables".into());
            }
            if a.latch_access_log {
                v.push("--access-log".into());
            }
            v
        }
        BenchCmd::Tls(a) => a.argv("tls"),
    };
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    println!(
        "==> building the bench runner (xtask-bench in release; the first build takes minutes)"
    );
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args([
            "run",
            "--quiet",
            // Measured code must be optimised: the agent library is linked into the runner.
            "--release",
            "--package",
            "xtask-bench",
            "--",
        ])
        .args(&args);
    // Ctrl-C reaches the runner too (same process group); it stops its traffic and removes its
    // namespaces and pins. This process only waits for it to finish doing so.
    let status =
        crate::proc::wait_through_ctrl_c(&mut cmd).context("running cargo for xtask-bench");
    Ok(status?.success())
}

#[cfg(test)]
mod tests {
    use super::{DataplaneArgs, LoadArgs};

    fn load(no_flame: bool) -> LoadArgs {
        LoadArgs {
            duration: 6,
            rounds: 3,
            connections: 50,
            workers: "1,2".into(),
            no_flame,
        }
    }

    #[test]
    fn load_args_reach_the_bench_runner() {
        assert_eq!(
            load(false).argv("http"),
            [
                "http",
                "--duration",
                "6",
                "--rounds",
                "3",
                "--connections",
                "50",
                "--workers",
                "1,2"
            ]
        );
        assert_eq!(
            load(true).argv("tls").last().map(String::as_str),
            Some("--no-flame")
        );
    }

    #[test]
    fn dataplane_compare_objects_reach_the_bench_runner() {
        let args = |compare: &[&str]| DataplaneArgs {
            seconds: 2,
            rounds: 5,
            compare: compare.iter().map(|c| c.to_string()).collect(),
        };
        assert_eq!(
            args(&[]).argv(),
            ["dataplane", "--seconds", "2", "--rounds", "5"]
        );
        assert_eq!(
            args(&["/tmp/a.o", "builtin"]).argv()[5..],
            ["--compare", "/tmp/a.o,builtin"]
        );
    }
}
