//! The routing table: which virtual service a listener serves and which pools exist. Built
//! from a [`ProxyConfig`], validated, and swapped whole on reload.

use std::collections::hash_map::Entry;
use std::net::SocketAddr;
use std::sync::Arc;

use super::ConfigMap;
use super::error::ProxyError;
use super::hooks::{HookFactory, PoolView, ServerView};
use super::picker::ServerPicker;
use super::settings::{PoolSpec, ProxyConfig, UpstreamTls};
use super::stats::{StatsRegistry, VsCounters};

/// A virtual service as the request path sees it.
pub(crate) struct VsRoute {
    pub name: Arc<str>,
    pub listen: SocketAddr,
    pub pool: String,
    pub hooks: Option<Arc<dyn HookFactory>>,
    pub counters: Arc<VsCounters>,
    /// Handshakes new connections when the service terminates TLS.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Immutable once built; the proxy replaces it whole.
#[derive(Default)]
pub(crate) struct RoutingTable {
    vs: ConfigMap<SocketAddr, Arc<VsRoute>>,
    pools: ConfigMap<String, Arc<dyn ServerPicker>>,
    /// Pools that speak TLS to their servers.
    pool_tls: ConfigMap<String, UpstreamTls>,
}

impl RoutingTable {
    pub fn build(config: &ProxyConfig, stats: &StatsRegistry) -> Result<Self, ProxyError> {
        let mut pools: ConfigMap<String, Arc<dyn ServerPicker>> = ConfigMap::default();
        let pool_tls: ConfigMap<String, UpstreamTls> = config
            .pools
            .iter()
            .filter_map(|p| Some((p.name.clone(), p.tls.clone()?)))
            .collect();
        for p in &config.pools {
            if pools.insert(p.name.clone(), p.picker.clone()).is_some() {
                return Err(ProxyError::DuplicatePool {
                    pool: p.name.clone(),
                });
            }
        }
        let mut vs: ConfigMap<SocketAddr, Arc<VsRoute>> = ConfigMap::default();
        for v in &config.virtual_services {
            if !pools.contains_key(&v.pool) {
                return Err(ProxyError::UnknownPool {
                    vs: v.name.clone(),
                    pool: v.pool.clone(),
                });
            }
            match vs.entry(v.listen) {
                Entry::Occupied(e) => {
                    return Err(ProxyError::DuplicateListener {
                        addr: v.listen,
                        first: e.get().name.to_string(),
                        second: v.name.clone(),
                    });
                }
                Entry::Vacant(e) => {
                    e.insert(Arc::new(VsRoute {
                        name: Arc::from(v.name.as_str()),
                        listen: v.listen,
                        pool: v.pool.clone(),
                        hooks: v.hooks.clone(),
                        counters: stats.vs(&v.name),
                        tls: v.tls.clone().map(tokio_rustls::TlsAcceptor::from),
                    }));
                }
            }
        }
        Ok(Self {
            vs,
            pools,
            pool_tls,
        })
    }

    pub fn vs(&self, listen: SocketAddr) -> Option<&Arc<VsRoute>> {
        self.vs.get(&listen)
    }

    pub fn pool(&self, name: &str) -> Option<&Arc<dyn ServerPicker>> {
        self.pools.get(name)
    }

    /// How to speak TLS to the servers of pool `name`, if it does.
    pub fn pool_tls(&self, name: &str) -> Option<&UpstreamTls> {
        self.pool_tls.get(name)
    }

    pub fn listeners(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.vs.keys().copied()
    }

    pub fn vs_names(&self) -> Vec<&str> {
        self.vs.values().map(|v| &*v.name).collect()
    }

    pub fn servers(&self) -> Vec<SocketAddr> {
        let mut all: Vec<SocketAddr> = self
            .pools
            .values()
            .flat_map(|p| p.servers().into_iter().map(|s| s.addr))
            .collect();
        all.sort();
        all.dedup();
        all
    }
}

/// [`PoolView`] over a set of pools, for the DataScript engine (avi.pool.*). Build it from the
/// same [`PoolSpec`]s given to the proxy, before the hook factories that need it.
#[derive(Clone, Default)]
pub struct StaticPoolView {
    pools: ConfigMap<String, Arc<dyn ServerPicker>>,
}

impl StaticPoolView {
    /// A view of `pools`.
    pub fn new(pools: &[PoolSpec]) -> Self {
        Self {
            pools: pools
                .iter()
                .map(|p| (p.name.clone(), p.picker.clone()))
                .collect(),
        }
    }
}

impl PoolView for StaticPoolView {
    fn servers(&self, pool: &str) -> Option<Vec<ServerView>> {
        self.pools.get(pool).map(|p| p.servers())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::picker::RoundRobin;
    use crate::proxy::settings::VirtualServiceSpec;

    fn addr(s: &str) -> SocketAddr {
        s.parse()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    fn config() -> ProxyConfig {
        ProxyConfig {
            virtual_services: vec![VirtualServiceSpec {
                name: "shop".into(),
                listen: addr("198.51.100.10:80"),
                pool: "web".into(),
                hooks: None,
                tls: None,
            }],
            pools: vec![PoolSpec {
                name: "web".into(),
                picker: Arc::new(RoundRobin::new([addr("192.0.2.11:8080")])),
                tls: None,
            }],
        }
    }

    #[test]
    fn validation_rejects_dangling_and_duplicate_names() {
        let stats = StatsRegistry::default();
        let ok = RoutingTable::build(&config(), &stats);
        assert!(ok.is_ok_and(|t| t.vs(addr("198.51.100.10:80")).is_some()));

        let mut dangling = config();
        dangling.virtual_services[0].pool = "nope".into();
        assert!(matches!(
            RoutingTable::build(&dangling, &stats),
            Err(ProxyError::UnknownPool { .. })
        ));

        let mut dup = config();
        let mut second = dup.virtual_services[0].clone();
        second.name = "other".into();
        dup.virtual_services.push(second);
        assert!(matches!(
            RoutingTable::build(&dup, &stats),
            Err(ProxyError::DuplicateListener { .. })
        ));

        let mut dup_pool = config();
        dup_pool.pools.push(dup_pool.pools[0].clone());
        assert!(matches!(
            RoutingTable::build(&dup_pool, &stats),
            Err(ProxyError::DuplicatePool { .. })
        ));

        let view = StaticPoolView::new(&config().pools);
        assert_eq!(view.servers("web").map(|s| s.len()), Some(1));
        assert!(view.servers("nope").is_none());
    }
}
