//! `xtask-bench`: the benchmark runner behind `cargo xtask bench`, which builds it in release.
//! Performance is measured here, never asserted in a test.

mod dataplane;
mod env;
mod frames;
mod http;
mod mpps;
mod plot;
mod replication;
mod report;
mod scale;
mod testrun;

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
    },
    /// HTTP: wrk against the direct backend, latch, HAProxy and nginx+Lua.
    Http {
        #[arg(long, default_value_t = 10)]
        duration: u64,
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        #[arg(long, default_value_t = 50)]
        connections: u32,
        #[arg(long, value_delimiter = ',', default_value = "1,2")]
        workers: Vec<usize>,
        #[arg(long)]
        no_tables: bool,
        #[arg(long)]
        access_log: bool,
    },
}

fn main() -> std::process::ExitCode {
    env::install_sigint();
    let result = match Cli::parse().cmd {
        Cmd::Dataplane { seconds, rounds } => {
            dataplane::run(seconds.clamp(1, 30), rounds.clamp(1, 10))
        }
        Cmd::Scale { rounds } => scale::run(rounds.clamp(1, 10)),
        Cmd::Replication { samples, inserts } => {
            replication::run(samples.clamp(10, 100_000), inserts.clamp(1000, 2_000_000))
        }
        Cmd::Http {
            duration,
            rounds,
            connections,
            mut workers,
            no_tables,
            access_log,
        } => {
            workers.retain(|w| (1..=16).contains(w));
            workers.sort_unstable();
            workers.dedup();
            http::run(http::Options {
                seconds: duration.clamp(1, 120),
                rounds: rounds.clamp(1, 10),
                connections: connections.clamp(2, 2000),
                wrk_threads: 2,
                workers,
                tables: !no_tables,
                access_log,
            })
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
