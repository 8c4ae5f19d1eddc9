//! avi.http: the current message's headers, cookies and request line, and answers made by
//! the script (avi.http.response, avi.http.redirect).

mod cookie;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::header::LOCATION;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Version};
use mlua::{Lua, Table, Value};

use self::cookie::{find_cookie, put_cookie, remove_cookie};
use super::args::{cached_str, is_number, lua_str, name_arg, number, opt_str, str_arg};
use super::{Args, LResult, Namespace, reg, rt, txn, with_ctx};
use crate::datascript::Event;
use crate::datascript::vm::{Ctx, TERMINATE, VmShared};

pub(super) const NAMESPACE: Namespace = Namespace {
    name: "http",
    install,
    constants: &[
        ("HTTP_REQUEST", CTX_REQUEST),
        ("HTTP_RESPONSE", CTX_RESPONSE),
        ("QUERY_TABLE", QUERY_TABLE),
    ],
};

/// avi.HTTP_REQUEST / avi.HTTP_RESPONSE.
const CTX_REQUEST: i64 = 1;
const CTX_RESPONSE: i64 = 2;
/// avi.QUERY_TABLE.
const QUERY_TABLE: i64 = 1;

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

/// The `name, value` arguments of add_header and replace_header.
fn header_args(args: &Args, func: &str) -> LResult<(HeaderName, HeaderValue)> {
    let name = header_name(args.first().unwrap_or(&Value::Nil), func)?;
    let value = header_value(args.get(1).unwrap_or(&Value::Nil), func, 2)?;
    Ok((name, value))
}

/// Counts a cookie a script adds or replaces against the transaction's header additions
/// (its bytes: every string argument).
fn charge_cookie(ctx: &mut Ctx, sh: &VmShared, args: &Args, func: &str) -> LResult<()> {
    let bytes = args
        .iter()
        .map(|v| match v {
            Value::String(s) => s.as_bytes().len(),
            _ => 0,
        })
        .sum();
    txn(ctx)?.charge_added_header(&sh.env.limits, func, bytes)
}

/// Cookie `name` of message `c` (the current event's message when `c` is nil).
fn cookie_value<'a>(ctx: &'a Ctx, name: &str, c: Option<f64>) -> LResult<Option<&'a [u8]>> {
    let m = which_n(ctx, c)?;
    Ok(read_headers(ctx, m).and_then(|h| find_cookie(h, m, name.as_bytes())))
}

fn install(lua: &Lua, sh: &Arc<VmShared>) -> LResult<Table> {
    let http = lua.create_table()?;
    let s = Arc::clone(sh);
    http.raw_set(
        "get_cookie",
        lua.create_function(move |l, (name, c): (String, Option<f64>)| {
            let v = with_ctx(&s, |ctx| {
                Ok(cookie_value(ctx, &name, c)?.map(|v| String::from_utf8_lossy(v).into_owned()))
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
            with_ctx(&s, |ctx| Ok(cookie_value(ctx, &name, c)?.is_some()))
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
        let (name, value) = header_args(&a, "add_header")?;
        with_ctx(s, |ctx| {
            let bytes = name.as_str().len() + value.len();
            txn(ctx)?.charge_added_header(&s.env.limits, "add_header", bytes)?;
            write_headers(ctx)?.0.append(name, value);
            Ok(())
        })
    });
    reg!(lua, http, sh, "replace_header", |l, s, a| {
        let (name, value) = header_args(&a, "replace_header")?;
        with_ctx(s, |ctx| {
            let bytes = name.as_str().len() + value.len();
            txn(ctx)?.charge_added_header(&s.env.limits, "replace_header", bytes)?;
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
        charge_cookie(ctx, s, &a, "add_cookie")?;
        put_cookie(ctx, &a, "add_cookie", false)
    }));
    reg!(lua, http, sh, "replace_cookie", |l, s, a| with_ctx(
        s,
        |ctx| {
            charge_cookie(ctx, s, &a, "replace_cookie")?;
            put_cookie(ctx, &a, "replace_cookie", true)
        }
    ));
    reg!(lua, http, sh, "remove_cookie", |l, s, a| {
        let name = name_arg(a.first(), "remove_cookie", 1)?;
        with_ctx(s, |ctx| {
            let (h, m) = write_headers(ctx)?;
            remove_cookie(h, m, name.as_bytes())
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
    Ok(http)
}
