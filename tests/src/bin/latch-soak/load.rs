//! The traffic: wrk (keep-alive, and connection per request with `Connection: close`) through
//! the JSESSIONID service, a sticky-session checker, layer-4 TCP and UDP through XDP. Every
//! generator is paced, stops at the run's deadline, and records each failure with its cause and
//! when it happened, so the report can tell failures during a fault from steady-state ones.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use latch_tests::{Error, Netns, http_get, udp_roundtrip};

use crate::rig::{FLAPPED, L4_TCP_PORT, SHOP_PORT, UDP_VS_PORT};

/// Failures of one cause seen by one generator in `[start_s, end_s]` (seconds since the run
/// began; equal for a single request, a wrk slice's bounds otherwise).
#[derive(Debug, Clone)]
pub struct Failure {
    pub generator: &'static str,
    pub cause: &'static str,
    pub start_s: f64,
    pub end_s: f64,
    pub count: u64,
}

/// What every generator reports into.
#[derive(Debug)]
pub struct Recorder {
    t0: Instant,
    inner: Mutex<Tally>,
}

#[derive(Debug, Default)]
pub struct Tally {
    pub requests: BTreeMap<&'static str, u64>,
    pub failures: Vec<Failure>,
    /// Sticky sessions moved because their server was taken out (Avi's rule, not a failure).
    pub rebalanced: u64,
    /// One sample detail per (generator, cause), for the report.
    pub examples: BTreeMap<(&'static str, &'static str), String>,
}

impl Recorder {
    pub fn new(t0: Instant) -> Self {
        Self {
            t0,
            inner: Mutex::new(Tally::default()),
        }
    }

    pub fn now_s(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn requests(&self, generator: &'static str, n: u64) {
        *self.lock().requests.entry(generator).or_default() += n;
    }

    pub fn fail(&self, generator: &'static str, cause: &'static str, detail: String) {
        let t = self.now_s();
        self.fail_window(generator, cause, t, t, 1, detail);
    }

    fn fail_window(
        &self,
        generator: &'static str,
        cause: &'static str,
        start_s: f64,
        end_s: f64,
        count: u64,
        detail: String,
    ) {
        if count == 0 {
            return;
        }
        let mut t = self.lock();
        t.failures.push(Failure {
            generator,
            cause,
            start_s,
            end_s,
            count,
        });
        t.examples.entry((generator, cause)).or_insert(detail);
    }

    pub fn take(&self) -> Tally {
        std::mem::take(&mut *self.lock())
    }
}

/// The cause of a failed request of the harness's clients.
pub fn classify(e: &Error) -> &'static str {
    if matches!(e, Error::Timeout { .. }) {
        return "timeout";
    }
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            return match io.kind() {
                K::ConnectionRefused => "connect refused",
                K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => "reset",
                K::TimedOut | K::WouldBlock => "timeout",
                _ => "other I/O error",
            };
        }
        if let Some(h) = err.downcast_ref::<hyper::Error>()
            && h.is_incomplete_message()
        {
            return "closed before response";
        }
        cur = err.source();
    }
    "other"
}

fn status_cause(status: u16) -> &'static str {
    match status {
        500..=599 => "http 5xx",
        400..=499 => "http 4xx",
        _ => "http other status",
    }
}

/// What the load generators share.
pub struct Env<'a> {
    pub rec: &'a Recorder,
    pub client: &'a Netns,
    pub deadline: Instant,
    /// Bumped by the fault thread each time the flapped backend is taken down.
    pub flaps: &'a AtomicU64,
    pub stop: &'a (dyn Fn() -> bool + Sync),
}

impl Env<'_> {
    fn running(&self) -> bool {
        Instant::now() < self.deadline && !(self.stop)()
    }

    /// Sleeps until `next`, returning false when the run ended meanwhile.
    fn pace(&self, next: Instant) -> bool {
        while Instant::now() < next {
            if !self.running() {
                return false;
            }
            std::thread::sleep((next - Instant::now()).min(Duration::from_millis(100)));
        }
        self.running()
    }
}

fn vip(port: u16) -> SocketAddr {
    SocketAddr::from((latch_tests::topology::VIP, port))
}

/// The wrk script. The JSESSIONID scripts learn a session from the server's `Set-Cookie`, so
/// one request in `login_every` is a `/login` (the server issues a session, HTTP_RESP stores
/// it) and the others carry one of the last 64 sessions this thread was issued (HTTP_REQ
/// finds it). Sessions live 60 s from their login, so the table stays bounded by the login
/// rate. `delay_ms` between requests on a connection; a `SOAK ...` summary line at the end.
fn wrk_script(login_every: u32, delay_ms: u64, close: bool) -> String {
    let conn = if close {
        r#"["Connection"] = "close""#
    } else {
        ""
    };
    format!(
        r#"local threads = {{}}
function setup(thread) table.insert(threads, thread) end
function init(args)
  s5xx, s4xx, other = 0, 0, 0
  ring, next_slot = {{}}, 1
  math.randomseed(os.time() * 1000 + math.floor(os.clock() * 1000000))
end
function delay() return {delay_ms} end
function request()
  if #ring == 0 or math.random(1, {login_every}) == 1 then
    return wrk.format("GET", "/login", {{{conn}}})
  end
  local c = ring[math.random(1, #ring)]
  local h = {{{conn}}}
  h["Cookie"] = "JSESSIONID=" .. c
  return wrk.format("GET", "/", h)
end
function response(status, headers, body)
  if status >= 500 then s5xx = s5xx + 1
  elseif status >= 400 then s4xx = s4xx + 1
  elseif status ~= 200 then other = other + 1 end
  local sc = headers["Set-Cookie"] or headers["set-cookie"]
  if sc then
    local id = string.match(sc, "JSESSIONID=([^;]+)")
    if id then
      ring[next_slot] = id
      next_slot = next_slot % 64 + 1
    end
  end
end
function done(summary, latency, requests)
  local a, b, c = 0, 0, 0
  for _, t in ipairs(threads) do
    a = a + t:get("s5xx"); b = b + t:get("s4xx"); c = c + t:get("other")
  end
  local e = summary.errors
  io.write(string.format("SOAK requests=%d connect=%d read=%d write=%d timeout=%d s5xx=%d s4xx=%d other=%d\n",
    summary.requests, e.connect, e.read, e.write, e.timeout, a, b, c))
end
"#
    )
}

/// wrk's `SOAK` line as (name, value) pairs.
pub fn parse_wrk_line(line: &str) -> Option<BTreeMap<String, u64>> {
    let rest = line.strip_prefix("SOAK ")?;
    rest.split_whitespace()
        .map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// wrk in slices of a few seconds (so failures can be placed in time) until the deadline.
pub fn wrk(
    env: &Env,
    name: &'static str,
    dir: &Path,
    connections: u32,
    rate: u32,
    close: bool,
) -> Result<()> {
    const SLICE_S: u64 = 5;
    const LOGIN_EVERY: u32 = 10;
    let delay_ms = u64::from(connections) * 1000 / u64::from(rate.max(1));
    let script = dir.join(format!("{name}.lua"));
    std::fs::write(&script, wrk_script(LOGIN_EVERY, delay_ms, close))
        .with_context(|| format!("write {}", script.display()))?;
    let url = format!("http://{}/", vip(SHOP_PORT));
    let script_s = script.display().to_string();
    let conns = connections.to_string();
    while env.running() {
        let left = env
            .deadline
            .saturating_duration_since(Instant::now())
            .as_secs();
        if left < 1 {
            break;
        }
        let secs = format!("{}s", SLICE_S.min(left));
        let start = env.rec.now_s();
        let mut child = env.client.spawn(&[
            "wrk",
            "-t1",
            "-c",
            &conns,
            "-d",
            &secs,
            "--timeout",
            "2s",
            "-s",
            &script_s,
            &url,
        ])?;
        let line = child.wait_for_line(
            |l| l.starts_with("SOAK "),
            Duration::from_secs(SLICE_S + 20),
        );
        let end = env.rec.now_s();
        let fields = line.ok().and_then(|l| parse_wrk_line(&l));
        let Some(f) = fields else {
            // wrk gives up at once when it cannot connect at start (the agent is down): one
            // failure per attempt, retried after a pause.
            let stderr = child.stderr();
            let cause = if stderr.contains("unable to connect") {
                "wrk could not connect (per attempt)"
            } else {
                "wrk gave no summary"
            };
            env.rec.fail_window(name, cause, start, end, 1, stderr);
            std::thread::sleep(Duration::from_millis(500));
            continue;
        };
        let get = |k: &str| f.get(k).copied().unwrap_or(0);
        env.rec.requests(name, get("requests"));
        for (key, cause) in [
            ("connect", "connect error"),
            ("read", "read error (reset or closed)"),
            ("write", "write error"),
            ("timeout", "timeout"),
            ("s5xx", "http 5xx"),
            ("s4xx", "http 4xx"),
            ("other", "http other status"),
        ] {
            env.rec.fail_window(
                name,
                cause,
                start,
                end,
                get(key),
                format!("wrk slice {secs}"),
            );
        }
    }
    Ok(())
}

/// A session the sticky checker holds: its cookie, the server that issued it, when, and the
/// flap count then.
struct Session {
    cookie: String,
    owner: String,
    born: Instant,
    flaps: u64,
}

/// Sessions re-login before the JSESSIONID lifetime (60 s from the login) runs out.
const SESSION_REFRESH: Duration = Duration::from_secs(40);

/// Logs in and sends each session back: it must reach the server that issued it and be a
/// table hit (`X-Persist: true`). A session of the flapped server is balanced elsewhere once
/// the health monitor takes the server out, and then removed (by design): it is replaced by
/// a new login, counted as re-balanced, not failed.
pub fn sticky(env: &Env, rate: u32) {
    const SESSIONS: usize = 16;
    let name = "sticky sessions";
    let flapped = format!("b{FLAPPED}");
    let mut sessions: Vec<Option<Session>> = (0..SESSIONS).map(|_| None).collect();
    let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let mut next = Instant::now();
    let mut i = 0usize;
    while env.pace(next) {
        next += period;
        let slot = i % SESSIONS;
        i += 1;
        env.rec.requests(name, 1);
        let flaps = env.flaps.load(Ordering::SeqCst);
        let Some(session) = sessions[slot]
            .take()
            .filter(|s| s.born.elapsed() < SESSION_REFRESH)
        else {
            match http_get(vip(SHOP_PORT), "/login", &[]) {
                Ok(r) if r.status == 200 => match (r.set_cookie("JSESSIONID"), r.backend.clone()) {
                    (Some(cookie), Some(owner)) => {
                        sessions[slot] = Some(Session {
                            cookie,
                            owner,
                            born: Instant::now(),
                            flaps,
                        });
                    }
                    _ => env
                        .rec
                        .fail(name, "login without a session", format!("{:?}", r.headers)),
                },
                Ok(r) => env.rec.fail(
                    name,
                    status_cause(r.status),
                    format!("login: status {}", r.status),
                ),
                Err(e) => env.rec.fail(name, classify(&e), format!("login: {e}")),
            }
            continue;
        };
        let cookie = format!("JSESSIONID={}", session.cookie);
        match http_get(vip(SHOP_PORT), "/", &[("cookie", cookie.as_str())]) {
            Ok(r) if r.status == 200 => {
                let backend = r.backend.clone().unwrap_or_default();
                let hit = r.header("x-persist") == Some("true");
                let flaps_now = env.flaps.load(Ordering::SeqCst);
                let owner_out = session.owner == flapped && flaps_now > session.flaps;
                if owner_out && (backend != session.owner || !hit) {
                    // Its server was taken out: the pool's algorithm chose for the script
                    // (while the session was still in the table), then the session was
                    // removed; a new login replaces it.
                    env.rec.lock().rebalanced += 1;
                    continue;
                }
                if backend != session.owner {
                    env.rec.fail(
                        name,
                        "wrong backend (sticky)",
                        format!("{}: {} then {backend}", session.cookie, session.owner),
                    );
                } else if !hit {
                    env.rec.fail(
                        name,
                        "session not in the table",
                        format!("{} on {backend}", session.cookie),
                    );
                }
                sessions[slot] = Some(session);
            }
            Ok(r) => {
                env.rec
                    .fail(name, status_cause(r.status), format!("status {}", r.status));
                sessions[slot] = Some(session);
            }
            Err(e) => {
                env.rec.fail(name, classify(&e), e.to_string());
                sessions[slot] = Some(session);
            }
        }
    }
}

/// One `attempt` every `1 / rate` seconds until the run ends; a failed attempt returns its
/// cause and a detail.
fn paced(
    env: &Env,
    name: &'static str,
    rate: u32,
    mut attempt: impl FnMut() -> Result<(), (&'static str, String)>,
) {
    let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let mut next = Instant::now();
    while env.pace(next) {
        next += period;
        env.rec.requests(name, 1);
        if let Err((cause, detail)) = attempt() {
            env.rec.fail(name, cause, detail);
        }
    }
}

/// HTTP GET through the layer-4 TCP service (XDP NAT to the backends), a connection each.
pub fn l4_tcp(env: &Env, rate: u32) {
    paced(env, "L4 TCP", rate, || {
        match http_get(vip(L4_TCP_PORT), "/", &[]) {
            Ok(r) if r.status == 200 => Ok(()),
            Ok(r) => Err((status_cause(r.status), format!("status {}", r.status))),
            Err(e) => Err((classify(&e), e.to_string())),
        }
    });
}

/// One datagram and its answer through the layer-4 UDP service, a fresh source port each.
pub fn udp(env: &Env, rate: u32) {
    paced(env, "L4 UDP", rate, || {
        match udp_roundtrip(vip(UDP_VS_PORT), b"soak", Duration::from_secs(1)) {
            Ok(r) if r.backend().is_some_and(|b| b.starts_with('b')) => Ok(()),
            Ok(r) => Err(("unexpected answer", r.text)),
            Err(e) => Err((classify(&e), e.to_string())),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_summary_line_parses() {
        let f = parse_wrk_line(
            "SOAK requests=10 connect=1 read=2 write=0 timeout=0 s5xx=3 s4xx=0 other=0",
        )
        .expect("parses");
        assert_eq!(f["requests"], 10);
        assert_eq!(f["s5xx"], 3);
        assert!(parse_wrk_line("Running 5s test").is_none());
        assert!(parse_wrk_line("SOAK requests=x").is_none());
    }

    #[test]
    fn causes_of_harness_errors() {
        let refused = Error::Io {
            context: "connect".into(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        };
        assert_eq!(classify(&refused), "connect refused");
        let reset = Error::Io {
            context: "read".into(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionReset),
        };
        assert_eq!(classify(&reset), "reset");
        let t = Error::Timeout {
            what: "x".into(),
            after: Duration::from_secs(1),
        };
        assert_eq!(classify(&t), "timeout");
        assert_eq!(status_cause(502), "http 5xx");
    }
}
