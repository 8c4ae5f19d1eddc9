//! avi.utils: encodings, hashes, secure random bytes, address helpers and the geo database.
//!
//! Where Avi does not say (see the README's DataScripts section):
//! - `md5_hash`, `sha1_hash`, `sha256_hash` return lower-case hex text (scripts put hashes in
//!   headers and compare them as text); `murmur_hash` returns MurmurHash3 x86 32-bit, seed 0,
//!   as a non-negative Lua number (scripts bucket with `% n`).
//! - `base64_decode` takes padded or unpadded standard base64 and returns nil for anything
//!   else (client data: the script decides).
//! - `uri_encode` escapes every byte but the RFC 3986 unreserved ones (`A-Z a-z 0-9 - . _ ~`);
//!   `uri_decode` decodes `%XX`, keeps a `%` not followed by two hex digits and leaves `+` as
//!   it is (it is no form decoder).
//! - `rand_bytes(n)` takes 0..=[`MAX_RAND_BYTES`].
//! - `ip_in_subnet(ip, "net/len")` or `ip_in_subnet(ip, net, mask)` (mask a prefix length or a
//!   dotted mask): a boolean; an `ip` that is not an address (a missing header) is false, a
//!   subnet that is not one is a Lua error. `ip.netaddr(ip, mask)` is the network address.
//! - `get_geo_from_ip(ip[, flag])` reads the configured MaxMind database (see [`GEO_FIELDS`]
//!   for the flags); nil when the address is not in it.

use std::net::IpAddr;
use std::sync::Arc;

use base64::Engine as _;
use ipnet::IpNet;
use md5::Digest as _;
use mlua::{Lua, Table, Value};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode, percent_encode};

use super::args::{lua_str, lua_type, name_arg, number};
use super::{LResult, Namespace, reg, rt};
use crate::config::GeoDatabase;
use crate::datascript::ScriptEnv;
use crate::datascript::vm::VmShared;

pub(super) const NAMESPACE: Namespace = Namespace {
    name: "utils",
    install,
    constants: &[],
};

/// Largest `rand_bytes` request: a token or a key, never a body.
pub(super) const MAX_RAND_BYTES: usize = 4096;

/// Bytes `uri_encode` leaves as they are: RFC 3986's unreserved characters.
const URI_KEEP: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `get_geo_from_ip` flags and the database path each one reads. No flag is "country_code";
/// the paths are those of MaxMind's GeoIP2/GeoLite2 Country, City and ASN databases.
pub(super) const GEO_FIELDS: &[(&str, &[&str])] = &[
    ("country_code", &["country", "iso_code"]),
    ("country_name", &["country", "names", "en"]),
    ("continent_code", &["continent", "code"]),
    ("continent_name", &["continent", "names", "en"]),
    ("city", &["city", "names", "en"]),
    ("region", &["subdivisions", "0", "names", "en"]),
    ("region_code", &["subdivisions", "0", "iso_code"]),
    ("postal_code", &["postal", "code"]),
    ("latitude", &["location", "latitude"]),
    ("longitude", &["location", "longitude"]),
    ("asn", &["autonomous_system_number"]),
    ("as_org", &["autonomous_system_organization"]),
];

/// The bytes of a string argument (numbers as Lua prints them).
fn bytes_arg(a: &super::Args, pos: usize, func: &str) -> LResult<Vec<u8>> {
    match a.get(pos - 1) {
        Some(Value::String(s)) => Ok(s.as_bytes().to_vec()),
        Some(v @ (Value::Integer(_) | Value::Number(_))) => {
            Ok(name_arg(Some(v), func, pos)?.into_bytes())
        }
        other => Err(rt(format!(
            "bad argument #{pos} to '{func}' (string expected, got {})",
            other.map_or("no value", lua_type)
        ))),
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// MurmurHash3 x86 32-bit, seed 0.
pub(super) fn murmur3_32(data: &[u8]) -> u32 {
    // Reading from a slice cannot fail.
    murmur3::murmur3_32(&mut std::io::Cursor::new(data), 0).unwrap_or(0)
}

/// An address argument; None for anything that is not one (nil, garbage from a header).
fn ip_value(v: Option<&Value>) -> Option<IpAddr> {
    match v {
        Some(Value::String(s)) => s.to_str().ok()?.trim().parse().ok(),
        _ => None,
    }
}

/// A prefix length from a number or a dotted mask ("255.255.255.0").
fn prefix_len(v: Option<&Value>, func: &str, pos: usize) -> LResult<u8> {
    let bad = || {
        rt(format!(
            "bad argument #{pos} to '{func}' (prefix length or netmask expected)"
        ))
    };
    if let Some(n) = v.and_then(number) {
        return u8::try_from(n as i64).map_err(|_| bad());
    }
    let text = name_arg(v, func, pos)?;
    if let Ok(n) = text.trim().parse::<u8>() {
        return Ok(n);
    }
    let mask: IpAddr = text.trim().parse().map_err(|_| bad())?;
    ipnet::ip_mask_to_prefix(mask).map_err(|_| bad())
}

/// The subnet of `args[1..]`: `"net/len"`, or `net, mask`.
fn subnet_arg(a: &super::Args, func: &str) -> LResult<IpNet> {
    let net = name_arg(a.get(1), func, 2)?;
    let parsed = match a.get(2) {
        None | Some(Value::Nil) => net.trim().parse::<IpNet>().ok(),
        mask => {
            let len = prefix_len(mask, func, 3)?;
            let addr: IpAddr = net
                .trim()
                .parse()
                .map_err(|_| rt(format!("bad argument #2 to '{func}' (address expected)")))?;
            IpNet::new(addr, len).ok()
        }
    };
    parsed.ok_or_else(|| {
        rt(format!(
            "bad argument #2 to '{func}' (not a subnet: '{net}')"
        ))
    })
}

/// The value at `path` of `ip`'s record as a Lua value: strings, numbers, booleans.
fn geo_lookup(lua: &Lua, sh: &VmShared, ip: IpAddr, path: &[&str]) -> LResult<Value> {
    use maxminddb::PathElement;
    let env = sh.env();
    let db = geo_database(&env)?;
    let path: Vec<PathElement<'_>> = path
        .iter()
        .map(|p| {
            p.parse::<usize>()
                .map_or(PathElement::Key(p), PathElement::Index)
        })
        .collect();
    let found = db
        .reader()
        .lookup(ip)
        .and_then(|r| r.decode_path::<GeoValue>(&path));
    match found {
        Ok(Some(GeoValue::Text(s))) => lua_str(lua, s.as_bytes()),
        Ok(Some(GeoValue::Number(n))) => Ok(Value::Number(n)),
        Ok(Some(GeoValue::Flag(b))) => Ok(Value::Boolean(b)),
        // Not in the database, or a record without that field (or of another shape).
        Ok(None) | Ok(Some(GeoValue::Other)) => Ok(Value::Nil),
        Err(e) => {
            tracing::debug!(vs = %sh.set.vs_name(), %ip, error = %e, "get_geo_from_ip: lookup failed");
            Ok(Value::Nil)
        }
    }
}

/// The configured database; without one every call is an error, whatever its arguments, so
/// the missing setting shows on the first request.
fn geo_database(env: &ScriptEnv) -> LResult<&GeoDatabase> {
    env.geo.as_ref().ok_or_else(|| {
        rt("get_geo_from_ip: no geo database configured ([agent.datascript] geo_database)")
    })
}

/// A database value as scripts can use it.
enum GeoValue {
    Text(String),
    Number(f64),
    Flag(bool),
    Other,
}

impl<'de> serde::Deserialize<'de> for GeoValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = GeoValue;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a geo database value")
            }
            fn visit_str<E>(self, v: &str) -> Result<GeoValue, E> {
                Ok(GeoValue::Text(v.to_owned()))
            }
            fn visit_bool<E>(self, v: bool) -> Result<GeoValue, E> {
                Ok(GeoValue::Flag(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<GeoValue, E> {
                Ok(GeoValue::Number(v as f64))
            }
            fn visit_i64<E>(self, v: i64) -> Result<GeoValue, E> {
                Ok(GeoValue::Number(v as f64))
            }
            fn visit_f64<E>(self, v: f64) -> Result<GeoValue, E> {
                Ok(GeoValue::Number(v))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<GeoValue, A::Error> {
                while m
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(GeoValue::Other)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut s: A,
            ) -> Result<GeoValue, A::Error> {
                while s.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(GeoValue::Other)
            }
        }
        d.deserialize_any(V)
    }
}

fn install(lua: &Lua, sh: &Arc<VmShared>) -> LResult<Table> {
    let utils = lua.create_table()?;
    reg!(lua, utils, sh, "base64_encode", |l, _s, a| {
        let data = bytes_arg(&a, 1, "base64_encode")?;
        lua_str(
            l,
            base64::engine::general_purpose::STANDARD
                .encode(data)
                .as_bytes(),
        )
    });
    reg!(lua, utils, sh, "base64_decode", |l, _s, a| {
        let text = bytes_arg(&a, 1, "base64_decode")?;
        match base64::engine::general_purpose::STANDARD_PAD_INDIFFERENT.decode(text.trim_ascii()) {
            Ok(data) => lua_str(l, &data),
            Err(_) => Ok(Value::Nil),
        }
    });
    reg!(lua, utils, sh, "uri_encode", |l, _s, a| {
        let data = bytes_arg(&a, 1, "uri_encode")?;
        lua_str(l, percent_encode(&data, URI_KEEP).to_string().as_bytes())
    });
    reg!(lua, utils, sh, "uri_decode", |l, _s, a| {
        let data = bytes_arg(&a, 1, "uri_decode")?;
        let decoded: Vec<u8> = percent_decode(&data).collect();
        lua_str(l, &decoded)
    });
    reg!(lua, utils, sh, "md5_hash", |l, _s, a| {
        let data = bytes_arg(&a, 1, "md5_hash")?;
        lua_str(l, hex(&md5::Md5::digest(data)).as_bytes())
    });
    reg!(lua, utils, sh, "sha1_hash", |l, _s, a| {
        let data = bytes_arg(&a, 1, "sha1_hash")?;
        lua_str(l, hex(&sha1::Sha1::digest(data)).as_bytes())
    });
    reg!(lua, utils, sh, "sha256_hash", |l, _s, a| {
        let data = bytes_arg(&a, 1, "sha256_hash")?;
        lua_str(l, hex(&sha2::Sha256::digest(data)).as_bytes())
    });
    reg!(lua, utils, sh, "murmur_hash", |l, _s, a| {
        let data = bytes_arg(&a, 1, "murmur_hash")?;
        Ok(Value::Number(f64::from(murmur3_32(&data))))
    });
    reg!(lua, utils, sh, "rand_bytes", |l, _s, a| {
        let n = a
            .first()
            .and_then(number)
            .filter(|n| n.fract() == 0.0 && (0.0..=MAX_RAND_BYTES as f64).contains(n))
            .ok_or_else(|| {
                rt(format!(
                    "bad argument #1 to 'rand_bytes' (integer 0..{MAX_RAND_BYTES} expected)"
                ))
            })?;
        let mut buf = vec![0u8; n as usize];
        getrandom::fill(&mut buf).map_err(|e| rt(format!("rand_bytes: {e}")))?;
        lua_str(l, &buf)
    });
    reg!(lua, utils, sh, "ip_in_subnet", |l, _s, a| {
        let net = subnet_arg(&a, "ip_in_subnet")?;
        Ok(ip_value(a.first()).is_some_and(|ip| net.contains(&ip)))
    });
    reg!(lua, utils, sh, "get_geo_from_ip", |l, s, a| {
        let flag = match a.get(1) {
            None | Some(Value::Nil) => "country_code".to_string(),
            v => name_arg(v, "get_geo_from_ip", 2)?.to_ascii_lowercase(),
        };
        let path = GEO_FIELDS
            .iter()
            .find(|(name, _)| *name == flag)
            .map(|(_, path)| *path)
            .ok_or_else(|| {
                let known: Vec<&str> = GEO_FIELDS.iter().map(|(n, _)| *n).collect();
                rt(format!(
                    "bad argument #2 to 'get_geo_from_ip' (unknown flag '{flag}'; one of {})",
                    known.join(", ")
                ))
            })?;
        geo_database(&s.env())?;
        match ip_value(a.first()) {
            Some(ip) => geo_lookup(l, s, ip, path),
            None => Ok(Value::Nil),
        }
    });
    // avi.utils.ip.netaddr: a nested table, read-only like the namespaces.
    let ip = lua.create_table()?;
    reg!(lua, ip, sh, "netaddr", |l, _s, a| {
        let addr = ip_value(a.first())
            .ok_or_else(|| rt("bad argument #1 to 'netaddr' (address expected)"))?;
        let len = prefix_len(a.get(1), "netaddr", 2)?;
        let net = IpNet::new(addr, len).map_err(|_| {
            rt(format!(
                "bad argument #2 to 'netaddr' (prefix {len} too long)"
            ))
        })?;
        lua_str(l, net.network().to_string().as_bytes())
    });
    utils.raw_set("ip", read_only(lua, ip, "avi.utils.ip")?)?;
    Ok(utils)
}

/// A read-only view of `t` (the sandbox wraps only the namespace tables themselves).
fn read_only(lua: &Lua, t: Table, name: &'static str) -> LResult<Table> {
    let view = lua.create_table()?;
    let mt = lua.create_table()?;
    mt.raw_set("__index", t)?;
    mt.raw_set(
        "__newindex",
        lua.create_function(move |_, _: super::Args| -> LResult<()> {
            Err(rt(format!("attempt to modify read-only table '{name}'")))
        })?,
    )?;
    mt.raw_set("__metatable", false)?;
    view.set_metatable(Some(mt))?;
    Ok(view)
}
