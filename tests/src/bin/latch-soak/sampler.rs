//! RSS and open file descriptors of the agents, once a second, from /proc.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// One reading of one agent process.
#[derive(Debug, Clone)]
pub struct Sample {
    pub t_s: f64,
    /// `A` or `B`.
    pub host: &'static str,
    /// Which process of that host (A's count goes up with each restart).
    pub life: u32,
    pub pid: u32,
    pub rss_kib: u64,
    pub fds: u64,
}

/// The PID of a host's current agent process (0 while none runs) and its life number.
#[derive(Debug, Default)]
pub struct Tracked {
    pid: AtomicU32,
    life: AtomicU32,
}

impl Tracked {
    /// A new process of this host: the next life.
    pub fn set(&self, pid: Option<u32>) {
        let pid = pid.unwrap_or(0);
        if pid != 0 {
            self.life.fetch_add(1, Ordering::SeqCst);
        }
        self.pid.store(pid, Ordering::SeqCst);
    }

    pub fn clear(&self) {
        self.pid.store(0, Ordering::SeqCst);
    }

    fn get(&self) -> Option<(u32, u32)> {
        let pid = self.pid.load(Ordering::SeqCst);
        (pid != 0).then(|| (pid, self.life.load(Ordering::SeqCst)))
    }
}

/// VmRSS in KiB and the number of open descriptors of `pid`, if it still runs.
pub fn read(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some((rss, fds))
}

/// Samples every host in `hosts` once a second until `running` turns false.
pub fn run(
    t0: Instant,
    hosts: &[(&'static str, &Tracked)],
    out: &Mutex<Vec<Sample>>,
    running: &dyn Fn() -> bool,
) {
    let mut next = Instant::now();
    while running() {
        for (host, tracked) in hosts {
            let Some((pid, life)) = tracked.get() else {
                continue;
            };
            if let Some((rss_kib, fds)) = read(pid) {
                let s = Sample {
                    t_s: t0.elapsed().as_secs_f64(),
                    host,
                    life,
                    pid,
                    rss_kib,
                    fds,
                };
                out.lock().unwrap_or_else(|p| p.into_inner()).push(s);
            }
        }
        next += Duration::from_secs(1);
        while Instant::now() < next && running() {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// What `pid`'s open descriptors are, counted by kind (`socket`, `anon_inode:bpf-map`, ...),
/// for the report when a count does not come back down.
pub fn fd_kinds(pid: u32) -> String {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return "-".into();
    };
    let mut kinds = std::collections::BTreeMap::<String, u32>::new();
    for e in dir.flatten() {
        let target = std::fs::read_link(e.path())
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        // socket:[123] -> socket, /sys/fs/bpf/x -> /sys/fs/bpf/x
        let kind = target.split(":[").next().unwrap_or_default().to_string();
        *kinds.entry(kind).or_default() += 1;
    }
    kinds
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `ss -tanp` lines (at most 40) of the TCP sockets `pid` holds, in its namespace `ns`.
pub fn tcp_sockets(ns: &latch_tests::Netns, pid: u32) -> String {
    let Ok(out) = ns.exec(&["ss", "-tanp"]) else {
        return "(ss failed)\n".into();
    };
    let mark = format!("pid={pid},");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&mark))
        .take(40)
        .map(|l| format!("{}\n", l.split_whitespace().collect::<Vec<_>>().join(" ")))
        .collect()
}
