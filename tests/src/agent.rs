//! A `latch run` process inside a namespace, for tests, the demo and benchmarks.
//!
//! Each agent gets its own config file (in a private temp directory) and its own pin
//! directory under /sys/fs/bpf, so concurrent tests never share kernel state. Dropping the
//! agent stops it by PID and runs `latch down` so no link or pin outlives the test.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::config::LatchConfig;
use crate::error::{Error, Result, io};
use crate::netns::{ChildGuard, Netns};

static NEXT_AGENT: AtomicUsize = AtomicUsize::new(0);

/// The line `latch run` prints on stdout once the data plane and proxy are up.
pub const READY_LINE: &str = "latch ready";

/// How long `latch run` may take to become ready (loading BPF, building maglev tables).
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running agent. See the module docs.
#[derive(Debug)]
pub struct LatchAgent {
    child: Option<ChildGuard>,
    binary: PathBuf,
    netns: String,
    dir: PathBuf,
    config: PathBuf,
    bpffs_dir: PathBuf,
}

/// The `[agent]` section as text, for configs assembled by hand (the benchmark): `interfaces`,
/// a unique pin directory and an admin address on the namespace's loopback. Tests build whole
/// configs with [`crate::config::LatchConfig`] instead.
pub fn agent_section(interfaces: &[String], bpffs_dir: &Path) -> String {
    let list = interfaces
        .iter()
        .map(|i| format!("\"{i}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "[agent]\ninterfaces = [{list}]\nbpffs_dir = \"{}\"\nadmin_listen = \"127.0.0.1:9180\"\n",
        bpffs_dir.display()
    )
}

impl LatchAgent {
    /// A fresh pin directory and config path for an agent in `ns`; nothing started yet.
    /// Write the config with [`LatchAgent::write_latch_config`] (use [`LatchAgent::bpffs_dir`]
    /// in its [`crate::config::AgentSettings`]) and then [`LatchAgent::start`].
    pub fn prepare(binary: &Path, ns: &Netns) -> Result<Self> {
        let n = NEXT_AGENT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(format!("latch-test-{tag}"));
        std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
        Ok(Self {
            child: None,
            binary: binary.to_path_buf(),
            netns: ns.name().to_string(),
            config: dir.join("latch.toml"),
            dir,
            bpffs_dir: PathBuf::from(format!("/sys/fs/bpf/latch-test-{tag}")),
        })
    }

    /// The unique pin directory this agent must use.
    pub fn bpffs_dir(&self) -> &Path {
        &self.bpffs_dir
    }

    /// The config file path (scripts referenced with `file =` resolve next to it).
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// Directory of the config file, for script files a test writes.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// (Re)writes the config file; a running agent picks it up on [`LatchAgent::reload`].
    pub fn write_config(&self, text: &str) -> Result<()> {
        std::fs::write(&self.config, text).map_err(io(format!("write {}", self.config.display())))
    }

    /// (Re)writes the config file from a typed config.
    pub fn write_latch_config(&self, config: &LatchConfig) -> Result<()> {
        self.write_config(&config.to_toml()?)
    }

    /// Starts `latch run` in the namespace and waits for its ready line.
    pub fn start(&mut self) -> Result<()> {
        let mut child = self.spawn_run()?;
        child
            .wait_for_line(|l| l.starts_with(READY_LINE), READY_TIMEOUT)
            .map_err(|e| Error::Command {
                cmd: "latch run".into(),
                status: "not ready".into(),
                stderr: e.to_string(),
            })?;
        self.child = Some(child);
        Ok(())
    }

    /// Starts `latch run` and waits for it to exit (for configs that must be refused).
    /// Returns the exit status and everything it wrote to stderr.
    pub fn run_expecting_exit(&self, timeout: Duration) -> Result<(ExitStatus, String)> {
        wait_for_exit(self.spawn_run()?, timeout)
    }

    /// Starts another `latch run` with this agent's config and pins while this one may still
    /// run (two agents meeting on one pin directory), without waiting for anything; the
    /// guard ends it when dropped.
    pub fn spawn_another_run(&self) -> Result<ChildGuard> {
        self.spawn_run()
    }

    fn spawn_run(&self) -> Result<ChildGuard> {
        let mut cmd = self.command(&["run"])?;
        ChildGuard::spawn(&mut cmd, "latch run")
    }

    /// Runs `WRAPPER... latch run -c CONFIG` in the namespace (e.g. `setpriv` dropping
    /// capabilities) and waits for it to exit; returns the status and stderr.
    pub fn run_wrapped_expecting_exit(
        &self,
        wrapper: &[&str],
        timeout: Duration,
    ) -> Result<(ExitStatus, String)> {
        let mut cmd = self.in_netns(wrapper[0])?;
        cmd.args(&wrapper[1..])
            .arg(&self.binary)
            .args(["run", "-c"])
            .arg(&self.config);
        wait_for_exit(ChildGuard::spawn(&mut cmd, "wrapped latch run")?, timeout)
    }

    /// `latch ARGS -c CONFIG` entering only the network namespace. `ip netns exec` would also
    /// give the process a private mount namespace with a fresh /sys, hiding the host's bpffs:
    /// pins made there would vanish with the process, defeating the restart guarantees and
    /// the per-directory agent lock the tests check.
    fn command(&self, args: &[&str]) -> Result<std::process::Command> {
        let mut cmd = self.in_netns(&self.binary.to_string_lossy())?;
        cmd.args(args).arg("-c").arg(&self.config);
        Ok(cmd)
    }

    /// `program` to be run inside the namespace's network stack only.
    fn in_netns(&self, program: &str) -> Result<std::process::Command> {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;

        let netns_path = format!("/run/netns/{}", self.netns);
        let netns = std::fs::File::open(&netns_path).map_err(io(format!("open {netns_path}")))?;
        let mut cmd = std::process::Command::new(program);
        // SAFETY: only setns(2) (async-signal-safe) runs between fork and exec; the file is
        // moved into the closure, so its descriptor stays open until then.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(cmd)
    }

    /// Process id of the running agent.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(ChildGuard::pid)
    }

    /// Everything the agent logged so far.
    pub fn log(&self) -> String {
        self.child
            .as_ref()
            .map(ChildGuard::stderr)
            .unwrap_or_default()
    }

    /// Sends SIGHUP and waits until the log shows the reload's outcome (applied or refused).
    /// Returns the new part of the log.
    pub fn reload(&self) -> Result<String> {
        let before = self.log().len();
        self.signal(libc::SIGHUP)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let log = self.log();
            let new = log.get(before..).unwrap_or_default();
            if new.contains("configuration reloaded") || new.contains("reload refused") {
                return Ok(new.to_string());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(Error::Timeout {
            what: format!("reload outcome in the log: {}", self.log()),
            after: Duration::from_secs(20),
        })
    }

    /// Sends `sig` to the agent (by PID).
    pub fn signal(&self, sig: libc::c_int) -> Result<()> {
        let pid = self.pid().ok_or_else(|| Error::Topology {
            what: "agent not running".into(),
        })?;
        let pid = libc::pid_t::try_from(pid).map_err(|_| Error::Topology {
            what: "pid out of range".into(),
        })?;
        // SAFETY: kill(2) on the PID of our own child, which is not reaped while we hold it.
        if unsafe { libc::kill(pid, sig) } != 0 {
            return Err(io("kill")(std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// SIGTERM and wait for the exit (the data plane stays attached and pinned).
    pub fn stop(&mut self, grace: Duration) -> Result<ExitStatus> {
        match self.child.take() {
            Some(child) => child.terminate(grace),
            None => Err(Error::Topology {
                what: "agent not running".into(),
            }),
        }
    }

    /// SIGKILL: the agent gets no chance to clean anything up.
    pub fn kill9(&mut self) -> Result<()> {
        self.signal(libc::SIGKILL)?;
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && child.try_wait()?.is_none() {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Ok(())
    }

    /// Runs a `latch` subcommand in the namespace with `-c <config>` appended.
    pub fn latch(&self, args: &[&str]) -> Result<std::process::Output> {
        self.command(args)?.output().map_err(io("run latch"))
    }
}

/// Waits for `child` to exit; its status and complete stderr, or a timeout naming it.
fn wait_for_exit(mut child: ChildGuard, timeout: Duration) -> Result<(ExitStatus, String)> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok((status, child.stderr_complete(Duration::from_secs(2))));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(Error::Timeout {
        what: format!("latch run to exit; stderr: {}", child.stderr()),
        after: timeout,
    })
}

impl Drop for LatchAgent {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            let _ = child.terminate(Duration::from_secs(10));
        }
        if self.config.exists() {
            let _ = self.latch(&["down"]);
        }
        // `latch down` removes the pins; make sure the directory is gone even if it failed.
        let _ = std::fs::remove_dir_all(&self.bpffs_dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An agent log line without its colour codes (SGR sequences), for matching `key=value`
/// fields that the terminal formatter wraps in colours.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut esc = false;
    for c in s.chars() {
        match (esc, c) {
            (false, '\u{1b}') => esc = true,
            (true, 'm') => esc = false,
            (true, _) => {}
            (false, c) => out.push(c),
        }
    }
    out
}
