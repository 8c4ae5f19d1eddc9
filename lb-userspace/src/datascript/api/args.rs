//! Argument checks and Lua value conversions shared by every namespace.

use std::borrow::Cow;
use std::net::IpAddr;

use mlua::{Lua, Value};

use super::{LResult, rt};
use crate::datascript::vm::VmShared;

pub(super) fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Integer(i) => Some(*i as f64),
        Value::Number(n) => Some(*n),
        _ => None,
    }
}

pub(super) fn is_number(v: &Value) -> bool {
    matches!(v, Value::Integer(_) | Value::Number(_))
}

/// A number as Lua prints it, integers without ".0".
pub(super) fn number_string(n: f64) -> String {
    if n.is_finite() && n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        format!("{n}")
    }
}

/// A key or value argument: a string or a number (stored as its string form).
pub(super) fn str_arg<'a>(v: &'a Value, func: &str, pos: usize) -> LResult<Cow<'a, str>> {
    match v {
        Value::String(s) => s
            .to_str()
            .map(|s| Cow::Owned(s.to_string()))
            .map_err(|_| rt(format!("bad argument #{pos} to '{func}' (not valid UTF-8)"))),
        Value::Integer(i) => Ok(Cow::Owned(i.to_string())),
        Value::Number(n) => Ok(Cow::Owned(number_string(*n))),
        other => Err(rt(format!(
            "bad argument #{pos} to '{func}' (string or number expected, got {})",
            other.type_name()
        ))),
    }
}

pub(super) fn name_arg(v: Option<&Value>, func: &str, pos: usize) -> LResult<String> {
    match v {
        Some(v) => str_arg(v, func, pos).map(Cow::into_owned),
        None => Err(rt(format!(
            "bad argument #{pos} to '{func}' (string expected, got no value)"
        ))),
    }
}

pub(super) fn lua_str(lua: &Lua, b: &[u8]) -> LResult<Value> {
    Ok(Value::String(lua.create_string(b)?))
}

pub(super) fn opt_str(lua: &Lua, b: Option<&[u8]>) -> LResult<Value> {
    b.map_or(Ok(Value::Nil), |b| lua_str(lua, b))
}

/// A port given as a number or a numeric string; anything outside 0..=65535 is no port.
pub(super) fn port_arg(v: Option<&Value>) -> LResult<Option<u16>> {
    let n = match v {
        None | Some(Value::Nil) => return Ok(None),
        Some(Value::String(s)) => s.to_str()?.trim().parse::<f64>().ok(),
        Some(v) => number(v),
    };
    Ok(n.and_then(port_number))
}

/// `n` as a port, if it is one (fractions cut off, as Lua's integer conversion does).
pub(super) fn port_number(n: f64) -> Option<u16> {
    (0.0..=65535.0).contains(&n).then_some(n as u16)
}

/// A Lua string for `s`, from the VM's small cache of recent results.
///
/// Creating a Lua string from Rust costs a protected call while a memory limit is set (about
/// 2.7k instructions); pushing an existing one does not. Table values and server addresses
/// repeat a lot (a handful of servers), so most results come from here.
pub(super) fn cached_str(lua: &Lua, sh: &VmShared, s: &str) -> LResult<mlua::String> {
    let mut cache = sh.strings.lock();
    if let Some(v) = cache.get(s) {
        return Ok(v.clone());
    }
    let v = lua.create_string(s)?;
    if cache.len() >= STRING_CACHE {
        cache.clear();
    }
    cache.insert(Box::from(s), v.clone());
    Ok(v)
}

/// Entries of [`cached_str`]'s cache.
const STRING_CACHE: usize = 256;

/// The Lua string of address `ip`, from the VM's cache of recent ones: scripts ask for the
/// server's address on every response (the JSESSIONID example), there are few servers, and
/// formatting an address costs more than finding it among a handful.
pub(super) fn cached_ip(lua: &Lua, sh: &VmShared, ip: IpAddr) -> LResult<mlua::String> {
    let mut cache = sh.ips.lock();
    if let Some((_, v)) = cache.iter().find(|(a, _)| *a == ip) {
        return Ok(v.clone());
    }
    let v = lua.create_string(ip.to_string())?;
    if cache.len() >= IP_CACHE {
        cache.clear();
    }
    cache.push((ip, v.clone()));
    Ok(v)
}

/// Entries of [`cached_ip`]'s cache (searched linearly).
const IP_CACHE: usize = 16;

/// The Lua type of `v` as Lua names it (LuaJIT's integers are numbers to scripts).
pub(super) fn lua_type(v: &Value) -> &'static str {
    match v {
        Value::Integer(_) => "number",
        other => other.type_name(),
    }
}
