//! `bench http`: wrk from a client namespace against the direct backend, latch (without
//! scripts, with the seed's JSESSIONID DataScripts, and with the client_ip fast path), HAProxy
//! with a JSESSIONID stick table and nginx with a Lua shared dict, each at the same worker
//! counts, keep-alive and connection per request; plus the table figures of the datascript
//! and tables measurement tests. Writes target/bench/http.{md,json,png}.
//!
//! ```text
//!  client ns (wrk)            lb ns (one LB at a time)               backend ns x3
//!  203.0.113.2+i ── vclient   198.51.100.20+i on lo (VIP of run i)   nginx, 1 worker
//!  route VIP_i src client_i   vb1..vb3                               192.0.2.11..13:8080
//! ```
//!
//! Every scenario has its own VIP and its own client address, so connection-per-request runs
//! never meet another run's TIME_WAIT (or conntrack) state.

pub(crate) mod conf;
mod plot;
pub(crate) mod report;
pub(crate) mod wrk;

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use latch_tests::{ChildGuard, LatchAgent, Netns, Topology, agent_section, http_get};

use crate::env;
use conf::Upstream;
use report::{HttpReport, Lb, Measurement, Mode, Sample, TableFigures};

const BACKEND_PORT: u16 = 8080;
const VIP_PORT: u16 = 80;
pub(crate) const BACKENDS: usize = 3;

/// Command-line knobs.
#[derive(Clone, Debug)]
pub struct Options {
    pub seconds: u64,
    pub rounds: u32,
    pub connections: u32,
    pub wrk_threads: u32,
    pub workers: Vec<usize>,
    pub tables: bool,
    /// Keep latch's per-request access log on (off by default, like the peers' logs).
    pub access_log: bool,
    /// Record a flame graph of latch per scenario after the measured rounds.
    pub flame: bool,
}

#[derive(Clone, Debug)]
struct Scenario {
    lb: Lb,
    workers: usize,
    modes: Vec<Mode>,
    /// Position in the list: picks the VIP and the client address.
    index: usize,
}

impl Scenario {
    fn label(&self) -> String {
        if self.workers == 0 {
            self.lb.label().to_string()
        } else {
            format!("{} ({} worker(s))", self.lb.label(), self.workers)
        }
    }

    fn key(&self, mode: Mode) -> String {
        format!(
            "{:?}_w{}_{}",
            self.lb,
            self.workers,
            match mode {
                Mode::KeepAlive => "keepalive",
                Mode::Close => "close",
            }
        )
        .to_lowercase()
    }

    fn client(&self) -> Ipv4Addr {
        latch_tests::topology::client_addr(self.index)
    }

    /// Where wrk sends its requests.
    fn target(&self) -> SocketAddrV4 {
        match self.lb {
            Lb::Direct => SocketAddrV4::new(latch_tests::topology::backend_addr(1), BACKEND_PORT),
            _ => SocketAddrV4::new(conf::scenario_vip(self.index), VIP_PORT),
        }
    }
}

fn scenarios(workers: &[usize]) -> Vec<Scenario> {
    let both = vec![Mode::KeepAlive, Mode::Close];
    let mut v = vec![(Lb::Direct, 0, both.clone())];
    for &w in workers {
        for lb in [Lb::LatchPlain, Lb::LatchScripts, Lb::Haproxy, Lb::NginxLua] {
            v.push((lb, w, both.clone()));
        }
    }
    v.push((Lb::LatchFastPath, 0, vec![Mode::Close]));
    v.into_iter()
        .enumerate()
        .map(|(index, (lb, workers, modes))| Scenario {
            lb,
            workers,
            modes,
            index,
        })
        .collect()
}

/// A private directory for config files, removed on drop.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> Result<Self> {
        let p = std::env::temp_dir().join(format!("latch-bench-http-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(Self(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// (pid, parent pid, utime + stime in ticks) of every process.
fn process_table() -> Vec<(u32, u32, u64)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name, which is in parentheses and may contain spaces.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // rest[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
        let ppid = f.get(1)?.parse().ok()?;
        let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        Some((pid, ppid, ticks))
    })
    .collect()
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// A running load balancer (or none, for the direct backend).
pub(crate) enum Running {
    None,
    Latch(Box<LatchAgent>),
    Process { child: ChildGuard, _dir: TempDir },
}

impl Running {
    pub(crate) fn pid(&self) -> Option<u32> {
        match self {
            Running::None => None,
            Running::Latch(a) => a.pid(),
            Running::Process { child, .. } => Some(child.pid()),
        }
    }

    /// CPU seconds used so far by the LB's process and its children (nginx workers).
    pub(crate) fn cpu_seconds(&self) -> Option<f64> {
        let pid = self.pid()?;
        let table = process_table();
        let ticks: u64 = table
            .iter()
            .filter(|(p, pp, _)| *p == pid || *pp == pid)
            .map(|(_, _, t)| t)
            .sum();
        Some(ticks as f64 / clock_ticks())
    }

    pub(crate) fn log(&self) -> String {
        match self {
            Running::None => String::new(),
            Running::Latch(a) => a.log(),
            Running::Process { child, .. } => child.stderr(),
        }
    }

    /// Stops the LB by its PID, nginx's workers included.
    pub(crate) fn stop(self) {
        if let Running::Process { child, _dir } = self {
            let pid = child.pid();
            let children: Vec<u32> = process_table()
                .into_iter()
                .filter(|(_, pp, _)| *pp == pid)
                .map(|(p, _, _)| p)
                .collect();
            if let Err(e) = child.terminate(Duration::from_secs(10)) {
                eprintln!("warning: {e}");
            }
            // nginx's master stops its workers; make sure none outlives it.
            let deadline = Instant::now() + Duration::from_secs(5);
            for p in children {
                while Instant::now() < deadline && Path::new(&format!("/proc/{p}")).exists() {
                    std::thread::sleep(Duration::from_millis(20));
                }
                if Path::new(&format!("/proc/{p}")).exists()
                    && let Ok(pid) = libc::pid_t::try_from(p)
                {
                    // SAFETY: kill(2) on a worker of the nginx we started, found by its
                    // parent PID before the parent exited.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        // Latch: LatchAgent's drop stops it by PID and runs `latch down`.
    }
}

/// Waits until `addr` accepts TCP connections from `ns`.
pub(crate) fn wait_listening(ns: &Netns, addr: SocketAddrV4, what: &str) -> Result<()> {
    let ok = ns.run(|| {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if TcpStream::connect_timeout(&SocketAddr::V4(addr), Duration::from_millis(300)).is_ok()
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    });
    if !ok {
        bail!("{what} does not accept connections on {addr}");
    }
    Ok(())
}

pub(crate) fn spawn_process(
    ns: &Netns,
    argv: &[&str],
    what: &str,
    dir: TempDir,
) -> Result<Running> {
    let child = ns.spawn(argv).with_context(|| format!("starting {what}"))?;
    Ok(Running::Process { child, _dir: dir })
}

struct Bench<'a> {
    topo: &'a Topology,
    latch_bin: PathBuf,
    ups: Vec<Upstream>,
    opts: &'a Options,
}

impl Bench<'_> {
    fn start(&self, s: &Scenario) -> Result<Running> {
        let listen = s.target();
        let lb = self.topo.lb();
        let running = match s.lb {
            Lb::Direct => Running::None,
            Lb::LatchPlain | Lb::LatchScripts | Lb::LatchFastPath => {
                let mut agent = LatchAgent::prepare(&self.latch_bin, lb)?;
                let text = conf::latch(
                    &agent_section(&self.topo.lb_interfaces(), agent.bpffs_dir()),
                    s.workers.max(1),
                    listen,
                    &self.ups,
                    s.lb != Lb::LatchPlain,
                    s.lb == Lb::LatchFastPath,
                );
                agent.write_config(&text)?;
                agent.start().context("starting latch")?;
                Running::Latch(Box::new(agent))
            }
            Lb::Haproxy => {
                let dir = TempDir::new(&format!("haproxy-{}", s.index))?;
                let cfg = dir.0.join("haproxy.cfg");
                std::fs::write(&cfg, conf::haproxy(listen, s.workers, &self.ups))?;
                let cfg = cfg.display().to_string();
                spawn_process(lb, &["haproxy", "-db", "-f", &cfg], "haproxy", dir)?
            }
            Lb::NginxLua => {
                let dir = TempDir::new(&format!("nginx-{}", s.index))?;
                let cfg = dir.0.join("nginx.conf");
                std::fs::write(&cfg, conf::nginx_lua(&dir.0, listen, s.workers, &self.ups))?;
                let (cfg, prefix) = (cfg.display().to_string(), dir.0.display().to_string());
                let err = format!("{prefix}/error.log");
                spawn_process(
                    lb,
                    &["nginx", "-p", &prefix, "-e", &err, "-c", &cfg],
                    "nginx",
                    dir,
                )?
            }
        };
        if let Err(e) = wait_listening(self.topo.client(), listen, s.lb.label()) {
            let log = running.log();
            running.stop();
            return Err(e.context(log));
        }
        Ok(running)
    }

    /// Starts a session through the target: `/login`, then one request carrying the cookie.
    /// Returns the cookie and a note on where the session went.
    fn login(&self, s: &Scenario) -> Result<(String, String)> {
        let addr = SocketAddr::V4(s.target());
        let (cookie, owner, followed) = self.topo.client().run(|| -> Result<_> {
            let login = http_get(addr, "/login", &[]).context("GET /login")?;
            let cookie = login
                .set_cookie("JSESSIONID")
                .context("no JSESSIONID in the /login response")?;
            let owner = login.backend.clone().unwrap_or_default();
            // Give the learning (and a fast-path pin) a moment to land.
            std::thread::sleep(Duration::from_millis(300));
            let header = format!("JSESSIONID={cookie}");
            let mut followed = Vec::new();
            for _ in 0..3 {
                let r = http_get(addr, "/", &[("cookie", header.as_str())])?;
                followed.push(r.backend.unwrap_or_default());
            }
            Ok((cookie, owner, followed))
        })?;
        let sticky = followed.iter().all(|b| *b == owner);
        let note = match s.lb {
            Lb::Direct | Lb::LatchPlain => String::new(),
            _ if sticky => format!("session sticks to {owner}"),
            _ => format!("SESSION NOT STICKY: login on {owner}, then {followed:?}"),
        };
        Ok((cookie, note))
    }

    fn wrk(&self, s: &Scenario, mode: Mode, seconds: u64, cookie: &str) -> Result<wrk::WrkResult> {
        wrk::run(
            self.topo.client(),
            &wrk::WrkArgs {
                threads: self.opts.wrk_threads,
                connections: self.opts.connections,
                seconds,
                url: format!("http://{}/", s.target()),
                cookie: Some(cookie.to_string()),
                close: mode == Mode::Close,
            },
        )
    }

    /// One scenario in one round: start, session, warm-up, each mode, stop.
    fn measure(&self, s: &Scenario) -> Result<Vec<(Mode, Sample, String, bool)>> {
        let running = self.start(s)?;
        let result = (|| -> Result<Vec<(Mode, Sample, String, bool)>> {
            let (cookie, note) = self.login(s)?;
            self.wrk(s, Mode::KeepAlive, 2, &cookie)
                .context("warm-up")?;
            let mut out = Vec::new();
            for &mode in &s.modes {
                env::check_stopped()?;
                let fast_before = fast_path_counter(&running);
                let cpu_before = running.cpu_seconds();
                let w = self.wrk(s, mode, self.opts.seconds, &cookie)?;
                let cpu_after = running.cpu_seconds();
                let fast_after = fast_path_counter(&running);
                let cpu_us_per_req = match (cpu_before, cpu_after, s.lb) {
                    (_, _, Lb::Direct | Lb::LatchFastPath) => None,
                    (Some(a), Some(b), _) if w.requests > 0 => {
                        Some((b - a) * 1e6 / w.requests as f64)
                    }
                    _ => None,
                };
                let (mut note, mut valid) = (note.clone(), true);
                if s.lb == Lb::LatchFastPath {
                    let (n, ok) = self.fast_path_check(s, fast_before, fast_after, w.requests);
                    note = if note.is_empty() {
                        n
                    } else {
                        format!("{note}; {n}")
                    };
                    valid = ok;
                }
                out.push((
                    mode,
                    Sample {
                        rps: w.rps,
                        p50_ms: w.p50_ms,
                        p99_ms: w.p99_ms,
                        cpu_us_per_req,
                        errors: w.errors,
                    },
                    note,
                    valid,
                ));
            }
            Ok(out)
        })();
        running.stop();
        result
    }

    /// A flame graph of latch per scenario and mode, each under the load of a measured run
    /// (at most 5 s), after a login and a warm-up as in the rounds.
    fn flame_graphs(&self, list: &[Scenario]) -> crate::flame::Section {
        if let Some(nothing) = crate::flame::Section::unavailable() {
            return nothing;
        }
        let mut section = crate::flame::Section::default();
        let seconds = self.opts.seconds.min(5);
        let latch = [Lb::LatchPlain, Lb::LatchScripts, Lb::LatchFastPath];
        for s in list.iter().filter(|s| latch.contains(&s.lb)) {
            for &mode in &s.modes {
                if env::check_stopped().is_err() {
                    return section;
                }
                let scenario = format!("{}, {}", s.label(), mode.label());
                let running = match self.start(s) {
                    Ok(r) => r,
                    Err(e) => {
                        section.notes.push(format!("{scenario}: {e:#}"));
                        continue;
                    }
                };
                let ready = self.login(s).and_then(|(cookie, _)| {
                    self.wrk(s, Mode::KeepAlive, 1, &cookie)?;
                    Ok(cookie)
                });
                match ready {
                    Ok(cookie) => section.profile(running.pid(), &s.key(mode), &scenario, || {
                        self.wrk(s, mode, seconds, &cookie)
                    }),
                    Err(e) => section.notes.push(format!("{scenario}: {e:#}")),
                }
                running.stop();
            }
        }
        section
    }

    /// Did the fast path carry the run? The XDP FAST_PATH counter must have grown by at least
    /// one packet per request, and the backend must see the client's own address.
    fn fast_path_check(
        &self,
        s: &Scenario,
        before: Option<u64>,
        after: Option<u64>,
        requests: u64,
    ) -> (String, bool) {
        let addr = SocketAddr::V4(s.target());
        let seen = self
            .topo
            .client()
            .run(|| http_get(addr, "/", &[]))
            .ok()
            .and_then(|r| r.seen_client)
            .map(|a| a.ip());
        let client = std::net::IpAddr::V4(s.client());
        let seen_ok = seen == Some(client);
        let (counter_text, counter_ok) = match (before, after) {
            (Some(b), Some(a)) => (
                format!(
                    "XDP fast_path counter +{} over {requests} requests",
                    a.saturating_sub(b)
                ),
                // One count per fast-path packet or connection: far below one per request
                // means most connections went through the proxy.
                Some(a.saturating_sub(b).saturating_mul(2) >= requests.max(1)),
            ),
            _ => ("fast_path counter not readable".into(), None),
        };
        let engaged = seen_ok && counter_ok.unwrap_or(true);
        let seen_text = seen.map_or("no answer".into(), |a| a.to_string());
        let text = if engaged {
            format!("fast path engaged: backend saw the client {seen_text}; {counter_text}")
        } else {
            format!(
                "fast path did NOT engage (these are proxied figures): backend saw \
                 {seen_text}, client is {client}; {counter_text}"
            )
        };
        (text, engaged)
    }
}

/// The agent's FAST_PATH counter, summed over CPUs, from the pinned stats map.
fn fast_path_counter(running: &Running) -> Option<u64> {
    let Running::Latch(agent) = running else {
        return None;
    };
    let dir = std::fs::read_dir(agent.bpffs_dir()).ok()?;
    let pin = dir
        .filter_map(|e| e.ok())
        .map(|e| e.path().join(lb_common::map_names::STATS))
        .find(|p| p.exists())?;
    let data = aya::maps::MapData::from_pin(&pin).ok()?;
    let map = aya::maps::Map::from_map_data(data).ok()?;
    let stats: aya::maps::PerCpuArray<_, u64> = aya::maps::PerCpuArray::try_from(map).ok()?;
    let v = stats.get(&lb_common::stat::FAST_PATH, 0).ok()?;
    Some(v.iter().fold(0u64, |a, x| a.wrapping_add(*x)))
}

/// The 1-minute load average: the machine is shared, and a busy neighbour shows here.
pub(crate) fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(env::repo_root());
    c
}

pub(crate) fn build_latch() -> Result<PathBuf> {
    println!("==> building latch (cargo build --release -p lb-userspace)");
    let status = cargo()
        .args(["build", "--release", "-p", "lb-userspace", "--bin", "latch"])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build --release -p lb-userspace failed");
    }
    let bin = env::repo_root().join("target/release/latch");
    if !bin.exists() {
        bail!("no {}", bin.display());
    }
    Ok(bin)
}

/// Runs the `#[ignore]` measurement tests of datascript and tables in release mode and parses
/// their figures; the kernel figure is computed from the map's element layout.
fn table_figures() -> TableFigures {
    let mut t = TableFigures::default();
    let (key, val) = (
        std::mem::size_of::<lb_common::PersistKey>(),
        std::mem::size_of::<lb_common::Persist>(),
    );
    let round8 = |n: usize| n.div_ceil(8) * 8;
    // struct htab_elem is 48 bytes on 64-bit kernels; key and value are each rounded up to 8.
    // LATCH_PERSIST is a preallocated hash map, so this is also what each slot costs.
    let elem = 48 + round8(key) + round8(val);
    t.kernel_bytes_per_entry = Some(elem as f64);
    t.kernel_bytes_detail = format!(
        "LATCH_PERSIST hash element: 48-byte htab_elem + {key}-byte key + {val}-byte value, \
         each rounded to 8; preallocated"
    );
    println!(
        "==> table figures: cargo test -p lb-userspace --release --lib (datascript::tests::bench_event, tables::tests::memory_per_entry)"
    );
    let out = cargo()
        .args([
            "test",
            "-p",
            "lb-userspace",
            "--release",
            "--lib",
            "--",
            "--ignored",
            "--nocapture",
            "--exact",
            "--test-threads",
            "1",
            "datascript::tests::bench_event",
            "tables::tests::memory_per_entry",
        ])
        .stderr(std::process::Stdio::inherit())
        .output();
    match out {
        Ok(o) => {
            let text = String::from_utf8_lossy(&o.stdout);
            report::parse_table_output(&text, &mut t);
            for l in &t.raw {
                println!("    {l}");
            }
            if !o.status.success() {
                t.error = Some(format!("cargo test exited with {}", o.status));
            } else if t.lookups_mps.is_empty() {
                t.error = Some("the tests printed no lookup figures".into());
            }
        }
        Err(e) => t.error = Some(format!("running cargo test: {e}")),
    }
    t
}

/// Fails unless every `(tool, version flag)` runs.
pub(crate) fn check_installed(tools: &[(&str, &str)]) -> Result<()> {
    for (tool, arg) in tools {
        let ok = Command::new(tool)
            .arg(arg)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok();
        if !ok {
            bail!("{tool} is not installed (cargo xtask setup installs it)");
        }
    }
    Ok(())
}

fn check_tools() -> Result<()> {
    check_installed(&[("wrk", "--version"), ("haproxy", "-v"), ("nginx", "-v")])?;
    if !Path::new("/usr/lib/nginx/modules/ngx_http_lua_module.so").exists() {
        bail!("nginx's Lua module is not installed (apt-get install libnginx-mod-http-lua)");
    }
    Ok(())
}

pub(crate) fn prepare_topology(n_scenarios: usize) -> Result<Topology> {
    let topo = Topology::builder()
        .backends(BACKENDS)
        .client_addresses(n_scenarios)
        .build()?;
    // Namespaced sysctls only: room for many short connections.
    topo.client()
        .sysctl(&[("net.ipv4.ip_local_port_range", "1024 65000")])?;
    topo.lb().sysctl(&[
        ("net.ipv4.ip_local_port_range", "1024 65000"),
        ("net.ipv4.tcp_tw_reuse", "1"),
        ("net.core.somaxconn", "4096"),
    ])?;
    for b in &topo.backends {
        b.ns.sysctl(&[("net.core.somaxconn", "4096")])?;
    }
    Ok(topo)
}

fn route_scenarios(topo: &Topology, list: &[Scenario]) -> Result<()> {
    for s in list {
        route_vip(topo, *s.target().ip(), s.client(), s.lb != Lb::Direct)?;
    }
    Ok(())
}

/// Routes `dst` from the client namespace through the LB namespace with source `client`;
/// `on_lb`: `dst` is a VIP, added to the LB namespace's loopback.
pub(crate) fn route_vip(
    topo: &Topology,
    dst: Ipv4Addr,
    client: Ipv4Addr,
    on_lb: bool,
) -> Result<()> {
    let gw = latch_tests::topology::LB_CLIENT_SIDE_ADDR.to_string();
    if on_lb {
        topo.lb()
            .ip(&["addr", "add", &format!("{dst}/32"), "dev", "lo"])?;
    }
    topo.client().ip(&[
        "route",
        "add",
        &format!("{dst}/32"),
        "via",
        &gw,
        "src",
        &client.to_string(),
    ])?;
    Ok(())
}

fn method_notes(o: &Options) -> Vec<String> {
    vec![
        format!(
            "wrk -t{} -c{} -d{}s --latency from the client namespace, with `Cookie: \
             JSESSIONID=<id>` learned once by GET /login through the target (so every request \
             is a table lookup + pool select, and every response carries Set-Cookie, which \
             the response rules store again). Connection per request adds `Connection: close`. \
             A 2 s keep-alive warm-up precedes each target's runs.",
            o.wrk_threads, o.connections, o.seconds
        ),
        format!(
            "Rounds: {} rounds; each round runs every target in the same order (the LB is \
             started fresh for each), so targets alternate; medians over rounds are \
             reported, each figure separately (p99 is the median of the rounds' p99).",
            o.rounds
        ),
        "Backends: 3 nginx, one worker each, in their own namespaces; /login issues \
         `JSESSIONID=<backend>-<request id>`, every other response echoes the request's \
         JSESSIONID in Set-Cookie. The direct target is backend 1, routed through the LB \
         namespace's kernel (no LB process)."
            .into(),
        "Peers at equal worker counts: latch `[agent] workers`, HAProxy 2.6 `nbthread` \
         (stick-table type string len 64 size 100k expire 20m, stick store-response \
         res.cook(JSESSIONID), stick match req.cook(JSESSIONID), http-reuse always), nginx \
         `worker_processes` (lua_shared_dict; header_filter_by_lua learns Set-Cookie against \
         $upstream_addr, access_by_lua routes the cookie to a one-server upstream group via \
         proxy_pass http://$target; upstream keepalive 64). latch runs the seed's scripts \
         verbatim (examples/jsession.toml), release build."
            .into(),
        if o.access_log {
            "latch's access log (one line per request to stderr) was ON for this run.".into()
        } else {
            "Access logs off everywhere: HAProxy has no log directive, nginx access_log off, \
             latch runs with RUST_LOG=info,latch::access=off (its per-request access line is \
             otherwise formatted and written to stderr synchronously on the worker thread)."
                .into()
        },
        "LB CPU us/req: user+system CPU time of the LB's processes (nginx master and workers) \
         over the run divided by the requests wrk completed."
            .into(),
        "DataScript overhead per request: latch with the scripts minus latch without, \
         keep-alive, equal workers. CPU time method: difference of LB CPU us/req (direct, \
         independent of where the bottleneck is). Throughput method: workers x (1e6/rps_with \
         - 1e6/rps_without), valid when the LB's workers are the bottleneck. The target is \
         judged on the CPU method at 1 worker."
            .into(),
        "Fast path: latch with `fast_path = \"client_ip\"` and the scripts; after /login the \
         agent should pin the client's address in the kernel, so XDP forwards its new \
         connections straight to the server. Engagement is checked per run: the XDP \
         fast_path counter (pinned LATCH_STATS) must grow by at least one packet per request \
         and the backend must see the client's own address; otherwise the row is marked not \
         valid and the fast-path targets are not judged."
            .into(),
        "Each scenario has its own VIP and client address (connection-per-request runs fill \
         TIME_WAIT/conntrack state of a 4-tuple space); the LB namespace has tcp_tw_reuse=1 \
         and a wide local port range (namespaced sysctls)."
            .into(),
        "Table figures: `cargo test -p lb-userspace --release --lib -- --ignored \
         datascript::tests::bench_event tables::tests::memory_per_entry` (lookups from a Lua \
         loop on one core; the agent runs with the JIT off). Kernel bytes per entry is \
         computed from the map element layout."
            .into(),
        "The machine is shared (2 CPUs for wrk, LB and backends, plus other jobs): compare \
         figures of the same run."
            .into(),
    ]
}

/// The backends: one nginx worker each, listening when this returns. The guard of each stops
/// its process before its directory goes.
pub(crate) fn start_backends(topo: &Topology, ups: &[Upstream]) -> Result<Vec<Running>> {
    let mut backends: Vec<Running> = Vec::new();
    for (b, up) in topo.backends.iter().zip(ups) {
        let dir = TempDir::new(&up.name)?;
        let cfg = dir.0.join("nginx.conf");
        std::fs::write(&cfg, conf::backend_nginx(&dir.0, up))?;
        let (cfg, prefix) = (cfg.display().to_string(), dir.0.display().to_string());
        let err = format!("{prefix}/error.log");
        let r = spawn_process(
            &b.ns,
            &["nginx", "-p", &prefix, "-e", &err, "-c", &cfg],
            "backend nginx",
            dir,
        )?;
        backends.push(r);
        wait_listening(topo.client(), up.addr, "backend nginx")?;
    }
    Ok(backends)
}

/// The topology's backends as the load balancers know them.
pub(crate) fn upstreams(topo: &Topology) -> Vec<Upstream> {
    topo.backends
        .iter()
        .map(|b| Upstream {
            name: b.name(),
            addr: SocketAddrV4::new(b.addr, BACKEND_PORT),
        })
        .collect()
}

pub fn run(opts: Options) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("bench http needs root (network namespaces)");
    }
    // latch writes an access log line per request to stderr (formatted synchronously on the
    // worker thread); HAProxy and nginx run without access logs here, so latch does too.
    // The agent inherits this environment. Set before any thread exists.
    if !opts.access_log {
        // SAFETY: single-threaded at this point (no thread has been spawned yet).
        unsafe { std::env::set_var("RUST_LOG", "info,latch::access=off") };
    }
    check_tools()?;
    let latch_bin = build_latch()?;
    let tables = if opts.tables {
        table_figures()
    } else {
        TableFigures {
            error: Some("skipped (--no-tables)".into()),
            ..TableFigures::default()
        }
    };
    env::check_stopped()?;

    let list = scenarios(&opts.workers);
    let runs: usize = list.iter().map(|s| s.modes.len()).sum();
    let estimate = opts.rounds as u64 * (runs as u64 * opts.seconds + list.len() as u64 * 5);
    println!(
        "==> bench http: {} targets, {runs} runs x {} rounds x {} s (about {} min)",
        list.len(),
        opts.rounds,
        opts.seconds,
        estimate.div_ceil(60)
    );
    let topo = prepare_topology(list.len())?;
    route_scenarios(&topo, &list)?;
    let ups = upstreams(&topo);

    let backends = start_backends(&topo, &ups)?;

    let bench = Bench {
        topo: &topo,
        latch_bin,
        ups,
        opts: &opts,
    };
    let mut samples: Vec<Vec<Vec<Sample>>> = list
        .iter()
        .map(|s| vec![Vec::new(); s.modes.len()])
        .collect();
    let mut notes: Vec<Vec<(String, bool)>> = list
        .iter()
        .map(|s| vec![(String::new(), true); s.modes.len()])
        .collect();
    let started = Instant::now();
    let mut loads: Vec<f64> = Vec::new();
    let result = (|| -> Result<()> {
        for round in 1..=opts.rounds {
            for (i, s) in list.iter().enumerate() {
                env::check_stopped()?;
                loads.push(load_average());
                let out = bench
                    .measure(s)
                    .with_context(|| format!("round {round}: {}", s.label()))?;
                for (k, (mode, sample, note, valid)) in out.into_iter().enumerate() {
                    println!(
                        "    round {round}/{} {:<46} {:<22} {:>8.0} req/s  p50 {:>6} ms  p99 {:>6} ms  cpu {:>6} us/req{}{}",
                        opts.rounds,
                        s.label(),
                        mode.label(),
                        sample.rps,
                        sample.p50_ms.map_or("-".into(), |v| format!("{v:.2}")),
                        sample.p99_ms.map_or("-".into(), |v| format!("{v:.2}")),
                        sample
                            .cpu_us_per_req
                            .map_or("-".into(), |v| format!("{v:.1}")),
                        if sample.errors > 0 {
                            format!("  errors {}", sample.errors)
                        } else {
                            String::new()
                        },
                        if note.is_empty() {
                            String::new()
                        } else {
                            format!("  [{note}]")
                        }
                    );
                    samples[i][k].push(sample);
                    // A run that did not take its path invalidates the row.
                    let slot = &mut notes[i][k];
                    *slot = (note, slot.1 && valid);
                }
            }
        }
        Ok(())
    })();
    println!("    measured for {:.0} s", started.elapsed().as_secs_f64());
    let flame = if result.is_ok() && opts.flame {
        bench.flame_graphs(&list)
    } else {
        crate::flame::Section::default()
    };
    for b in backends {
        b.stop();
    }
    result?;

    let mut measurements = Vec::new();
    for (i, s) in list.iter().enumerate() {
        for (k, &mode) in s.modes.iter().enumerate() {
            let (rounds_rps, rps, p50_ms, p99_ms, cpu_us_per_req, errors) =
                report::summarize(&samples[i][k]);
            let (note, valid) = notes[i][k].clone();
            measurements.push(Measurement {
                key: s.key(mode),
                lb: s.lb,
                workers: s.workers,
                mode,
                label: s.label(),
                rounds_rps,
                rps,
                p50_ms,
                p99_ms,
                cpu_us_per_req,
                errors,
                note,
                valid,
            });
        }
    }
    let overhead = report::overhead(&measurements);
    let report = HttpReport {
        machine: crate::report::Machine::now(),
        seconds_per_run: opts.seconds,
        rounds: opts.rounds,
        wrk_threads: opts.wrk_threads,
        connections: opts.connections,
        backends: BACKENDS,
        load_average: report::LoadSummary::of(&loads),
        ratios: report::ratios(&measurements),
        targets: report::targets(&measurements, &overhead, &tables),
        overhead,
        measurements,
        tables,
        method: method_notes(&opts),
        flame,
    };
    write(&report)
}

fn write(r: &HttpReport) -> Result<()> {
    let dir =
        crate::report::write_report("http", r, report::markdown(r), |p| plot::write_png(r, p))?;
    println!();
    println!(
        "==> summary (medians of {} rounds; 1-min load average during the runs {:.1} .. {:.1}, median {:.1}, on {} CPUs)",
        r.rounds, r.load_average.min, r.load_average.max, r.load_average.median, r.machine.cpus
    );
    for mode in [Mode::KeepAlive, Mode::Close] {
        println!();
        println!(
            "{:<48} {:>10} {:>8} {:>8} {:>10}  note",
            mode.label(),
            "req/s",
            "p50 ms",
            "p99 ms",
            "cpu us/req",
        );
        for m in r.measurements.iter().filter(|m| m.mode == mode) {
            println!(
                "{:<48} {:>10.0} {:>8} {:>8} {:>10}  {}{}",
                m.label,
                m.rps,
                m.p50_ms.map_or("-".into(), |v| format!("{v:.2}")),
                m.p99_ms.map_or("-".into(), |v| format!("{v:.2}")),
                m.cpu_us_per_req.map_or("-".into(), |v| format!("{v:.1}")),
                if m.valid { "" } else { "NOT VALID: " },
                m.note
            );
        }
    }
    println!();
    println!("{:<70} {:>8}", "ratio (req/s)", "value");
    for q in &r.ratios {
        println!(
            "{:<70} {:>8}",
            q.what,
            q.value.map_or("-".into(), |v| format!("{v:.2}x"))
        );
    }
    println!();
    for o in &r.overhead {
        println!(
            "DataScript overhead, {} worker(s): {} us/request by CPU time, {} us/request by req/s",
            o.workers,
            o.from_cpu_us.map_or("-".into(), |v| format!("{v:.2}")),
            o.from_throughput_us
                .map_or("-".into(), |v| format!("{v:.2}"))
        );
    }
    let t = &r.tables;
    for (k, v) in &t.lookups_mps {
        println!("table_lookup from Lua, {k}: {v:.2} M/s");
    }
    if let Some(b) = t.user_bytes_per_entry {
        println!("table bytes per entry, user space: {b:.1}");
    }
    if let Some(b) = t.kernel_bytes_per_entry {
        println!("pinned client bytes per entry, kernel: {b:.0}");
    }
    if let Some(e) = &t.error {
        println!("table figures: {e}");
    }
    println!();
    println!(
        "{:<52} {:<12} {:<34} verdict",
        "target", "required", "measured"
    );
    for x in &r.targets {
        println!(
            "{:<52} {:<12} {:<34} {}",
            x.what,
            x.target,
            x.value,
            crate::report::verdict(x.met)
        );
    }
    println!();
    println!("==> wrote {}/http.{{md,json,png}}", dir.display());
    Ok(())
}
