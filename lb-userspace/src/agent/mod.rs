//! The running agent: ties config, data plane, proxy and tables together; reload and signals.
//!
//! The three `*_command` functions are what the `latch` binary calls; they print for people
//! and return the process exit code.

pub mod http;
pub mod pools;
pub mod spec;

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use std::collections::HashMap;
use std::sync::Arc;

use tokio::signal::unix::{SignalKind, signal};

use crate::config::{self, Config, ConfigErrors};
use crate::dataplane::{self, Dataplane, DataplaneError};
use crate::proxy::{HttpProxy, ProxyError};
use crate::tables::{Clock, MonotonicClock, NoMirror, TableLimits, TableStore};

use pools::ConfiguredPool;

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
/// How long SIGTERM lets in-flight HTTP requests finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How often backends' neighbour entries are refreshed (well inside the kernel's default
/// 60 s stale-entry garbage collection).
const NEIGHBOR_INTERVAL: Duration = Duration::from_secs(20);

/// Every backend address the data plane forwards to.
fn backend_addrs(
    spec: &dataplane::DataplaneSpec,
) -> std::collections::BTreeSet<std::net::Ipv4Addr> {
    spec.services
        .iter()
        .flat_map(|s| s.backends.iter().map(|b| *b.addr.ip()))
        .collect()
}

/// `latch check -c FILE`: validate and print every error; exit 1 if there is one.
pub fn check_command(path: &Path) -> Result<ExitCode, AgentError> {
    match config::load(path) {
        Ok(config) => {
            let spec = spec::dataplane_spec(&config, &spec::AllUp)?;
            let scripts: Vec<_> = config
                .virtual_services
                .iter()
                .flat_map(|v| v.datascripts.iter().cloned())
                .collect();
            for warning in crate::datascript::lint(&scripts) {
                println!("warning: {warning}");
            }
            if let Err(errors) = http::compile_scripts(&config) {
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
    init_logging(&config);
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

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second initialisation (tests) is harmless: keep the first subscriber.
    let _ = match config.agent.log_format {
        config::LogFormat::Json => builder.json().try_init(),
        config::LogFormat::Text => builder.try_init(),
    };
}

/// The agent proper: data plane, pools, tables and proxy, and what configured them.
struct Agent {
    config: Config,
    dataplane: Dataplane,
    pools: HashMap<String, Arc<ConfiguredPool>>,
    tables: Arc<TableStore>,
    clock: Arc<dyn Clock>,
    proxy: Option<HttpProxy>,
}

fn has_http(config: &Config) -> bool {
    config
        .virtual_services
        .iter()
        .any(|v| v.kind == config::ServiceType::Http)
}

impl Agent {
    fn start(config: Config) -> Result<Self, AgentError> {
        let clock: Arc<dyn Clock> = Arc::new(MonotonicClock);
        let tables = Arc::new(TableStore::new(TableLimits::default(), Arc::new(NoMirror)));
        let plan = http::build(&config, &HashMap::new(), &tables, Arc::clone(&clock), None)?;

        let mut dataplane = Dataplane::open(&config.agent.bpffs_dir)?;
        let spec = spec::dataplane_spec(&config, &plan.pools)?;
        dataplane.apply(&spec)?;
        dataplane::neighbor::solicit(backend_addrs(&spec));
        let attached = dataplane.attach(&config.agent.interfaces)?;
        for a in &attached {
            tracing::info!(attached = ?a, "XDP attached");
        }
        let proxy = if has_http(&config) {
            Some(HttpProxy::start(http::proxy_settings(&config), plan.proxy)?)
        } else {
            None
        };
        tracing::info!(
            config = %config.path.display(),
            services = spec.services.len(),
            adopted = dataplane.adopted(),
            "latch running"
        );
        Ok(Self {
            config,
            dataplane,
            pools: plan.pools,
            tables,
            clock,
            proxy,
        })
    }

    /// SIGHUP: all or nothing. Everything is built before anything running changes; a
    /// refused config leaves everything as it was.
    fn reload(&mut self) {
        let new = match config::load(&self.config.path) {
            Ok(new) => new,
            Err(errors) => {
                for d in &errors.diagnostics {
                    tracing::error!(%d, "reload refused");
                }
                return;
            }
        };
        let diff = config::diff(&self.config, &new);
        if !diff.restart_required.is_empty() {
            tracing::warn!(
                settings = ?diff.restart_required,
                "these settings change only on restart; the rest of the reload applies"
            );
        }
        let plan = match http::build(
            &new,
            &self.pools,
            &self.tables,
            Arc::clone(&self.clock),
            None,
        ) {
            Ok(plan) => plan,
            Err(err) => {
                tracing::error!(%err, "reload refused");
                return;
            }
        };
        let spec = match spec::dataplane_spec(&new, &plan.pools) {
            Ok(spec) => spec,
            Err(err) => {
                tracing::error!(%err, "reload refused");
                return;
            }
        };
        // The proxy goes first: binding a new listener is what most often fails, and its
        // reload changes nothing when it fails.
        let proxy_result = match (&self.proxy, has_http(&new)) {
            (Some(proxy), _) => proxy.reload(plan.proxy).map(|()| None),
            (None, true) => HttpProxy::start(http::proxy_settings(&new), plan.proxy).map(Some),
            (None, false) => Ok(None),
        };
        match proxy_result {
            Ok(Some(started)) => self.proxy = Some(started),
            Ok(None) => {}
            Err(err) => {
                tracing::error!(%err, "reload refused");
                return;
            }
        }
        if let Err(err) = self.dataplane.apply(&spec) {
            tracing::error!(%err, "reload failed while programming the data plane");
            return;
        }
        dataplane::neighbor::solicit(backend_addrs(&spec));
        let http_names: Vec<String> = new
            .virtual_services
            .iter()
            .filter(|v| v.kind == config::ServiceType::Http)
            .map(|v| v.name.clone())
            .collect();
        self.tables
            .retain_vs(|vs| http_names.iter().any(|n| n == vs));
        tracing::info!(?diff, "configuration reloaded");
        self.pools = plan.pools;
        self.config = new;
    }

    fn refresh_neighbors(&self) {
        match spec::dataplane_spec(&self.config, &self.pools) {
            Ok(spec) => {
                dataplane::neighbor::solicit(backend_addrs(&spec));
            }
            Err(err) => tracing::warn!(%err, "cannot list backends"),
        }
    }

    fn sweep(&self) {
        let expired = self.tables.sweep(self.clock.now_ns());
        if !expired.is_empty() {
            tracing::debug!(expired = expired.len(), "table entries expired");
        }
        match self.dataplane.sweep(dataplane::monotonic_now_ns()) {
            Ok(0) => {}
            Ok(n) => tracing::debug!(removed = n, "swept expired data-plane entries"),
            Err(err) => tracing::warn!(%err, "data-plane sweep failed"),
        }
    }

    /// SIGTERM: drain HTTP; the data plane stays attached and pinned.
    async fn stop(self) {
        if let Some(proxy) = self.proxy {
            let report = proxy.shutdown(DRAIN_TIMEOUT).await;
            tracing::info!(?report, "HTTP drained");
        }
        tracing::info!("stopping; the XDP program stays attached and the maps pinned");
    }
}

async fn run(config: Config) -> Result<(), AgentError> {
    let signal_error = |source| AgentError::Io {
        action: "installing signal handlers",
        source,
    };
    let mut hangup = signal(SignalKind::hangup()).map_err(signal_error)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(signal_error)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(signal_error)?;

    let mut agent = Agent::start(config)?;
    // Readiness for scripts and tests: everything is programmed and attached.
    println!("latch ready (pid {})", std::process::id());
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    let mut neighbors = tokio::time::interval(NEIGHBOR_INTERVAL);
    loop {
        tokio::select! {
            _ = hangup.recv() => agent.reload(),
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = sweep.tick() => agent.sweep(),
            _ = neighbors.tick() => agent.refresh_neighbors(),
        }
    }
    agent.stop().await;
    Ok(())
}
