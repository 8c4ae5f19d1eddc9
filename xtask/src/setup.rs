//! `cargo xtask setup`: make this machine able to build and test latch. Every step checks
//! first and only installs what is missing, so a second run takes about a second.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::proc::{is_root, output, run_visible, succeeds};

/// System packages: network tools for the tests, peers and load generators (wrk, h2load) for
/// the benchmarks, LLVM 22 for bpf-linker, procps for namespaced sysctls.
pub const APT_PACKAGES: &[&str] = &[
    "iproute2",
    "ethtool",
    "procps",
    "nftables",
    "wrk",
    "nghttp2-client",
    "haproxy",
    "nginx",
    "libnginx-mod-http-lua",
    "redis-server",
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "jq",
];

const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const LLVM_FEATURE: &str = "llvm-22";
const BPFFS: &str = "/sys/fs/bpf";

#[derive(Default)]
struct Report {
    lines: Vec<(String, String)>,
    failed: bool,
}

impl Report {
    fn note(&mut self, what: &str, outcome: &str) {
        println!("    {what}: {outcome}");
        self.lines.push((what.to_string(), outcome.to_string()));
    }
    fn fail(&mut self, what: &str, err: &anyhow::Error) {
        self.failed = true;
        self.note(what, &format!("FAILED: {err:#}"));
    }
}

pub fn run() -> Result<()> {
    println!("==> setup");
    let mut report = Report::default();
    step(&mut report, "apt packages", apt_packages);
    step(&mut report, "nightly toolchain + rust-src", nightly);
    step(&mut report, "bpf-linker (LLVM 22)", bpf_linker);
    step(&mut report, "bpffs at /sys/fs/bpf", bpffs);
    println!("==> setup summary");
    for (what, outcome) in &report.lines {
        println!("    {what:<30} {outcome}");
    }
    if report.failed {
        bail!("setup incomplete (see above)");
    }
    Ok(())
}

fn step(report: &mut Report, what: &str, f: fn() -> Result<String>) {
    println!("--> {what}");
    match f() {
        Ok(outcome) => report.note(what, &outcome),
        Err(e) => report.fail(what, &e),
    }
}

fn missing_packages() -> Vec<&'static str> {
    let mut args = vec!["-W", "--showformat=${Package} ${db:Status-Status}\n"];
    args.extend(APT_PACKAGES);
    // dpkg-query exits 1 when some name is unknown but still prints the known ones.
    let out = Command::new("dpkg-query")
        .args(&args)
        .stderr(std::process::Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let installed: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(_, st)| st.trim() == "installed")
        .map(|(p, _)| p)
        .collect();
    APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !installed.contains(p))
        .collect()
}

fn apt_packages() -> Result<String> {
    let missing = missing_packages();
    if missing.is_empty() {
        return Ok(format!("all {} present", APT_PACKAGES.len()));
    }
    println!("    missing: {}", missing.join(" "));
    if !is_root() {
        bail!("run as root to install: {}", missing.join(" "));
    }
    run_visible(
        Command::new("apt-get")
            .args(["update", "-q"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    run_visible(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    let still = missing_packages();
    if !still.is_empty() {
        bail!("still missing after install: {}", still.join(" "));
    }
    Ok(format!("installed {}", missing.join(" ")))
}

fn nightly() -> Result<String> {
    if !succeeds("rustup", &["--version"]) {
        bail!("rustup not found on PATH (install it from https://rustup.rs)");
    }
    let has_nightly = output("rustup", &["toolchain", "list"])
        .is_some_and(|s| s.lines().any(|l| l.starts_with("nightly")));
    if !has_nightly {
        run_visible(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))?;
        return Ok("installed nightly with rust-src".into());
    }
    let has_src = output(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )
    .is_some_and(|s| s.lines().any(|l| l.starts_with("rust-src")));
    if !has_src {
        run_visible(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
        return Ok("added rust-src to nightly".into());
    }
    Ok("present".into())
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

/// What `cargo install` recorded for bpf-linker: (version, built with the LLVM 22 feature).
fn installed_bpf_linker() -> Option<(String, bool)> {
    let text = std::fs::read_to_string(cargo_home().join(".crates2.json")).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    let installs = json.get("installs")?.as_object()?;
    installs.iter().find_map(|(key, v)| {
        let mut words = key.split_whitespace();
        (words.next()? == "bpf-linker").then(|| {
            let version = words.next().unwrap_or("?").to_string();
            let llvm22 = v
                .get("features")
                .and_then(|f| f.as_array())
                .is_some_and(|f| f.iter().any(|x| x.as_str() == Some(LLVM_FEATURE)));
            (version, llvm22)
        })
    })
}

fn bpf_linker() -> Result<String> {
    let runs = succeeds("bpf-linker", &["--version"]);
    let recorded = installed_bpf_linker();
    if runs && let Some((version, true)) = &recorded {
        return Ok(format!("{version} built for {LLVM_FEATURE}"));
    }
    let why = match (&recorded, runs) {
        (None, _) => "not installed".to_string(),
        (Some((v, false)), _) => format!("{v} not built for {LLVM_FEATURE}"),
        (Some((v, true)), _) => format!("{v} recorded but does not run"),
    };
    println!("    bpf-linker {why}: building it against {LLVM_PREFIX}");
    if !std::path::Path::new(LLVM_PREFIX).exists() {
        bail!("{LLVM_PREFIX} missing (llvm-22-dev not installed?)");
    }
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.args([
        "install",
        "bpf-linker",
        "--no-default-features",
        "--features",
        LLVM_FEATURE,
    ])
    .env("LLVM_PREFIX", LLVM_PREFIX);
    if recorded.is_some() {
        cmd.arg("--force");
    }
    // Outside the workspace, so its rust-toolchain/config do not apply to the install.
    cmd.current_dir(std::env::temp_dir());
    run_visible(&mut cmd).context("cargo install bpf-linker")?;
    Ok(format!("installed ({why} before)"))
}

fn bpffs_mounted() -> bool {
    std::fs::read_to_string("/proc/mounts").is_ok_and(|m| {
        m.lines().any(|l| {
            let mut f = l.split_whitespace();
            let (_, mnt, fstype) = (f.next(), f.next(), f.next());
            mnt == Some(BPFFS) && fstype == Some("bpf")
        })
    })
}

fn bpffs() -> Result<String> {
    if bpffs_mounted() {
        return Ok("mounted".into());
    }
    if !is_root() {
        bail!("not mounted; run as root to mount it");
    }
    run_visible(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))?;
    anyhow::ensure!(
        bpffs_mounted(),
        "mount reported success but {BPFFS} is not bpf"
    );
    Ok("mounted now".into())
}
