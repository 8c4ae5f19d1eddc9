//! A configured pool as the proxy sees it: the pure [`PoolBalancer`] plus the request key a
//! consistent-hash pool hashes. The agent keeps one per pool across reloads, so health flags
//! and in-flight counts survive a configuration change.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::balancer::algorithm::{PoolBalancer, Strategy};
use crate::config::{Algorithm, HashKey, PoolConfig};
use crate::proxy::hooks::ServerView;
use crate::proxy::{PickContext, ServerPicker};

/// One pool: its balancer and what consistent hashing keys on.
#[derive(Debug)]
pub struct ConfiguredPool {
    balancer: PoolBalancer,
    hash: Option<HashKey>,
}

impl ConfiguredPool {
    /// The pool for `config`, keeping server state from `previous` (the same pool before a
    /// reload) for servers that stay.
    pub fn new(config: &PoolConfig, previous: Option<&ConfiguredPool>) -> Self {
        let hash = match &config.algorithm {
            Algorithm::ConsistentHash(key) => Some(key.clone()),
            Algorithm::RoundRobin | Algorithm::LeastConnections => None,
        };
        Self {
            balancer: PoolBalancer::rebuild(
                Strategy::from(&config.algorithm),
                &config.servers,
                previous.map(|p| &p.balancer),
            ),
            hash,
        }
    }

    /// The balancer (health flags, in-flight counts).
    pub fn balancer(&self) -> &PoolBalancer {
        &self.balancer
    }

    fn hash_key(&self, ctx: &PickContext<'_>) -> Option<Vec<u8>> {
        let configured = self.hash.as_ref()?;
        if let Some(key) = ctx.hash_key {
            return Some(key.to_vec());
        }
        match configured {
            HashKey::ClientIp => Some(ctx.client.ip().to_string().into_bytes()),
            HashKey::Header(name) => ctx.headers.get(name).map(|v| v.as_bytes().to_vec()),
            HashKey::Cookie(name) => cookie(ctx.headers, name).map(String::into_bytes),
        }
    }
}

/// Value of cookie `name` in the request's Cookie headers.
fn cookie(headers: &http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| k.trim() == name)
        .map(|(_, v)| v.trim().to_string())
}

impl ServerPicker for ConfiguredPool {
    fn pick(&self, ctx: &PickContext<'_>) -> Option<SocketAddr> {
        let key = self.hash_key(ctx);
        let first = self.balancer.pick(key.as_deref())?.addr();
        if !ctx.exclude.contains(&first) {
            return Some(first);
        }
        // A retry after a failed connect: the keyed choice already failed, so rotate.
        let (_, total) = self.balancer.up_count();
        (0..total)
            .filter_map(|_| self.balancer.pick(None).map(|h| h.addr()))
            .find(|a| !ctx.exclude.contains(a))
    }

    fn servers(&self) -> Vec<ServerView> {
        self.balancer
            .servers()
            .into_iter()
            .map(|s| ServerView {
                addr: s.addr,
                up: s.up,
            })
            .collect()
    }

    fn server_state(&self, server: SocketAddr) -> Option<bool> {
        self.balancer.is_up(server)
    }

    fn request_started(&self, server: SocketAddr) {
        self.balancer.started(server);
    }

    fn request_finished(&self, server: SocketAddr) {
        self.balancer.finished(server);
    }
}

/// Every pool of a configuration, rebuilt from the previous set on reload.
pub fn build_pools(
    configs: &[PoolConfig],
    previous: &HashMap<String, Arc<ConfiguredPool>>,
) -> HashMap<String, Arc<ConfiguredPool>> {
    configs
        .iter()
        .map(|c| {
            let pool = ConfiguredPool::new(c, previous.get(&c.name).map(Arc::as_ref));
            (c.name.clone(), Arc::new(pool))
        })
        .collect()
}

/// Server health as the pools know it, for the data-plane spec.
impl crate::balancer::health::HealthView for HashMap<String, Arc<ConfiguredPool>> {
    fn is_up(&self, pool: &str, server: SocketAddr) -> bool {
        self.get(pool)
            .and_then(|p| p.balancer.is_up(server))
            .unwrap_or(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Algorithm, HashKey, PoolConfig};

    fn pool(algorithm: Algorithm) -> PoolConfig {
        PoolConfig {
            name: "p".into(),
            algorithm,
            servers: vec![
                "192.0.2.11:80".parse().unwrap_or_else(|_| unreachable!()),
                "192.0.2.12:80".parse().unwrap_or_else(|_| unreachable!()),
                "192.0.2.13:80".parse().unwrap_or_else(|_| unreachable!()),
            ],
            health_monitor: None,
        }
    }

    fn ctx<'a>(
        headers: &'a http::HeaderMap,
        uri: &'a http::Uri,
        exclude: &'a [SocketAddr],
    ) -> PickContext<'a> {
        PickContext {
            client: SocketAddr::from(([203, 0, 113, 2], 40000)),
            headers,
            uri,
            hash_key: None,
            exclude,
        }
    }

    #[test]
    fn cookie_hash_is_sticky_and_excludes_failed_servers() {
        let p = ConfiguredPool::new(
            &pool(Algorithm::ConsistentHash(HashKey::Cookie("sid".into()))),
            None,
        );
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::COOKIE,
            http::HeaderValue::from_static("a=1; sid=abc"),
        );
        let uri = http::Uri::from_static("/");
        let first = p.pick(&ctx(&headers, &uri, &[]));
        assert!(first.is_some());
        for _ in 0..10 {
            assert_eq!(p.pick(&ctx(&headers, &uri, &[])), first);
        }
        let excluded = [first.unwrap_or_else(|| unreachable!())];
        let retry = p.pick(&ctx(&headers, &uri, &excluded));
        assert!(retry.is_some());
        assert_ne!(retry, first);
    }

    /// The pick of `p` for a request whose script chose `key` (avi.pool.chash).
    fn pick_keyed(p: &ConfiguredPool, key: &[u8]) -> Option<SocketAddr> {
        let headers = http::HeaderMap::new();
        let uri = http::Uri::from_static("/");
        p.pick(&PickContext {
            hash_key: Some(key),
            ..ctx(&headers, &uri, &[])
        })
    }

    #[test]
    fn a_script_key_replaces_the_configured_one_on_hash_pools_only() {
        let p = ConfiguredPool::new(
            &pool(Algorithm::ConsistentHash(HashKey::Cookie("sid".into()))),
            None,
        );
        // Without the cookie the pool has no key of its own; the script's key makes it sticky,
        // and different keys spread.
        let first = pick_keyed(&p, b"user-1");
        assert!(first.is_some());
        assert!((0..10).all(|_| pick_keyed(&p, b"user-1") == first));
        let spread: std::collections::HashSet<_> = (0..64u8)
            .filter_map(|i| pick_keyed(&p, &[b'k', i]))
            .collect();
        assert!(spread.len() > 1);
        // A round-robin pool ignores it.
        let rr = ConfiguredPool::new(&pool(Algorithm::RoundRobin), None);
        let picks: std::collections::HashSet<_> =
            (0..3).filter_map(|_| pick_keyed(&rr, b"user-1")).collect();
        assert_eq!(picks.len(), 3);
    }

    #[test]
    fn state_survives_a_rebuild() {
        let cfg = pool(Algorithm::RoundRobin);
        let before = ConfiguredPool::new(&cfg, None);
        let down = cfg.servers[1];
        before.balancer.set_up(down, false);
        let after = ConfiguredPool::new(&cfg, Some(&before));
        assert_eq!(after.server_state(down), Some(false));
        let headers = http::HeaderMap::new();
        let uri = http::Uri::from_static("/");
        for _ in 0..9 {
            assert_ne!(after.pick(&ctx(&headers, &uri, &[])), Some(down));
        }
    }

    #[test]
    fn least_connections_follows_started_and_finished() {
        let cfg = pool(Algorithm::LeastConnections);
        let p = ConfiguredPool::new(&cfg, None);
        p.request_started(cfg.servers[0]);
        p.request_started(cfg.servers[1]);
        let headers = http::HeaderMap::new();
        let uri = http::Uri::from_static("/");
        assert_eq!(p.pick(&ctx(&headers, &uri, &[])), Some(cfg.servers[2]));
        p.request_finished(cfg.servers[0]);
        p.request_started(cfg.servers[2]);
        assert_eq!(p.pick(&ctx(&headers, &uri, &[])), Some(cfg.servers[0]));
    }
}
