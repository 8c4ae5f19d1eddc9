//! Builds the XDP objects of `lb-ebpf` (nightly + bpf-linker, through aya-build) into OUT_DIR:
//! `latch-xdp`, which `dataplane` embeds with `aya::include_bytes_aligned!`, and the bench
//! programs of lb-ebpf/src/bin, which xtask/bench embeds. Dependents find the directory in
//! `DEP_LATCH_EBPF_OBJ_DIR` (the `links` metadata of this package).
//!
//! aya-build relays every line of its nested cargo as a `cargo:warning`: about 270 lines of
//! compile progress on a cold build, which cargo then replays on every later build too. So
//! this script runs aya-build in a child copy of itself and captures what it prints. On success
//! it passes on only the compiler's diagnostics, if any, and a one-line summary; on failure,
//! the nested output in full.

use std::{
    env,
    process::{Command, ExitCode, Stdio},
    time::Instant,
};

use anyhow::{Context, bail};

/// The argument that makes this script the child that runs aya-build (cargo passes none).
const CHILD_ARG: &str = "--build-ebpf";

/// The status words cargo prints (right-aligned) for progress rather than for a diagnostic.
const CARGO_PROGRESS: [&str; 10] = [
    "Adding",
    "Blocking",
    "Building",
    "Checking",
    "Compiling",
    "Downloaded",
    "Downloading",
    "Finished",
    "Locking",
    "Updating",
];

fn main() -> ExitCode {
    let result = if env::args().nth(1).as_deref() == Some(CHILD_ARG) {
        build_ebpf()
    } else {
        build_ebpf_quietly()
    };
    // Printed rather than returned from `main`, which would add a backtrace of this script
    // under RUST_BACKTRACE to the one error that matters.
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs aya-build in a child and passes on what matters of its output.
fn build_ebpf_quietly() -> anyhow::Result<()> {
    // The embedded objects must never be stale: aya-build makes lb-ebpf a rebuild trigger, and
    // lb-ebpf compiles lb-common in.
    println!("cargo:rerun-if-changed=../lb-common/src");
    let out_dir = env::var("OUT_DIR").context("OUT_DIR not set")?;
    println!("cargo::metadata=obj_dir={out_dir}");

    let started = Instant::now();
    let this_script = env::current_exe().context("locating the build script")?;
    let child = Command::new(this_script)
        .arg(CHILD_ARG)
        .stdin(Stdio::null())
        .output()
        .context("running aya-build in a child process")?;
    let stdout = String::from_utf8_lossy(&child.stdout);
    let mut nested = Vec::new();
    for line in stdout.lines() {
        match line.strip_prefix("cargo:warning=") {
            Some(text) => nested.push(text),
            // rerun-if-* and any other instruction are for cargo, as aya-build meant them.
            None => println!("{line}"),
        }
    }
    if !child.status.success() {
        for line in &nested {
            eprintln!("{line}");
        }
        eprint!("{}", String::from_utf8_lossy(&child.stderr));
        bail!(
            "building lb-ebpf failed ({}): the nested cargo's output is above",
            child.status
        );
    }
    // Nothing to announce when the nested build was fresh, or skipped (AYA_BUILD_SKIP: aya-build
    // says so in a line passed on below).
    if nested
        .iter()
        .any(|line| progress_word(line) == Some("Compiling"))
    {
        announce(&format!(
            "lb-ebpf for {} in {:.0} s",
            bpf_target(),
            started.elapsed().as_secs_f64()
        ));
    }
    for line in nested.iter().filter(|line| progress_word(line).is_none()) {
        println!("cargo:warning={line}");
    }
    Ok(())
}

/// The summary of a successful nested build, as the one warning line a cold build shows.
/// Cargo replays a build script's warnings on later builds in which the script does not run,
/// so this line can reappear; it stays one line. (Writing to the terminal instead would bypass
/// `--quiet` and JSON message formats.)
fn announce(summary: &str) {
    println!("cargo:warning=built {summary}");
}

/// What the child runs: aya-build, printing to the captured stdout.
fn build_ebpf() -> anyhow::Result<()> {
    let root_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../lb-ebpf");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "lb-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}

/// The cargo status word that starts `line` if it is a progress line; cargo indents them.
fn progress_word(line: &str) -> Option<&'static str> {
    let rest = line.trim_start();
    if rest.len() == line.len() {
        return None;
    }
    let word = rest.split_whitespace().next()?;
    CARGO_PROGRESS
        .iter()
        .copied()
        .find(|&status| status == word)
}

/// The target aya-build picks: the host's byte order decides between bpfel and bpfeb.
fn bpf_target() -> &'static str {
    match env::var("CARGO_CFG_TARGET_ENDIAN").as_deref() {
        Ok("big") => "bpfeb-unknown-none",
        _ => "bpfel-unknown-none",
    }
}
