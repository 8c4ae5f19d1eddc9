//! The TOML schema as serde sees it. Values whose parsing can fail in a way the user should see
//! with a precise location (addresses, durations, sizes) stay `Spanned<String>` here and are
//! parsed during validation, so that every bad value is reported, not just the first.

use serde::Deserialize;
use toml::Spanned;

use super::groups::RateLimitAction;
use super::model::{FlowHash, Forwarding, LogFormat, ScriptEvent, ServiceType};

/// A string, kept with its location.
pub(crate) type SStr = Spanned<String>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAgent {
    pub interfaces: Option<Vec<SStr>>,
    /// Interface name -> "xdp" | "tc" (interfaces not named: xdp).
    pub attach: Option<std::collections::BTreeMap<String, SStr>>,
    pub admin_listen: Option<SStr>,
    pub bpffs_dir: Option<SStr>,
    pub state_file: Option<SStr>,
    pub ephemeral_pins: Option<bool>,
    pub workers: Option<Spanned<usize>>,
    pub admin_token_file: Option<SStr>,
    pub log_format: Option<LogFormat>,
    pub http: Option<RawHttp>,
    pub datascript: Option<RawDsLimits>,
    pub capacity: Option<RawCapacity>,
    pub tunnel_source_ipv4: Option<SStr>,
    pub tunnel_source_ipv6: Option<SStr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCapacity {
    pub connections: Option<Spanned<u32>>,
    pub client_pins: Option<Spanned<u32>>,
    pub connections_v6: Option<Spanned<u32>>,
    pub client_pins_v6: Option<Spanned<u32>>,
    pub table_mirror_entries: Option<Spanned<u32>>,
    pub virtual_services: Option<Spanned<u32>>,
    pub servers: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHttp {
    pub header_read_timeout: Option<SStr>,
    pub idle_timeout: Option<SStr>,
    pub upstream_connect_timeout: Option<SStr>,
    pub upstream_response_timeout: Option<SStr>,
    pub client_body_idle_timeout: Option<SStr>,
    pub upstream_body_idle_timeout: Option<SStr>,
    pub drain_timeout: Option<SStr>,
    pub max_header_bytes: Option<Spanned<ByteSize>>,
    pub max_headers: Option<Spanned<usize>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDsLimits {
    pub geo_database: Option<SStr>,
    pub instruction_budget: Option<Spanned<u64>>,
    pub memory_limit: Option<Spanned<ByteSize>>,
    pub max_event_time: Option<SStr>,
    pub table_memory_limit: Option<Spanned<ByteSize>>,
    pub table_max_entries: Option<Spanned<u32>>,
    pub max_added_headers: Option<Spanned<usize>>,
    pub max_added_header_bytes: Option<Spanned<ByteSize>>,
    pub max_body_buffer: Option<Spanned<ByteSize>>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawAlgorithm {
    RoundRobin,
    LeastConnections,
    ConsistentHash,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawHashType {
    Header,
    Cookie,
    ClientIp,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHash {
    #[serde(rename = "type")]
    pub kind: Spanned<RawHashType>,
    pub name: Option<SStr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPool {
    pub name: SStr,
    pub algorithm: Option<Spanned<RawAlgorithm>>,
    pub hash: Option<Spanned<RawHash>>,
    pub servers: Spanned<Vec<Spanned<RawServer>>>,
    pub health_monitor: Option<Spanned<RawMonitor>>,
    pub slow_start: Option<SStr>,
    pub tls: Option<Spanned<RawPoolTls>>,
}

/// A pool's `tls = { ca = "...", server_name = "...", verify = true }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPoolTls {
    pub ca: Option<SStr>,
    pub server_name: Option<SStr>,
    pub verify: Option<bool>,
}

/// A pool member: `"ip:port"` or `{ addr = "ip:port", weight = 3, backup = true }`.
#[derive(Debug)]
pub(crate) enum RawServer {
    Plain(String),
    Table(RawServerTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServerTable {
    pub addr: SStr,
    pub weight: Option<Spanned<i64>>,
    pub backup: Option<bool>,
}

impl<'de> Deserialize<'de> for RawServer {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawServer;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a server address string or a table { addr, weight, backup }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawServer, E> {
                Ok(RawServer::Plain(v.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<RawServer, A::Error> {
                // Through the map's own deserializer, so unknown keys and field spans are
                // reported as for every other table.
                RawServerTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RawServer::Table)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RawMonitorType {
    Tcp,
    Http,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMonitor {
    #[serde(rename = "type")]
    pub kind: Spanned<RawMonitorType>,
    pub path: Option<SStr>,
    pub expect_status: Option<Spanned<Vec<Spanned<IntOrStr>>>>,
    pub interval: Option<SStr>,
    pub timeout: Option<SStr>,
    pub fall: Option<Spanned<u32>>,
    pub rise: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RawFastPath {
    #[serde(rename = "client_ip")]
    ClientIp,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RawPersistenceType {
    #[serde(rename = "client_ip")]
    ClientIp,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPersistence {
    // Required so the file says which persistence it asks for; client_ip is the only one yet.
    #[expect(dead_code, reason = "one variant so far; serde checks it")]
    #[serde(rename = "type")]
    pub kind: RawPersistenceType,
    pub timeout: Option<SStr>,
    pub ipv6_prefix: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawVs {
    pub name: SStr,
    pub listen: SStr,
    #[serde(rename = "type")]
    pub kind: Spanned<ServiceType>,
    pub pool: SStr,
    pub forwarding: Option<Spanned<Forwarding>>,
    pub flow_hash: Option<Spanned<FlowHash>>,
    pub persistence: Option<Spanned<RawPersistence>>,
    pub fast_path: Option<Spanned<RawFastPath>>,
    pub fast_path_max_sessions: Option<Spanned<u32>>,
    pub fast_path_exclude: Option<Spanned<Vec<SStr>>>,
    pub fast_path_ipv6_prefix: Option<Spanned<u32>>,
    #[serde(default)]
    pub datascript: Vec<Spanned<RawDataScript>>,
    pub rate_limit: Option<Spanned<RawVsRateLimit>>,
    pub tls: Option<Spanned<RawTls>>,
}

/// A virtual service's `tls = { certificates = [...], ... }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    pub certificates: Spanned<Vec<Spanned<RawCertificate>>>,
    pub min_version: Option<SStr>,
    pub alpn: Option<Spanned<Vec<SStr>>>,
    pub client_ca: Option<SStr>,
    pub client_cert: Option<SStr>,
}

/// One `{ cert = "shop.pem", key = "shop.key" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCertificate {
    pub cert: SStr,
    pub key: SStr,
}

/// A virtual service's `rate_limit = { limiter = "...", action = "..." }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawVsRateLimit {
    pub limiter: SStr,
    pub action: Option<RateLimitAction>,
}

/// `[[string_group]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStringGroup {
    pub name: SStr,
    pub entries: Option<Spanned<RawStringEntries>>,
    pub file: Option<SStr>,
}

/// A string group's inline `entries`: `["a", "b"]` or `{ "a" = "value", ... }`.
#[derive(Debug)]
pub(crate) enum RawStringEntries {
    List(Vec<String>),
    Map(Vec<(String, String)>),
}

impl<'de> Deserialize<'de> for RawStringEntries {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawStringEntries;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an array of strings or a table of string values")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<RawStringEntries, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(RawStringEntries::List(out))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<RawStringEntries, A::Error> {
                let mut out = Vec::new();
                while let Some(kv) = map.next_entry::<String, String>()? {
                    out.push(kv);
                }
                Ok(RawStringEntries::Map(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// `[[ip_group]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawIpGroup {
    pub name: SStr,
    pub entries: Option<Spanned<Vec<SStr>>>,
    pub file: Option<SStr>,
}

/// `[[rate_limiter]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRateLimiter {
    pub name: SStr,
    pub count: Spanned<i64>,
    pub period: Option<SStr>,
    pub burst: Option<Spanned<i64>>,
    pub max_keys: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDataScript {
    pub event: ScriptEvent,
    pub script: Option<SStr>,
    pub file: Option<SStr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawReplication {
    pub redis_url: SStr,
    pub node_id: SStr,
    pub connect_timeout: Option<SStr>,
    pub command_timeout: Option<SStr>,
}

/// An integer or a string, for values that accept both (`expect_status = [200, "300-399"]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IntOrStr {
    Int(i64),
    Str(String),
}

impl<'de> Deserialize<'de> for IntOrStr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = IntOrStr;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an integer or a string")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<IntOrStr, E> {
                Ok(IntOrStr::Int(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<IntOrStr, E> {
                i64::try_from(v)
                    .map(IntOrStr::Int)
                    .map_err(|_| E::custom("integer out of range"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<IntOrStr, E> {
                Ok(IntOrStr::Str(v.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A byte count: an integer, or a string with a binary suffix ("16KiB", "16 MiB", "1GiB").
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ByteSize(pub IntOrStr);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        IntOrStr::deserialize(d).map(ByteSize)
    }
}

impl ByteSize {
    /// Bytes, or a message saying why the value is not a size.
    pub(crate) fn bytes(&self) -> Result<u64, String> {
        match &self.0 {
            IntOrStr::Int(n) => {
                u64::try_from(*n).map_err(|_| format!("size must not be negative, got {n}"))
            }
            IntOrStr::Str(s) => parse_size(s),
        }
    }
}

fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || format!("invalid size {s:?}: expected e.g. 16384, \"16KiB\" or \"16MiB\"");
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1024,
        "MiB" => 1024 * 1024,
        "GiB" => 1024 * 1024 * 1024,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).ok_or_else(bad)
}
