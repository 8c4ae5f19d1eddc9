//! `cargo xtask soak --minutes N`: builds `latch` and the soak runner (`latch-soak`, in the
//! latch-tests crate, tests/src/bin/latch-soak/) and runs it. Not part of `cargo xtask test`:
//! it is minutes long by design.

use anyhow::{Context, Result};
use clap::Args;

use crate::proc::{cargo, is_root, repo_root, run_visible, wait_through_ctrl_c};

#[derive(Args)]
pub struct SoakArgs {
    /// Length of the run in minutes (fractions allowed: 0.75 is 45 s).
    #[arg(long, default_value_t = 10.0)]
    pub minutes: f64,
    /// Seconds between faults (default: 25, less for runs under five minutes).
    #[arg(long)]
    pub fault_every: Option<f64>,
    /// Build latch in debug rather than release (a faster build; RSS figures are larger).
    #[arg(long)]
    pub debug: bool,
    /// Requests per second of wrk keep-alive; connection-per-request runs at a quarter of it.
    #[arg(long, default_value_t = 200)]
    pub rate: u32,
}

pub fn run(a: SoakArgs) -> Result<bool> {
    anyhow::ensure!(
        is_root(),
        "the soak needs root (network namespaces, BPF): run it as root"
    );
    let profile = if a.debug { "debug" } else { "release" };
    println!("==> building latch and latch-soak ({profile})");
    let mut build = cargo();
    build.args(["build", "-p", "lb-userspace", "--bin", "latch"]);
    build.args(["-p", "latch-tests", "--bin", "latch-soak"]);
    if !a.debug {
        build.arg("--release");
    }
    run_visible(&mut build)?;
    let dir = repo_root().join("target").join(profile);
    let mut soak = std::process::Command::new(dir.join("latch-soak"));
    soak.current_dir(repo_root())
        .arg("--minutes")
        .arg(a.minutes.to_string())
        .arg("--latch")
        .arg(dir.join("latch"))
        .arg("--out")
        .arg(repo_root().join("target/soak"))
        .args(["--profile", profile])
        .arg("--rate")
        .arg(a.rate.to_string());
    if let Some(s) = a.fault_every {
        soak.arg("--fault-every").arg(s.to_string());
    }
    // Ctrl-C reaches the runner too (same process group); it stops its load and removes its
    // namespaces, agents and pins. This process only waits for it.
    let status = wait_through_ctrl_c(&mut soak).context("running latch-soak");
    Ok(status?.success())
}
