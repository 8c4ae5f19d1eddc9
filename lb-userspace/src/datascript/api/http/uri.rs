//! The request target as scripts see it: decoding, query arguments, path and host tokens, and
//! the rewrites (avi.http.set_path, set_uri, set_query).

use std::borrow::Cow;

use http::Uri;
use http::uri::{Authority, PathAndQuery};
use mlua::{Lua, Table, Value};
use percent_encoding::{AsciiSet, CONTROLS, percent_decode, utf8_percent_encode};

use super::super::args::str_arg;
use super::super::{LResult, rt};

/// Bytes a script may write into a path that must be escaped on the wire (the URL
/// standard's path set, plus '%' left alone so an already-encoded path stays as it is).
const PATH: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');
/// The same for a whole URI (path and query): '?' separates them.
const URI: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'`')
    .add(b'{')
    .add(b'}');
/// Keys and values of a query built from a Lua table: also '&', '=', '+' and '?'.
const QUERY_COMPONENT: &AsciiSet = &URI.add(b'&').add(b'=').add(b'+').add(b'?');

/// `%XX` sequences decoded; in a query (`plus_is_space`) '+' is a space, as forms send it.
pub(super) fn decode(s: &str, plus_is_space: bool) -> Vec<u8> {
    let s: Cow<'_, str> = if plus_is_space && s.contains('+') {
        Cow::Owned(s.replace('+', " "))
    } else {
        Cow::Borrowed(s)
    };
    percent_decode(s.as_bytes()).collect()
}

/// The query's `key[=value]` parts: key and raw value (`None` for a bare `?a`).
fn query_pairs(q: &str) -> impl Iterator<Item = (&str, Option<&str>)> {
    q.split('&').filter(|p| !p.is_empty()).map(|part| {
        let (k, v) = match part.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (part, None),
        };
        (k, v)
    })
}

/// The raw (still encoded) value of the first query argument called `name` (compared
/// decoded); a bare `?a` has the value "".
pub(super) fn query_arg<'q>(q: &'q str, name: &[u8]) -> Option<&'q str> {
    query_pairs(q)
        .find(|(k, _)| decode(k, true) == name)
        .map(|(_, v)| v.unwrap_or(""))
}

/// avi.QUERY_TABLE: decoded; `?a` is true, `?a=` is "", a repeated key an array of values.
pub(super) fn query_table(lua: &Lua, q: &str) -> LResult<Table> {
    let t = lua.create_table()?;
    for (k, v) in query_pairs(q) {
        let k = lua.create_string(decode(k, true))?;
        let v = match v {
            None => Value::Boolean(true),
            Some(v) => Value::String(lua.create_string(decode(v, true))?),
        };
        match t.raw_get::<Value>(&k)? {
            Value::Nil => t.raw_set(k, v)?,
            Value::Table(list) => list.raw_push(v)?,
            prev => t.raw_set(k, lua.create_sequence_from([prev, v])?)?,
        }
    }
    Ok(t)
}

/// The host of the request (target authority, else Host header) without its port.
pub(super) fn hostname(uri: &Uri, host_header: Option<&[u8]>) -> Option<String> {
    let host = match uri.authority() {
        Some(a) => a.host().to_string(),
        None => {
            let header = std::str::from_utf8(host_header?).ok()?.trim();
            header.parse::<Authority>().ok()?.host().to_string()
        }
    };
    (!host.is_empty()).then_some(host)
}

/// The non-empty `sep`-separated tokens of `s`.
pub(super) fn tokens(s: &str, sep: char) -> Vec<&str> {
    s.split(sep).filter(|t| !t.is_empty()).collect()
}

/// get_path_tokens / get_host_tokens: no argument gives the array of tokens; `start[, end]`
/// (1-based, inclusive) the tokens joined by `sep`. A start outside the tokens or an end
/// before the start gives nil; an end past the last token stops at the last one.
pub(super) fn token_range(
    lua: &Lua,
    toks: &[&str],
    sep: &str,
    start: Option<&Value>,
    end: Option<&Value>,
    func: &str,
) -> LResult<Value> {
    let index = |v: Option<&Value>, pos: usize| -> LResult<Option<i64>> {
        match v {
            None | Some(Value::Nil) => Ok(None),
            Some(v) => super::super::args::number(v)
                .or_else(|| match v {
                    Value::String(s) => s.to_str().ok()?.trim().parse().ok(),
                    _ => None,
                })
                .map(|n| Some(n.floor() as i64))
                .ok_or_else(|| rt(format!("bad argument #{pos} to '{func}' (number expected)"))),
        }
    };
    let Some(start) = index(start, 1)? else {
        return Ok(Value::Table(
            lua.create_sequence_from(toks.iter().copied())?,
        ));
    };
    let count = toks.len() as i64;
    let end = index(end, 2)?.unwrap_or(count).min(count);
    if start < 1 || start > count || end < start {
        return Ok(Value::Nil);
    }
    let joined = toks[(start - 1) as usize..end as usize].join(sep);
    Ok(Value::String(lua.create_string(joined)?))
}

/// `uri` with a new path and query, keeping its scheme and authority (absolute-form targets).
pub(super) fn with_path_and_query(uri: &Uri, pq: &str, func: &str) -> LResult<Uri> {
    let pq: PathAndQuery = pq
        .parse()
        .map_err(|e| rt(format!("{func}: invalid URI '{pq}': {e}")))?;
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(pq);
    Uri::from_parts(parts).map_err(|e| rt(format!("{func}: invalid URI: {e}")))
}

/// A path or URI argument, which must start with '/', escaped for the wire.
fn rooted(v: Option<&Value>, func: &str, set: &'static AsciiSet) -> LResult<String> {
    let s = match v {
        Some(v) => str_arg(v, func, 1)?,
        None => return Err(rt(format!("bad argument #1 to '{func}' (string expected)"))),
    };
    if !s.starts_with('/') {
        return Err(rt(format!("{func}: '{s}' does not start with '/'")));
    }
    Ok(utf8_percent_encode(&s, set).to_string())
}

/// avi.http.set_path: the new path, with the request's query kept.
pub(super) fn set_path(uri: &Uri, path: Option<&Value>) -> LResult<Uri> {
    let path = rooted(path, "set_path", PATH)?;
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    with_path_and_query(uri, &pq, "set_path")
}

/// avi.http.set_uri: the new path and query.
pub(super) fn set_uri(uri: &Uri, new: Option<&Value>) -> LResult<Uri> {
    let pq = rooted(new, "set_uri", URI)?;
    with_path_and_query(uri, &pq, "set_uri")
}

/// avi.http.set_query: a string (a leading '?' is dropped) or number as it is, a table as
/// `key=value` pairs in key order (true: a bare key; an array: the key repeated); "" or an
/// empty table removes the query.
pub(super) fn set_query(uri: &Uri, q: Option<&Value>) -> LResult<Uri> {
    const F: &str = "set_query";
    let query = match q {
        Some(Value::Table(t)) => {
            let mut pairs: Vec<(String, Vec<Option<String>>)> = Vec::new();
            for pair in t.pairs::<Value, Value>() {
                let (k, v) = pair?;
                let k = str_arg(&k, F, 1)?.into_owned();
                let vals = match v {
                    Value::Boolean(true) => vec![None],
                    Value::Boolean(false) => continue,
                    Value::Table(list) => list
                        .sequence_values::<Value>()
                        .map(|v| Ok(Some(str_arg(&v?, F, 1)?.into_owned())))
                        .collect::<LResult<_>>()?,
                    v => vec![Some(str_arg(&v, F, 1)?.into_owned())],
                };
                pairs.push((k, vals));
            }
            pairs.sort();
            let enc = |s: &str| utf8_percent_encode(s, QUERY_COMPONENT).to_string();
            pairs
                .iter()
                .flat_map(|(k, vals)| {
                    vals.iter().map(move |v| match v {
                        None => enc(k),
                        Some(v) => format!("{}={}", enc(k), enc(v)),
                    })
                })
                .collect::<Vec<_>>()
                .join("&")
        }
        Some(v @ (Value::String(_) | Value::Integer(_) | Value::Number(_))) => {
            let s = str_arg(v, F, 1)?;
            utf8_percent_encode(s.strip_prefix('?').unwrap_or(&s), URI).to_string()
        }
        other => {
            return Err(rt(format!(
                "bad argument #1 to '{F}' (string, number or table expected, got {})",
                other.map_or("no value", Value::type_name)
            )));
        }
    };
    let pq = if query.is_empty() {
        uri.path().to_string()
    } else {
        format!("{}?{query}", uri.path())
    };
    with_path_and_query(uri, &pq, F)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostname_strips_the_port() {
        let origin = Uri::from_static("/");
        let h = |v: &'static str| hostname(&origin, Some(v.as_bytes()));
        let some = |s: &str| Some(s.to_string());
        assert_eq!(h("shop.example:8080"), some("shop.example"));
        assert_eq!(h("shop.example"), some("shop.example"));
        assert_eq!(h("[2001:db8::1]:80"), some("[2001:db8::1]"));
        assert_eq!(h("[2001:db8::1]"), some("[2001:db8::1]"));
        assert_eq!(h(""), None);
        assert_eq!(hostname(&origin, None), None);
        let absolute = Uri::from_static("http://a.example:81/x");
        assert_eq!(hostname(&absolute, Some(b"b.example")), some("a.example"));
    }

    #[test]
    fn query_args_are_found_decoded_and_returned_raw() {
        let q = "a=1&b%20c=x%20y&bare&b%20c=2";
        assert_eq!(query_arg(q, b"a"), Some("1"));
        assert_eq!(query_arg(q, b"b c"), Some("x%20y"));
        assert_eq!(query_arg(q, b"bare"), Some(""));
        assert_eq!(query_arg(q, b"none"), None);
        assert_eq!(decode("a+b%21", true), b"a b!");
        assert_eq!(decode("a+b%21", false), b"a+b!");
    }
}
