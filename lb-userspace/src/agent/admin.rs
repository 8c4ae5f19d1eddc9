//! The admin API's view of the running agent ([`AdminBackend`]).
//!
//! The agent's event loop owns the configuration and applies reloads; the API reads shared
//! handles (data plane, proxy, tables, health) and asks the loop for reloads over a channel.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::{Mutex, RwLock};

use super::levers::{LeverError, ServerChange};
use super::pools::ConfiguredPool;
use super::views::{Sources, levers_view};
use super::{fastpath, spec};
use crate::api::metrics::{
    DataScriptMetrics, FastPathMetrics, MetricsSnapshot, ReplicationMetrics,
};
use crate::api::model::{
    PoolView, ServerChangeRequest, ServerChangeView, StatusView, TableCounters, TableEntryView,
    VirtualServiceView,
};
use crate::api::{AdminBackend, BackendError, ReloadFuture, ReloadRequester};
use crate::balancer::algorithm::ServerStatus;
use crate::balancer::levers::Levers;
use crate::config::{Config, MAX_WEIGHT, ServiceType};
use crate::dataplane::Dataplane;
use crate::datascript::{DsCounters, Event};
use crate::monitor::MonitorHandle;
use crate::proxy::HttpProxy;
use crate::tables::{Clock, EntryView, TableStore};

/// Reload bookkeeping for the status document and metrics.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReloadStats {
    /// Reloads applied since start.
    pub applied: u64,
    /// Reloads refused since start.
    pub refused: u64,
    /// Last attempt.
    pub last: Option<SystemTime>,
}

/// Handles shared between the event loop and the admin API.
pub struct Shared {
    /// The running configuration (replaced as a whole on reload).
    pub config: RwLock<Arc<Config>>,
    /// The data plane (locked briefly for map reads and writes).
    pub dataplane: Mutex<Dataplane>,
    /// The HTTP proxy, when an http virtual service exists.
    pub proxy: Mutex<Option<HttpProxy>>,
    /// DataScript tables.
    pub tables: Arc<TableStore>,
    /// Health monitors.
    pub monitor: MonitorHandle,
    /// Table lifetimes' clock.
    pub clock: Arc<dyn Clock>,
    /// When the agent started.
    pub started: SystemTime,
    /// Reload counts.
    pub reloads: Mutex<ReloadStats>,
    /// Table replication through Redis, when configured.
    pub replication: Mutex<Option<crate::replication::Replication>>,
    /// DataScript counters per virtual service, kept across reloads.
    pub script_counters: Mutex<HashMap<String, Arc<DsCounters>>>,
    /// The pools the proxy picks from (replaced as a whole on reload).
    pub pools: RwLock<HashMap<String, Arc<ConfiguredPool>>>,
    /// The DataScripts of the http services (replaced as a whole on reload; a reload keeps
    /// the VMs of services whose scripts did not change).
    pub scripts: RwLock<HashMap<String, Arc<crate::datascript::DataScriptHooks>>>,
    /// Server states and weights set by the operator (`latch server ...`).
    pub levers: Mutex<Levers>,
    /// Where `levers` are kept across restarts.
    pub state_file: PathBuf,
    /// How full the kernel maps were at the last sweep.
    pub map_fill: Mutex<Vec<crate::dataplane::MapFill>>,
    /// The HTTP fast path (for `/metrics`).
    pub fastpath: Arc<fastpath::FastPath>,
}

impl Shared {
    /// The running pool of that name.
    pub fn pool(&self, name: &str) -> Option<Arc<ConfiguredPool>> {
        self.pools.read().get(name).cloned()
    }

    /// Programs the data plane from the running config and the pools' current health, states
    /// and weights (after `why`, for the log).
    pub fn reprogram_dataplane(&self, why: &str) {
        let config = self.config.read().clone();
        let pools = self.pools.read().clone();
        match spec::dataplane_spec(&config, &pools) {
            Ok(spec) => {
                if let Err(err) = self.dataplane.lock().apply(&spec) {
                    tracing::error!(%err, "re-programming the data plane after {why} failed");
                }
            }
            Err(err) => tracing::error!(%err, "data-plane spec after {why}"),
        }
    }

    /// A server went down or into maintenance: table entries that point at it are removed
    /// (and with them their kernel mirror and fast-path pins), so their clients are balanced
    /// afresh and the scripts learn the new server, as Avi re-persists clients of a down
    /// server. Sessions of a server that only flapped are re-learned the same way.
    pub fn forget_sessions_on(&self, server: SocketAddr) {
        let now = self.clock.now_ns();
        let mut removed = 0usize;
        for vs in self.tables.vs_names() {
            let Some(tables) = self.tables.get_vs(&vs) else {
                continue;
            };
            for e in tables.list(None, None, usize::MAX, now) {
                if value_names_server(&e.value, server) && tables.remove(&e.table, &e.key, now) {
                    removed += 1;
                }
            }
        }
        if removed > 0 {
            tracing::info!(%server, removed, "table entries of a server taken out removed; their clients are balanced again");
        }
    }
}

/// Whether a table value names `server`: `IP:port` (`[IPv6]:port`) equal to it, or a bare
/// address (what `avi.pool.server_ip()` returns) equal to its address. An IPv4 address
/// written IPv4-mapped (`::ffff:192.0.2.1`) is that IPv4 address.
fn value_names_server(value: &str, server: SocketAddr) -> bool {
    let value = value.trim();
    if let Ok(sa) = value.parse::<SocketAddr>() {
        return sa.ip().to_canonical() == server.ip() && sa.port() == server.port();
    }
    value
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.to_canonical() == server.ip())
}

/// [`AdminBackend`] over [`Shared`].
pub struct AgentAdmin {
    shared: Arc<Shared>,
    reloader: ReloadRequester,
}

impl AgentAdmin {
    /// The backend; reload requests go to the receiver paired with `reloader`.
    pub fn new(shared: Arc<Shared>, reloader: ReloadRequester) -> Self {
        Self { shared, reloader }
    }

    fn with_sources<R>(&self, f: impl FnOnce(Sources<'_>) -> R) -> R {
        let s = &self.shared;
        let config = s.config.read().clone();
        let proxy = s.proxy.lock().as_ref().map(HttpProxy::stats);
        let dataplane = match s.dataplane.lock().stats() {
            Ok(stats) => Some(stats),
            Err(err) => {
                tracing::warn!(%err, "reading data-plane counters failed");
                None
            }
        };
        let health = s.monitor.snapshot();
        let mirror = s.dataplane.lock().kernel_mirror();
        let tables: Vec<(String, TableCounters)> = s
            .tables
            .vs_names()
            .into_iter()
            .filter_map(|name| {
                let c = s.tables.get_vs(&name)?.counters();
                let u = mirror.unmirrored(&name);
                Some((
                    name,
                    TableCounters {
                        entries: c.entries,
                        inserts: c.inserts,
                        updates: c.updates,
                        hits: c.hits,
                        misses: c.misses,
                        expirations: c.expirations,
                        removals: c.removals,
                        failures: c.failures,
                        bytes: c.bytes,
                        memory_limit: c.memory_limit,
                        unmirrored_full: u.full,
                        unmirrored_too_large: u.too_large,
                        unmirrored_failed: u.failed,
                    },
                ))
            })
            .collect();
        let reloads = *s.reloads.lock();
        let datascripts: Vec<DataScriptMetrics> = s
            .script_counters
            .lock()
            .iter()
            .flat_map(|(vs, counters)| {
                Event::ALL.map(|event| {
                    let c = counters.get(event);
                    DataScriptMetrics {
                        vs: vs.clone(),
                        event: event.to_string(),
                        runs: c.runs,
                        errors: c.errors,
                        budget_stops: c.budget_stops,
                    }
                })
            })
            .collect();
        let servers: Vec<(String, Vec<ServerStatus>)> = s
            .pools
            .read()
            .iter()
            .map(|(name, pool)| (name.clone(), pool.balancer().servers()))
            .collect();
        f(Sources {
            config: &config,
            servers: &servers,
            proxy: proxy.as_ref(),
            dataplane: dataplane.as_ref(),
            health: &health,
            tables: &tables,
            datascripts: &datascripts,
            started: s.started,
            reloads_applied: reloads.applied,
            reloads_refused: reloads.refused,
            last_reload: reloads.last,
        })
    }

    /// The tables of an http virtual service, or why not.
    fn vs_tables(&self, vs: &str) -> Result<Arc<crate::tables::VsTables>, BackendError> {
        let config = self.shared.config.read().clone();
        match config.virtual_service(vs) {
            None => Err(BackendError::UnknownVs { vs: vs.to_string() }),
            Some(v) if v.kind != ServiceType::Http => {
                Err(BackendError::NoTables { vs: vs.to_string() })
            }
            Some(_) => Ok(self.shared.tables.vs(vs)),
        }
    }

    fn entry_view(&self, e: &EntryView, now: u64) -> TableEntryView {
        TableEntryView {
            table: e.table.clone(),
            key: e.key.clone(),
            value: e.value.clone(),
            expires_in_seconds: e.remaining_s(now),
        }
    }
}

impl AdminBackend for AgentAdmin {
    fn status(&self) -> StatusView {
        self.with_sources(|s| s.status(SystemTime::now()))
    }

    fn virtual_services(&self) -> Vec<VirtualServiceView> {
        self.with_sources(|s| s.virtual_services())
    }

    fn pools(&self) -> Vec<PoolView> {
        self.with_sources(|s| s.pools())
    }

    fn table_list(
        &self,
        vs: &str,
        table: Option<&str>,
        prefix: Option<&str>,
        limit: usize,
    ) -> Result<Vec<TableEntryView>, BackendError> {
        let tables = self.vs_tables(vs)?;
        let now = self.shared.clock.now_ns();
        Ok(tables
            .list(table, prefix, limit, now)
            .iter()
            .map(|e| self.entry_view(e, now))
            .collect())
    }

    fn table_get(
        &self,
        vs: &str,
        table: &str,
        key: &str,
    ) -> Result<Option<TableEntryView>, BackendError> {
        let tables = self.vs_tables(vs)?;
        let now = self.shared.clock.now_ns();
        Ok(tables
            .get(table, key, now)
            .map(|e| self.entry_view(&e, now)))
    }

    fn table_delete(&self, vs: &str, table: &str, key: &str) -> Result<bool, BackendError> {
        let tables = self.vs_tables(vs)?;
        Ok(tables.remove(table, key, self.shared.clock.now_ns()))
    }

    fn table_flush(&self, vs: &str, table: Option<&str>) -> Result<u64, BackendError> {
        let tables = self.vs_tables(vs)?;
        Ok(tables.flush(table) as u64)
    }

    fn set_server(
        &self,
        pool: &str,
        server: &str,
        change: &ServerChangeRequest,
    ) -> Result<ServerChangeView, BackendError> {
        let bad = |message: String| BackendError::BadRequest { message };
        let change = match (&change.state, &change.weight) {
            (Some(state), None) => ServerChange::State(state.parse().map_err(bad)?),
            (None, Some(w)) if w == "config" => ServerChange::Weight(None),
            (None, Some(w)) => ServerChange::Weight(Some(w.parse().map_err(|_| {
                bad(format!(
                    "weight must be a number from 0 to {MAX_WEIGHT} or `config`, got {w:?}"
                ))
            })?)),
            _ => return Err(bad("give exactly one of state and weight".to_owned())),
        };
        let (addr, status) =
            self.shared
                .set_server(pool, server, change)
                .map_err(|err| match err {
                    LeverError::BadWeight(_) => bad(err.to_string()),
                    LeverError::UnknownPool(_) | LeverError::UnknownServer(_) => {
                        BackendError::NotFound {
                            message: err.to_string(),
                        }
                    }
                })?;
        Ok(ServerChangeView {
            pool: pool.to_owned(),
            server: addr,
            up: status.up,
            active_requests: status.active as u64,
            levers: levers_view(&status),
        })
    }

    fn reload(&self) -> ReloadFuture {
        self.reloader.request()
    }

    fn metrics_snapshot(&self) -> MetricsSnapshot {
        let mut snapshot = self.with_sources(|s| s.metrics());
        snapshot.maps = self
            .shared
            .map_fill
            .lock()
            .iter()
            .map(|m| crate::api::metrics::MapMetrics {
                map: m.map.to_owned(),
                entries: m.entries,
                capacity: u64::from(m.capacity),
                evictions: m.evictions,
                full: m.full,
            })
            .collect();
        snapshot.fast_path = self
            .shared
            .fastpath
            .vs_stats()
            .into_iter()
            .map(|f| FastPathMetrics {
                vs: f.vs,
                pinned: f.pinned,
                shared_unpins: f.shared_unpins,
            })
            .collect();
        snapshot.replication = self.shared.replication.lock().as_ref().map(|r| {
            let st = r.stats();
            ReplicationMetrics {
                queued: st.queued,
                coalesced: st.coalesced,
                dropped: st.dropped,
                sent: st.sent,
                applied: st.applied,
                adopted: st.adopted,
                reconnects: st.reconnects,
                errors: st.errors,
                connected: st.connected,
            }
        });
        snapshot
    }
}

#[cfg(test)]
mod tests {
    use super::value_names_server;

    #[test]
    fn table_values_name_servers_of_either_family() {
        let v4 = "192.0.2.11:8080".parse().expect("address");
        let v6 = "[2001:db8:b1::2]:8080".parse().expect("address");
        assert!(value_names_server("192.0.2.11", v4));
        assert!(value_names_server(" 192.0.2.11:8080 ", v4));
        assert!(value_names_server("::ffff:192.0.2.11", v4));
        assert!(!value_names_server("192.0.2.11:8081", v4));
        assert!(!value_names_server("192.0.2.12", v4));
        assert!(value_names_server("2001:db8:b1::2", v6));
        assert!(value_names_server("2001:DB8:B1:0::2", v6));
        assert!(value_names_server("[2001:db8:b1::2]:8080", v6));
        assert!(!value_names_server("[2001:db8:b1::2]:9090", v6));
        assert!(!value_names_server("2001:db8:b1::3", v6));
        assert!(!value_names_server("b1-session", v6));
        assert!(!value_names_server("", v4));
    }
}
