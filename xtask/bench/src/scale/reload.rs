//! Config load and reload with 1,000 virtual services of 10 servers each: in process
//! (`config::parse`), as `latch check`, and as a running agent's start and reload, in a
//! private namespace with the services' address on its loopback.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use latch_tests::{LatchAgent, Netns, agent_section};
use serde::Serialize;

use crate::env;

pub const SERVICES: usize = 1000;
pub const SERVERS: usize = 10;
const VIP: &str = "198.51.100.10";
/// 1,000 services take 1,000 kernel service ids (http ones too): beyond the default 256.
const CAPACITY: &str = "\n[agent.capacity]\nvirtual_services = 1024\n";

#[derive(Serialize)]
pub struct ConfigResult {
    pub services: usize,
    pub servers_per_service: usize,
    /// `config::parse` in process (TOML, validation): median seconds.
    pub parse_seconds: f64,
    /// `latch check` as a process (parse, compile every script, kernel memory).
    pub check_seconds: Option<f64>,
    /// `latch run` from exec to its ready line (maps, 1,000 services' VMs and listeners).
    pub start_seconds: f64,
    /// The agent's CPU time (all threads) up to its ready line: what an idle host takes,
    /// give or take parallelism.
    pub start_cpu_seconds: f64,
    /// The agent's CPU time during the reloads (medians).
    pub reload_unchanged_cpu_seconds: f64,
    pub reload_changed_cpu_seconds: f64,
    /// `latch reload` (the admin API call, returns once applied) of the same file: medians,
    /// and the slowest.
    pub reload_unchanged_seconds: f64,
    pub reload_unchanged_max_seconds: f64,
    /// `latch reload` after one pool's servers changed.
    pub reload_changed_seconds: f64,
    pub reload_changed_max_seconds: f64,
    /// `latch reload` after every service's script changed (every VM is built again).
    pub reload_scripts_seconds: f64,
    pub reload_scripts_max_seconds: f64,
    pub reload_scripts_cpu_seconds: f64,
    pub reloads: usize,
}

/// What a reload changes: the first pool's servers, and every script (a comment, so no line
/// moves).
#[derive(Clone, Copy, Default)]
pub struct Generation {
    pub pool: usize,
    pub scripts: usize,
}

/// 1,000 http services, each with the JSESSIONID-style lookup script, over 1,000 pools of 10
/// servers, as of `generation`.
pub fn config_text(head: &str, services: usize, servers: usize, generation: Generation) -> String {
    let mut s = String::from(head);
    for v in 0..services {
        s.push_str(&format!("\n[[pool]]\nname = \"p{v}\"\nservers = ["));
        for k in 0..servers {
            let n = v * servers + k;
            // A new generation moves the first pool's servers to other ports.
            let shift = if v == 0 { generation.pool * 1000 } else { 0 };
            s.push_str(&format!(
                "{}\"192.0.2.{}:{}\"",
                if k == 0 { "" } else { ", " },
                1 + n % 250,
                10_000 + n / 250 + shift
            ));
        }
        s.push_str(&format!(
            "]\n\n[[virtual_service]]\nname = \"vs{v}\"\nlisten = \"{VIP}:{}\"\n\
             type = \"http\"\npool = \"p{v}\"\n\n[[virtual_service.datascript]]\n\
             event = \"HTTP_REQ\"\nscript = '''\nlocal s = avi.vs.table_lookup(avi.http.get_cookie(\"sid\") or \"\")\n\
             if s then avi.pool.select(\"p{v}\", s) end -- revision {}\n'''\n",
            20_000 + v,
            generation.scripts
        ));
    }
    s
}

fn latch_check(text: &str) -> Option<f64> {
    let dir = std::env::temp_dir().join(format!("latch-scale-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let path = dir.join("scale.toml");
    std::fs::write(&path, text).ok()?;
    let t = Instant::now();
    let out = std::process::Command::new(binary())
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .ok()?;
    let secs = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);
    out.status.success().then_some(secs)
}

fn binary() -> std::path::PathBuf {
    env::repo_root().join("target/release/latch")
}

/// CPU seconds (user + system, all threads) the process `pid` has used so far, from
/// /proc/PID/stat (clock ticks).
fn process_cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<f64> {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .with_context(|| format!("/proc/{pid}/stat field {i}"))
    };
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((ticks(11)? + ticks(12)?) / hz)
}

/// Wall and agent CPU seconds of one `latch reload`.
fn timed_reload(agent: &LatchAgent) -> Result<(f64, f64)> {
    let pid = agent.pid().context("agent not running")?;
    let cpu0 = process_cpu_seconds(pid)?;
    let t = Instant::now();
    let out = agent.latch(&["reload"]).context("running latch reload")?;
    let secs = t.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds(pid)? - cpu0;
    if !out.status.success() {
        bail!(
            "reload refused: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((secs, cpu))
}

pub fn run(rounds: u32) -> Result<ConfigResult> {
    let median = |v: &[f64]| crate::report::median(v);
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let plain = config_text(
        &format!("[agent]\ninterfaces = []\n{CAPACITY}"),
        SERVICES,
        SERVERS,
        Generation::default(),
    );
    let mut parse = Vec::new();
    for _ in 0..rounds.max(3) {
        env::check_stopped()?;
        let t = Instant::now();
        latch::config::parse(&plain, Path::new("/tmp/scale.toml"))
            .map_err(|e| anyhow::anyhow!("generated config refused: {e}"))?;
        parse.push(t.elapsed().as_secs_f64());
    }
    let check_seconds = latch_check(&plain);

    if !binary().exists() {
        bail!(
            "{} is missing: build it with `cargo build --release -p lb-userspace --bin latch`",
            binary().display()
        );
    }
    let ns = Netns::new("scale")?;
    ns.ip(&["link", "set", "lo", "up"])?;
    ns.ip(&["addr", "add", &format!("{VIP}/32"), "dev", "lo"])?;
    let mut agent = LatchAgent::prepare(&binary(), &ns)?;
    let head = format!("{}{CAPACITY}", agent_section(&[], agent.bpffs_dir()));
    agent.write_config(&config_text(
        &head,
        SERVICES,
        SERVERS,
        Generation::default(),
    ))?;
    let t = Instant::now();
    agent
        .start_within(Duration::from_secs(300))
        .context("starting latch with 1,000 services")?;
    let start_seconds = t.elapsed().as_secs_f64();
    let start_cpu_seconds = process_cpu_seconds(agent.pid().context("agent not running")?)?;
    let (mut same, mut changed, mut scripts) = (Vec::new(), Vec::new(), Vec::new());
    let (mut same_cpu, mut changed_cpu, mut scripts_cpu) = (Vec::new(), Vec::new(), Vec::new());
    let mut generation = Generation::default();
    for _ in 0..rounds.max(3) {
        env::check_stopped()?;
        let (wall, cpu) = timed_reload(&agent)?;
        same.push(wall);
        same_cpu.push(cpu);
        generation.pool += 1;
        agent.write_config(&config_text(&head, SERVICES, SERVERS, generation))?;
        let (wall, cpu) = timed_reload(&agent)?;
        changed.push(wall);
        changed_cpu.push(cpu);
        generation.scripts += 1;
        agent.write_config(&config_text(&head, SERVICES, SERVERS, generation))?;
        let (wall, cpu) = timed_reload(&agent)?;
        scripts.push(wall);
        scripts_cpu.push(cpu);
    }
    agent.stop(Duration::from_secs(10))?;
    Ok(ConfigResult {
        services: SERVICES,
        servers_per_service: SERVERS,
        parse_seconds: median(&parse),
        check_seconds,
        start_seconds,
        start_cpu_seconds,
        reload_unchanged_cpu_seconds: median(&same_cpu),
        reload_changed_cpu_seconds: median(&changed_cpu),
        reload_unchanged_seconds: median(&same),
        reload_unchanged_max_seconds: max(&same),
        reload_changed_seconds: median(&changed),
        reload_changed_max_seconds: max(&changed),
        reload_scripts_seconds: median(&scripts),
        reload_scripts_max_seconds: max(&scripts),
        reload_scripts_cpu_seconds: median(&scripts_cpu),
        reloads: same.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_config_is_accepted_with_every_service() {
        let text = config_text(
            "[agent]\ninterfaces = []\n",
            30,
            10,
            Generation {
                pool: 1,
                scripts: 1,
            },
        );
        let c =
            latch::config::parse(&text, Path::new("/tmp/x.toml")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.virtual_services.len(), 30);
        assert!(c.pools.iter().all(|p| p.servers.len() == 10));
    }
}
