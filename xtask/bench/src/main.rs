//! `xtask-bench`: the benchmark runner behind `cargo xtask bench`, which builds it in release.
//! Performance is measured here, never asserted in a test.

mod circulate;
mod dataplane;
mod env;
mod flame;
mod frames;
mod http;
mod mpps;
mod plot;
mod replication;
mod report;
mod scale;
mod testrun;
mod tls;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "latch benchmarks (run through `cargo xtask bench`)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// XDP data plane: ns/packet per path and Mpps on veth.
    Dataplane {
        #[arg(long, default_value_t = 3)]
        seconds: u64,
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Compare these latch-xdp objects (built from variants of lb-ebpf, e.g. copies of
        /// target/debug/build/lb-userspace-*/out/latch-xdp; `builtin`: the bench's own) by
        /// program time of established flows, IPv4 and IPv6, in alternating rounds after one
        /// pass of every row; nothing else is measured or written.
        #[arg(long, value_delimiter = ',')]
        compare: Vec<std::path::PathBuf>,
    },
    /// Table replication through Redis: insert-to-visible latency and inserts/s.
    Replication {
        #[arg(long, default_value_t = 2000)]
        samples: usize,
        #[arg(long, default_value_t = 200_000)]
        inserts: usize,
    },
    /// Scale: tables at 10 k / 100 k / 1 M entries, restore after kill -9, config of 1,000
    /// services.
    Scale {
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Table sizes, smallest first.
        #[arg(long, value_delimiter = ',', default_value = "10000,100000,1000000")]
        sizes: Vec<usize>,
        /// Parts to run (default: all).
        #[arg(long, value_delimiter = ',')]
        only: Vec<scale::Part>,
    },
    /// HTTP: wrk against the direct backend, latch, HAProxy and nginx+Lua.
    Http {
        #[command(flatten)]
        load: Load,
        #[arg(long)]
        no_tables: bool,
        #[arg(long)]
        access_log: bool,
        /// Skip the flame graphs of latch recorded after the rounds.
        #[arg(long)]
        no_flame: bool,
    },
    /// TLS: handshakes/s (ECDSA, RSA), TLS keep-alive and HTTP/2 req/s, latch beside HAProxy.
    Tls {
        #[command(flatten)]
        load: Load,
        /// Skip the flame graphs of latch recorded after the rounds.
        #[arg(long)]
        no_flame: bool,
    },
}

/// The load knobs of `http` and `tls`.
#[derive(clap::Args)]
struct Load {
    #[arg(long, default_value_t = 10)]
    duration: u64,
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    #[arg(long, default_value_t = 50)]
    connections: u32,
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    workers: Vec<usize>,
}

impl Load {
    fn seconds(&self) -> u64 {
        self.duration.clamp(1, 120)
    }

    fn rounds(&self) -> u32 {
        self.rounds.clamp(1, 10)
    }

    /// Worker counts within 1..=16, sorted, once each.
    fn workers(&self) -> Vec<usize> {
        let mut w: Vec<usize> = self
            .workers
            .iter()
            .copied()
            .filter(|w| (1..=16).contains(w))
            .collect();
        w.sort_unstable();
        w.dedup();
        w
    }
}

fn main() -> std::process::ExitCode {
    env::install_sigint();
    let result = match Cli::parse().cmd {
        Cmd::Dataplane {
            seconds,
            rounds,
            compare,
        } => {
            if compare.is_empty() {
                dataplane::run(seconds.clamp(1, 30), rounds.clamp(1, 10))
            } else {
                dataplane::compare(&compare, seconds.clamp(1, 30), rounds.clamp(1, 20))
            }
        }
        Cmd::Scale {
            rounds,
            mut sizes,
            only,
        } => {
            sizes.retain(|n| (1000..=2_000_000).contains(n));
            sizes.sort_unstable();
            sizes.dedup();
            scale::run(&scale::Options {
                rounds: rounds.clamp(1, 10),
                sizes,
                parts: only,
            })
        }
        Cmd::Replication { samples, inserts } => {
            replication::run(samples.clamp(10, 100_000), inserts.clamp(1000, 2_000_000))
        }
        Cmd::Http {
            load,
            no_tables,
            access_log,
            no_flame,
        } => http::run(http::Options {
            seconds: load.seconds(),
            rounds: load.rounds(),
            connections: load.connections.clamp(2, 2000),
            wrk_threads: 2,
            workers: load.workers(),
            tables: !no_tables,
            access_log,
            flame: !no_flame,
        }),
        Cmd::Tls { load, no_flame } => tls::run(tls::Options {
            seconds: load.seconds(),
            rounds: load.rounds(),
            connections: load.connections.clamp(2, 500),
            wrk_threads: 2,
            h2_streams: 10,
            workers: load.workers(),
            flame: !no_flame,
        }),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
