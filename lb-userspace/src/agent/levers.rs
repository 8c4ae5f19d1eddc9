//! The operator's levers at runtime (`latch server drain|maint|ready|weight`): applied to the
//! pools and the data plane at once, and kept in the server state file so they survive
//! reloads and restarts (HAProxy's server-state-file).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use super::admin::Shared;
use crate::balancer::algorithm::ServerStatus;
use crate::balancer::levers::{AdminState, Levers};
use crate::config::{Config, MAX_WEIGHT, PoolConfig};

/// What an operator changes on a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerChange {
    /// A new administrative state.
    State(AdminState),
    /// A runtime weight; `None` returns to the configured one.
    Weight(Option<u32>),
}

/// Why a change cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeverError {
    /// No pool of that name.
    #[error("no pool named {0:?}")]
    UnknownPool(String),
    /// The pool has no such server (or the address names several).
    #[error("{0}")]
    UnknownServer(String),
    /// A weight out of range.
    #[error("weight must be between 0 and {MAX_WEIGHT}, got {0}")]
    BadWeight(u32),
}

/// The levers in the state file at `path`, for the servers `config` has. A missing file is
/// no lever set; an unreadable one is logged and ignored (the agent must start).
pub fn load(path: &Path, config: &Config) -> Levers {
    let mut levers = match std::fs::read_to_string(path) {
        Ok(text) => Levers::from_json(&text).unwrap_or_else(|err| {
            tracing::warn!(file = %path.display(), %err, "server state file ignored");
            Levers::default()
        }),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Levers::default(),
        Err(err) => {
            tracing::warn!(file = %path.display(), %err, "server state file unreadable; ignored");
            Levers::default()
        }
    };
    levers.retain(|pool, server| {
        config
            .pool(pool)
            .is_some_and(|p| p.server(server).is_some())
    });
    for (pool, server, l) in levers.iter() {
        tracing::info!(pool, %server, state = %l.state, weight = ?l.weight, "server state restored");
    }
    levers
}

/// Writes `levers` to `path` whole (a temporary file renamed over it, so a crash leaves the
/// old or the new file, never half of one).
fn save(path: &Path, levers: &Levers) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, levers.to_json())?;
    std::fs::rename(&tmp, path)
}

/// The server of `pool` that `name` means: `ip:port`, or an IP only one server has.
pub fn resolve_server(pool: &PoolConfig, name: &str) -> Result<SocketAddr, LeverError> {
    let unknown =
        |why: &str| LeverError::UnknownServer(format!("pool {:?} {why} {name:?}", pool.name));
    if let Ok(addr) = name.parse::<SocketAddr>() {
        return pool
            .server(addr)
            .map(|s| s.addr)
            .ok_or_else(|| unknown("has no server"));
    }
    let ip: IpAddr = name
        .trim_matches(['[', ']'])
        .parse()
        .map_err(|_| unknown("has no server"))?;
    let mut same_ip = pool.servers.iter().filter(|s| s.addr.ip() == ip);
    match (same_ip.next(), same_ip.next()) {
        (Some(s), None) => Ok(s.addr),
        (Some(_), Some(_)) => Err(unknown("has several ports on; name one as ip:port, not")),
        (None, _) => Err(unknown("has no server")),
    }
}

impl Shared {
    /// Writes the state file, logging a failure (the change itself stays in force).
    pub fn save_levers(&self, levers: &Levers) {
        if let Err(err) = save(&self.state_file, levers) {
            tracing::error!(
                file = %self.state_file.display(),
                %err,
                "writing the server state file failed; the change is lost on restart"
            );
        }
    }

    /// Applies `change` to server `name` of `pool`: the proxy's picker at once, then the
    /// data plane; `maint` also removes the server's table entries and pins (as a health
    /// monitor taking it down does), `ready` starts its slow start. Returns its new state.
    pub fn set_server(
        &self,
        pool: &str,
        name: &str,
        change: ServerChange,
    ) -> Result<(SocketAddr, ServerStatus), LeverError> {
        if let ServerChange::Weight(Some(w)) = change
            && w > MAX_WEIGHT
        {
            return Err(LeverError::BadWeight(w));
        }
        let config = self.config.read().clone();
        let pool_config = config
            .pool(pool)
            .ok_or_else(|| LeverError::UnknownPool(pool.to_owned()))?;
        let server = resolve_server(pool_config, name)?;
        let configured_weight = pool_config.server(server).map_or(1, |s| s.weight);
        // Held until the data plane follows, so concurrent changes (and reloads) apply in
        // one order.
        let mut levers = self.levers.lock();
        let running = self
            .pool(pool)
            .ok_or_else(|| LeverError::UnknownPool(pool.to_owned()))?;
        let balancer = running.balancer();
        let mut l = levers.get(pool, server);
        match change {
            ServerChange::State(state) => {
                let previous = balancer.set_state(server, state);
                l.state = state;
                if previous != Some(state) {
                    tracing::info!(pool, %server, %state, "server state set");
                }
                if state == AdminState::Maint && previous != Some(AdminState::Maint) {
                    self.forget_sessions_on(server);
                }
                if state == AdminState::Ready && previous.is_some_and(|p| p != AdminState::Ready) {
                    balancer.start_slow_start(server, self.clock.now_ns());
                }
            }
            ServerChange::Weight(weight) => {
                l.weight = weight;
                let weight = weight.unwrap_or(configured_weight);
                balancer.set_weight(server, weight);
                tracing::info!(pool, %server, weight, "server weight set");
            }
        }
        levers.set(pool, server, l);
        self.save_levers(&levers);
        self.reprogram_dataplane("a server state change");
        let status = balancer.status(server).ok_or_else(|| {
            LeverError::UnknownServer(format!("server {server} left pool {pool:?}"))
        })?;
        Ok((server, status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Algorithm, PoolServer};

    #[test]
    fn servers_resolve_by_address_or_unique_ip() {
        let addr = |s: &str| {
            s.parse::<SocketAddr>()
                .unwrap_or_else(|e| panic!("{s}: {e}"))
        };
        let pool = PoolConfig {
            name: "web".into(),
            algorithm: Algorithm::RoundRobin,
            servers: ["192.0.2.11:80", "192.0.2.12:80", "192.0.2.12:81"]
                .map(|a| PoolServer::new(addr(a)))
                .to_vec(),
            health_monitor: None,
            slow_start: None,
            tls: None,
        };
        assert_eq!(
            resolve_server(&pool, "192.0.2.11:80"),
            Ok(addr("192.0.2.11:80"))
        );
        assert_eq!(
            resolve_server(&pool, "192.0.2.11"),
            Ok(addr("192.0.2.11:80"))
        );
        assert!(resolve_server(&pool, "192.0.2.12").is_err(), "two ports");
        assert!(resolve_server(&pool, "192.0.2.13").is_err());
        assert!(resolve_server(&pool, "192.0.2.11:81").is_err());
        assert!(resolve_server(&pool, "web1").is_err());
    }

    #[test]
    fn the_state_file_round_trips_and_keeps_only_configured_servers()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("state").join("servers.json");
        let config = crate::config::parse(
            "[[pool]]\nname = \"web\"\nservers = [\"192.0.2.11:80\"]\n",
            Path::new("t.toml"),
        )
        .map_err(|e| e.to_string())?;
        assert_eq!(load(&path, &config), Levers::default(), "no file yet");
        let mut levers = Levers::default();
        let drained = crate::balancer::levers::ServerLevers {
            state: AdminState::Drain,
            weight: Some(4),
        };
        levers.set("web", "192.0.2.11:80".parse()?, drained);
        levers.set("web", "192.0.2.99:80".parse()?, drained);
        save(&path, &levers)?;
        let loaded = load(&path, &config);
        assert_eq!(
            loaded.iter().count(),
            1,
            "a server the config lacks is dropped"
        );
        assert_eq!(loaded.get("web", "192.0.2.11:80".parse()?), drained);
        std::fs::write(&path, "not json")?;
        assert_eq!(
            load(&path, &config),
            Levers::default(),
            "a bad file is ignored"
        );
        Ok(())
    }
}
