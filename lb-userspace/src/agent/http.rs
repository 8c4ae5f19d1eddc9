//! Builds what the HTTP proxy runs from a configuration: pools, compiled DataScripts with
//! their tables, and the virtual services. Everything here is built before anything running
//! is touched, so a reload that fails to build changes nothing.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{Config, ServiceType};
use crate::datascript::{
    DataScriptHooks, DsCounters, DsLimits, RateLimits, ScriptEnv, ScriptError, ScriptSet,
    ScriptTableObserver, check_references,
};
use crate::proxy::hooks::HookFactory;
use crate::proxy::{PoolSpec, ProxyConfig, ProxySettings, StaticPoolView, VirtualServiceSpec};
use crate::tables::{Clock, TableStore};

use super::pools::{ConfiguredPool, build_pools};
use crate::balancer::levers::Levers;

/// Why the HTTP side of a configuration cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum HttpBuildError {
    /// DataScripts that do not compile, every one as `file:line: message`.
    #[error("DataScript errors:\n{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Scripts(Vec<ScriptError>),
    /// A Lua VM could not be set up.
    #[error(transparent)]
    Vm(#[from] crate::datascript::DsError),
    /// Building the VMs panicked (a bug): the reload is refused, the agent runs on.
    #[error("building the DataScript VMs failed unexpectedly (see the log)")]
    Panicked,
    /// A service's TLS configuration was refused by rustls.
    #[error(transparent)]
    Tls(#[from] super::tls::TlsBuildError),
}

/// What the agent needs to run the HTTP side of one configuration.
pub struct HttpPlan {
    /// Handed to [`crate::proxy::HttpProxy::start`] or `reload`.
    pub proxy: ProxyConfig,
    /// Every pool (also those only L4 services use), keyed by name.
    pub pools: HashMap<String, Arc<ConfiguredPool>>,
    /// The DataScripts of every http virtual service that has some, keyed by its name.
    pub scripts: HashMap<String, Arc<DataScriptHooks>>,
}

/// What the running configuration built, for the next one to keep where it is unchanged.
#[derive(Clone, Default)]
pub struct Running {
    /// Pools keep their servers' health and connection counts.
    pub pools: HashMap<String, Arc<ConfiguredPool>>,
    /// A service whose scripts and DataScript limits are unchanged keeps its compiled set and
    /// its VMs (see [`DataScriptHooks::reusing`]).
    pub scripts: HashMap<String, Arc<DataScriptHooks>>,
}

/// Proxy tunables from `[agent]`.
pub fn proxy_settings(config: &Config) -> ProxySettings {
    let http = &config.agent.http;
    ProxySettings {
        workers: config.agent.workers.unwrap_or(0),
        header_read_timeout: http.header_read_timeout,
        client_idle_timeout: http.idle_timeout,
        upstream_connect_timeout: http.upstream_connect_timeout,
        upstream_response_timeout: http.upstream_response_timeout,
        client_body_idle_timeout: http.client_body_idle_timeout,
        upstream_body_idle_timeout: http.upstream_body_idle_timeout,
        drain_timeout: http.drain_timeout,
        max_header_bytes: http.max_header_bytes,
        max_headers: http.max_headers,
        ..ProxySettings::default()
    }
}

/// DataScript limits from `[agent.datascript]`.
fn script_limits(config: &Config) -> DsLimits {
    DsLimits {
        instruction_budget: config.agent.datascript.instruction_budget,
        memory_bytes: config.agent.datascript.memory_limit,
        max_body_buffer: config.agent.datascript.max_body_buffer,
        max_event_time: config.agent.datascript.max_event_time,
        max_added_headers: config.agent.datascript.max_added_headers,
        max_added_header_bytes: config.agent.datascript.max_added_header_bytes,
        // One VM per proxy worker: each worker prefers its own, so they never contend.
        vms: config.agent.workers.unwrap_or(0),
        ..DsLimits::default()
    }
}

/// Compiles every http virtual service's scripts; every error of every service, or the sets.
/// A set `running` already has for the same scripts is taken as it is.
pub fn compile_scripts(
    config: &Config,
    running: &HashMap<String, Arc<DataScriptHooks>>,
) -> Result<HashMap<String, Arc<ScriptSet>>, Vec<ScriptError>> {
    let mut sets = HashMap::new();
    let mut errors = Vec::new();
    for vs in config
        .virtual_services
        .iter()
        .filter(|v| v.kind == ServiceType::Http)
    {
        // Literal pool, server, group and rate limiter names must exist, as Avi checks at save.
        errors.extend(check_references(config, vs));
        let unchanged = running
            .get(&vs.name)
            .map(|hooks| hooks.scripts())
            .filter(|set| set.compiled_from(&vs.name, &vs.datascripts));
        if let Some(set) = unchanged {
            sets.insert(vs.name.clone(), Arc::clone(set));
            continue;
        }
        match ScriptSet::compile(&vs.name, vs.datascripts.clone()) {
            Ok(set) => {
                sets.insert(vs.name.clone(), Arc::new(set));
            }
            Err(mut e) => errors.append(&mut e),
        }
    }
    if errors.is_empty() {
        Ok(sets)
    } else {
        Err(errors)
    }
}

/// Who sees the table writes of a service's scripts, and of which services.
#[derive(Clone)]
pub enum TableObserver {
    /// Nobody.
    None,
    /// The fast path: only services with `fast_path` pin clients from their tables, so the
    /// others' scripts skip reading back every entry they upsert.
    FastPathServices(Arc<dyn ScriptTableObserver>),
    /// Every service's scripts (`latch test` records every table operation).
    Every(Arc<dyn ScriptTableObserver>),
}

impl TableObserver {
    fn of(&self, vs: &crate::config::VirtualServiceConfig) -> Option<Arc<dyn ScriptTableObserver>> {
        match self {
            Self::None => None,
            Self::FastPathServices(o) => vs.fast_path.then(|| Arc::clone(o)),
            Self::Every(o) => Some(Arc::clone(o)),
        }
    }
}

/// Builds the HTTP side of `config`. What is `running` is kept where unchanged (pools keep
/// their server state, services their VMs), `levers` are the operator's server states and
/// weights; `tables` keeps every entry across reloads (a virtual service's tables are found
/// by its name). Nothing running changes.
pub fn build(
    config: &Config,
    running: &Running,
    levers: &Levers,
    tables: &TableStore,
    clock: Arc<dyn Clock>,
    observer: &TableObserver,
    script_counters: &parking_lot::Mutex<HashMap<String, Arc<DsCounters>>>,
) -> Result<HttpPlan, HttpBuildError> {
    let sets = compile_scripts(config, &running.scripts).map_err(HttpBuildError::Scripts)?;
    let pools = build_pools(&config.pools, &running.pools, levers);
    let mut pool_specs: Vec<PoolSpec> = Vec::new();
    for p in &config.pools {
        let Some(pool) = pools.get(&p.name) else {
            continue;
        };
        pool_specs.push(PoolSpec {
            name: p.name.clone(),
            picker: Arc::clone(pool) as Arc<dyn crate::proxy::ServerPicker>,
            tls: p
                .tls
                .as_ref()
                .map(|t| super::tls::upstream(&p.name, t))
                .transpose()?,
        });
    }
    let view = Arc::new(StaticPoolView::new(&pool_specs));
    let limits = script_limits(config);

    let http_services = || {
        config
            .virtual_services
            .iter()
            .filter(|v| v.kind == ServiceType::Http)
    };
    let mut jobs = Vec::new();
    for vs in http_services() {
        let Some(set) = sets.get(&vs.name).filter(|set| !set.is_empty()) else {
            continue;
        };
        let vs_tables = tables.vs(&vs.name);
        vs_tables.set_memory_limit(config.agent.datascript.table_memory_limit);
        jobs.push(HooksJob {
            previous: running.scripts.get(&vs.name).cloned(),
            set: Arc::clone(set),
            env: ScriptEnv {
                tables: vs_tables,
                pools: view.clone(),
                clock: Arc::clone(&clock),
                limits: limits.clone(),
                observer: observer.of(vs),
                geo: config.agent.datascript.geo_database.clone(),
                groups: Arc::clone(&config.groups),
                rate_limits: Arc::new(RateLimits::new(
                    &config.rate_limiters,
                    vs.rate_limit.clone(),
                )),
            },
            counters: Arc::clone(script_counters.lock().entry(vs.name.clone()).or_default()),
        });
    }
    let scripts = build_hooks(jobs)?;
    let mut services = Vec::new();
    for vs in http_services() {
        let tls = match &vs.tls {
            Some(settings) => Some(super::tls::server_config(&vs.name, settings)?),
            None => None,
        };
        services.push(VirtualServiceSpec {
            name: vs.name.clone(),
            listen: vs.listen,
            pool: vs.pool.clone(),
            hooks: scripts
                .get(&vs.name)
                .map(|h| Arc::clone(h) as Arc<dyn HookFactory>),
            tls,
        });
    }
    Ok(HttpPlan {
        proxy: ProxyConfig {
            virtual_services: services,
            pools: pool_specs,
        },
        pools,
        scripts,
    })
}

/// What one service's DataScript hooks are built from.
struct HooksJob {
    previous: Option<Arc<DataScriptHooks>>,
    set: Arc<ScriptSet>,
    env: ScriptEnv,
    counters: Arc<DsCounters>,
}

/// Builds the hooks of every job, keyed by service name, on as many threads as there are
/// CPUs: a service whose scripts changed needs a new VM (about a millisecond each), and one
/// script shared by a thousand services changes them all.
fn build_hooks(
    jobs: Vec<HooksJob>,
) -> Result<HashMap<String, Arc<DataScriptHooks>>, HttpBuildError> {
    let build = |job: HooksJob| {
        let name = job.set.vs_name().to_string();
        DataScriptHooks::reusing(job.previous.as_deref(), job.set, job.env, job.counters)
            .map(|hooks| (name, Arc::new(hooks)))
    };
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    if threads < 2 || jobs.len() < 2 {
        return Ok(jobs.into_iter().map(build).collect::<Result<_, _>>()?);
    }
    let mut chunks: Vec<Vec<HooksJob>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, job) in jobs.into_iter().enumerate() {
        chunks[i % threads].push(job);
    }
    let results = std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| scope.spawn(move || chunk.into_iter().map(build).collect::<Vec<_>>()))
            .collect();
        handles.into_iter().map(|h| h.join()).collect::<Vec<_>>()
    });
    let mut built = HashMap::new();
    for result in results {
        // A panic while building (a bug) fails this reload, not the agent.
        let chunk = result.map_err(|_| HttpBuildError::Panicked)?;
        for hooks in chunk {
            let (name, hooks) = hooks?;
            built.insert(name, hooks);
        }
    }
    Ok(built)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::tables::{ManualClock, NoMirror, TableLimits};

    /// Three http services with the same script and `servers` in their pool.
    fn config(servers: &str, script: &str) -> Config {
        let mut text = format!(
            "[agent]\ninterfaces = []\n\n[[pool]]\nname = \"app\"\nservers = [{servers}]\n"
        );
        for v in 0..3 {
            text.push_str(&format!(
                "\n[[virtual_service]]\nname = \"web{v}\"\nlisten = \"198.51.100.20:{}\"\n\
                 type = \"http\"\npool = \"app\"\n\n[[virtual_service.datascript]]\n\
                 event = \"HTTP_REQ\"\nscript = '''\n{script}\n'''\n",
                8000 + v
            ));
        }
        crate::config::parse(&text, Path::new("t.toml")).unwrap_or_else(|e| panic!("{e}"))
    }

    fn build_on(config: &Config, running: &Running, tables: &TableStore) -> HttpPlan {
        build(
            config,
            running,
            &Levers::default(),
            tables,
            Arc::new(ManualClock::new(1)),
            &TableObserver::None,
            &parking_lot::Mutex::new(HashMap::new()),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn running(plan: &HttpPlan) -> Running {
        Running {
            pools: plan.pools.clone(),
            scripts: plan.scripts.clone(),
        }
    }

    fn kept(before: &HttpPlan, after: &HttpPlan) -> usize {
        after
            .scripts
            .iter()
            .filter(|(name, hooks)| {
                before
                    .scripts
                    .get(*name)
                    .is_some_and(|b| hooks.shares_vms_with(b))
            })
            .count()
    }

    #[test]
    fn a_reload_keeps_the_vms_of_services_whose_scripts_did_not_change() {
        let tables = TableStore::new(TableLimits::default(), Arc::new(NoMirror));
        let script = "avi.vs.log('a')";
        let first = build_on(
            &config("\"192.0.2.11:80\"", script),
            &Running::default(),
            &tables,
        );
        assert_eq!(first.scripts.len(), 3);

        // Same file: every service keeps its compiled set and its VMs.
        let same = build_on(
            &config("\"192.0.2.11:80\"", script),
            &running(&first),
            &tables,
        );
        assert_eq!(kept(&first, &same), 3);
        for (name, hooks) in &same.scripts {
            assert!(Arc::ptr_eq(hooks.scripts(), first.scripts[name].scripts()));
        }

        // A pool changed: the scripts see it through their environment, the VMs stay.
        let pool = build_on(
            &config("\"192.0.2.11:80\", \"192.0.2.12:80\"", script),
            &running(&same),
            &tables,
        );
        assert_eq!(kept(&same, &pool), 3);

        // The script changed: every service gets new VMs.
        let changed = build_on(
            &config("\"192.0.2.11:80\"", "avi.vs.log('b')"),
            &running(&pool),
            &tables,
        );
        assert_eq!(changed.scripts.len(), 3);
        assert_eq!(kept(&pool, &changed), 0);
    }
}
