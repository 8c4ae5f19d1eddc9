//! avi.http: the current message's headers, cookies and request line, and answers made by
//! the script (avi.http.response, avi.http.redirect).

mod body;
mod cookie;
mod uri;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::header::LOCATION;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Version};
use mlua::{Lua, Table, Value};

use self::cookie::{cookie_names, find_cookie, put_cookie, remove_cookie, update_cookie};
use super::args::{cached_str, is_number, lua_str, name_arg, number, opt_str, str_arg};
use super::vs::reqvar;
use super::{Args, LResult, Namespace, reg, rt, txn};
use crate::datascript::Event;
use crate::datascript::vm::{Ctx, TERMINATE, VmShared};

pub(super) const NAMESPACE: Namespace = Namespace {
    name: "http",
    install,
    constants: &[
        ("HTTP_REQUEST", CTX_REQUEST),
        ("HTTP_RESPONSE", CTX_RESPONSE),
        ("QUERY_STRING", QUERY_STRING),
        ("QUERY_TABLE", QUERY_TABLE),
    ],
};

/// avi.HTTP_REQUEST / avi.HTTP_RESPONSE.
const CTX_REQUEST: i64 = 1;
const CTX_RESPONSE: i64 = 2;
/// avi.QUERY_TABLE and avi.QUERY_STRING (the whole query, as get_query() without one).
const QUERY_TABLE: i64 = 1;
const QUERY_STRING: i64 = 2;

/// avi.http.set_server_timeout's ceiling: one day (longer values are cut to it).
const MAX_SERVER_TIMEOUT_MS: u64 = 86_400_000;

/// Values of update_cookie's samesite attribute (avi.http.Lax, None, Strict).
const SAME_SITE: [&str; 3] = ["Lax", "None", "Strict"];

/// Statuses avi.http.response may send (Avi 17.1's list plus 18.1's 451).
const RESPONSE_STATUSES: [u16; 16] = [
    200, 301, 302, 303, 307, 400, 401, 403, 404, 405, 413, 414, 429, 451, 501, 503,
];

/// The avi.http functions Avi allows in HTTP_RESP_FAILED (DATASCRIPT-API.md, events): there is
/// no response, and the request is gone.
pub(crate) const RESP_FAILED_ALLOWED: [&str; 3] = ["response", "redirect", "internal_status"];

/// Runs `f` on the VM's context, unless the event is HTTP_RESP_FAILED, where only the
/// functions of [`RESP_FAILED_ALLOWED`] may run (they call [`super::with_ctx`] directly).
fn with_ctx<R>(sh: &VmShared, f: impl FnOnce(&mut Ctx) -> LResult<R>) -> LResult<R> {
    super::with_ctx(sh, |ctx| {
        if ctx.event == Some(Event::HttpRespFailed) {
            return Err(rt(
                "avi.http: only response, redirect and internal_status are allowed in HTTP_RESP_FAILED",
            ));
        }
        f(ctx)
    })
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
            Some(Event::HttpResp | Event::HttpRespData) => Msg::Resp,
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
        Some(Event::HttpReq | Event::HttpReqData) => {
            ctx.req.as_mut().map(|r| (&mut r.headers, Msg::Req))
        }
        Some(Event::HttpResp | Event::HttpRespData) => {
            ctx.resp.as_mut().map(|r| (&mut r.headers, Msg::Resp))
        }
        Some(Event::HttpLbDone | Event::HttpRespFailed) | None => None,
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

/// A flag argument: `None` when absent (nil), else Lua truthiness, except that the string
/// "false" is false too (Avi's examples pass flags as strings, e.g. `get_query("a", "true")`).
pub(super) fn flag(v: Option<&Value>) -> Option<bool> {
    match v? {
        Value::Nil => None,
        Value::Boolean(b) => Some(*b),
        Value::String(s) => Some(s.as_bytes().as_ref() != b"false"),
        _ => Some(true),
    }
}

/// The live request, for the functions that rewrite it (HTTP_REQ, and HTTP_REQ_DATA: the
/// request has not gone to the server yet).
fn req_mut<'a>(ctx: &'a mut Ctx, func: &str) -> LResult<&'a mut http::request::Parts> {
    match ctx.event {
        Some(Event::HttpReq | Event::HttpReqData) => ctx.req.as_mut(),
        _ => None,
    }
    .ok_or_else(|| rt(format!("{func}: only allowed in HTTP_REQ")))
}

/// The status of the response (HTTP_RESP), as a string.
fn response_status(ctx: &Ctx, func: &str) -> LResult<String> {
    ctx.resp
        .as_ref()
        .map(|r| r.status.as_u16().to_string())
        .ok_or_else(|| rt(format!("{func}: no response in this event")))
}

/// The request's host name, port stripped.
fn request_hostname(ctx: &Ctx) -> Option<String> {
    let r = req_line(ctx)?;
    let host = read_headers(ctx, Msg::Req)
        .and_then(|h| h.get(http::header::HOST))
        .map(HeaderValue::as_bytes);
    uri::hostname(r.uri, host)
}

// ---- responses -------------------------------------------------------------------------------

pub(super) fn build_response(
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
            // Avi documents `content_type = "text/html"`.
            let name = match &k {
                Value::String(s) if s.as_bytes().eq_ignore_ascii_case(b"content_type") => {
                    http::header::CONTENT_TYPE
                }
                k => header_name(k, "response")?,
            };
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
    if !resp.headers().contains_key(http::header::CONTENT_TYPE) {
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain"),
        );
    }
    Ok(resp)
}

/// A status given as a number or a numeric string ("403" appears in Avi's examples).
fn status_number(v: &Value) -> Option<u16> {
    let n = match v {
        Value::String(s) => s.to_str().ok()?.trim().parse::<f64>().ok()?,
        v => number(v)?,
    };
    (n.fract() == 0.0 && (100.0..1000.0).contains(&n)).then_some(n as u16)
}

/// avi.http.response's status: one of [`RESPONSE_STATUSES`].
fn response_status_arg(v: Option<&Value>) -> LResult<u16> {
    v.and_then(status_number)
        .filter(|n| RESPONSE_STATUSES.contains(n))
        .ok_or_else(|| {
            rt(format!(
                "bad argument #1 to 'response' (status expected, one of {RESPONSE_STATUSES:?})"
            ))
        })
}

/// Record the response and end the event.
pub(super) fn terminate(sh: &VmShared, resp: http::Response<Bytes>) -> LResult<()> {
    // Allowed in every event, HTTP_RESP_FAILED included.
    super::with_ctx(sh, |ctx| {
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
    txn(ctx)?.charge_added_header(&sh.env().limits, func, bytes)
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
            // Scripts read the same cookie several times per event (the JSESSIONID example
            // twice), so the cache pays off even for per-client values. Looked up from the
            // header's bytes: no copy unless the value is not UTF-8.
            with_ctx(&s, |ctx| {
                cookie_value(ctx, &name, c)?
                    .map(|v| cached_str(l, &s, &String::from_utf8_lossy(v)))
                    .transpose()
            })
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
                // Lower-case names (HeaderMap keeps them so); a repeated header is an array.
                None => {
                    let t = l.create_table()?;
                    for k in h.keys() {
                        let mut values = h.get_all(k).iter();
                        let first = values.next().map(HeaderValue::as_bytes).unwrap_or_default();
                        let rest: Vec<&[u8]> = values.map(HeaderValue::as_bytes).collect();
                        if rest.is_empty() {
                            t.raw_set(k.as_str(), l.create_string(first)?)?;
                        } else {
                            let all = std::iter::once(first).chain(rest);
                            let list = l.create_sequence_from(
                                all.map(|v| l.create_string(v))
                                    .collect::<LResult<Vec<_>>>()?,
                            )?;
                            t.raw_set(k.as_str(), list)?;
                        }
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
            txn(ctx)?.charge_added_header(&s.env().limits, "add_header", bytes)?;
            write_headers(ctx)?.0.append(name, value);
            Ok(())
        })
    });
    reg!(lua, http, sh, "replace_header", |l, s, a| {
        let (name, value) = header_args(&a, "replace_header")?;
        with_ctx(s, |ctx| {
            let bytes = name.as_str().len() + value.len();
            txn(ctx)?.charge_added_header(&s.env().limits, "replace_header", bytes)?;
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
    // remove_cookie(name1[, name2...]): every name given.
    reg!(lua, http, sh, "remove_cookie", |l, s, a| {
        let mut names = vec![name_arg(a.first(), "remove_cookie", 1)?];
        for (i, v) in a.iter().enumerate().skip(1) {
            names.push(name_arg(Some(v), "remove_cookie", i + 1)?);
        }
        with_ctx(s, |ctx| {
            let (h, m) = write_headers(ctx)?;
            names
                .iter()
                .try_for_each(|name| remove_cookie(h, m, name.as_bytes()))
        })
    });
    // Decoded unless passed false; the path from its first '/' (origin form).
    reg!(lua, http, sh, "get_path", |l, s, a| with_ctx(s, |ctx| {
        let Some(r) = req_line(ctx) else {
            return Ok(Value::Nil);
        };
        match flag(a.first()) {
            Some(false) => lua_str(l, r.uri.path().as_bytes()),
            _ => lua_str(l, &uri::decode(r.uri.path(), false)),
        }
    }));
    reg!(lua, http, sh, "get_uri", |l, s, a| with_ctx(s, |ctx| {
        let Some(r) = req_line(ctx) else {
            return Ok(Value::Nil);
        };
        let raw = r
            .uri
            .path_and_query()
            .map_or(r.uri.path(), |pq| pq.as_str());
        match flag(a.first()) {
            Some(false) => lua_str(l, raw.as_bytes()),
            _ => lua_str(l, &uri::decode(raw, false)),
        }
    }));
    // get_query([name | avi.QUERY_TABLE | avi.QUERY_STRING][, decode]): strings are raw
    // (URI-encoded) unless decode is truthy; the table is always decoded.
    reg!(lua, http, sh, "get_query", |l, s, a| with_ctx(s, |ctx| {
        let Some(r) = req_line(ctx) else {
            return Ok(Value::Nil);
        };
        let q = r.uri.query().unwrap_or("");
        let decoded = flag(a.get(1)).unwrap_or(false);
        let text = |raw: &str| {
            if decoded {
                lua_str(l, &uri::decode(raw, true))
            } else {
                lua_str(l, raw.as_bytes())
            }
        };
        match a.first() {
            None | Some(Value::Nil) => text(q),
            Some(v) if number(v) == Some(QUERY_TABLE as f64) => {
                uri::query_table(l, q).map(Value::Table)
            }
            Some(v) if number(v) == Some(QUERY_STRING as f64) => text(q),
            Some(v) => {
                let name = str_arg(v, "get_query", 1)?;
                match uri::query_arg(q, name.as_bytes()) {
                    Some(raw) => text(raw),
                    None => Ok(Value::Nil),
                }
            }
        }
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
            Some(v) => status_number(v)
                .ok_or_else(|| rt("bad argument #2 to 'redirect' (status expected)"))?,
        };
        if !(300..400).contains(&status) {
            return Err(rt(format!(
                "redirect: {status} is not a redirection status"
            )));
        }
        let mut resp = build_response(status, None, None)?;
        resp.headers_mut().remove(http::header::CONTENT_TYPE);
        resp.headers_mut().insert(
            LOCATION,
            HeaderValue::from_str(&uri).map_err(|_| rt("redirect: invalid uri"))?,
        );
        terminate(s, resp)
    });
    reg!(lua, http, sh, "response", |l, s, a| {
        let status = response_status_arg(a.first())?;
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
        let resp = build_response(status, headers, body.as_deref())?;
        terminate(s, resp)
    });
    reg!(lua, http, sh, "close_conn", |l, s, a| with_ctx(s, |ctx| {
        txn(ctx)?.close = true;
        Ok(())
    }));
    for value in SAME_SITE {
        http.raw_set(value, value)?;
    }
    install_request_info(lua, &http, sh)?;
    install_rewrites(lua, &http, sh)?;
    body::install(lua, &http, sh)?;
    Ok(http)
}

/// Host, tokens, status, user and request ids, connection facts and the request variables.
fn install_request_info(lua: &Lua, http: &Table, sh: &Arc<VmShared>) -> LResult<()> {
    reg!(lua, http, sh, "hostname", |l, s, a| with_ctx(s, |ctx| {
        request_hostname(ctx).map_or(Ok(Value::Nil), |h| lua_str(l, h.as_bytes()))
    }));
    reg!(lua, http, sh, "get_path_tokens", |l, s, a| with_ctx(
        s,
        |ctx| {
            let path = req_line(ctx).map(|r| uri::decode(r.uri.path(), false));
            let path = String::from_utf8_lossy(path.as_deref().unwrap_or_default());
            let toks = uri::tokens(&path, '/');
            uri::token_range(l, &toks, "/", a.first(), a.get(1), "get_path_tokens")
        }
    ));
    reg!(lua, http, sh, "get_host_tokens", |l, s, a| with_ctx(
        s,
        |ctx| {
            let host = request_hostname(ctx).unwrap_or_default();
            let toks = uri::tokens(&host, '.');
            uri::token_range(l, &toks, ".", a.first(), a.get(1), "get_host_tokens")
        }
    ));
    reg!(lua, http, sh, "status", |l, s, a| {
        let status = with_ctx(s, |ctx| response_status(ctx, "status"))?;
        cached_str(l, s, &status)
    });
    // In HTTP_RESP_FAILED the status latch is about to send ("502", "504"), else the one
    // the server answered.
    reg!(lua, http, sh, "internal_status", |l, s, a| {
        let status = super::with_ctx(s, |ctx| match ctx.failed_status {
            Some(failed) => Ok(failed.to_string()),
            None => response_status(ctx, "internal_status"),
        })?;
        cached_str(l, s, &status)
    });
    reg!(lua, http, sh, "get_cookie_names", |l, s, a| with_ctx(
        s,
        |ctx| {
            let m = which(ctx, a.first())?;
            let names = read_headers(ctx, m)
                .map(|h| cookie_names(h, m))
                .unwrap_or_default();
            let count = names.len();
            let list = l.create_sequence_from(
                names
                    .into_iter()
                    .map(|n| l.create_string(n))
                    .collect::<LResult<Vec<_>>>()?,
            )?;
            Ok((list, count as f64))
        }
    ));
    reg!(lua, http, sh, "update_cookie", |l, s, a| with_ctx(
        s,
        |ctx| { update_cookie(ctx, &a) }
    ));
    // get_userid: set_userid's value, else the Basic-Auth user (no client certificates yet).
    reg!(lua, http, sh, "get_userid", |l, s, a| with_ctx(s, |ctx| {
        if let Some(id) = txn(ctx)?.userid.as_deref() {
            return lua_str(l, id.as_bytes());
        }
        let user = read_headers(ctx, Msg::Req).and_then(crate::proxy::basic_auth_user);
        opt_str(l, user.as_deref().map(str::as_bytes))
    }));
    reg!(lua, http, sh, "set_userid", |l, s, a| {
        let id = name_arg(a.first(), "set_userid", 1)?;
        with_ctx(s, |ctx| {
            txn(ctx)?.userid = Some(id);
            Ok(())
        })
    });
    reg!(lua, http, sh, "get_request_id", |l, s, a| with_ctx(
        s,
        |ctx| { lua_str(l, txn(ctx)?.info.request_id.to_string().as_bytes()) }
    ));
    // By the client connection: TLS or not. secure() is "on" or nil, not "" (see the README).
    reg!(lua, http, sh, "protocol", |l, s, a| {
        let secure = with_ctx(s, |ctx| Ok(txn(ctx)?.info.tls.is_some()))?;
        cached_str(l, s, if secure { "https" } else { "http" })
    });
    reg!(lua, http, sh, "scheme", |l, s, a| {
        let secure = with_ctx(s, |ctx| Ok(txn(ctx)?.info.tls.is_some()))?;
        cached_str(l, s, if secure { "https://" } else { "http://" })
    });
    reg!(lua, http, sh, "secure", |l, s, a| {
        let secure = with_ctx(s, |ctx| Ok(txn(ctx)?.info.tls.is_some()))?;
        if secure {
            Ok(Value::String(cached_str(l, s, "on")?))
        } else {
            Ok(Value::Nil)
        }
    });
    reg!(lua, http, sh, "get_reqvar", |l, s, a| {
        let name = name_arg(a.first(), "get_reqvar", 1)?;
        let vars = with_ctx(s, |ctx| reqvar(l, ctx))?;
        vars.raw_get::<Value>(name)
    });
    reg!(lua, http, sh, "set_reqvar", |l, s, a| {
        let name = name_arg(a.first(), "set_reqvar", 1)?;
        let vars = with_ctx(s, |ctx| reqvar(l, ctx))?;
        vars.raw_set(name, a.get(1).cloned().unwrap_or(Value::Nil))
    });
    Ok(())
}

/// The request rewrites and the per-request server timeout (HTTP_REQ only).
fn install_rewrites(lua: &Lua, http: &Table, sh: &Arc<VmShared>) -> LResult<()> {
    reg!(lua, http, sh, "set_path", |l, s, a| with_ctx(s, |ctx| {
        let r = req_mut(ctx, "set_path")?;
        r.uri = uri::set_path(&r.uri, a.first())?;
        Ok(())
    }));
    reg!(lua, http, sh, "set_uri", |l, s, a| with_ctx(s, |ctx| {
        let r = req_mut(ctx, "set_uri")?;
        r.uri = uri::set_uri(&r.uri, a.first())?;
        Ok(())
    }));
    reg!(lua, http, sh, "set_query", |l, s, a| with_ctx(s, |ctx| {
        let r = req_mut(ctx, "set_query")?;
        r.uri = uri::set_query(&r.uri, a.first())?;
        Ok(())
    }));
    reg!(lua, http, sh, "set_server_timeout", |l, s, a| {
        let ms = a
            .first()
            .and_then(number)
            .filter(|ms| *ms >= 1.0)
            .ok_or_else(|| {
                rt("bad argument #1 to 'set_server_timeout' (milliseconds >= 1 expected)")
            })?;
        let ms = ms.min(MAX_SERVER_TIMEOUT_MS as f64) as u64;
        with_ctx(s, |ctx| {
            req_mut(ctx, "set_server_timeout")?;
            txn(ctx)?.selection.response_timeout = Some(std::time::Duration::from_millis(ms));
            Ok(())
        })
    });
    Ok(())
}
