//! Translates a validated configuration into what the data plane programs. Pure, so the
//! mapping from TOML semantics to map entries is unit-tested without root.

use std::net::SocketAddr;

use crate::balancer::health::HealthView;
use crate::config::{Config, FlowHash, Forwarding, ServiceType, VirtualServiceConfig};
use crate::dataplane::{self, BackendSpec, DataplaneSpec, ServiceKind, ServiceSpec};

/// Why a configuration cannot be programmed into the data plane.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    /// XDP forwards within one address family (no NAT64/NAT46). The config validation
    /// refuses this first, with the line; this is the data plane's own guard.
    #[error(
        "virtual service {vs}: server {server} of pool {pool} is not of the IP version of its listen address {listen}"
    )]
    MixedFamilies {
        /// Virtual service name.
        vs: String,
        /// Its listen address.
        listen: SocketAddr,
        /// Pool name.
        pool: String,
        /// The server.
        server: SocketAddr,
    },
}

/// The data-plane programme for `config`: every tcp and udp service, and every http service
/// (whose packets XDP hands to the proxy, or forwards directly for fast-path clients).
pub fn dataplane_spec(
    config: &Config,
    health: &dyn HealthView,
) -> Result<DataplaneSpec, SpecError> {
    let services = config
        .virtual_services
        .iter()
        .map(|vs| service_spec(config, vs, health))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(DataplaneSpec { services })
}

fn service_spec(
    config: &Config,
    vs: &VirtualServiceConfig,
    health: &dyn HealthView,
) -> Result<ServiceSpec, SpecError> {
    let listen = vs.listen;
    // Validation guarantees the pool exists; an empty list is the safe reading otherwise.
    let servers = config
        .pool(&vs.pool)
        .map(|p| p.servers.as_slice())
        .unwrap_or_default();
    let backends = servers
        .iter()
        .map(|server| {
            if server.addr.is_ipv4() != listen.is_ipv4() {
                return Err(SpecError::MixedFamilies {
                    vs: vs.name.clone(),
                    listen,
                    pool: vs.pool.clone(),
                    server: server.addr,
                });
            }
            let traffic = health.traffic(&vs.pool, server);
            Ok(BackendSpec {
                addr: server.addr,
                up: traffic.up,
                weight: traffic.weight,
                backup: traffic.backup,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (proto, kind) = match vs.kind {
        ServiceType::Tcp => (dataplane::Proto::Tcp, ServiceKind::L4),
        ServiceType::Udp => (dataplane::Proto::Udp, ServiceKind::L4),
        ServiceType::Http => (
            dataplane::Proto::Tcp,
            ServiceKind::Http {
                fast_path: vs.fast_path,
            },
        ),
    };
    Ok(ServiceSpec {
        vip: listen.ip(),
        port: listen.port(),
        proto,
        forwarding: match vs.forwarding {
            Forwarding::Nat => dataplane::Forwarding::Nat,
            Forwarding::Dsr => dataplane::Forwarding::Dsr,
            Forwarding::Tunnel => dataplane::Forwarding::Tunnel,
        },
        kind,
        persistence_ttl: vs.persistence,
        persistence_prefix_v6: vs.persistence_ipv6_prefix,
        flow_hash: match vs.flow_hash {
            FlowHash::Connection => dataplane::FlowHash::Connection,
            FlowHash::ClientIp => dataplane::FlowHash::ClientIp,
        },
        backends,
    })
}

/// The servers of `pool` in `config` (used when pinning fast-path clients).
pub fn pool_servers(config: &Config, pool: &str) -> Vec<SocketAddr> {
    config
        .pool(pool)
        .map(|p| p.servers.iter().map(|s| s.addr).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;

    const CONFIG: &str = r#"
[agent]
interfaces = ["eth0"]

[[pool]]
name = "app"
servers = ["192.0.2.11:8080", "192.0.2.12:8080"]

[[virtual_service]]
name = "tcp"
listen = "198.51.100.10:80"
type = "tcp"
pool = "app"
forwarding = "dsr"
persistence = { type = "client_ip", timeout = "120s" }

[[virtual_service]]
name = "dns"
listen = "198.51.100.10:53"
type = "udp"
pool = "app"

[[virtual_service]]
name = "web"
listen = "198.51.100.20:80"
type = "http"
pool = "app"
fast_path = "client_ip"
"#;

    struct Down(SocketAddr);
    impl HealthView for Down {
        fn is_up(&self, _pool: &str, server: SocketAddr) -> bool {
            server != self.0
        }
    }

    #[test]
    fn maps_every_service_kind() -> Result<(), Box<dyn std::error::Error>> {
        let config = crate::config::parse(CONFIG, Path::new("t.toml"))
            .map_err(|e| format!("config: {e}"))?;
        let spec = dataplane_spec(&config, &crate::balancer::health::AllUp)?;
        assert_eq!(spec.services.len(), 3);
        let tcp = &spec.services[0];
        assert_eq!(tcp.vip.to_string(), "198.51.100.10");
        assert_eq!(tcp.port, 80);
        assert_eq!(tcp.proto, dataplane::Proto::Tcp);
        assert_eq!(tcp.forwarding, dataplane::Forwarding::Dsr);
        assert_eq!(tcp.kind, ServiceKind::L4);
        assert_eq!(tcp.persistence_ttl, Some(Duration::from_secs(120)));
        assert_eq!(tcp.backends.len(), 2);
        assert!(tcp.backends.iter().all(|b| b.up));

        let dns = &spec.services[1];
        assert_eq!(dns.proto, dataplane::Proto::Udp);
        assert_eq!(dns.forwarding, dataplane::Forwarding::Nat);
        assert_eq!(dns.persistence_ttl, None);

        let web = &spec.services[2];
        assert_eq!(web.kind, ServiceKind::Http { fast_path: true });
        Ok(())
    }

    #[test]
    fn ipv6_services_and_their_prefix_reach_the_spec() -> Result<(), Box<dyn std::error::Error>> {
        let text = r#"
[agent]
interfaces = ["eth0"]

[[pool]]
name = "app6"
servers = ["[2001:db8::11]:8080"]

[[virtual_service]]
name = "tcp6"
listen = "[2001:db8::10]:80"
type = "tcp"
pool = "app6"
persistence = { type = "client_ip", ipv6_prefix = 64 }
"#;
        let config =
            crate::config::parse(text, Path::new("t.toml")).map_err(|e| format!("config: {e}"))?;
        let spec = dataplane_spec(&config, &crate::balancer::health::AllUp)?;
        let s = &spec.services[0];
        assert_eq!(s.vip.to_string(), "2001:db8::10");
        assert_eq!(s.persistence_prefix_v6, Some(64));
        assert_eq!(s.backends[0].addr.to_string(), "[2001:db8::11]:8080");
        // A pool of the other version (the config refuses it first; the spec guards too).
        let mut mixed = config.clone();
        let v4: SocketAddr = "192.0.2.11:8080".parse()?;
        if let Some(p) = mixed.pools.iter_mut().find(|p| p.name == "app6") {
            p.servers[0].addr = v4;
        }
        assert!(matches!(
            dataplane_spec(&mixed, &crate::balancer::health::AllUp),
            Err(SpecError::MixedFamilies { server, .. }) if server == v4
        ));
        Ok(())
    }

    #[test]
    fn down_servers_are_marked() -> Result<(), Box<dyn std::error::Error>> {
        let config = crate::config::parse(CONFIG, Path::new("t.toml"))
            .map_err(|e| format!("config: {e}"))?;
        let down: SocketAddr = "192.0.2.12:8080".parse()?;
        let spec = dataplane_spec(&config, &Down(down))?;
        let states: Vec<bool> = spec.services[0].backends.iter().map(|b| b.up).collect();
        assert_eq!(states, vec![true, false]);
        Ok(())
    }

    #[test]
    fn weights_and_backups_reach_the_backends() -> Result<(), Box<dyn std::error::Error>> {
        let text = CONFIG.replace(
            r#"servers = ["192.0.2.11:8080", "192.0.2.12:8080"]"#,
            r#"servers = [{ addr = "192.0.2.11:8080", weight = 3 }, { addr = "192.0.2.12:8080", backup = true }]"#,
        );
        let config =
            crate::config::parse(&text, Path::new("t.toml")).map_err(|e| format!("config: {e}"))?;
        let spec = dataplane_spec(&config, &crate::balancer::health::AllUp)?;
        let b: Vec<(u32, bool)> = spec.services[0]
            .backends
            .iter()
            .map(|b| (b.weight, b.backup))
            .collect();
        assert_eq!(b, [(48, false), (16, true)], "weights in 1/16ths");
        Ok(())
    }
}
