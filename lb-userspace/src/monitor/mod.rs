//! Active health checks: probes every server of every pool that has a `health_monitor` and
//! reports up/down transitions.
//!
//! The fall/rise logic and the probe schedule are the pure [`HealthTracker`]; this module only
//! runs it: one tokio task per monitored pool sleeps until a probe is due, runs the probes
//! concurrently (each bounded by the monitor's timeout) and feeds the results back. Servers of
//! pools without a monitor are always up and cost nothing. The agent learns about transitions
//! through the `on_change` callback (to rebuild the maglev tables and the proxy rotation) and
//! reads the current state with [`MonitorHandle::snapshot`] or [`MonitorHandle::is_up`].

mod probe;

pub use probe::{ProbeError, format_status_set, probe};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::balancer::health::{HealthParams, HealthTracker, Transition};
use crate::config::{HealthMonitor, MonitorKind, PoolConfig};
use probe::ProbeTls;

/// A server changed state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthEvent {
    /// Pool name.
    pub pool: String,
    /// The server.
    pub server: SocketAddr,
    /// New state.
    pub up: bool,
    /// Why: the last probe's error when going down, the success streak when coming up.
    pub reason: String,
}

/// Health of one server at snapshot time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerHealthStatus {
    /// The server.
    pub addr: SocketAddr,
    /// Whether it takes new connections.
    pub up: bool,
    /// When it entered its current state (or when monitoring began).
    pub since: SystemTime,
    /// Most recent probe failure, kept after the server recovers so flapping can be diagnosed.
    pub last_error: Option<String>,
    /// Up/down transitions since monitoring began.
    pub transitions: u64,
}

/// Health of one pool at snapshot time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolHealth {
    /// Pool name.
    pub pool: String,
    /// The pool's monitor; `None` means its servers are always up.
    pub monitor: Option<HealthMonitor>,
    /// Servers in configured order.
    pub servers: Vec<ServerHealthStatus>,
}

/// Entry point: [`Monitor::start`].
#[derive(Debug)]
pub struct Monitor;

type OnChange = Arc<dyn Fn(HealthEvent) + Send + Sync>;

#[derive(Debug, Clone)]
struct ServerInfo {
    since: SystemTime,
    last_error: Option<String>,
    transitions: u64,
}

impl ServerInfo {
    fn new() -> Self {
        Self {
            since: SystemTime::now(),
            last_error: None,
            transitions: 0,
        }
    }
}

/// What a pool's task and the handle share.
struct PoolState {
    servers: Vec<SocketAddr>,
    monitor: Option<HealthMonitor>,
    /// The pool's TLS to its servers: probes speak it too.
    tls: Option<ProbeTls>,
    /// `Some` exactly when `monitor` is.
    tracker: Option<HealthTracker>,
    info: HashMap<SocketAddr, ServerInfo>,
}

impl PoolState {
    fn is_up(&self, server: SocketAddr) -> bool {
        self.tracker
            .as_ref()
            .and_then(|t| t.is_up(server))
            .unwrap_or(true)
    }
}

struct PoolEntry {
    name: String,
    state: Arc<Mutex<PoolState>>,
    wake: Arc<Notify>,
    task: Option<JoinHandle<()>>,
}

impl PoolEntry {
    fn stop_task(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

struct Inner {
    on_change: OnChange,
    pools: Mutex<Vec<PoolEntry>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for p in self.pools.get_mut().iter_mut() {
            p.stop_task();
        }
    }
}

/// The running monitors. Cheap to clone; the probe tasks stop with [`MonitorHandle::stop`] or
/// when the last clone is dropped.
#[derive(Clone)]
pub struct MonitorHandle {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MonitorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MonitorHandle")
            .field("pools", &self.inner.pools.lock().len())
            .finish()
    }
}

impl Monitor {
    /// Starts probing every server of every pool with a monitor. Must be called inside a tokio
    /// runtime. Servers start up (like HAProxy: serving at once, taken out after `fall`
    /// failures); `on_change` is called on every transition from the pool's probe task, so it
    /// should only hand the event on (to a channel the agent's loop reads).
    pub fn start(
        pools: &[PoolConfig],
        on_change: impl Fn(HealthEvent) + Send + Sync + 'static,
    ) -> MonitorHandle {
        let handle = MonitorHandle {
            inner: Arc::new(Inner {
                on_change: Arc::new(on_change),
                pools: Mutex::new(Vec::new()),
            }),
        };
        handle.reconfigure(pools);
        handle
    }
}

impl MonitorHandle {
    /// Applies a reloaded pool list. Servers that stay in a monitored pool keep their state,
    /// streaks and schedule; new servers start up; a pool that loses its monitor has its down
    /// servers reported up (unmonitored servers are always up).
    pub fn reconfigure(&self, pools: &[PoolConfig]) {
        let mut events = Vec::new();
        {
            let mut entries = self.inner.pools.lock();
            entries.retain_mut(|e| {
                let keep = pools.iter().any(|p| p.name == e.name);
                if !keep {
                    e.stop_task();
                }
                keep
            });
            for pool in pools {
                match entries.iter_mut().find(|e| e.name == pool.name) {
                    Some(entry) => self.update_pool(entry, pool, &mut events),
                    None => {
                        let entry = self.new_pool(pool);
                        entries.push(entry);
                    }
                }
            }
            entries.sort_by_key(|e| pools.iter().position(|p| p.name == e.name));
        }
        for event in events {
            log_event(&event);
            (self.inner.on_change)(event);
        }
    }

    fn new_pool(&self, pool: &PoolConfig) -> PoolEntry {
        let now = Instant::now();
        let servers = pool.addrs();
        let state = PoolState {
            monitor: pool.health_monitor.clone(),
            tls: ProbeTls::of(pool),
            tracker: pool
                .health_monitor
                .as_ref()
                .map(|m| HealthTracker::new(&servers, HealthParams::from_monitor(m), now)),
            info: servers.iter().map(|&s| (s, ServerInfo::new())).collect(),
            servers,
        };
        let mut entry = PoolEntry {
            name: pool.name.clone(),
            state: Arc::new(Mutex::new(state)),
            wake: Arc::new(Notify::new()),
            task: None,
        };
        if pool.health_monitor.is_some() {
            entry.task = Some(self.spawn(&entry));
        }
        entry
    }

    fn update_pool(&self, entry: &mut PoolEntry, pool: &PoolConfig, events: &mut Vec<HealthEvent>) {
        let now = Instant::now();
        let mut st = entry.state.lock();
        let servers = pool.addrs();
        st.info.retain(|addr, _| servers.contains(addr));
        for &s in &servers {
            st.info.entry(s).or_insert_with(ServerInfo::new);
        }
        st.servers.clone_from(&servers);
        st.monitor = pool.health_monitor.clone();
        st.tls = ProbeTls::of(pool);
        match &pool.health_monitor {
            Some(m) => {
                let params = HealthParams::from_monitor(m);
                match st.tracker.as_mut() {
                    Some(t) => t.reconfigure(&servers, params, now),
                    None => st.tracker = Some(HealthTracker::new(&servers, params, now)),
                }
                drop(st);
                if entry.task.as_ref().is_none_or(|t| t.is_finished()) {
                    entry.task = Some(self.spawn(entry));
                } else {
                    // The schedule may have changed (new servers, shorter interval).
                    entry.wake.notify_one();
                }
            }
            None => {
                let was_down: Vec<SocketAddr> = st
                    .tracker
                    .take()
                    .map(|t| t.states().filter(|(_, up)| !up).map(|(a, _)| a).collect())
                    .unwrap_or_default();
                for server in was_down {
                    if let Some(info) = st.info.get_mut(&server) {
                        info.since = SystemTime::now();
                        info.transitions += 1;
                    }
                    events.push(HealthEvent {
                        pool: pool.name.clone(),
                        server,
                        up: true,
                        reason: "health monitor removed".to_owned(),
                    });
                }
                drop(st);
                entry.stop_task();
            }
        }
    }

    fn spawn(&self, entry: &PoolEntry) -> JoinHandle<()> {
        tokio::spawn(run_pool(
            entry.name.clone(),
            Arc::clone(&entry.state),
            Arc::clone(&entry.wake),
            Arc::clone(&self.inner.on_change),
        ))
    }

    /// Whether `server` of `pool` may take new connections; unknown pools and servers and
    /// unmonitored pools are up.
    pub fn is_up(&self, pool: &str, server: SocketAddr) -> bool {
        let state = self
            .inner
            .pools
            .lock()
            .iter()
            .find(|e| e.name == pool)
            .map(|e| Arc::clone(&e.state));
        state.is_none_or(|s| s.lock().is_up(server))
    }

    /// Current health of every pool, in configured order.
    pub fn snapshot(&self) -> Vec<PoolHealth> {
        let entries: Vec<(String, Arc<Mutex<PoolState>>)> = self
            .inner
            .pools
            .lock()
            .iter()
            .map(|e| (e.name.clone(), Arc::clone(&e.state)))
            .collect();
        entries
            .into_iter()
            .map(|(pool, state)| {
                let st = state.lock();
                let servers = st
                    .servers
                    .iter()
                    .map(|&addr| {
                        let info = st.info.get(&addr).cloned().unwrap_or_else(ServerInfo::new);
                        ServerHealthStatus {
                            addr,
                            up: st.is_up(addr),
                            since: info.since,
                            last_error: info.last_error,
                            transitions: info.transitions,
                        }
                    })
                    .collect();
                PoolHealth {
                    pool,
                    monitor: st.monitor.clone(),
                    servers,
                }
            })
            .collect()
    }

    /// Stops every probe task; the last known states stay readable.
    pub fn stop(&self) {
        for e in self.inner.pools.lock().iter_mut() {
            e.stop_task();
        }
    }
}

impl crate::balancer::health::HealthView for MonitorHandle {
    fn is_up(&self, pool: &str, server: SocketAddr) -> bool {
        MonitorHandle::is_up(self, pool, server)
    }
}

fn log_event(e: &HealthEvent) {
    if e.up {
        tracing::info!(pool = %e.pool, server = %e.server, reason = %e.reason, "server up");
    } else {
        tracing::warn!(pool = %e.pool, server = %e.server, reason = %e.reason, "server down");
    }
}

/// Probes one pool's servers until aborted (or until the pool loses its monitor).
async fn run_pool(
    name: String,
    state: Arc<Mutex<PoolState>>,
    wake: Arc<Notify>,
    on_change: OnChange,
) {
    let mut probes = FuturesUnordered::new();
    loop {
        let next_due = {
            let mut st = state.lock();
            let Some(monitor) = st.monitor.clone() else {
                return;
            };
            let pool_tls = st.tls.clone();
            let Some(tracker) = st.tracker.as_mut() else {
                return;
            };
            for addr in tracker.due(Instant::now()) {
                let kind: MonitorKind = monitor.kind.clone();
                let timeout = monitor.timeout;
                let tls = pool_tls.clone();
                probes.push(async move { (addr, probe(&kind, addr, tls.as_ref(), timeout).await) });
            }
            tracker.next_due()
        };
        let sleep = async {
            match next_due {
                Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some((addr, result)) = probes.next() => {
                if let Some(event) = record(&name, &state, addr, result) {
                    log_event(&event);
                    on_change(event);
                }
            }
            () = sleep => {}
            () = wake.notified() => {}
        }
    }
}

/// Feeds one probe result to the tracker; returns the transition it caused.
fn record(
    pool: &str,
    state: &Mutex<PoolState>,
    addr: SocketAddr,
    result: Result<(), ProbeError>,
) -> Option<HealthEvent> {
    let mut st = state.lock();
    let error = result.err().map(|e| e.to_string());
    if let Some(e) = &error {
        tracing::debug!(pool, server = %addr, error = %e, "probe failed");
    }
    if let (Some(e), Some(info)) = (&error, st.info.get_mut(&addr)) {
        info.last_error = Some(e.clone());
    }
    let rise = st.monitor.as_ref().map_or(1, |m| m.rise);
    let transition = st
        .tracker
        .as_mut()?
        .record(addr, error.is_none(), Instant::now())?;
    let info = st.info.get_mut(&addr)?;
    let up = transition.transition == Transition::WentUp;
    info.since = SystemTime::now();
    info.transitions += 1;
    let reason = match error {
        Some(e) => e,
        None => format!(
            "{rise} consecutive successful probe{}",
            if rise == 1 { "" } else { "s" }
        ),
    };
    Some(HealthEvent {
        pool: pool.to_owned(),
        server: addr,
        up,
        reason,
    })
}

#[cfg(test)]
mod tests;
