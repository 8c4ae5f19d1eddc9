//! Running commands: the repo root, cargo, and child processes bounded in time.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

pub fn repo_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// The cargo that runs us (so the same toolchain builds the workspace).
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(repo_root());
    cmd
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Does `program args` run and exit 0? (Output discarded.)
pub fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// stdout of `program args` when it exits 0.
pub fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd` with inherited output, echoing it first; error on non-zero exit.
pub fn run_visible(cmd: &mut Command) -> Result<()> {
    println!("    $ {}", describe(cmd));
    let status = cmd
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("run {}", describe(cmd)))?;
    anyhow::ensure!(status.success(), "{} exited with {status}", describe(cmd));
    Ok(())
}

pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Outcome of a bounded run.
pub struct Bounded {
    /// None when the time limit killed it.
    pub status: Option<ExitStatus>,
}

/// Runs `cmd` in its own process group with stderr inherited and each stdout line passed to
/// `on_line` (which echoes it). After `limit` the whole group (cargo and the test binaries it
/// started) is killed by its id.
pub fn run_bounded(
    cmd: &mut Command,
    limit: Duration,
    mut on_line: impl FnMut(&str),
) -> Result<Bounded> {
    println!("    $ {}", describe(cmd));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()
        .with_context(|| format!("spawn {}", describe(cmd)))?;
    let pgid = libc::pid_t::try_from(child.id()).context("pid out of range")?;
    let (tx, rx) = mpsc::channel::<String>();
    // The reader is not joined: a process that escaped the group could hold the pipe open.
    if let Some(out) = child.stdout.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    let deadline = Instant::now() + limit;
    let mut timed_out = false;
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => on_line(&line),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if Instant::now() >= deadline {
            timed_out = true;
            eprintln!("    time limit of {limit:?} reached: killing process group {pgid}");
            // SAFETY: killpg on the group we created for our own unreaped child.
            unsafe {
                libc::killpg(pgid, libc::SIGKILL);
            }
            break;
        }
    }
    let status = child.wait().context("wait")?;
    // Drain what is left (the pipe closes once the group is gone).
    while let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
        on_line(&line);
    }
    Ok(Bounded {
        status: (!timed_out).then_some(status),
    })
}

/// Runs `cmd` to completion while Ctrl-C is ignored here: it reaches the child too (same
/// process group), which stops and cleans up on its own; this process only waits for it. A
/// no-op handler rather than SIG_IGN, which the child would inherit across exec.
pub fn wait_through_ctrl_c(cmd: &mut Command) -> std::io::Result<ExitStatus> {
    let handler: extern "C" fn(libc::c_int) = ignore;
    // SAFETY: the handler is async-signal-safe (it does nothing).
    let previous = unsafe { libc::signal(libc::SIGINT, handler as libc::sighandler_t) };
    let status = cmd.status();
    // SAFETY: restores the disposition read above.
    unsafe { libc::signal(libc::SIGINT, previous) };
    status
}

extern "C" fn ignore(_: libc::c_int) {}
