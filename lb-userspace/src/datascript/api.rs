//! The avi.* functions.
//!
//! Each function reaches the transaction through the VM's [`Ctx`], filled by the event runner
//! for the duration of one event. Errors are Lua errors (catchable with pcall) unless the event
//! has to end (budget, avi.http.response/redirect).

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::header::{COOKIE, LOCATION, SET_COOKIE};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Version};
use mlua::{Function, Lua, Table, Value, Variadic};

use super::Event;
use super::vm::{Ctx, TERMINATE, TxnState, VmShared};
use crate::proxy::hooks::ServerView;
use crate::tables::DEFAULT_TABLE;

type LResult<T> = mlua::Result<T>;
type Args = Variadic<Value>;

/// avi.HTTP_REQUEST / avi.HTTP_RESPONSE.
const CTX_REQUEST: i64 = 1;
const CTX_RESPONSE: i64 = 2;
/// avi.QUERY_TABLE.
const QUERY_TABLE: i64 = 1;

const DEFAULT_LIFETIME_S: u64 = 300;

fn rt(msg: impl std::fmt::Display) -> mlua::Error {
    mlua::Error::runtime(msg)
}

fn with_ctx<R>(sh: &VmShared, f: impl FnOnce(&mut Ctx) -> LResult<R>) -> LResult<R> {
    let mut g = sh
        .ctx
        .try_lock()
        .ok_or_else(|| rt("avi: re-entrant call"))?;
    f(&mut g)
}

fn txn(ctx: &mut Ctx) -> LResult<&mut TxnState> {
    ctx.txn
        .as_mut()
        .ok_or_else(|| rt("avi: called outside a DataScript event"))
}

/// Which message a read applies to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Msg {
    Req,
    Resp,
}

fn which(ctx: &Ctx, arg: Option<&Value>) -> LResult<Msg> {
    match arg.and_then(number) {
        Some(n) if n == CTX_REQUEST as f64 => Ok(Msg::Req),
        Some(n) if n == CTX_RESPONSE as f64 => Ok(Msg::Resp),
        Some(_) => Err(rt(
            "bad context (use avi.HTTP_REQUEST or avi.HTTP_RESPONSE)",
        )),
        None => Ok(match ctx.event {
            Some(Event::HttpResp) => Msg::Resp,
            _ => Msg::Req,
        }),
    }
}

fn which_n(ctx: &Ctx, arg: Option<f64>) -> LResult<Msg> {
    which(ctx, arg.map(Value::Number).as_ref())
}

fn read_headers(ctx: &Ctx, m: Msg) -> Option<&HeaderMap> {
    match m {
        Msg::Req => ctx.req.as_ref().map(|r| &r.headers).or_else(|| {
            ctx.txn
                .as_ref()
                .and_then(|t| t.req_snapshot.as_ref())
                .map(|s| &s.headers)
        }),
        Msg::Resp => ctx.resp.as_ref().map(|r| &r.headers),
    }
}

/// The headers of the current event's message (the only one scripts may change).
fn write_headers(ctx: &mut Ctx) -> LResult<(&mut HeaderMap, Msg)> {
    match ctx.event {
        Some(Event::HttpReq) => ctx.req.as_mut().map(|r| (&mut r.headers, Msg::Req)),
        Some(Event::HttpResp) => ctx.resp.as_mut().map(|r| (&mut r.headers, Msg::Resp)),
        None => None,
    }
    .ok_or_else(|| rt("avi: called outside a DataScript event"))
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Integer(i) => Some(*i as f64),
        Value::Number(n) => Some(*n),
        _ => None,
    }
}

fn is_number(v: &Value) -> bool {
    matches!(v, Value::Integer(_) | Value::Number(_))
}

/// A number as Lua prints it, integers without ".0".
fn number_string(n: f64) -> String {
    if n.is_finite() && n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        format!("{n}")
    }
}

/// A key or value argument: a string or a number (stored as its string form).
fn str_arg<'a>(v: &'a Value, func: &str, pos: usize) -> LResult<Cow<'a, str>> {
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

fn name_arg(v: Option<&Value>, func: &str, pos: usize) -> LResult<String> {
    match v {
        Some(v) => str_arg(v, func, pos).map(Cow::into_owned),
        None => Err(rt(format!(
            "bad argument #{pos} to '{func}' (string expected, got no value)"
        ))),
    }
}

fn lua_str(lua: &Lua, b: &[u8]) -> LResult<Value> {
    Ok(Value::String(lua.create_string(b)?))
}

fn opt_str(lua: &Lua, b: Option<&[u8]>) -> LResult<Value> {
    b.map_or(Ok(Value::Nil), |b| lua_str(lua, b))
}

fn header_name(v: &Value, func: &str) -> LResult<HeaderName> {
    let s = str_arg(v, func, 1)?;
    HeaderName::from_bytes(s.as_bytes())
        .map_err(|_| rt(format!("{func}: invalid header name '{s}'")))
}

fn header_value(v: &Value, func: &str, pos: usize) -> LResult<HeaderValue> {
    let b: Vec<u8> = match v {
        Value::String(s) => s.as_bytes().to_vec(),
        other => str_arg(other, func, pos)?.into_owned().into_bytes(),
    };
    HeaderValue::from_bytes(&b).map_err(|_| rt(format!("{func}: invalid header value")))
}

// ---- cookies -------------------------------------------------------------------------------

/// `name=value` pairs of Cookie headers.
fn request_cookies(h: &HeaderMap) -> impl Iterator<Item = (&[u8], &[u8])> {
    h.get_all(COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .filter_map(|pair| {
            let pair = trim(pair);
            let eq = pair.iter().position(|b| *b == b'=')?;
            Some((trim(&pair[..eq]), trim(&pair[eq + 1..])))
        })
}

/// Name and value of one Set-Cookie header.
fn set_cookie_pair(v: &HeaderValue) -> Option<(&[u8], &[u8])> {
    let first = v.as_bytes().split(|b| *b == b';').next()?;
    let eq = first.iter().position(|b| *b == b'=')?;
    Some((trim(&first[..eq]), trim(&first[eq + 1..])))
}

fn trim(b: &[u8]) -> &[u8] {
    let s = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let e = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(s, |e| e + 1);
    &b[s..e.max(s)]
}

fn find_cookie<'a>(h: &'a HeaderMap, m: Msg, name: &[u8]) -> Option<&'a [u8]> {
    match m {
        Msg::Req => request_cookies(h).find(|(n, _)| *n == name).map(|(_, v)| v),
        Msg::Resp => h
            .get_all(SET_COOKIE)
            .iter()
            .filter_map(set_cookie_pair)
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v),
    }
}

/// A Set-Cookie value from `name, value` or a table {name=, value=, path=, domain=, expires=,
/// max_age=, secure=, httponly=, samesite=}.
fn cookie_from_args(args: &Args, func: &str) -> LResult<(String, String)> {
    match args.first() {
        Some(Value::Table(t)) => {
            let name: String = t.get("name")?;
            let value: String = t.get::<Option<String>>("value")?.unwrap_or_default();
            let mut s = format!("{name}={value}");
            for (k, attr) in [
                ("path", "Path"),
                ("domain", "Domain"),
                ("expires", "Expires"),
                ("max_age", "Max-Age"),
                ("samesite", "SameSite"),
            ] {
                if let Some(v) = t.get::<Option<String>>(k)? {
                    s.push_str(&format!("; {attr}={v}"));
                }
            }
            for (k, attr) in [("secure", "Secure"), ("httponly", "HttpOnly")] {
                if t.get::<Option<bool>>(k)?.unwrap_or(false) {
                    s.push_str(&format!("; {attr}"));
                }
            }
            Ok((name, s))
        }
        Some(v) => {
            let name = str_arg(v, func, 1)?.into_owned();
            let value = name_arg(args.get(1), func, 2)?;
            let s = format!("{name}={value}");
            Ok((name, s))
        }
        None => Err(rt(format!("bad argument #1 to '{func}' (cookie expected)"))),
    }
}

fn set_request_cookies(h: &mut HeaderMap, pairs: &[(Vec<u8>, Vec<u8>)]) -> LResult<()> {
    h.remove(COOKIE);
    if pairs.is_empty() {
        return Ok(());
    }
    let joined = pairs
        .iter()
        .map(|(n, v)| [n.as_slice(), b"=", v.as_slice()].concat())
        .collect::<Vec<_>>()
        .join(&b"; "[..]);
    h.insert(
        COOKIE,
        HeaderValue::from_bytes(&joined).map_err(|_| rt("invalid cookie"))?,
    );
    Ok(())
}

fn owned_request_cookies(h: &HeaderMap) -> Vec<(Vec<u8>, Vec<u8>)> {
    request_cookies(h)
        .map(|(n, v)| (n.to_vec(), v.to_vec()))
        .collect()
}

/// add (replace=false) or replace a cookie in the current message.
fn put_cookie(ctx: &mut Ctx, args: &Args, func: &str, replace: bool) -> LResult<()> {
    let (name, set_cookie) = cookie_from_args(args, func)?;
    let (h, m) = write_headers(ctx)?;
    match m {
        Msg::Req => {
            let value = set_cookie
                .split(';')
                .next()
                .and_then(|p| p.split_once('='))
                .map(|(_, v)| v.to_string())
                .unwrap_or_default();
            let mut pairs = owned_request_cookies(h);
            if replace {
                pairs.retain(|(n, _)| n != name.as_bytes());
            }
            pairs.push((name.into_bytes(), value.into_bytes()));
            set_request_cookies(h, &pairs)
        }
        Msg::Resp => {
            if replace {
                remove_set_cookie(h, name.as_bytes());
            }
            h.append(
                SET_COOKIE,
                HeaderValue::from_str(&set_cookie)
                    .map_err(|_| rt(format!("{func}: invalid cookie")))?,
            );
            Ok(())
        }
    }
}

fn remove_set_cookie(h: &mut HeaderMap, name: &[u8]) {
    let keep: Vec<HeaderValue> = h
        .get_all(SET_COOKIE)
        .iter()
        .filter(|v| set_cookie_pair(v).is_none_or(|(n, _)| n != name))
        .cloned()
        .collect();
    h.remove(SET_COOKIE);
    for v in keep {
        h.append(SET_COOKIE, v);
    }
}

// ---- request line ----------------------------------------------------------------------------

struct ReqLine<'a> {
    method: &'a http::Method,
    uri: &'a http::Uri,
    version: Version,
}

fn req_line(ctx: &Ctx) -> Option<ReqLine<'_>> {
    if let Some(r) = ctx.req.as_ref() {
        return Some(ReqLine {
            method: &r.method,
            uri: &r.uri,
            version: r.version,
        });
    }
    let s = ctx.txn.as_ref()?.req_snapshot.as_ref()?;
    Some(ReqLine {
        method: &s.method,
        uri: &s.uri,
        version: s.version,
    })
}

fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2.0",
        Version::HTTP_3 => "3.0",
        _ => "1.1",
    }
}

fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(c) => {
                        out.push(c);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    out
}

// ---- responses -------------------------------------------------------------------------------

fn build_response(
    status: u16,
    headers: Option<&Table>,
    body: Option<&[u8]>,
) -> LResult<http::Response<Bytes>> {
    let status =
        StatusCode::from_u16(status).map_err(|_| rt(format!("invalid status code {status}")))?;
    let mut resp = http::Response::new(Bytes::copy_from_slice(body.unwrap_or_default()));
    *resp.status_mut() = status;
    if let Some(t) = headers {
        for pair in t.pairs::<Value, Value>() {
            let (k, v) = pair?;
            let name = header_name(&k, "response")?;
            match v {
                Value::Table(list) => {
                    for item in list.sequence_values::<Value>() {
                        resp.headers_mut()
                            .append(name.clone(), header_value(&item?, "response", 2)?);
                    }
                }
                v => {
                    resp.headers_mut()
                        .append(name, header_value(&v, "response", 2)?);
                }
            }
        }
    }
    Ok(resp)
}

/// Record the response and end the event.
fn terminate(sh: &VmShared, resp: http::Response<Bytes>) -> LResult<()> {
    with_ctx(sh, |ctx| {
        txn(ctx)?.reply = Some(resp);
        Ok(())
    })?;
    sh.abort.store(true, Ordering::Relaxed);
    Err(rt(TERMINATE))
}

// ---- logging ---------------------------------------------------------------------------------

pub(crate) fn vs_log(sh: &VmShared, args: &Args) -> LResult<()> {
    let mut line = String::new();
    for (i, a) in args.iter().enumerate() {
        if i > 0 {
            line.push(' ');
        }
        match a {
            Value::String(s) => line.push_str(&s.to_string_lossy()),
            Value::Integer(n) => line.push_str(&n.to_string()),
            Value::Number(n) => line.push_str(&number_string(*n)),
            Value::Boolean(b) => line.push_str(if *b { "true" } else { "false" }),
            Value::Nil => line.push_str("nil"),
            Value::Error(e) => line.push_str(&super::compile::root_message(e)),
            other => line.push_str(
                &other
                    .to_string()
                    .unwrap_or_else(|_| other.type_name().into()),
            ),
        }
    }
    if line.contains(super::compile::CHUNK_PREFIX) {
        line = sh.set.locate(&line);
    }
    with_ctx(sh, |ctx| {
        let t = txn(ctx)?;
        tracing::debug!(vs = %t.info.vs_name, "{line}");
        if !t.log.is_empty() {
            t.log.push('\n');
        }
        t.log.push_str(&line);
        Ok(())
    })
}

// ---- pools -----------------------------------------------------------------------------------

fn servers_of(sh: &VmShared, pool: &str) -> LResult<Vec<ServerView>> {
    sh.env
        .pools
        .servers(pool)
        .ok_or_else(|| rt(format!("unknown pool '{pool}'")))
}

/// The server of `servers` named by `server` ("ip", "ip:port", "[v6]:port") and `port`.
/// A port no server of that address uses is ignored: the public JSESSIONID example passes
/// table_lookup's second result (the remaining lifetime) there.
fn find_server(
    servers: &[ServerView],
    pool: &str,
    server: &str,
    port: Option<u16>,
) -> LResult<SocketAddr> {
    let unknown = || rt(format!("server '{server}' is not in pool '{pool}'"));
    if let Ok(sa) = server.parse::<SocketAddr>() {
        return servers
            .iter()
            .find(|s| s.addr == sa)
            .map(|s| s.addr)
            .ok_or_else(unknown);
    }
    let ip: IpAddr = server
        .trim_matches(['[', ']'])
        .parse()
        .map_err(|_| unknown())?;
    let mut same_ip = servers.iter().filter(|s| s.addr.ip() == ip);
    let first = same_ip.clone().next().ok_or_else(unknown)?;
    Ok(port
        .and_then(|p| same_ip.find(|s| s.addr.port() == p))
        .unwrap_or(first)
        .addr)
}

fn port_arg(v: Option<&Value>) -> LResult<Option<u16>> {
    match v {
        None | Some(Value::Nil) => Ok(None),
        Some(v) => {
            let n = match v {
                Value::String(s) => s.to_str()?.trim().parse::<f64>().ok(),
                v => number(v),
            };
            Ok(n.filter(|n| *n >= 0.0 && *n <= 65535.0).map(|n| n as u16))
        }
    }
}

fn pool_server(sh: &VmShared, args: &Args, func: &str) -> LResult<(String, SocketAddr)> {
    let pool = name_arg(args.first(), func, 1)?;
    let servers = servers_of(sh, &pool)?;
    let server = name_arg(args.get(1), func, 2)?;
    let port = port_arg(args.get(2))?;
    let addr = find_server(&servers, &pool, &server, port)?;
    Ok((pool, addr))
}

// ---- tables ----------------------------------------------------------------------------------

fn now(sh: &VmShared) -> u64 {
    sh.env.clock.now_ns()
}

fn observe_upsert(sh: &VmShared, table: &str, key: &str) -> LResult<()> {
    let Some(obs) = sh.env.observer.as_ref() else {
        return Ok(());
    };
    let Some(entry) = sh.env.tables.get(table, key, now(sh)) else {
        return Ok(());
    };
    with_ctx(sh, |ctx| {
        obs.upserted(&txn(ctx)?.info, &entry);
        Ok(())
    })
}

fn lifetime_s(v: f64, func: &str, allow_zero: bool) -> LResult<u64> {
    if !v.is_finite() || v < 0.0 || (!allow_zero && v < 1.0) {
        return Err(rt(format!(
            "{func}: lifetime must be {} seconds, got {}",
            if allow_zero { ">= 0" } else { ">= 1" },
            number_string(v)
        )));
    }
    Ok(v.floor() as u64)
}

/// The table primitives take resolved arguments; the Lua wrappers in [`TABLE_LUA`] decide
/// which argument is which by count and Lua type, as the contract says. Strings cross the
/// boundary as Rust strings (numbers are turned into strings by Lua itself, integers
/// without ".0"), which is much cheaper than handles to Lua values.
fn table_insert(
    sh: &VmShared,
    table: &str,
    key: &str,
    value: &str,
    lifetime: f64,
) -> LResult<bool> {
    let lifetime = lifetime_s(lifetime, "table_insert", false)?;
    match sh.env.tables.insert(table, key, value, lifetime, now(sh)) {
        Ok(_) => {
            observe_upsert(sh, table, key)?;
            Ok(true)
        }
        Err(e) => {
            tracing::debug!(vs = %sh.set.vs_name(), table = %table, error = %e, "table_insert refused");
            Ok(false)
        }
    }
}

/// A Lua string for `s`, from the VM's small cache of recent results.
///
/// Creating a Lua string from Rust costs a protected call while a memory limit is set (about
/// 2.7k instructions); pushing an existing one does not. Table values and server addresses
/// repeat a lot (a handful of servers), so most results come from here.
fn cached_str(lua: &Lua, sh: &VmShared, s: &str) -> LResult<mlua::String> {
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

fn table_lookup(
    lua: &Lua,
    sh: &VmShared,
    table: &str,
    key: &str,
    exten: f64,
) -> LResult<(Option<mlua::String>, f64)> {
    let exten = lifetime_s(exten, "table_lookup", true)?;
    match sh.env.tables.lookup(table, key, exten, now(sh)) {
        Some((value, remaining)) => {
            if exten > 0 {
                observe_upsert(sh, table, key)?;
            }
            Ok((Some(cached_str(lua, sh, &value)?), remaining as f64))
        }
        None => Ok((None, 0.0)),
    }
}

fn table_refresh(sh: &VmShared, table: &str, key: &str, exten: f64) -> LResult<bool> {
    let exten = lifetime_s(exten, "table_refresh", true)?;
    let live = sh.env.tables.refresh(table, key, exten, now(sh));
    if live && exten > 0 {
        observe_upsert(sh, table, key)?;
    }
    Ok(live)
}

fn table_remove(sh: &VmShared, table: &str, key: &str) -> LResult<bool> {
    let removed = sh.env.tables.remove(table, key, now(sh));
    if removed && let Some(obs) = sh.env.observer.as_ref() {
        with_ctx(sh, |ctx| {
            obs.removed(&txn(ctx)?.info, table, key);
            Ok(())
        })?;
    }
    Ok(removed)
}

/// Argument roles of avi.vs.table_*: only a Lua number stands in a lifetime position.
const TABLE_LUA: &str = r##"
local ins, look, refr, rem, DEFAULT, LIFETIME = ...
local type, select, error, fmt = type, select, error, string.format

local function kv(v, f, pos)
  local t = type(v)
  if t ~= "string" and t ~= "number" then
    error(fmt("bad argument #%d to '%s' (string or number expected, got %s)", pos, f, t), 3)
  end
end
local function secs(v, f, pos)
  if type(v) ~= "number" then
    error(fmt("bad argument #%d to '%s' (number of seconds expected, got %s)", pos, f, type(v)), 3)
  end
end
local function count(f, n, shape)
  error(fmt("%s: expected (%s), got %d arguments", f, shape, n), 3)
end

local function table_insert(...)
  local n, a, b, c, d = select("#", ...), ...
  local F = "table_insert"
  if n == 2 then
    kv(a, F, 1) kv(b, F, 2)
    return ins(DEFAULT, a, b, LIFETIME)
  elseif n == 3 then
    kv(a, F, 1) kv(b, F, 2)
    if type(c) == "number" then return ins(DEFAULT, a, b, c) end
    kv(c, F, 3)
    return ins(a, b, c, LIFETIME)
  elseif n == 4 then
    kv(a, F, 1) kv(b, F, 2) kv(c, F, 3) secs(d, F, 4)
    return ins(a, b, c, d)
  end
  count(F, n, "[table,] key, value [, lifetime]")
end

-- ([table,] key [, lifetime_exten]) -> table, key, exten
local function touch_args(F, n, a, b, c)
  if n == 1 then
    kv(a, F, 1)
    return DEFAULT, a, LIFETIME
  elseif n == 2 then
    kv(a, F, 1)
    if type(b) == "number" then return DEFAULT, a, b end
    kv(b, F, 2)
    return a, b, LIFETIME
  elseif n == 3 then
    kv(a, F, 1) kv(b, F, 2) secs(c, F, 3)
    return a, b, c
  end
  count(F, n, "[table,] key [, lifetime_exten]")
end

local function table_lookup(...)
  local v, r = look(touch_args("table_lookup", select("#", ...), ...))
  if v == nil then return nil end
  return v, r
end

local function table_refresh(...)
  return refr(touch_args("table_refresh", select("#", ...), ...))
end

local function table_remove(...)
  local n, a, b = select("#", ...), ...
  local F = "table_remove"
  if n == 1 then kv(a, F, 1) return rem(DEFAULT, a) end
  if n == 2 then kv(a, F, 1) kv(b, F, 2) return rem(a, b) end
  count(F, n, "[table,] key")
end

return table_insert, table_lookup, table_refresh, table_remove
"##;

// ---- registration ----------------------------------------------------------------------------

macro_rules! reg {
    ($lua:expr, $t:expr, $sh:expr, $name:literal, |$l:ident, $s:ident, $a:ident| $body:expr) => {{
        let $s = Arc::clone($sh);
        $t.raw_set(
            $name,
            $lua.create_function(move |$l: &Lua, $a: Args| {
                let $s: &VmShared = &$s;
                let _ = (&$l, &$a);
                $body
            })?,
        )?;
    }};
}

/// Build the `avi` table (read-only proxies are applied by the sandbox).
pub(crate) fn install(lua: &Lua, sh: &Arc<VmShared>) -> LResult<Table> {
    let avi = lua.create_table()?;
    let http = lua.create_table()?;
    let vs = lua.create_table()?;
    let pool = lua.create_table()?;

    avi.raw_set("HTTP_REQUEST", CTX_REQUEST)?;
    avi.raw_set("HTTP_RESPONSE", CTX_RESPONSE)?;
    avi.raw_set("QUERY_TABLE", QUERY_TABLE)?;

    // -- avi.http --
    let s = Arc::clone(sh);
    http.raw_set(
        "get_cookie",
        lua.create_function(move |l, (name, c): (String, Option<f64>)| {
            let v = with_ctx(&s, |ctx| {
                let m = which_n(ctx, c)?;
                Ok(read_headers(ctx, m)
                    .and_then(|h| find_cookie(h, m, name.as_bytes()))
                    .map(|v| String::from_utf8_lossy(v).into_owned()))
            })?;
            // Scripts read the same cookie several times per event (the JSESSIONID example
            // twice), so the cache pays off even for per-client values.
            v.map(|v| cached_str(l, &s, &v)).transpose()
        })?,
    )?;
    let s = Arc::clone(sh);
    http.raw_set(
        "cookie_exists",
        lua.create_function(move |_, (name, c): (String, Option<f64>)| {
            with_ctx(&s, |ctx| {
                let m = which_n(ctx, c)?;
                Ok(read_headers(ctx, m)
                    .and_then(|h| find_cookie(h, m, name.as_bytes()))
                    .is_some())
            })
        })?,
    )?;
    reg!(lua, http, sh, "get_header", |l, s, a| {
        with_ctx(s, |ctx| {
            let (name, ctx_arg) = match a.first() {
                None | Some(Value::Nil) => (None, a.get(1)),
                Some(v) if is_number(v) => (None, Some(v)),
                Some(v) => (Some(header_name(v, "get_header")?), a.get(1)),
            };
            let m = which(ctx, ctx_arg)?;
            let Some(h) = read_headers(ctx, m) else {
                return Ok(Value::Nil);
            };
            match name {
                Some(n) => {
                    let vals: Vec<&[u8]> =
                        h.get_all(&n).iter().map(HeaderValue::as_bytes).collect();
                    match vals.as_slice() {
                        [] => Ok(Value::Nil),
                        [one] => lua_str(l, one),
                        many => lua_str(l, &many.join(&b", "[..])),
                    }
                }
                None => {
                    let t = l.create_table()?;
                    for k in h.keys() {
                        let joined = h
                            .get_all(k)
                            .iter()
                            .map(HeaderValue::as_bytes)
                            .collect::<Vec<_>>()
                            .join(&b", "[..]);
                        t.raw_set(k.as_str(), l.create_string(&joined)?)?;
                    }
                    Ok(Value::Table(t))
                }
            }
        })
    });
    reg!(lua, http, sh, "add_header", |l, s, a| {
        let name = header_name(a.first().unwrap_or(&Value::Nil), "add_header")?;
        let value = header_value(a.get(1).unwrap_or(&Value::Nil), "add_header", 2)?;
        with_ctx(s, |ctx| {
            write_headers(ctx)?.0.append(name, value);
            Ok(())
        })
    });
    reg!(lua, http, sh, "replace_header", |l, s, a| {
        let name = header_name(a.first().unwrap_or(&Value::Nil), "replace_header")?;
        let value = header_value(a.get(1).unwrap_or(&Value::Nil), "replace_header", 2)?;
        with_ctx(s, |ctx| {
            write_headers(ctx)?.0.insert(name, value);
            Ok(())
        })
    });
    reg!(lua, http, sh, "remove_header", |l, s, a| {
        let name = header_name(a.first().unwrap_or(&Value::Nil), "remove_header")?;
        let only = match a.get(1) {
            None | Some(Value::Nil) => None,
            Some(v) => Some(header_value(v, "remove_header", 2)?),
        };
        with_ctx(s, |ctx| {
            let h = write_headers(ctx)?.0;
            match only {
                None => {
                    h.remove(&name);
                }
                Some(v) => {
                    let keep: Vec<HeaderValue> = h
                        .get_all(&name)
                        .iter()
                        .filter(|x| **x != v)
                        .cloned()
                        .collect();
                    h.remove(&name);
                    for x in keep {
                        h.append(name.clone(), x);
                    }
                }
            }
            Ok(())
        })
    });
    reg!(lua, http, sh, "add_cookie", |l, s, a| with_ctx(s, |ctx| {
        put_cookie(ctx, &a, "add_cookie", false)
    }));
    reg!(lua, http, sh, "replace_cookie", |l, s, a| with_ctx(
        s,
        |ctx| put_cookie(ctx, &a, "replace_cookie", true)
    ));
    reg!(lua, http, sh, "remove_cookie", |l, s, a| {
        let name = name_arg(a.first(), "remove_cookie", 1)?;
        with_ctx(s, |ctx| {
            let (h, m) = write_headers(ctx)?;
            match m {
                Msg::Req => {
                    let mut pairs = owned_request_cookies(h);
                    pairs.retain(|(n, _)| n != name.as_bytes());
                    set_request_cookies(h, &pairs)
                }
                Msg::Resp => {
                    remove_set_cookie(h, name.as_bytes());
                    Ok(())
                }
            }
        })
    });
    reg!(lua, http, sh, "get_path", |l, s, a| with_ctx(s, |ctx| {
        opt_str(l, req_line(ctx).map(|r| r.uri.path().as_bytes()))
    }));
    reg!(lua, http, sh, "get_uri", |l, s, a| with_ctx(s, |ctx| {
        opt_str(
            l,
            req_line(ctx).map(|r| {
                r.uri
                    .path_and_query()
                    .map_or(r.uri.path(), |pq| pq.as_str())
                    .as_bytes()
            }),
        )
    }));
    reg!(lua, http, sh, "get_query", |l, s, a| with_ctx(s, |ctx| {
        let Some(r) = req_line(ctx) else {
            return Ok(Value::Nil);
        };
        let q = r.uri.query().unwrap_or("");
        let as_table = a.first().and_then(number) == Some(QUERY_TABLE as f64);
        if !as_table {
            return lua_str(l, q.as_bytes());
        }
        let t = l.create_table()?;
        for part in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            let k = l.create_string(percent_decode(k))?;
            let v = l.create_string(percent_decode(v))?;
            match t.raw_get::<Value>(&k)? {
                Value::Nil => t.raw_set(k, v)?,
                Value::Table(list) => list.raw_push(v)?,
                prev => {
                    let list = l.create_sequence_from([prev, Value::String(v)])?;
                    t.raw_set(k, list)?;
                }
            }
        }
        Ok(Value::Table(t))
    }));
    reg!(lua, http, sh, "method", |l, s, a| with_ctx(s, |ctx| {
        opt_str(l, req_line(ctx).map(|r| r.method.as_str().as_bytes()))
    }));
    reg!(lua, http, sh, "get_version", |l, s, a| with_ctx(s, |ctx| {
        opt_str(l, req_line(ctx).map(|r| version_str(r.version).as_bytes()))
    }));
    reg!(lua, http, sh, "redirect", |l, s, a| {
        let uri = name_arg(a.first(), "redirect", 1)?;
        let status = match a.get(1) {
            None | Some(Value::Nil) => 302,
            Some(v) => number(v).ok_or_else(|| rt("redirect: status must be a number"))? as u16,
        };
        if !(300..400).contains(&status) {
            return Err(rt(format!(
                "redirect: {status} is not a redirection status"
            )));
        }
        let mut resp = build_response(status, None, None)?;
        resp.headers_mut().insert(
            LOCATION,
            HeaderValue::from_str(&uri).map_err(|_| rt("redirect: invalid uri"))?,
        );
        terminate(s, resp)
    });
    reg!(lua, http, sh, "response", |l, s, a| {
        let status = a
            .first()
            .and_then(number)
            .ok_or_else(|| rt("bad argument #1 to 'response' (status code expected)"))?;
        let headers = match a.get(1) {
            Some(Value::Table(t)) => Some(t),
            None | Some(Value::Nil) => None,
            Some(_) => return Err(rt("bad argument #2 to 'response' (table expected)")),
        };
        let body = match a.get(2) {
            Some(Value::String(b)) => Some(b.as_bytes().to_vec()),
            None | Some(Value::Nil) => None,
            Some(v) => Some(str_arg(v, "response", 3)?.into_owned().into_bytes()),
        };
        let resp = build_response(status as u16, headers, body.as_deref())?;
        terminate(s, resp)
    });
    reg!(lua, http, sh, "close_conn", |l, s, a| with_ctx(s, |ctx| {
        txn(ctx)?.close = true;
        Ok(())
    }));

    // -- avi.vs --
    reg!(lua, vs, sh, "name", |l, s, a| with_ctx(s, |ctx| {
        lua_str(l, txn(ctx)?.info.vs_name.as_bytes())
    }));
    reg!(lua, vs, sh, "ip", |l, s, a| with_ctx(s, |ctx| {
        lua_str(l, txn(ctx)?.info.vs_addr.ip().to_string().as_bytes())
    }));
    reg!(lua, vs, sh, "port", |l, s, a| with_ctx(s, |ctx| {
        Ok(Value::Number(f64::from(txn(ctx)?.info.vs_addr.port())))
    }));
    reg!(lua, vs, sh, "client_ip", |l, s, a| with_ctx(s, |ctx| {
        lua_str(l, txn(ctx)?.info.client.ip().to_string().as_bytes())
    }));
    reg!(lua, vs, sh, "client_port", |l, s, a| with_ctx(s, |ctx| {
        Ok(Value::Number(f64::from(txn(ctx)?.info.client.port())))
    }));
    reg!(lua, vs, sh, "log", |l, s, a| vs_log(s, &a));
    let sh1 = Arc::clone(sh);
    let ins = lua.create_function(move |_, (t, k, v, life): (String, String, String, f64)| {
        table_insert(&sh1, &t, &k, &v, life)
    })?;
    let sh1 = Arc::clone(sh);
    let look = lua.create_function(move |l, (t, k, e): (String, String, f64)| {
        table_lookup(l, &sh1, &t, &k, e)
    })?;
    let sh1 = Arc::clone(sh);
    let refr = lua.create_function(move |_, (t, k, e): (String, String, f64)| {
        table_refresh(&sh1, &t, &k, e)
    })?;
    let sh1 = Arc::clone(sh);
    let rem = lua.create_function(move |_, (t, k): (String, String)| table_remove(&sh1, &t, &k))?;
    let (f_ins, f_look, f_refr, f_rem): (Function, Function, Function, Function) =
        lua.load(TABLE_LUA).set_name("=avi.vs").call((
            ins,
            look,
            refr,
            rem,
            DEFAULT_TABLE,
            DEFAULT_LIFETIME_S as f64,
        ))?;
    vs.raw_set("table_insert", f_ins)?;
    vs.raw_set("table_lookup", f_look)?;
    vs.raw_set("table_refresh", f_refr)?;
    vs.raw_set("table_remove", f_rem)?;
    // avi.vs.reqvar: a per-request table reached through __index, since avi is shared.
    let reqvar_sh = Arc::clone(sh);
    let vs_mt = lua.create_table()?;
    vs_mt.raw_set(
        "__index",
        lua.create_function(move |l, (_t, k): (Value, Value)| {
            if !matches!(&k, Value::String(s) if s.as_bytes().as_ref() == b"reqvar") {
                return Ok(Value::Nil);
            }
            with_ctx(&reqvar_sh, |ctx| {
                let t = txn(ctx)?;
                if t.reqvar.is_none() {
                    t.reqvar = Some(l.create_table()?);
                }
                Ok(t.reqvar.clone().map_or(Value::Nil, Value::Table))
            })
        })?,
    )?;
    vs.set_metatable(Some(vs_mt))?;

    // -- avi.pool --
    let s = Arc::clone(sh);
    pool.raw_set(
        "select",
        lua.create_function(
            move |_, (pool, server, port): (String, Option<String>, Option<f64>)| {
                let servers = servers_of(&s, &pool)?;
                let port = port
                    .filter(|p| (0.0..=65535.0).contains(p))
                    .map(|p| p as u16);
                let server = match server {
                    None => None,
                    Some(name) => Some(find_server(&servers, &pool, &name, port)?),
                };
                with_ctx(&s, |ctx| {
                    let t = txn(ctx)?;
                    t.selection.pool = Some(pool);
                    t.selection.server = server;
                    Ok(())
                })
            },
        )?,
    )?;
    let s = Arc::clone(sh);
    pool.raw_set(
        "server_ip",
        lua.create_function(move |l, ()| {
            let ip = with_ctx(&s, |ctx| {
                let t = txn(ctx)?;
                Ok(t.server.or(t.selection.server).map(|a| a.ip().to_string()))
            })?;
            ip.map(|ip| cached_str(l, &s, &ip)).transpose()
        })?,
    )?;
    reg!(lua, pool, sh, "get_server_info", |l, s, a| with_ctx(
        s,
        |ctx| {
            let t = txn(ctx)?;
            match t.server.or(t.selection.server) {
                Some(addr) => Ok(Variadic::from_iter([
                    lua_str(l, addr.ip().to_string().as_bytes())?,
                    Value::Number(f64::from(addr.port())),
                ])),
                None => Ok(Variadic::from_iter([Value::Nil])),
            }
        }
    ));
    reg!(lua, pool, sh, "get_servers", |l, s, a| {
        let pool = name_arg(a.first(), "get_servers", 1)?;
        let servers = servers_of(s, &pool)?;
        let up = servers.iter().filter(|s| s.up).count();
        Ok((up as f64, servers.len() as f64))
    });
    reg!(lua, pool, sh, "get_server_status", |l, s, a| {
        let (pool, addr) = pool_server(s, &a, "get_server_status")?;
        let up = servers_of(s, &pool)?
            .iter()
            .any(|sv| sv.addr == addr && sv.up);
        Ok(if up { 1.0 } else { 0.0 })
    });

    // Library tables are exposed read-only so no transaction can change another's view.
    let ro: mlua::Function = lua
        .load(
            r#"local t, name = ...
            return setmetatable({}, {__index = t, __metatable = false,
              __newindex = function() error("attempt to modify read-only table '" .. name .. "'", 2) end})"#,
        )
        .set_name("=latch-ro")
        .into_function()?;
    let ro_http: Table = ro.call((http, "avi.http"))?;
    let ro_vs: Table = ro.call((vs, "avi.vs"))?;
    let ro_pool: Table = ro.call((pool, "avi.pool"))?;
    avi.raw_set("http", ro_http)?;
    avi.raw_set("vs", ro_vs)?;
    avi.raw_set("pool", ro_pool)?;
    ro.call((avi, "avi"))
}
