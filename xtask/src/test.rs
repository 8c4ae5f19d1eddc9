//! `cargo xtask test`: the one test command. Setup, fmt check, build, clippy, every test;
//! ends with a line `N passed, N failed` and a non-zero exit on any failure.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::proc::{cargo, is_root, repo_root, run_bounded};

/// lb-ebpf is a `no_std` BPF program: it builds only for the bpf target (through
/// lb-userspace/build.rs), never for the host, so host-side cargo runs leave it out.
const EXCLUDE: [&str; 2] = ["--exclude", "lb-ebpf"];
// `--workspace` below also builds, lints and tests the benchmark runner (crate xtask/bench),
// so it cannot rot unnoticed between benchmark runs.

/// `#[ignore]`d tests that are measurements, not checks: `cargo xtask bench` runs them in
/// release mode; `--include-ignored` must not run them in debug.
const MEASUREMENTS: [&str; 3] = [
    "datascript::tests::bench_event",
    "datascript::tests::bench_txn_only",
    "tables::tests::memory_per_entry",
];

const BUILD_LIMIT: Duration = Duration::from_secs(15 * 60);
const CLIPPY_LIMIT: Duration = Duration::from_secs(10 * 60);
const TEST_LIMIT: Duration = Duration::from_secs(25 * 60);
const FMT_LIMIT: Duration = Duration::from_secs(2 * 60);

/// Sum of cargo's `test result:` lines plus the names of failing tests.
#[derive(Debug, Default, PartialEq)]
pub struct Tally {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
    pub failures: Vec<String>,
}

impl Tally {
    /// Feeds one line of `cargo test` output.
    pub fn feed(&mut self, line: &str) {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("test result: ") {
            for part in rest.split(';') {
                let part = part
                    .trim()
                    .trim_start_matches("ok.")
                    .trim_start_matches("FAILED.");
                let mut words = part.split_whitespace();
                if let (Some(n), Some(what)) = (words.next(), words.next())
                    && let Ok(n) = n.parse::<u64>()
                {
                    match what {
                        "passed" => self.passed += n,
                        "failed" => self.failed += n,
                        "ignored" => self.ignored += n,
                        _ => {}
                    }
                }
            }
        } else if let Some(name) = line.strip_prefix("test ")
            && let Some(name) = name.strip_suffix(" ... FAILED")
        {
            self.failures.push(name.to_string());
        }
    }
}

struct Step {
    name: &'static str,
    ok: bool,
    detail: String,
    secs: f64,
}

pub fn run() -> Result<bool> {
    let started = Instant::now();
    let mut steps: Vec<Step> = Vec::new();

    let t = Instant::now();
    let setup = crate::setup::run();
    steps.push(Step {
        name: "setup",
        ok: setup.is_ok(),
        detail: setup.err().map(|e| format!("{e:#}")).unwrap_or_default(),
        secs: t.elapsed().as_secs_f64(),
    });
    let root = is_root();
    if !root {
        println!("note: not root: namespace and BPF tests stay ignored");
    }

    steps.push(simple(
        "fmt",
        "[1/4] cargo fmt --check",
        &["fmt", "--all", "--", "--check"],
        FMT_LIMIT,
    )?);
    let build = simple(
        "build",
        "[2/4] cargo build",
        &[
            "build",
            "--workspace",
            "--all-features",
            EXCLUDE[0],
            EXCLUDE[1],
        ],
        BUILD_LIMIT,
    )?;
    let built = build.ok;
    steps.push(build);

    let mut tally = Tally::default();
    if built {
        steps.push(simple(
            "clippy",
            "[3/4] cargo clippy",
            &[
                "clippy",
                "--workspace",
                "--all-features",
                EXCLUDE[0],
                EXCLUDE[1],
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
            CLIPPY_LIMIT,
        )?);
        steps.push(clippy_bpf()?);

        println!("==> [4/4] cargo test");
        let t = Instant::now();
        let mut cmd = cargo();
        cmd.args([
            "test",
            "--workspace",
            "--all-features",
            EXCLUDE[0],
            EXCLUDE[1],
            "--no-fail-fast",
        ]);
        if root {
            // Tests needing root are `#[ignore]`d so that a plain `cargo test` as a user
            // reports them ignored rather than passed; as root they run too. The measurement
            // tests are ignored for another reason (release-mode figures for `xtask bench`)
            // and stay out.
            cmd.args(["--", "--include-ignored", "--exact"]);
            for name in MEASUREMENTS {
                cmd.args(["--skip", name]);
            }
        }
        let out = run_bounded(&mut cmd, TEST_LIMIT, |line| {
            println!("{line}");
            tally.feed(line);
        })?;
        let (ok, detail) = match out.status {
            None => (false, format!("killed after {TEST_LIMIT:?}")),
            Some(s) if s.success() => (true, String::new()),
            Some(s) if tally.failed == 0 => {
                // A compile error or a test binary that crashed reports no `test result:`.
                (
                    false,
                    format!("cargo test exited with {s} without a failing test line"),
                )
            }
            Some(s) => (false, s.to_string()),
        };
        steps.push(Step {
            name: "test",
            ok,
            detail,
            secs: t.elapsed().as_secs_f64(),
        });
    } else {
        println!("==> build failed: skipping clippy and tests");
    }

    println!();
    println!("==> summary ({:.0}s)", started.elapsed().as_secs_f64());
    for s in &steps {
        let mark = if s.ok { "ok" } else { "FAILED" };
        println!(
            "    {:<7} {:<7} {:>6.1}s {}",
            s.name, mark, s.secs, s.detail
        );
    }
    if !tally.failures.is_empty() {
        println!("    failing tests:");
        for f in &tally.failures {
            println!("      {f}");
        }
    }
    if tally.ignored > 0 {
        println!("    {} ignored", tally.ignored);
    }
    let all_ok = steps.iter().all(|s| s.ok);
    // A step failure that is not a test (fmt, clippy, build) still counts as one failure, so
    // the plain summary line never reads "0 failed" on a failing run.
    let step_failures = steps.iter().filter(|s| !s.ok && s.name != "test").count() as u64;
    let test_step_failed_silently =
        steps.iter().any(|s| s.name == "test" && !s.ok) && tally.failed == 0;
    let failed = tally.failed + step_failures + u64::from(test_step_failed_silently);
    println!("{} passed, {} failed", tally.passed, failed);
    Ok(all_ok && failed == 0)
}

fn simple(name: &'static str, banner: &str, args: &[&str], limit: Duration) -> Result<Step> {
    let mut cmd = cargo();
    cmd.args(args);
    run_step(name, banner, &mut cmd, limit)
}

/// Clippy on lb-ebpf for the BPF target, built the way aya-build builds it for
/// lb-userspace/build.rs (nightly, `core` from source, the `bpf_target_arch` cfg aya-ebpf
/// reads), since the host-side steps above exclude it. Any warning fails the run.
fn clippy_bpf() -> Result<Step> {
    let target = if cfg!(target_endian = "big") {
        "bpfeb-unknown-none"
    } else {
        "bpfel-unknown-none"
    };
    let mut cmd = Command::new("rustup");
    cmd.current_dir(repo_root())
        .args(["run", "nightly", "cargo", "clippy", "--package", "lb-ebpf"])
        .args(["--lib", "--bins", "--release", "--target", target])
        .args(["-Z", "build-std=core"])
        // Its own directory: nightly artifacts would otherwise churn the host build's.
        .args(["--target-dir", "target/bpf-clippy", "--", "-D", "warnings"])
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            format!("--cfg=bpf_target_arch=\"{}\"", std::env::consts::ARCH),
        )
        // As aya-build does: a RUSTC from the calling (stable) cargo would win over nightly.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    run_step(
        "lb-ebpf",
        &format!("[3/4] cargo clippy (lb-ebpf, {target})"),
        &mut cmd,
        CLIPPY_LIMIT,
    )
}

fn run_step(name: &'static str, banner: &str, cmd: &mut Command, limit: Duration) -> Result<Step> {
    println!("==> {banner}");
    let t = Instant::now();
    let out = run_bounded(cmd, limit, |line| println!("{line}"))?;
    let (ok, detail) = match out.status {
        None => (false, format!("killed after {limit:?}")),
        Some(s) if s.success() => (true, String::new()),
        Some(s) => (false, s.to_string()),
    };
    Ok(Step {
        name,
        ok,
        detail,
        secs: t.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::Tally;

    #[test]
    fn sums_result_lines_and_collects_failures() {
        let mut t = Tally::default();
        for l in [
            "running 3 tests",
            "test a::b ... ok",
            "test a::c ... FAILED",
            "test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s",
            "test result: ok. 5 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.63s",
            "    Doc-tests x",
        ] {
            t.feed(l);
        }
        assert_eq!(t.passed, 7);
        assert_eq!(t.failed, 1);
        assert_eq!(t.ignored, 2);
        assert_eq!(t.failures, vec!["a::c".to_string()]);
    }
}
