//! Counters per virtual service and per server, updated with relaxed atomics on the request
//! path and read as a snapshot by the metrics exporter.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;

/// Index of a status code's class (1xx..5xx) in the `responses` arrays.
pub fn status_class(status: u16) -> usize {
    usize::from(status / 100).clamp(1, 5) - 1
}

fn load(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Live counters of one virtual service.
#[derive(Debug, Default)]
pub(crate) struct VsCounters {
    pub requests: AtomicU64,
    pub responses: [AtomicU64; 5],
    pub request_bytes: AtomicU64,
    pub response_bytes: AtomicU64,
    pub active_connections: AtomicU64,
    pub tls_handshakes: AtomicU64,
    pub tls_handshake_failures: AtomicU64,
    pub upgrades: AtomicU64,
    pub active_tunnels: AtomicU64,
}

/// Live counters of one server (shared by every pool that holds it).
#[derive(Debug, Default)]
pub(crate) struct ServerCounters {
    pub requests: AtomicU64,
    pub responses: [AtomicU64; 5],
    pub request_bytes: AtomicU64,
    pub response_bytes: AtomicU64,
    pub active_requests: AtomicU64,
    pub connections: AtomicU64,
    pub connect_failures: AtomicU64,
}

impl VsCounters {
    pub fn response(&self, status: u16) {
        add(&self.responses[status_class(status)], 1);
    }
}

impl ServerCounters {
    pub fn response(&self, status: u16) {
        add(&self.responses[status_class(status)], 1);
    }
}

/// Increments a gauge now and decrements it when dropped, so early returns cannot leak.
#[derive(Debug)]
pub(crate) struct GaugeGuard<C: AsRef<AtomicU64>>(C);

impl<C: AsRef<AtomicU64>> GaugeGuard<C> {
    pub fn new(counter: C) -> Self {
        add(counter.as_ref(), 1);
        Self(counter)
    }
}

impl<C: AsRef<AtomicU64>> Drop for GaugeGuard<C> {
    fn drop(&mut self) {
        self.0.as_ref().fetch_sub(1, Ordering::Relaxed);
    }
}

/// A gauge of a shared counter struct, for [`GaugeGuard`].
#[derive(Debug)]
pub(crate) struct Gauge<T> {
    owner: Arc<T>,
    field: fn(&T) -> &AtomicU64,
}

impl<T> Gauge<T> {
    pub fn new(owner: Arc<T>, field: fn(&T) -> &AtomicU64) -> Self {
        Self { owner, field }
    }
}

impl<T> AsRef<AtomicU64> for Gauge<T> {
    fn as_ref(&self) -> &AtomicU64 {
        (self.field)(&self.owner)
    }
}

/// Every counter the proxy keeps, by name and address; survives reloads.
#[derive(Debug, Default)]
pub(crate) struct StatsRegistry {
    vs: DashMap<String, Arc<VsCounters>>,
    /// Keys from the configuration: see [`super::ConfigMap`].
    servers: DashMap<SocketAddr, Arc<ServerCounters>, foldhash::fast::RandomState>,
}

impl StatsRegistry {
    pub fn vs(&self, name: &str) -> Arc<VsCounters> {
        if let Some(c) = self.vs.get(name) {
            return c.clone();
        }
        self.vs.entry(name.to_owned()).or_default().clone()
    }

    pub fn server(&self, addr: SocketAddr) -> Arc<ServerCounters> {
        if let Some(c) = self.servers.get(&addr) {
            return c.clone();
        }
        self.servers.entry(addr).or_default().clone()
    }

    /// Forgets services and servers no longer configured (their counters restart from zero
    /// if they come back).
    pub fn retain(&self, vs: &[&str], servers: &[SocketAddr]) {
        self.vs.retain(|name, _| vs.contains(&name.as_str()));
        self.servers.retain(|addr, c| {
            servers.contains(addr) || load(&c.active_requests) > 0 || load(&c.connections) > 0
        });
    }

    pub fn snapshot(&self) -> ProxyStats {
        let mut virtual_services: Vec<VsStats> = self
            .vs
            .iter()
            .map(|e| {
                let c = e.value();
                VsStats {
                    name: e.key().clone(),
                    requests: load(&c.requests),
                    responses: c.responses.each_ref().map(load),
                    request_bytes: load(&c.request_bytes),
                    response_bytes: load(&c.response_bytes),
                    active_connections: load(&c.active_connections),
                    tls_handshakes: load(&c.tls_handshakes),
                    tls_handshake_failures: load(&c.tls_handshake_failures),
                    upgrades: load(&c.upgrades),
                    active_tunnels: load(&c.active_tunnels),
                }
            })
            .collect();
        virtual_services.sort_by(|a, b| a.name.cmp(&b.name));
        let mut servers: Vec<ServerStats> = self
            .servers
            .iter()
            .map(|e| {
                let c = e.value();
                ServerStats {
                    addr: *e.key(),
                    requests: load(&c.requests),
                    responses: c.responses.each_ref().map(load),
                    request_bytes: load(&c.request_bytes),
                    response_bytes: load(&c.response_bytes),
                    active_requests: load(&c.active_requests),
                    connections: load(&c.connections),
                    connect_failures: load(&c.connect_failures),
                }
            })
            .collect();
        servers.sort_by_key(|s| s.addr);
        ProxyStats {
            virtual_services,
            servers,
        }
    }
}

/// Counters of one virtual service at snapshot time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsStats {
    /// Virtual service name.
    pub name: String,
    /// Requests received (including those answered by scripts or with errors).
    pub requests: u64,
    /// Responses sent by class: index 0 is 1xx, 4 is 5xx.
    pub responses: [u64; 5],
    /// Request body bytes received from clients.
    pub request_bytes: u64,
    /// Response body bytes sent to clients.
    pub response_bytes: u64,
    /// Client connections open now.
    pub active_connections: u64,
    /// TLS handshakes completed (a service with TLS).
    pub tls_handshakes: u64,
    /// TLS handshakes that failed or timed out.
    pub tls_handshake_failures: u64,
    /// Connections upgraded (101 Switching Protocols: WebSocket and other `Upgrade`s).
    pub upgrades: u64,
    /// Upgraded connections tunnelled now.
    pub active_tunnels: u64,
}

/// Counters of one server at snapshot time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerStats {
    /// Server address.
    pub addr: SocketAddr,
    /// Requests sent to it.
    pub requests: u64,
    /// Responses received by class: index 0 is 1xx, 4 is 5xx.
    pub responses: [u64; 5],
    /// Request body bytes sent to it.
    pub request_bytes: u64,
    /// Response body bytes received from it.
    pub response_bytes: u64,
    /// Requests in flight now.
    pub active_requests: u64,
    /// Upstream connections open now (busy or pooled).
    pub connections: u64,
    /// Connection attempts that failed or timed out.
    pub connect_failures: u64,
}

/// A consistent-enough copy of every counter (each counter is read atomically, not all at once).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Per virtual service, sorted by name.
    pub virtual_services: Vec<VsStats>,
    /// Per server, sorted by address.
    pub servers: Vec<ServerStats>,
}

impl ProxyStats {
    /// The counters of virtual service `name`.
    pub fn vs(&self, name: &str) -> Option<&VsStats> {
        self.virtual_services.iter().find(|v| v.name == name)
    }

    /// The counters of server `addr`.
    pub fn server(&self, addr: SocketAddr) -> Option<&ServerStats> {
        self.servers.iter().find(|s| s.addr == addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes() {
        assert_eq!(status_class(100), 0);
        assert_eq!(status_class(204), 1);
        assert_eq!(status_class(302), 2);
        assert_eq!(status_class(431), 3);
        assert_eq!(status_class(504), 4);
        assert_eq!(status_class(999), 4);
        assert_eq!(status_class(0), 0);
    }

    #[test]
    fn gauge_guard_balances() {
        let reg = StatsRegistry::default();
        let c = reg.vs("a");
        {
            let _g = GaugeGuard::new(Gauge::new(c.clone(), |c: &VsCounters| {
                &c.active_connections
            }));
            assert_eq!(
                reg.snapshot().vs("a").map(|v| v.active_connections),
                Some(1)
            );
        }
        assert_eq!(
            reg.snapshot().vs("a").map(|v| v.active_connections),
            Some(0)
        );
        reg.retain(&[], &[]);
        assert!(reg.snapshot().vs("a").is_none());
    }
}
