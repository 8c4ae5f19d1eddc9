//! The operator's levers on one server: administrative state (ready, drain, maint), a runtime
//! weight, and slow start. Pure: the agent keeps the levers (and a state file of them), the
//! pool balancer and the data-plane spec read them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::MAX_WEIGHT;

/// Administrative state of a server, as HAProxy's `set server ... state`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    /// Takes new sessions and flows (the default).
    #[default]
    Ready,
    /// No new sessions or flows; connections in flight, fast-path pins and persistence chosen
    /// by scripts keep working until they end or expire.
    Drain,
    /// Out at once, as if health checks had taken it down: its table entries and pins go too.
    Maint,
}

impl AdminState {
    /// Every state, in the order of their numbers.
    pub const ALL: [AdminState; 3] = [AdminState::Ready, AdminState::Drain, AdminState::Maint];

    /// The spelling of the CLI, the API and the state file.
    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Ready => "ready",
            AdminState::Drain => "drain",
            AdminState::Maint => "maint",
        }
    }

    /// A small number for atomics.
    pub fn as_u8(self) -> u8 {
        match self {
            AdminState::Ready => 0,
            AdminState::Drain => 1,
            AdminState::Maint => 2,
        }
    }

    /// The state [`AdminState::as_u8`] gave `n` (ready for anything else).
    pub fn from_u8(n: u8) -> Self {
        match n {
            1 => AdminState::Drain,
            2 => AdminState::Maint,
            _ => AdminState::Ready,
        }
    }
}

impl std::str::FromStr for AdminState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        AdminState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown server state `{s}`: expected ready, drain or maint"))
    }
}

impl std::fmt::Display for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Weights are handled in 1/16ths so that slow start can ramp even a server of weight 1.
pub const WEIGHT_SCALE: u32 = 16;
/// Slow start raises a weight in this many equal steps (so a Maglev table is rebuilt at most
/// this many times per ramp).
pub const SLOW_START_STEPS: u32 = 10;

/// The scaled weight (see [`WEIGHT_SCALE`]) of a server of `weight` outside a ramp.
pub fn full_weight(weight: u32) -> u32 {
    weight.min(MAX_WEIGHT) * WEIGHT_SCALE
}

/// The scaled weight (see [`WEIGHT_SCALE`]) of a server of configured `weight` that came up
/// `elapsed` ago: step k of [`SLOW_START_STEPS`] gives k tenths of the weight, never less
/// than one unit, so a ramping server gets some traffic from its first second.
pub fn ramped_weight(weight: u32, elapsed: Duration, slow_start: Option<Duration>) -> u32 {
    let full = full_weight(weight);
    let Some(ramp) = slow_start else {
        return full;
    };
    if elapsed >= ramp || full == 0 {
        return full;
    }
    let done = elapsed.as_nanos() * u128::from(SLOW_START_STEPS) / ramp.as_nanos().max(1);
    let step = u32::try_from(done).unwrap_or(SLOW_START_STEPS - 1) + 1;
    (full * step / SLOW_START_STEPS).max(1)
}

/// The levers an operator set on one server; the default is what the config says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerLevers {
    /// Administrative state.
    #[serde(default)]
    pub state: AdminState,
    /// Weight set at runtime; `None` keeps the configured one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

impl ServerLevers {
    fn is_default(&self) -> bool {
        *self == ServerLevers::default()
    }
}

/// One line of the state file.
#[derive(Debug, Serialize, Deserialize)]
struct LeverRecord {
    pool: String,
    server: SocketAddr,
    #[serde(flatten)]
    levers: ServerLevers,
}

/// The state file's document.
#[derive(Debug, Serialize, Deserialize)]
struct LeverFile {
    version: u32,
    servers: Vec<LeverRecord>,
}

const LEVER_FILE_VERSION: u32 = 1;

/// Why a state file could not be read.
#[derive(Debug, thiserror::Error)]
#[error("server state file: {0}")]
pub struct LeverFileError(#[from] serde_json::Error);

/// The levers of every server that has any, by pool and address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Levers {
    servers: BTreeMap<(String, SocketAddr), ServerLevers>,
}

impl Levers {
    /// The levers of `server` of `pool` (the defaults when none were set).
    pub fn get(&self, pool: &str, server: SocketAddr) -> ServerLevers {
        self.servers
            .get(&(pool.to_owned(), server))
            .copied()
            .unwrap_or_default()
    }

    /// Sets the levers of `server` of `pool`; the defaults are not stored.
    pub fn set(&mut self, pool: &str, server: SocketAddr, levers: ServerLevers) {
        let key = (pool.to_owned(), server);
        if levers.is_default() {
            self.servers.remove(&key);
        } else {
            self.servers.insert(key, levers);
        }
    }

    /// Keeps only the servers `keep` accepts (a reload forgets servers it removed, so a server
    /// added again later starts ready).
    pub fn retain(&mut self, mut keep: impl FnMut(&str, SocketAddr) -> bool) {
        self.servers.retain(|(pool, server), _| keep(pool, *server));
    }

    /// Every (pool, server, levers) set, sorted by pool then server.
    pub fn iter(&self) -> impl Iterator<Item = (&str, SocketAddr, ServerLevers)> {
        self.servers
            .iter()
            .map(|((pool, server), levers)| (pool.as_str(), *server, *levers))
    }

    /// The state file's text.
    pub fn to_json(&self) -> String {
        let file = LeverFile {
            version: LEVER_FILE_VERSION,
            servers: self
                .iter()
                .map(|(pool, server, levers)| LeverRecord {
                    pool: pool.to_owned(),
                    server,
                    levers,
                })
                .collect(),
        };
        serde_json::to_string_pretty(&file).unwrap_or_default()
    }

    /// Reads a state file's text.
    pub fn from_json(text: &str) -> Result<Self, LeverFileError> {
        let file: LeverFile = serde_json::from_str(text)?;
        let mut levers = Levers::default();
        for r in file.servers {
            levers.set(&r.pool, r.server, r.levers);
        }
        Ok(levers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn slow_start_ramps_in_steps_to_the_full_weight() {
        let ramp = Some(Duration::from_secs(10));
        let w = |secs: f64, weight: u32| ramped_weight(weight, Duration::from_secs_f64(secs), ramp);
        assert_eq!(w(0.0, 1), 1, "a tenth of 16, rounded down, but at least 1");
        assert_eq!(w(0.0, 10), 16);
        assert_eq!(w(0.99, 10), 16);
        assert_eq!(w(1.0, 10), 32);
        assert_eq!(w(5.0, 10), 96);
        assert_eq!(w(9.99, 10), 160);
        assert_eq!(w(10.0, 10), 160);
        assert_eq!(w(100.0, 3), 48);
        assert_eq!(w(0.0, 0), 0, "weight 0 stays 0");
        assert_eq!(ramped_weight(2, Duration::ZERO, None), 32, "no slow start");
        // Monotonic: the weight never goes down during a ramp.
        let steps: Vec<u32> = (0..=120).map(|t| w(f64::from(t) / 10.0, 7)).collect();
        assert!(steps.windows(2).all(|p| p[0] <= p[1]), "{steps:?}");
    }

    #[test]
    fn states_spell_and_parse() {
        for st in AdminState::ALL {
            assert_eq!(st.as_str().parse::<AdminState>(), Ok(st));
            assert_eq!(AdminState::from_u8(st.as_u8()), st);
        }
        assert!("down".parse::<AdminState>().is_err());
    }

    #[test]
    fn levers_store_only_what_differs_and_round_trip() -> Result<(), LeverFileError> {
        let mut l = Levers::default();
        let a = addr("192.0.2.11:8080");
        let b = addr("192.0.2.12:8080");
        l.set(
            "web",
            a,
            ServerLevers {
                state: AdminState::Drain,
                weight: None,
            },
        );
        l.set(
            "web",
            b,
            ServerLevers {
                state: AdminState::Ready,
                weight: Some(5),
            },
        );
        l.set("api", a, ServerLevers::default());
        assert_eq!(l.iter().count(), 2);
        assert_eq!(l.get("web", a).state, AdminState::Drain);
        assert_eq!(l.get("api", a), ServerLevers::default());
        let text = l.to_json();
        assert!(text.contains("\"drain\""), "{text}");
        assert_eq!(Levers::from_json(&text)?, l);
        l.retain(|_, s| s != a);
        assert_eq!(l.iter().count(), 1);
        assert!(Levers::from_json("{").is_err());
        Ok(())
    }
}
