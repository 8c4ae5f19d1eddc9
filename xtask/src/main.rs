//! `cargo xtask setup | test | demo | bench | fuzz | soak`: orchestration only. The eBPF object
//! is built by lb-userspace/build.rs, not here.

mod bench;
mod demo;
mod fuzz;
mod proc;
mod setup;
mod soak;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "latch development tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install or check the toolchain and system packages (idempotent; fast when all present).
    Setup,
    /// Setup, then build, fmt check, clippy and every test, ending in `N passed, N failed`.
    Test,
    /// Build the demo topology in namespaces and run latch in it until Ctrl-C.
    Demo,
    /// Benchmarks: measure latch beside its peers, write target/bench/.
    #[command(subcommand)]
    Bench(bench::BenchCmd),
    /// Fuzz every target for `--seconds` each (config, HTTP framing, avi.http parsing,
    /// avi.vs.table_* arguments; as root also the XDP program through BPF_PROG_TEST_RUN).
    Fuzz(fuzz::FuzzArgs),
    /// Soak: load and a cycle of faults (kill -9, reloads, Redis restart, backend flap) for N
    /// minutes; failures by cause, lost table entries, RSS and fds. Writes target/soak/.
    Soak(soak::SoakArgs),
}

fn main() -> std::process::ExitCode {
    let result = match Cli::parse().cmd {
        Cmd::Setup => setup::run().map(|_| true),
        Cmd::Test => test::run(),
        Cmd::Demo => demo::run().map(|_| true),
        Cmd::Bench(cmd) => bench::run(cmd),
        Cmd::Fuzz(args) => fuzz::run(args),
        Cmd::Soak(args) => soak::run(args),
    };
    match result {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
