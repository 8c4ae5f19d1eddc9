//! Health state of servers, fed by probe results; no I/O and no clock of its own.
//!
//! HAProxy semantics: a server goes down after `fall` consecutive failed probes and comes back
//! after `rise` consecutive successes; a result that agrees with the current state resets the
//! opposite streak. The probe runner (elsewhere) asks [`HealthTracker::due`] which servers to
//! probe, reports each outcome with [`HealthTracker::record`], and applies the transitions it
//! returns (to the pool balancer and the kernel backend map).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::levers::full_weight;
use crate::config::{HealthMonitor, PoolServer};

/// What the data-plane spec needs to know of server health: owned here (not by the agent or
/// the monitor) so both the probe runner and the agent's pool state can answer it without
/// depending on each other.
pub trait HealthView {
    /// Whether `server` of `pool` may take new flows.
    fn is_up(&self, pool: &str, server: SocketAddr) -> bool;

    /// How `server` of `pool` takes part in forwarding now. The default: its health and its
    /// configured weight (no administrative state, no slow start).
    fn traffic(&self, pool: &str, server: &PoolServer) -> ServerTraffic {
        ServerTraffic {
            up: self.is_up(pool, server.addr),
            weight: full_weight(server.weight),
            backup: server.backup,
        }
    }
}

/// How a server takes part in the data plane's forwarding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerTraffic {
    /// Its established flows and pins keep going (false when down or in maintenance).
    pub up: bool,
    /// Share of new flows, in 1/[`WEIGHT_SCALE`](super::levers::WEIGHT_SCALE) units; 0 when
    /// drained or of weight 0.
    pub weight: u32,
    /// Gets new flows only while no primary server of its pool can.
    pub backup: bool,
}

/// Every server is up (no health monitors yet, or in tests).
pub struct AllUp;

impl HealthView for AllUp {
    fn is_up(&self, _pool: &str, _server: SocketAddr) -> bool {
        true
    }
}

/// Thresholds and timing of one pool's health checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthParams {
    /// Consecutive failures that take an up server down (at least 1).
    pub fall: u32,
    /// Consecutive successes that bring a down server up (at least 1).
    pub rise: u32,
    /// Time from one probe's result to the next probe of the same server.
    pub interval: Duration,
    /// Whether servers start up (serving at once, like HAProxy) or down (serving only after
    /// `rise` successes).
    pub start_up: bool,
}

impl HealthParams {
    /// Parameters of a configured monitor; servers start up.
    pub fn from_monitor(m: &HealthMonitor) -> Self {
        Self {
            fall: m.fall,
            rise: m.rise,
            interval: m.interval,
            start_up: true,
        }
    }
}

/// A change of a server's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// The server reached `rise` consecutive successes while down.
    WentUp,
    /// The server reached `fall` consecutive failures while up.
    WentDown,
}

/// One server's health state machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerHealth {
    up: bool,
    /// Consecutive results that disagree with `up` (failures while up, successes while down).
    streak: u32,
    /// When the state last changed (creation counts).
    since: Instant,
}

impl ServerHealth {
    /// A server in its initial state.
    pub fn new(up: bool, now: Instant) -> Self {
        Self {
            up,
            streak: 0,
            since: now,
        }
    }

    /// Whether the server may receive traffic.
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// When the state last changed.
    pub fn since(&self) -> Instant {
        self.since
    }

    /// Feeds one probe result; returns the transition it caused, if any.
    pub fn record(
        &mut self,
        success: bool,
        params: &HealthParams,
        now: Instant,
    ) -> Option<Transition> {
        if success == self.up {
            self.streak = 0;
            return None;
        }
        self.streak = self.streak.saturating_add(1);
        let threshold = if self.up { params.fall } else { params.rise };
        if self.streak < threshold.max(1) {
            return None;
        }
        self.up = success;
        self.streak = 0;
        self.since = now;
        Some(if success {
            Transition::WentUp
        } else {
            Transition::WentDown
        })
    }
}

/// A transition of one server, as reported by [`HealthTracker::record`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthEvent {
    /// The server.
    pub addr: SocketAddr,
    /// What happened.
    pub transition: Transition,
}

#[derive(Clone, Debug)]
struct Tracked {
    addr: SocketAddr,
    health: ServerHealth,
    next_probe: Instant,
    in_flight: bool,
}

/// Health of every server of one pool plus the probe schedule.
#[derive(Clone, Debug)]
pub struct HealthTracker {
    params: HealthParams,
    servers: Vec<Tracked>,
}

impl HealthTracker {
    /// Tracks `servers`. First probes are spread over one interval so a large pool is not
    /// probed in a single burst.
    pub fn new(servers: &[SocketAddr], params: HealthParams, now: Instant) -> Self {
        let mut t = Self {
            params,
            servers: Vec::new(),
        };
        t.reconfigure(servers, params, now);
        t
    }

    /// Applies a new server list and parameters (config reload). Servers that stay keep their
    /// state and schedule; new ones start as `params.start_up` says, with staggered first probes.
    pub fn reconfigure(&mut self, servers: &[SocketAddr], params: HealthParams, now: Instant) {
        let n = u32::try_from(servers.len()).unwrap_or(u32::MAX).max(1);
        let mut next = Vec::with_capacity(servers.len());
        for (i, &addr) in servers.iter().enumerate() {
            if next.iter().any(|t: &Tracked| t.addr == addr) {
                continue;
            }
            if let Some(old) = self.servers.iter().find(|t| t.addr == addr) {
                next.push(old.clone());
                continue;
            }
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            next.push(Tracked {
                addr,
                health: ServerHealth::new(params.start_up, now),
                next_probe: now + params.interval / n * i,
                in_flight: false,
            });
        }
        self.params = params;
        self.servers = next;
    }

    /// Servers whose probe is due at `now`; they are marked in flight and not returned again
    /// until their result is recorded.
    pub fn due(&mut self, now: Instant) -> Vec<SocketAddr> {
        self.servers
            .iter_mut()
            .filter(|t| !t.in_flight && t.next_probe <= now)
            .map(|t| {
                t.in_flight = true;
                t.addr
            })
            .collect()
    }

    /// Earliest time a probe becomes due, for the runner's sleep; `None` when every server has
    /// a probe in flight or there are no servers.
    pub fn next_due(&self) -> Option<Instant> {
        self.servers
            .iter()
            .filter(|t| !t.in_flight)
            .map(|t| t.next_probe)
            .min()
    }

    /// Records a probe result at `now` and schedules that server's next probe one interval
    /// later. Results for servers no longer tracked (removed by a reload) are ignored.
    pub fn record(&mut self, addr: SocketAddr, success: bool, now: Instant) -> Option<HealthEvent> {
        let params = self.params;
        let t = self.servers.iter_mut().find(|t| t.addr == addr)?;
        t.in_flight = false;
        t.next_probe = now + params.interval;
        t.health
            .record(success, &params, now)
            .map(|transition| HealthEvent { addr, transition })
    }

    /// A server's health; `None` if not tracked.
    pub fn health(&self, addr: SocketAddr) -> Option<&ServerHealth> {
        self.servers
            .iter()
            .find(|t| t.addr == addr)
            .map(|t| &t.health)
    }

    /// Whether a server is up; `None` if not tracked.
    pub fn is_up(&self, addr: SocketAddr) -> Option<bool> {
        self.health(addr).map(ServerHealth::is_up)
    }

    /// (address, up) of every tracked server, in configured order.
    pub fn states(&self) -> impl Iterator<Item = (SocketAddr, bool)> + '_ {
        self.servers.iter().map(|t| (t.addr, t.health.is_up()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(fall: u32, rise: u32) -> HealthParams {
        HealthParams {
            fall,
            rise,
            interval: Duration::from_secs(2),
            start_up: true,
        }
    }

    fn feed(
        h: &mut ServerHealth,
        p: &HealthParams,
        results: &str,
        t0: Instant,
    ) -> Vec<(usize, Transition)> {
        results
            .chars()
            .enumerate()
            .filter_map(|(i, c)| {
                h.record(c == '+', p, t0 + Duration::from_secs(i as u64))
                    .map(|tr| (i, tr))
            })
            .collect()
    }

    #[test]
    fn goes_down_after_fall_consecutive_failures() {
        let t0 = Instant::now();
        let p = params(3, 2);
        let mut h = ServerHealth::new(true, t0);
        assert_eq!(feed(&mut h, &p, "--", t0), []);
        assert!(h.is_up());
        assert_eq!(feed(&mut h, &p, "-", t0), [(0, Transition::WentDown)]);
        assert!(!h.is_up());
    }

    #[test]
    fn a_success_resets_the_failure_streak() {
        let t0 = Instant::now();
        let p = params(3, 2);
        let mut h = ServerHealth::new(true, t0);
        assert_eq!(feed(&mut h, &p, "--+--+--+", t0), []);
        assert!(h.is_up());
        assert_eq!(feed(&mut h, &p, "--+---", t0), [(5, Transition::WentDown)]);
    }

    #[test]
    fn comes_back_after_rise_consecutive_successes() {
        let t0 = Instant::now();
        let p = params(2, 3);
        let mut h = ServerHealth::new(false, t0);
        assert_eq!(feed(&mut h, &p, "++-++", t0), []);
        assert!(!h.is_up());
        assert_eq!(feed(&mut h, &p, "+", t0), [(0, Transition::WentUp)]);
        assert!(h.is_up());
    }

    #[test]
    fn flapping_round_trip_records_time() {
        let t0 = Instant::now();
        let p = params(1, 1);
        let mut h = ServerHealth::new(true, t0);
        let tr = feed(&mut h, &p, "-+-", t0);
        assert_eq!(
            tr,
            [
                (0, Transition::WentDown),
                (1, Transition::WentUp),
                (2, Transition::WentDown)
            ]
        );
        assert_eq!(h.since(), t0 + Duration::from_secs(2));
    }

    fn servers(n: u8) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::from(([192, 0, 2, 11 + i], 80)))
            .collect()
    }

    #[test]
    fn tracker_staggers_first_probes_and_schedules_by_interval() {
        let t0 = Instant::now();
        let s = servers(2);
        let mut t = HealthTracker::new(&s, params(3, 2), t0);
        assert_eq!(t.due(t0), [s[0]]);
        assert_eq!(t.due(t0), [], "in-flight probes are not handed out twice");
        assert_eq!(t.next_due(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(t.due(t0 + Duration::from_secs(1)), [s[1]]);
        assert_eq!(t.next_due(), None);
        let t1 = t0 + Duration::from_millis(1500);
        assert_eq!(t.record(s[0], true, t1), None);
        assert_eq!(t.next_due(), Some(t1 + Duration::from_secs(2)));
        assert_eq!(t.due(t1 + Duration::from_millis(1999)), []);
        assert_eq!(t.due(t1 + Duration::from_secs(2)), [s[0]]);
    }

    #[test]
    fn tracker_reports_transitions() {
        let t0 = Instant::now();
        let s = servers(1);
        let mut t = HealthTracker::new(&s, params(2, 1), t0);
        let mut now = t0;
        let mut events = Vec::new();
        for ok in [false, false, true] {
            assert_eq!(t.due(now), s);
            events.push(t.record(s[0], ok, now));
            now += Duration::from_secs(2);
        }
        let down = HealthEvent {
            addr: s[0],
            transition: Transition::WentDown,
        };
        let up = HealthEvent {
            addr: s[0],
            transition: Transition::WentUp,
        };
        assert_eq!(events, [None, Some(down), Some(up)]);
        assert_eq!(t.is_up(s[0]), Some(true));
    }

    #[test]
    fn reconfigure_keeps_surviving_state() {
        let t0 = Instant::now();
        let s = servers(3);
        let mut t = HealthTracker::new(&s[..2], params(1, 1), t0);
        t.due(t0);
        assert!(t.record(s[0], false, t0).is_some());
        let mut p = params(1, 1);
        p.start_up = false;
        t.reconfigure(&[s[0], s[2]], p, t0);
        let states: Vec<_> = t.states().collect();
        assert_eq!(states, [(s[0], false), (s[2], false)]);
        assert_eq!(t.is_up(s[1]), None);
        assert_eq!(
            t.record(s[1], true, t0),
            None,
            "results for removed servers are ignored"
        );
    }

    #[test]
    fn params_from_monitor() {
        let m = HealthMonitor {
            kind: crate::config::MonitorKind::Tcp,
            interval: Duration::from_secs(7),
            timeout: Duration::from_secs(1),
            fall: 4,
            rise: 5,
        };
        let p = HealthParams::from_monitor(&m);
        assert_eq!(
            (p.fall, p.rise, p.interval, p.start_up),
            (4, 5, Duration::from_secs(7), true)
        );
    }
}
