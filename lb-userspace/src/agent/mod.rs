//! The running agent: ties config, data plane, proxy and tables together; reload and signals.
//!
//! The three `*_command` functions are what the `latch` binary calls; they print for people
//! and return the process exit code.

pub mod admin;
pub mod fastpath;
pub mod http;
pub mod levers;
pub mod pools;
pub mod spec;
pub mod tls;
pub mod views;

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::{Mutex, RwLock};
use tokio::sync::mpsc;

use tokio::signal::unix::{SignalKind, signal};

use crate::api::{self, ApiError, model::ReloadView};
use crate::config::{self, Config, ConfigErrors};
use crate::dataplane::{self, Dataplane, DataplaneError};
use crate::monitor::{HealthEvent, Monitor};
use crate::proxy::{HttpProxy, ProxyError};
use crate::replication::{Replication, ReplicationError};
use crate::tables::{Clock, MonotonicClock, NoMirror, TableLimits, TableStore};

/// Why the agent could not start or go on.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The configuration was refused (every diagnostic, one per line).
    #[error("configuration refused:\n{0}")]
    Config(ConfigErrors),
    /// The configuration cannot be programmed into the data plane.
    #[error(transparent)]
    Spec(#[from] spec::SpecError),
    /// The data plane failed.
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    /// The HTTP side (DataScripts, VMs) cannot be built.
    #[error(transparent)]
    Http(#[from] http::HttpBuildError),
    /// The HTTP proxy failed to start (e.g. a listener could not be bound).
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    /// The admin API cannot start (token file, exposure without a token, bind).
    #[error(transparent)]
    Api(#[from] ApiError),
    /// Replication could not start (a bad Redis URL; Redis being down is not an error).
    #[error(transparent)]
    Replication(#[from] ReplicationError),
    /// Setting up the runtime or signal handlers failed.
    #[error("{action}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl From<ConfigErrors> for AgentError {
    fn from(errors: ConfigErrors) -> Self {
        AgentError::Config(errors)
    }
}

/// How often expired persistence entries and stale flows are collected.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);
/// A kernel map fuller than this (percent of its capacity) is warned about.
const MAP_FILL_WARN_PERCENT: u64 = 90;
/// Least time between two fill warnings of one map.
const MAP_FILL_WARN_EVERY: Duration = Duration::from_secs(60);
/// How often queued table lifetime changes are written into the kernel mirror (see
/// `dataplane::mirror`): a kill -9 can lose at most this much of them.
const MIRROR_FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// What a new agent adds to its own drain timeout when it waits for a draining one to exit:
/// the drain's end, the replication stop and the last mirror flush.
const DRAIN_EXIT_MARGIN: Duration = Duration::from_secs(10);
/// How often backends' neighbour entries are refreshed (well inside the kernel's default
/// 60 s stale-entry garbage collection).
const NEIGHBOR_INTERVAL: Duration = Duration::from_secs(20);
/// How often slow-start ramps advance (a ramp has ten steps, so this is fine enough for
/// ramps of ten seconds and more).
const SLOW_START_INTERVAL: Duration = Duration::from_millis(500);

/// Every backend address the data plane forwards to.
fn backend_addrs(spec: &dataplane::DataplaneSpec) -> std::collections::BTreeSet<std::net::IpAddr> {
    spec.services
        .iter()
        .flat_map(|s| s.backends.iter().map(|b| b.addr.ip()))
        .collect()
}

/// `latch check -c FILE`: validate and print every error; exit 1 if there is one.
pub fn check_command(path: &Path) -> Result<ExitCode, AgentError> {
    match config::load(path) {
        Ok(config) => {
            let spec = spec::dataplane_spec(&config, &crate::balancer::health::AllUp)?;
            let scripts: Vec<_> = config
                .virtual_services
                .iter()
                .flat_map(|v| v.datascripts.iter().cloned())
                .collect();
            for warning in crate::datascript::lint(&scripts) {
                println!("warning: {warning}");
            }
            if let Err(errors) = http::compile_scripts(&config, &HashMap::new()) {
                for error in &errors {
                    println!("{error}");
                }
                return Ok(ExitCode::FAILURE);
            }
            println!(
                "{}: OK ({} virtual services, {} pools)",
                path.display(),
                spec.services.len(),
                config.pools.len()
            );
            print!(
                "{}",
                kernel_memory_report(&config.agent.capacity, dataplane::possible_cpus())
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            for diagnostic in &errors.diagnostics {
                println!("{diagnostic}");
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// What `latch check` says of the kernel memory the maps will take.
fn kernel_memory_report(caps: &lb_common::Capacities, cpus: u32) -> String {
    let maps = dataplane::kernel_memory(caps, cpus);
    let fixed: u64 = maps.iter().map(|m| m.fixed_bytes).sum();
    let most: u64 = maps
        .iter()
        .map(|m| m.fixed_bytes + m.per_entry_bytes * u64::from(m.max_entries))
        .sum();
    let mut out = format!(
        "kernel maps ([agent.capacity], {cpus} possible CPUs): {} when created, up to {} with \
         the table mirror full\n",
        mib(fixed),
        mib(most)
    );
    for m in &maps {
        let per = if m.per_entry_bytes > 0 {
            format!(" + {} B per entry present", m.per_entry_bytes)
        } else {
            String::new()
        };
        out.push_str(&format!(
            "  {:<18} {:>10} entries  {:>11}{per}\n",
            m.name,
            m.max_entries,
            mib(m.fixed_bytes)
        ));
    }
    out
}

/// `latch down -c FILE`: detach and unpin everything under the config's bpffs_dir.
pub fn down_command(path: &Path) -> Result<ExitCode, AgentError> {
    let config = config::load(path)?;
    let report = dataplane::teardown(&config.agent.bpffs_dir)?;
    println!(
        "latch down: detached {} interface(s){}{}, removed {} pinned object(s){}",
        report.links_detached.len(),
        if report.links_detached.is_empty() {
            ""
        } else {
            ": "
        },
        report.links_detached.join(", "),
        report.pins_removed,
        if report.removed_dir {
            format!(" and {}", config.agent.bpffs_dir.display())
        } else {
            String::new()
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// `latch run -c FILE`: run in the foreground until SIGTERM or SIGINT.
pub fn run_command(path: &Path) -> Result<ExitCode, AgentError> {
    let config = config::load(path)?;
    let _log_writer = init_logging(&config);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| AgentError::Io {
            action: "starting the control-plane runtime",
            source,
        })?;
    runtime.block_on(run(config))?;
    Ok(ExitCode::SUCCESS)
}

/// Logs go to stderr through a writer thread, so a proxy worker formatting an access line
/// never waits on the terminal or a pipe (it only waits when 128k lines are queued: lines are
/// never dropped). Colours only on a terminal. Keep the guard until exit: dropping it flushes.
fn init_logging(config: &Config) -> tracing_appender::non_blocking::WorkerGuard {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer);
    // A second initialisation (tests) is harmless: keep the first subscriber.
    let _ = match config.agent.log_format {
        config::LogFormat::Json => builder.json().try_init(),
        config::LogFormat::Text => builder.try_init(),
    };
    guard
}

/// The agent proper: data plane, pools, tables, proxy and monitors, and what configured them.
/// What the admin API also reads lives in [`admin::Shared`].
struct Agent {
    shared: Arc<admin::Shared>,
    fastpath: Arc<fastpath::FastPath>,
    /// When each map's fill warning was last logged.
    map_warned: Mutex<HashMap<&'static str, std::time::Instant>>,
}

fn has_http(config: &Config) -> bool {
    config
        .virtual_services
        .iter()
        .any(|v| v.kind == config::ServiceType::Http)
}

impl Agent {
    fn start(
        config: Config,
        health_events: mpsc::UnboundedSender<HealthEvent>,
    ) -> Result<Self, AgentError> {
        let clock: Arc<dyn Clock> = Arc::new(MonotonicClock);
        let limits = TableLimits {
            max_entries: config.agent.datascript.table_max_entries,
            ..TableLimits::default()
        };
        let tables = Arc::new(TableStore::new(limits, Arc::new(NoMirror)));
        let script_counters = Mutex::new(HashMap::new());
        // Opened before the HTTP side is built: the fast path's observer writes to it.
        // An agent draining on the same pins is waited for: as long as a drain of ours may
        // take, plus its last mirror flush.
        let mut dataplane = Dataplane::open_pinned(
            &config.agent.bpffs_dir,
            &config.agent.capacity,
            config.agent.ephemeral_pins,
            config.agent.http.drain_timeout + DRAIN_EXIT_MARGIN,
        )?;
        let fastpath = Arc::new(fastpath::FastPath::kernel(&dataplane));
        let state_file = config.agent.server_state_file();
        let levers = levers::load(&state_file, &config);
        let plan = http::build(
            &config,
            &http::Running::default(),
            &levers,
            &tables,
            Arc::clone(&clock),
            &http::TableObserver::FastPathServices(Arc::clone(&fastpath) as _),
            &script_counters,
        )?;
        let spec = spec::dataplane_spec(&config, &plan.pools)?;
        dataplane.set_tunnel_source(
            config.agent.tunnel_source_ipv4,
            config.agent.tunnel_source_ipv6,
        )?;
        dataplane.apply(&spec)?;
        fastpath::adopt_kernel_state(&config, &dataplane, &tables, &fastpath, clock.now_ns())?;
        dataplane::neighbor::solicit(backend_addrs(&spec));
        let hooks: Vec<(String, dataplane::Hook)> = config
            .agent
            .interfaces
            .iter()
            .map(|i| {
                let hook = if config.agent.tc_interfaces.contains(i) {
                    dataplane::Hook::Tc
                } else {
                    dataplane::Hook::Xdp
                };
                (i.clone(), hook)
            })
            .collect();
        let attached = dataplane.attach_hooks(&hooks)?;
        for a in &attached {
            tracing::info!(attached = ?a, "XDP attached");
        }
        // Before the proxy serves: a joining host loads the cluster's entries first (bounded).
        let replication = match &config.replication {
            Some(r) => Some(Replication::start(
                r,
                Arc::clone(&tables),
                Arc::clone(&clock),
            )?),
            None => None,
        };
        let proxy = if has_http(&config) {
            Some(HttpProxy::start(http::proxy_settings(&config), plan.proxy)?)
        } else {
            None
        };
        let monitor = Monitor::start(&config.pools, move |event| {
            // The loop owns the pools and the data plane; it applies the change.
            let _ = health_events.send(event);
        });
        tracing::info!(
            config = %config.path.display(),
            services = spec.services.len(),
            adopted = dataplane.adopted(),
            "latch running"
        );
        let shared = Arc::new(admin::Shared {
            config: RwLock::new(Arc::new(config)),
            dataplane: Mutex::new(dataplane),
            proxy: Mutex::new(proxy),
            tables,
            monitor,
            clock,
            started: SystemTime::now(),
            reloads: Mutex::new(admin::ReloadStats::default()),
            replication: Mutex::new(replication),
            script_counters,
            pools: RwLock::new(plan.pools),
            scripts: RwLock::new(plan.scripts),
            levers: Mutex::new(levers),
            state_file,
            map_fill: Mutex::new(Vec::new()),
            fastpath: Arc::clone(&fastpath),
        });
        Ok(Self {
            shared,
            fastpath,
            map_warned: Mutex::new(HashMap::new()),
        })
    }

    fn config(&self) -> Arc<Config> {
        self.shared.config.read().clone()
    }

    /// SIGHUP or `latch reload`: all or nothing. Everything is built before anything running
    /// changes; a refused config leaves everything as it was.
    fn reload(&mut self) -> ReloadView {
        let view = self.try_reload();
        let mut stats = self.shared.reloads.lock();
        stats.last = Some(SystemTime::now());
        if view.applied {
            stats.applied += 1;
        } else {
            stats.refused += 1;
            for d in &view.diagnostics {
                tracing::error!(%d, "reload refused");
            }
        }
        view
    }

    fn try_reload(&mut self) -> ReloadView {
        let refused = |diagnostics: Vec<String>| ReloadView {
            applied: false,
            diagnostics,
            warnings: Vec::new(),
        };
        let current = self.config();
        let new = match config::load(&current.path) {
            Ok(new) => new,
            Err(errors) => {
                return refused(errors.diagnostics.iter().map(ToString::to_string).collect());
            }
        };
        let diff = config::diff(&current, &new);
        let mut warnings: Vec<String> = diff
            .restart_required
            .iter()
            .map(|s| format!("{s} changes only on restart; the rest of the reload applies"))
            .collect();
        if diff.replication_changed {
            warnings.push(
                "[replication] changes only on restart; the rest of the reload applies".into(),
            );
        }
        for w in &warnings {
            tracing::warn!("{w}");
        }
        // Held to the end: a server state set meanwhile through the API waits for the new pools.
        let mut running_levers = self.shared.levers.lock();
        // Servers the new config drops lose their levers (one added again later starts
        // ready); a refused reload keeps them all.
        let mut levers = running_levers.clone();
        levers.retain(|pool, server| new.pool(pool).is_some_and(|p| p.server(server).is_some()));
        let running = http::Running {
            pools: self.shared.pools.read().clone(),
            scripts: self.shared.scripts.read().clone(),
        };
        let plan = match http::build(
            &new,
            &running,
            &levers,
            &self.shared.tables,
            Arc::clone(&self.shared.clock),
            &http::TableObserver::FastPathServices(Arc::clone(&self.fastpath) as _),
            &self.shared.script_counters,
        ) {
            Ok(plan) => plan,
            Err(err) => return refused(vec![err.to_string()]),
        };
        let spec = match spec::dataplane_spec(&new, &plan.pools) {
            Ok(spec) => spec,
            Err(err) => return refused(vec![err.to_string()]),
        };
        // The proxy goes first: binding a new listener is what most often fails, and its
        // reload changes nothing when it fails.
        {
            let mut proxy = self.shared.proxy.lock();
            let result = match (proxy.as_ref(), has_http(&new)) {
                (Some(running), _) => running.reload(plan.proxy).map(|()| None),
                (None, true) => HttpProxy::start(http::proxy_settings(&new), plan.proxy).map(Some),
                (None, false) => Ok(None),
            };
            match result {
                Ok(Some(started)) => *proxy = Some(started),
                Ok(None) => {}
                Err(err) => return refused(vec![err.to_string()]),
            }
        }
        {
            let mut dataplane = self.shared.dataplane.lock();
            if let Err(err) = dataplane
                .set_tunnel_source(new.agent.tunnel_source_ipv4, new.agent.tunnel_source_ipv6)
                .and_then(|()| dataplane.apply(&spec))
            {
                return refused(vec![format!(
                    "programming the data plane failed (the proxy already runs the new \
                     configuration): {err}"
                )]);
            }
            fastpath::reconfigure(&new, &dataplane, &self.fastpath);
        }
        dataplane::neighbor::solicit(backend_addrs(&spec));
        let http_names: Vec<String> = new
            .virtual_services
            .iter()
            .filter(|v| v.kind == config::ServiceType::Http)
            .map(|v| v.name.clone())
            .collect();
        self.shared
            .tables
            .retain_vs(|vs| http_names.iter().any(|n| n == vs));
        self.shared.monitor.reconfigure(&new.pools);
        tracing::info!(?diff, "configuration reloaded");
        *self.shared.pools.write() = plan.pools;
        *self.shared.scripts.write() = plan.scripts;
        *self.shared.config.write() = Arc::new(new);
        if *running_levers != levers {
            self.shared.save_levers(&levers);
            *running_levers = levers;
        }
        ReloadView {
            applied: true,
            diagnostics: Vec::new(),
            warnings,
        }
    }

    /// A health monitor saw a server go up or down: the proxy's rotation and the data
    /// plane's maglev tables follow (connections in flight finish where they are).
    fn health_changed(&self, event: &HealthEvent) {
        let Some(pool) = self.shared.pool(&event.pool) else {
            return;
        };
        pool.balancer().set_up(event.server, event.up);
        if event.up {
            pool.balancer()
                .start_slow_start(event.server, self.shared.clock.now_ns());
        } else {
            self.shared.forget_sessions_on(event.server);
        }
        self.shared.reprogram_dataplane("a health change");
    }

    /// Moves slow-start ramps on; the data plane follows each step.
    fn advance_slow_start(&self) {
        let now = self.shared.clock.now_ns();
        let pools = self.shared.pools.read().clone();
        let mut changed = false;
        for pool in pools.values() {
            changed |= pool.balancer().advance_slow_start(now);
        }
        if changed {
            self.shared.reprogram_dataplane("a slow-start step");
        }
    }

    fn refresh_neighbors(&self) {
        let pools = self.shared.pools.read().clone();
        match spec::dataplane_spec(&self.config(), &pools) {
            Ok(spec) => {
                dataplane::neighbor::solicit(backend_addrs(&spec));
            }
            Err(err) => tracing::warn!(%err, "cannot list backends"),
        }
    }

    fn flush_mirror(&self) {
        // The data-plane lock only hands out the mirror; the writes happen without it.
        let mirror = self.shared.dataplane.lock().kernel_mirror();
        mirror.flush();
    }

    fn sweep(&self) {
        let now = self.shared.clock.now_ns();
        let expired = self.shared.tables.sweep(now);
        self.fastpath.sweep(now);
        if !expired.is_empty() {
            tracing::debug!(expired = expired.len(), "table entries expired");
        }
        match self
            .shared
            .dataplane
            .lock()
            .sweep(dataplane::monotonic_now_ns())
        {
            Ok(0) => {}
            Ok(n) => tracing::debug!(removed = n, "swept expired data-plane entries"),
            Err(err) => tracing::warn!(%err, "data-plane sweep failed"),
        }
        self.check_maps();
    }

    /// Reads how full the kernel maps are (for /metrics) and warns, at most once a minute per
    /// map, while one is above [`MAP_FILL_WARN_PERCENT`] of its capacity.
    fn check_maps(&self) {
        let fill = match self.shared.dataplane.lock().map_fill() {
            Ok(f) => f,
            Err(err) => {
                tracing::warn!(%err, "reading how full the kernel maps are failed");
                return;
            }
        };
        let now = std::time::Instant::now();
        let mut warned = self.map_warned.lock();
        for m in &fill {
            if m.entries * 100 < u64::from(m.capacity) * MAP_FILL_WARN_PERCENT {
                continue;
            }
            if warned
                .get(m.map)
                .is_some_and(|t| now.duration_since(*t) < MAP_FILL_WARN_EVERY)
            {
                continue;
            }
            warned.insert(m.map, now);
            tracing::warn!(
                map = m.map,
                entries = m.entries,
                capacity = m.capacity,
                evictions = m.evictions,
                refused_full = m.full,
                "kernel map above {MAP_FILL_WARN_PERCENT}% of its capacity; raise it in \
                 [agent.capacity] (a restart migrates the entries)"
            );
        }
        *self.shared.map_fill.lock() = fill;
    }

    /// SIGTERM: drain HTTP; the data plane stays attached and pinned.
    async fn stop(self) {
        // A `latch run` started from now on waits for this agent to exit.
        self.shared.dataplane.lock().draining();
        self.shared.monitor.stop();
        let proxy = self.shared.proxy.lock().take();
        if let Some(proxy) = proxy {
            let drain = self.shared.config.read().agent.http.drain_timeout;
            tracing::info!(
                "draining HTTP for up to {drain:?}; a `latch run` started now waits for this agent to exit"
            );
            let report = proxy.shutdown(drain).await;
            tracing::info!(?report, "HTTP drained");
        }
        let replication = self.shared.replication.lock().take();
        if let Some(replication) = replication {
            tracing::info!(stats = ?replication.stats(), "replication stopped");
            replication.stop();
        }
        // No request runs any more: the kernel mirror gets the last lifetime changes.
        self.flush_mirror();
        tracing::info!("stopping; the XDP program stays attached and the maps pinned");
    }
}

/// Starts the admin API on `admin_listen` (with the token from `admin_token_file`).
async fn start_admin(
    shared: &Arc<admin::Shared>,
    reloader: api::ReloadRequester,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), AgentError> {
    let config = shared.config.read().clone();
    let token = match &config.agent.admin_token_file {
        Some(path) => Some(api::read_token_file(path)?),
        None => None,
    };
    api::check_exposure(config.agent.admin_listen, token.as_deref())?;
    let server = api::AdminServer::bind(config.agent.admin_listen, token).await?;
    let backend = Arc::new(admin::AgentAdmin::new(Arc::clone(shared), reloader));
    tokio::spawn(async move {
        let mut stop = stop;
        let shutdown = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(err) = server.run(backend, shutdown).await {
            tracing::error!(%err, "admin API stopped");
        }
    });
    Ok(())
}

async fn run(config: Config) -> Result<(), AgentError> {
    let signal_error = |source| AgentError::Io {
        action: "installing signal handlers",
        source,
    };
    let mut hangup = signal(SignalKind::hangup()).map_err(signal_error)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(signal_error)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(signal_error)?;

    let (health_tx, mut health_rx) = mpsc::unbounded_channel();
    let mut agent = Agent::start(config, health_tx)?;
    let (reloader, mut reload_rx) = api::reload_channel();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    start_admin(&agent.shared, reloader, stop_rx).await?;
    // Readiness for scripts and tests: everything is programmed, attached and listening.
    println!("latch ready (pid {})", std::process::id());
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    let mut neighbors = tokio::time::interval(NEIGHBOR_INTERVAL);
    let mut slow_start = tokio::time::interval(SLOW_START_INTERVAL);
    let mut mirror_flush = tokio::time::interval(MIRROR_FLUSH_INTERVAL);
    mirror_flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = hangup.recv() => {
                agent.reload();
            }
            Some(request) = reload_rx.recv() => request.respond(agent.reload()),
            Some(event) = health_rx.recv() => agent.health_changed(&event),
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = sweep.tick() => agent.sweep(),
            _ = neighbors.tick() => agent.refresh_neighbors(),
            _ = mirror_flush.tick() => agent.flush_mirror(),
            _ = slow_start.tick() => agent.advance_slow_start(),
        }
    }
    let _ = stop_tx.send(true);
    agent.stop().await;
    Ok(())
}
