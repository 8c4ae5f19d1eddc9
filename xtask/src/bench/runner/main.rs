//! `xtask-bench`: the benchmark runner behind `cargo xtask bench` (feature `bench`).
//! Performance is measured here, never asserted in a test.

mod dataplane;
mod env;
mod frames;
mod mpps;
mod plot;
mod report;
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
}

fn main() -> std::process::ExitCode {
    env::install_sigint();
    let result = match Cli::parse().cmd {
        Cmd::Dataplane { seconds, rounds } => {
            dataplane::run(seconds.clamp(1, 30), rounds.clamp(1, 10))
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
