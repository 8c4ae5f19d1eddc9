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
pub fn compile_scripts(
    config: &Config,
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

/// Builds the HTTP side of `config`. `previous` pools keep their server state, `levers` are
/// the operator's server states and weights; `tables` keeps every entry across reloads (a
/// virtual service's tables are found by its name).
pub fn build(
    config: &Config,
    previous: &HashMap<String, Arc<ConfiguredPool>>,
    levers: &Levers,
    tables: &TableStore,
    clock: Arc<dyn Clock>,
    observer: Option<Arc<dyn ScriptTableObserver>>,
    script_counters: &parking_lot::Mutex<HashMap<String, Arc<DsCounters>>>,
) -> Result<HttpPlan, HttpBuildError> {
    let sets = compile_scripts(config).map_err(HttpBuildError::Scripts)?;
    let pools = build_pools(&config.pools, previous, levers);
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

    let mut services = Vec::new();
    for vs in config
        .virtual_services
        .iter()
        .filter(|v| v.kind == ServiceType::Http)
    {
        let hooks: Option<Arc<dyn HookFactory>> = match sets.get(&vs.name) {
            Some(set) if !set.is_empty() => {
                let vs_tables = tables.vs(&vs.name);
                vs_tables.set_memory_limit(config.agent.datascript.table_memory_limit);
                let env = ScriptEnv {
                    tables: vs_tables,
                    pools: view.clone(),
                    clock: Arc::clone(&clock),
                    limits: limits.clone(),
                    observer: observer.clone(),
                    geo: config.agent.datascript.geo_database.clone(),
                    groups: Arc::clone(&config.groups),
                    rate_limits: Arc::new(RateLimits::new(
                        &config.rate_limiters,
                        vs.rate_limit.clone(),
                    )),
                };
                let counters =
                    Arc::clone(script_counters.lock().entry(vs.name.clone()).or_default());
                Some(Arc::new(DataScriptHooks::with_counters(
                    Arc::clone(set),
                    env,
                    counters,
                )?))
            }
            _ => None,
        };
        let tls = match &vs.tls {
            Some(settings) => Some(super::tls::server_config(&vs.name, settings)?),
            None => None,
        };
        services.push(VirtualServiceSpec {
            name: vs.name.clone(),
            listen: vs.listen,
            pool: vs.pool.clone(),
            hooks,
            tls,
        });
    }
    Ok(HttpPlan {
        proxy: ProxyConfig {
            virtual_services: services,
            pools: pool_specs,
        },
        pools,
    })
}
