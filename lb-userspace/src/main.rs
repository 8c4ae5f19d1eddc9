//! The `latch` command: run, check and take down the agent.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "latch",
    version,
    about = "XDP load balancer with Avi-compatible DataScripts"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent in the foreground (SIGHUP reloads, SIGTERM drains and exits, leaving
    /// the XDP program attached and the maps pinned).
    Run {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Validate the config and compile its DataScripts; print every error.
    Check {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Detach and remove everything latch attached or pinned.
    Down {
        #[arg(short, long)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { config } => latch::agent::check_command(&config),
        Command::Run { config } => latch::agent::run_command(&config),
        Command::Down { config } => latch::agent::down_command(&config),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("latch: {err:#}");
            ExitCode::FAILURE
        }
    }
}
