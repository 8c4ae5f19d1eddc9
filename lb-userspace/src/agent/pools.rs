//! A configured pool as the proxy sees it: the pure [`PoolBalancer`] plus the request key a
//! consistent-hash pool hashes. The agent keeps one per pool across reloads, so health flags
//! and in-flight counts survive a configuration change.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::balancer::algorithm::PoolBalancer;
use crate::balancer::health::{HealthView, ServerTraffic};
use crate::balancer::levers::{AdminState, Levers};
use crate::config::{Algorithm, HashKey, PoolConfig, PoolServer};
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
    /// reload) for servers that stay, with the operator's `levers` applied.
    pub fn new(config: &PoolConfig, previous: Option<&ConfiguredPool>, levers: &Levers) -> Self {
        let hash = match &config.algorithm {
            Algorithm::ConsistentHash(key) => Some(key.clone()),
            Algorithm::RoundRobin | Algorithm::LeastConnections => None,
        };
        let balancer = PoolBalancer::from_config(config, previous.map(|p| &p.balancer));
        for server in &config.servers {
            let l = levers.get(&config.name, server.addr);
            balancer.set_state(server.addr, l.state);
            if let Some(weight) = l.weight {
                balancer.set_weight(server.addr, weight);
            }
        }
        Self { balancer, hash }
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

    /// A drained server still counts as up here: scripts keep sending it the sessions they
    /// persisted to it. A server in maintenance is down.
    fn servers(&self) -> Vec<ServerView> {
        self.balancer
            .servers()
            .into_iter()
            .map(|s| ServerView {
                addr: s.addr,
                up: s.serves(),
            })
            .collect()
    }

    fn server_state(&self, server: SocketAddr) -> Option<bool> {
        self.balancer.status(server).map(|s| s.serves())
    }

    fn request_started(&self, server: SocketAddr) {
        self.balancer.started(server);
    }

    fn request_finished(&self, server: SocketAddr) {
        self.balancer.finished(server);
    }
}

/// Every pool of a configuration, rebuilt from the previous set on reload, with the
/// operator's levers applied.
pub fn build_pools(
    configs: &[PoolConfig],
    previous: &HashMap<String, Arc<ConfiguredPool>>,
    levers: &Levers,
) -> HashMap<String, Arc<ConfiguredPool>> {
    configs
        .iter()
        .map(|c| {
            let pool = ConfiguredPool::new(c, previous.get(&c.name).map(Arc::as_ref), levers);
            (c.name.clone(), Arc::new(pool))
        })
        .collect()
}

/// Server health, states and weights as the pools know them, for the data-plane spec.
impl HealthView for HashMap<String, Arc<ConfiguredPool>> {
    fn is_up(&self, pool: &str, server: SocketAddr) -> bool {
        self.get(pool)
            .and_then(|p| p.balancer.is_up(server))
            .unwrap_or(true)
    }

    fn traffic(&self, pool: &str, server: &PoolServer) -> ServerTraffic {
        let Some(status) = self.get(pool).and_then(|p| p.balancer.status(server.addr)) else {
            return crate::balancer::health::AllUp.traffic(pool, server);
        };
        ServerTraffic {
            up: status.serves(),
            weight: if status.state == AdminState::Ready {
                status.effective_weight
            } else {
                0
            },
            backup: status.backup,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Algorithm, HashKey, PoolConfig, PoolServer};

    fn pool(algorithm: Algorithm) -> PoolConfig {
        PoolConfig {
            name: "p".into(),
            algorithm,
            servers: ["192.0.2.11:80", "192.0.2.12:80", "192.0.2.13:80"]
                .map(|a| PoolServer::new(a.parse().unwrap_or_else(|_| unreachable!())))
                .to_vec(),
            health_monitor: None,
            slow_start: None,
            tls: None,
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
            &Levers::default(),
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
            &Levers::default(),
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
        let rr = ConfiguredPool::new(&pool(Algorithm::RoundRobin), None, &Levers::default());
        let picks: std::collections::HashSet<_> =
            (0..3).filter_map(|_| pick_keyed(&rr, b"user-1")).collect();
        assert_eq!(picks.len(), 3);
    }

    #[test]
    fn state_survives_a_rebuild() {
        let cfg = pool(Algorithm::RoundRobin);
        let before = ConfiguredPool::new(&cfg, None, &Levers::default());
        let down = cfg.addrs()[1];
        before.balancer.set_up(down, false);
        let after = ConfiguredPool::new(&cfg, Some(&before), &Levers::default());
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
        let p = ConfiguredPool::new(&cfg, None, &Levers::default());
        p.request_started(cfg.addrs()[0]);
        p.request_started(cfg.addrs()[1]);
        let headers = http::HeaderMap::new();
        let uri = http::Uri::from_static("/");
        assert_eq!(p.pick(&ctx(&headers, &uri, &[])), Some(cfg.addrs()[2]));
        p.request_finished(cfg.addrs()[0]);
        p.request_started(cfg.addrs()[2]);
        assert_eq!(p.pick(&ctx(&headers, &uri, &[])), Some(cfg.addrs()[0]));
    }

    #[test]
    fn states_reach_scripts_and_the_data_plane() {
        let mut cfg = pool(Algorithm::RoundRobin);
        cfg.servers[1].weight = 3;
        cfg.servers[2].backup = true;
        let [a, b, c] = [0, 1, 2].map(|i| cfg.servers[i]);
        let mut levers = Levers::default();
        levers.set(
            "p",
            a.addr,
            crate::balancer::levers::ServerLevers {
                state: AdminState::Drain,
                weight: None,
            },
        );
        let pools = build_pools(std::slice::from_ref(&cfg), &HashMap::new(), &levers);
        let p = &pools["p"];
        // Scripts: drained is up (persistence goes on), maint is down.
        assert_eq!(p.server_state(a.addr), Some(true));
        p.balancer().set_state(b.addr, AdminState::Maint);
        assert_eq!(p.server_state(b.addr), Some(false));
        assert_eq!(
            p.servers().iter().filter(|s| s.up).count(),
            2,
            "get_servers counts a and c"
        );
        // Data plane: drained keeps its flows but no share; maint loses both.
        let traffic = |s: &PoolServer| pools.traffic("p", s);
        assert_eq!(
            traffic(&a),
            ServerTraffic {
                up: true,
                weight: 0,
                backup: false
            }
        );
        assert!(!traffic(&b).up);
        assert_eq!(traffic(&c).weight, 16);
        assert!(traffic(&c).backup);
        // A rebuild (reload) takes the states from the levers, the agent's record of them.
        let again = build_pools(std::slice::from_ref(&cfg), &pools, &levers);
        let state = |addr| again["p"].balancer().status(addr).map(|s| s.state);
        assert_eq!(state(a.addr), Some(AdminState::Drain));
        assert_eq!(state(b.addr), Some(AdminState::Ready), "not in the levers");
    }
}
