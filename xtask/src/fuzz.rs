//! `cargo xtask fuzz --seconds N`: every fuzz target for N seconds, one after the other (the
//! targets are proptest properties run for a bounded time: `lb-userspace/src/fuzz/` and, as
//! root, `lb-userspace/tests/it/fuzz_xdp.rs`; the runner is `tests/src/fuzz.rs`). Prints each
//! target's case count and seed; a failure prints the shrunk input and the seed to replay it
//! (`LATCH_FUZZ_SEED`). `cargo xtask test` runs the same targets for a few seconds each.

use std::time::Duration;

use anyhow::Result;
use clap::Args;

use latch_tests::fuzz::{SECONDS_VAR, SEED_VAR};

use crate::proc::{cargo, is_root, run_bounded};
use crate::test::Tally;

#[derive(Args)]
pub struct FuzzArgs {
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Replay a run: the seed a failure printed.
    #[arg(long)]
    seed: Option<u64>,
}

/// The targets, for the time limit: the unit-test ones and the XDP one.
const TARGETS: u64 = 5;
/// Building the test binaries, on top of the targets' own time.
const BUILD_ALLOWANCE: Duration = Duration::from_secs(20 * 60);

pub fn run(args: FuzzArgs) -> Result<bool> {
    let limit = BUILD_ALLOWANCE + Duration::from_secs(args.seconds.saturating_mul(TARGETS + 1));
    let root = is_root();
    let mut runs: Vec<(&str, Vec<&str>)> = vec![(
        "unit-test targets",
        vec!["test", "-p", "lb-userspace", "--lib", "fuzz::", "--"],
    )];
    if root {
        runs.push((
            "XDP target (BPF_PROG_TEST_RUN)",
            vec![
                "test",
                "-p",
                "lb-userspace",
                "--test",
                "it",
                "fuzz_xdp",
                "--",
                "--include-ignored",
            ],
        ));
    } else {
        println!("note: not root: the XDP target (BPF_PROG_TEST_RUN) is skipped");
    }
    let mut tally = Tally::default();
    let mut figures = Vec::new();
    let mut ok = true;
    for (what, argv) in runs {
        println!("==> fuzz: {what}, {} s per target", args.seconds);
        let mut cmd = cargo();
        cmd.args(&argv)
            // One target at a time, each with the machine to itself for its seconds.
            .args(["--test-threads=1", "--nocapture"])
            .env(SECONDS_VAR, args.seconds.to_string());
        if let Some(seed) = args.seed {
            cmd.env(SEED_VAR, seed.to_string());
        }
        let out = run_bounded(&mut cmd, limit, |line| {
            println!("{line}");
            tally.feed(line);
            // The runner's figures ("fuzz <target>: ..."), also when the test harness put
            // the test's name before them on the same line.
            if let Some(at) = line.find("fuzz ")
                && line[at..].contains(": ")
            {
                figures.push(line[at..].to_string());
            }
        })?;
        ok &= out.status.is_some_and(|s| s.success());
    }
    println!();
    println!("==> fuzz summary");
    for f in &figures {
        println!("    {f}");
    }
    for f in &tally.failures {
        println!("    FAILED {f}");
    }
    println!("{} passed, {} failed", tally.passed, tally.failed);
    Ok(ok && tally.failed == 0)
}
