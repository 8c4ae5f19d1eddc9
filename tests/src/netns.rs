//! Named network namespaces that clean up after themselves, and processes started in them.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, Once};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{Error, Result, io};

/// Prefix of every namespace this harness creates; stale-namespace cleanup only ever looks at
/// names with this prefix, so it can never remove anything it did not create.
pub const PREFIX: &str = "lt-";

static COUNTER: AtomicU32 = AtomicU32::new(0);
static CLEAN_STALE: Once = Once::new();

/// A network namespace named `lt-<pid>-<n>-<role>`, deleted on drop (also while a test panics).
///
/// The pid in the name lets a later run remove namespaces leaked by a process that was killed
/// before its destructors ran.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a fresh namespace; `role` only makes the name readable (`client`, `lb`, `b1`).
    pub fn new(role: &str) -> Result<Self> {
        CLEAN_STALE.call_once(remove_stale);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{}-{n}-{role}", std::process::id());
        run_cmd(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind-mounted namespace file that `setns(2)` takes.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Runs `f` on a fresh thread that lives in this namespace, so the sockets `f` creates (and
    /// threads or runtimes it starts) belong to it. A panic in `f` is re-raised here, so test
    /// assertions inside `f` fail the test normally.
    ///
    /// # Panics
    /// If the namespace cannot be entered: that is a broken harness, not a test outcome.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        match self.try_run(f) {
            Ok(v) => v,
            Err(e) => panic!("cannot enter namespace {}: {e}", self.name),
        }
    }

    /// [`Netns::run`] that reports a failure to enter the namespace instead of panicking.
    pub fn try_run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let path = self.path();
        thread::scope(|s| {
            let handle = s.spawn(move || -> Result<T> {
                enter(&path)?;
                Ok(f())
            });
            match handle.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Starts a long-lived thread inside this namespace (used for in-process servers). The
    /// thread keeps the namespace alive after it is deleted by name, so stop it before dropping
    /// the namespace.
    pub fn spawn_thread<T: Send + 'static>(
        &self,
        name: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<thread::JoinHandle<Result<T>>> {
        let path = self.path();
        thread::Builder::new()
            .name(name.to_string())
            .spawn(move || -> Result<T> {
                enter(&path)?;
                Ok(f())
            })
            .map_err(io(format!("spawn thread {name}")))
    }

    /// `ip -n <ns> <args>`, failing on a non-zero exit.
    pub fn ip(&self, args: &[&str]) -> Result<Output> {
        run_cmd(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// Runs a command inside the namespace (`ip netns exec`), failing on a non-zero exit.
    pub fn exec(&self, argv: &[&str]) -> Result<Output> {
        run_cmd(&mut self.command(argv))
    }

    /// A `Command` for `ip netns exec <ns> argv...`, for callers that need custom stdio.
    pub fn command(&self, argv: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(argv);
        cmd
    }

    /// Starts a process inside the namespace with stdout and stderr captured; the returned guard
    /// kills it (by PID) when dropped. `ip netns exec` execs in place, so the PID is the
    /// command's own.
    pub fn spawn(&self, argv: &[&str]) -> Result<ChildGuard> {
        let mut cmd = self.command(argv);
        ChildGuard::spawn(&mut cmd, &argv.join(" "))
    }

    /// Sets namespaced sysctls (`net.*` keys) inside this namespace only.
    pub fn sysctl(&self, assignments: &[(&str, &str)]) -> Result<()> {
        let args: Vec<String> = assignments
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let mut argv = vec!["sysctl", "-q", "-w"];
        argv.extend(args.iter().map(String::as_str));
        self.exec(&argv).map(|_| ())
    }

    /// Reads a sysctl as seen from inside this namespace.
    pub fn sysctl_get(&self, key: &str) -> Result<String> {
        let out = self.exec(&["sysctl", "-n", key])?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// The MAC address of an interface in this namespace.
    pub fn mac(&self, iface: &str) -> Result<String> {
        let out = self.ip(&["-o", "link", "show", "dev", iface])?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut words = text.split_whitespace();
        while let Some(w) = words.next() {
            if w == "link/ether"
                && let Some(mac) = words.next()
            {
                return Ok(mac.to_string());
            }
        }
        Err(Error::Topology {
            what: format!("no MAC for {iface} in {}", self.name),
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = run_cmd(Command::new("ip").args(["netns", "del", &self.name])) {
            eprintln!("latch-tests: could not delete namespace {}: {e}", self.name);
        }
    }
}

/// Names of all namespaces currently listed by `ip netns list`.
pub fn list_namespaces() -> Result<Vec<String>> {
    let out = run_cmd(Command::new("ip").args(["netns", "list"]))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

/// Removes `lt-<pid>-…` namespaces whose creating process no longer exists (a test binary
/// killed by a signal never runs its destructors). A name whose pid is alive is left alone.
fn remove_stale() {
    let Ok(names) = list_namespaces() else { return };
    for name in names {
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run_cmd(Command::new("ip").args(["netns", "del", &name]));
        }
    }
}

fn enter(path: &str) -> Result<()> {
    let file = File::open(path).map_err(io(format!("open {path}")))?;
    // SAFETY: setns on a valid, open namespace fd only changes this thread's network namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(Error::Io {
            context: format!("setns({path})"),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Runs a command to completion, turning a non-zero exit into [`Error::Command`] with stderr.
pub fn run_cmd(cmd: &mut Command) -> Result<Output> {
    let text = describe(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(io(format!("run `{text}`")))?;
    if !out.status.success() {
        return Err(Error::Command {
            cmd: text,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out)
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// A child process that is terminated (SIGTERM, then SIGKILL) by its PID when dropped.
/// Its stdout lines are forwarded to a channel (so readiness lines can be awaited) and its
/// stderr is collected, both by reader threads so the child never blocks on a full pipe.
#[derive(Debug)]
pub struct ChildGuard {
    child: Child,
    what: String,
    lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
    stderr_closed: Arc<std::sync::atomic::AtomicBool>,
    reaped: bool,
}

impl ChildGuard {
    pub fn spawn(cmd: &mut Command, what: &str) -> Result<Self> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io(format!("spawn `{what}`")))?;
        let (tx, lines) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        // Nobody listens any more; keep draining so the child never blocks.
                        continue;
                    }
                }
            });
        }
        let stderr = Arc::new(Mutex::new(String::new()));
        let stderr_closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        if let Some(mut err) = child.stderr.take() {
            let sink = Arc::clone(&stderr);
            let closed = Arc::clone(&stderr_closed);
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = err.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut s) = sink.lock() {
                        s.push_str(&String::from_utf8_lossy(&buf[..n]));
                    }
                }
                closed.store(true, std::sync::atomic::Ordering::Release);
            });
        } else {
            stderr_closed.store(true, std::sync::atomic::Ordering::Release);
        }
        Ok(Self {
            child,
            what: what.to_string(),
            lines,
            stderr,
            stderr_closed,
            reaped: false,
        })
    }

    /// Everything the child wrote to stderr, once it closed stderr (after it exited), waiting
    /// at most `timeout` for the reader to drain the pipe.
    pub fn stderr_complete(&self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        while !self
            .stderr_closed
            .load(std::sync::atomic::Ordering::Acquire)
            && Instant::now() < deadline
        {
            thread::sleep(Duration::from_millis(5));
        }
        self.stderr()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a stdout line for which `pred` holds, returning it. Fails on timeout or when
    /// the child closes stdout (usually: it exited), with its stderr in the error.
    pub fn wait_for_line(
        &mut self,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if pred(&line) => return Ok(line),
                Ok(_) => continue,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(Error::Timeout {
                        what: format!("waiting for `{}`; stderr: {}", self.what, self.stderr()),
                        after: timeout,
                    });
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(Error::Command {
                        cmd: self.what.clone(),
                        status: "closed stdout before the expected line".into(),
                        stderr: self.stderr(),
                    });
                }
            }
        }
    }

    /// Everything the child wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Has the child exited? (Reaps it if so.)
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        let st = self
            .child
            .try_wait()
            .map_err(io(format!("wait for `{}`", self.what)))?;
        if st.is_some() {
            self.reaped = true;
        }
        Ok(st)
    }

    /// Sends SIGTERM and waits up to `grace` for the exit status; SIGKILLs after that and
    /// reports a timeout, so a server that ignores SIGTERM fails the test that checks it.
    pub fn terminate(mut self, grace: Duration) -> Result<ExitStatus> {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(st) = self.try_wait()? {
                return Ok(st);
            }
            thread::sleep(Duration::from_millis(10));
        }
        Err(Error::Timeout {
            what: format!("`{}` to exit on SIGTERM", self.what),
            after: grace,
        })
        // Drop SIGKILLs it.
    }

    fn signal(&self, sig: libc::c_int) {
        if self.reaped {
            return;
        }
        let Ok(pid) = libc::pid_t::try_from(self.child.id()) else {
            return;
        };
        // SAFETY: kill(2) on the PID of our own unreaped child: the PID cannot have been
        // reused, because a zombie keeps it until we wait for it.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
