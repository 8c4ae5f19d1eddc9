//! Flame graphs of the load balancer under load: `perf record` on its process while a load
//! runs, folded and drawn by inferno into `target/bench/flame/<name>.svg`. Profiling runs
//! come after the measured rounds, never during them (perf costs the profiled process CPU).

use std::io::{BufReader, Cursor};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use inferno::collapse::Collapse;
use inferno::collapse::perf::{Folder, Options as FoldOptions};
use inferno::flamegraph::{self, Options as GraphOptions};

/// Samples per second: an odd rate, so sampling does not beat with periodic work.
const FREQUENCY: &str = "499";
/// Bytes of stack copied per sample: Rust release builds keep no frame pointers, so perf
/// unwinds from a copy of the stack with the binary's unwind tables.
const STACK_BYTES: &str = "dwarf,16384";

/// The directory flame graphs are written to.
pub fn dir() -> PathBuf {
    crate::env::out_dir().join("flame")
}

/// Is `perf` usable here (installed, and allowed to record)?
fn available() -> bool {
    Command::new("perf")
        .args(["record", "-q", "-o", "/dev/null", "--", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Records `pid` while `load` runs and writes the flame graph `<dir>/<name>.svg`, titled
/// `title`. Returns the file.
pub fn record<T>(
    pid: u32,
    name: &str,
    title: &str,
    load: impl FnOnce() -> Result<T>,
) -> Result<PathBuf> {
    let out = dir();
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let data = out.join(format!("{name}.perf.data"));
    let perf = Command::new("perf")
        .args(["record", "-q", "-F", FREQUENCY, "--call-graph", STACK_BYTES])
        .arg("-p")
        .arg(pid.to_string())
        .arg("-o")
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting perf record")?;
    // perf attaches within a moment; a load started before would be sampled short.
    std::thread::sleep(Duration::from_millis(300));
    let loaded = load();
    // SIGINT ends the recording and makes perf write its data file (our child, by PID).
    // SAFETY: kill has no memory-safety preconditions; the PID is our own child's.
    unsafe { libc::kill(perf.id() as libc::pid_t, libc::SIGINT) };
    let status = perf.wait_with_output().context("waiting for perf record")?;
    loaded.context("the load under perf")?;
    if !status.status.success() && !data.exists() {
        bail!(
            "perf record failed: {}",
            String::from_utf8_lossy(&status.stderr).trim()
        );
    }
    let svg = out.join(format!("{name}.svg"));
    draw(&data, &svg, title)?;
    let _ = std::fs::remove_file(&data);
    Ok(svg)
}

/// `perf script` of `data`, folded, drawn into `svg`.
fn draw(data: &Path, svg: &Path, title: &str) -> Result<()> {
    let script = Command::new("perf")
        .args(["script", "-i"])
        .arg(data)
        .stderr(Stdio::null())
        .output()
        .context("running perf script")?;
    if script.stdout.is_empty() {
        bail!("perf script printed no samples");
    }
    let mut folded = Vec::new();
    Folder::from(FoldOptions::default())
        .collapse(BufReader::new(Cursor::new(script.stdout)), &mut folded)
        .context("folding perf stacks")?;
    let lines = String::from_utf8_lossy(&folded);
    let mut options = GraphOptions::default();
    options.title = title.to_string();
    let file = std::fs::File::create(svg).with_context(|| format!("creating {}", svg.display()))?;
    flamegraph::from_lines(&mut options, lines.lines(), file).context("drawing the flame graph")?;
    Ok(())
}

/// One flame graph of a report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Graph {
    /// The scenario and mode profiled.
    pub scenario: String,
    /// The SVG, relative to `target/bench/`.
    pub file: String,
}

/// The flame graphs of a report, or why there are none (or fewer than asked).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Section {
    pub graphs: Vec<Graph>,
    pub notes: Vec<String>,
}

impl Section {
    /// A section saying why nothing can be recorded, when perf cannot record here.
    pub fn unavailable() -> Option<Section> {
        (!available()).then(|| Section {
            graphs: Vec::new(),
            notes: vec!["perf is not installed or may not record here".into()],
        })
    }

    /// Profiles one scenario: `pid` while `load` runs; a failure becomes a note, never an error
    /// of the benchmark (its figures are already measured).
    pub fn profile<T>(
        &mut self,
        pid: Option<u32>,
        name: &str,
        scenario: &str,
        load: impl FnOnce() -> Result<T>,
    ) {
        let Some(pid) = pid else {
            self.notes
                .push(format!("{scenario}: no process to profile"));
            return;
        };
        match record(pid, name, &format!("latch: {scenario}"), load) {
            Ok(svg) => {
                println!("    flame graph {scenario}: {}", svg.display());
                self.graphs.push(Graph {
                    scenario: scenario.to_string(),
                    file: format!("flame/{name}.svg"),
                });
            }
            Err(e) => self.notes.push(format!("{scenario}: {e:#}")),
        }
    }

    /// The report's `## Flame graphs` section.
    pub fn markdown(&self) -> String {
        let mut s = String::from("\n## Flame graphs\n\n");
        if self.graphs.is_empty() && self.notes.is_empty() {
            s.push_str("Not recorded (`--no-flame`).\n");
            return s;
        }
        s.push_str(&format!(
            "latch's process under the same load after the measured rounds (perf record -F \
             {FREQUENCY} --call-graph {STACK_BYTES}; inferno):\n\n"
        ));
        for g in &self.graphs {
            s.push_str(&format!("- {}: [{}]({})\n", g.scenario, g.file, g.file));
        }
        for n in &self.notes {
            s.push_str(&format!("- not recorded: {n}\n"));
        }
        s
    }
}
