//! Cookie and Set-Cookie headers: reading them and changing them for avi.http.*_cookie.

use http::header::{COOKIE, SET_COOKIE};
use http::{HeaderMap, HeaderValue};
use mlua::Value;

use super::super::args::{name_arg, str_arg};
use super::super::{Args, LResult, rt};
use super::{Msg, write_headers};
use crate::datascript::vm::Ctx;

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

pub(super) fn find_cookie<'a>(h: &'a HeaderMap, m: Msg, name: &[u8]) -> Option<&'a [u8]> {
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

/// Attributes a Set-Cookie may carry, as Avi's table form names them, and how they are written.
const ATTRIBUTES: [(&str, &str); 7] = [
    ("path", "Path"),
    ("domain", "Domain"),
    ("expires", "Expires"),
    ("max_age", "Max-Age"),
    ("samesite", "SameSite"),
    ("secure", "Secure"),
    ("httponly", "HttpOnly"),
];

/// `; Attr=value` (or `; Attr` for a flag) for one attribute, or nothing when the value means
/// "not wanted": nil, false, "", or 0 for expires and max_age (Avi: "pass 0 for expires/max-age
/// you do not want"). `expires` is a number of seconds from now, written as an HTTP date.
fn attribute(key: &str, attr: &str, v: &Value, func: &str, pos: usize) -> LResult<String> {
    let flag = matches!(key, "secure" | "httponly");
    Ok(match v {
        Value::Nil | Value::Boolean(false) => String::new(),
        _ if flag => format!("; {attr}"),
        v => {
            let text = str_arg(v, func, pos)?.into_owned();
            let zero = text.parse::<f64>().is_ok_and(|n| n == 0.0);
            if text.is_empty() || (zero && matches!(key, "expires" | "max_age")) {
                String::new()
            } else if key == "expires" {
                let secs = text.parse::<f64>().map_err(|_| {
                    rt(format!(
                        "bad argument #{pos} to '{func}' (seconds expected for expires)"
                    ))
                })?;
                let at = std::time::SystemTime::now()
                    + std::time::Duration::from_secs_f64(secs.clamp(0.0, 1e10));
                format!("; {attr}={}", httpdate::fmt_http_date(at))
            } else {
                format!("; {attr}={text}")
            }
        }
    })
}

/// The cookies an add/replace call names, each as `(name, value, Set-Cookie line)`.
///
/// Avi's forms: a table (`{jsessionid="123", path="/"}`: in HTTP_RESP the attribute names are
/// attributes of every other entry, in HTTP_REQ every entry is a cookie), pairs `n1, v1, n2, v2,
/// ...` in HTTP_REQ, and `name, value, path, domain, expires, max_age, httponly, secure` in
/// HTTP_RESP. latch's earlier table form `{name=, value=, path=...}` is still read.
fn cookies_from_args(args: &Args, func: &str, m: Msg) -> LResult<Vec<(String, String, String)>> {
    let line = |name: &str, value: &str, attrs: &str| format!("{name}={value}{attrs}");
    match args.first() {
        Some(Value::Table(t)) => {
            let mut entries: Vec<(String, Value)> = Vec::new();
            for pair in t.pairs::<Value, Value>() {
                let (k, v) = pair?;
                entries.push((str_arg(&k, func, 1)?.into_owned(), v));
            }
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            let get = |k: &str| entries.iter().find(|(n, _)| n == k).map(|(_, v)| v);
            let is_attr = |k: &str| ATTRIBUTES.iter().any(|(a, _)| *a == k);
            // latch's earlier form: {name=, value=} plus attributes only.
            let legacy = get("name").is_some()
                && entries
                    .iter()
                    .all(|(k, _)| k == "name" || k == "value" || is_attr(k));
            let mut attrs = String::new();
            if m == Msg::Resp || legacy {
                for (key, attr) in ATTRIBUTES {
                    if let Some(v) = get(key) {
                        attrs.push_str(&attribute(key, attr, v, func, 1)?);
                    }
                }
            }
            if let (true, Some(name)) = (legacy, get("name")) {
                let name = str_arg(name, func, 1)?.into_owned();
                let value = match get("value") {
                    Some(v) => str_arg(v, func, 1)?.into_owned(),
                    None => String::new(),
                };
                let set = line(&name, &value, &attrs);
                return Ok(vec![(name, value, set)]);
            }
            let mut out = Vec::new();
            for (name, v) in &entries {
                if m == Msg::Resp && is_attr(name) {
                    continue;
                }
                let value = str_arg(v, func, 1)?.into_owned();
                let set = line(name, &value, &attrs);
                out.push((name.clone(), value, set));
            }
            Ok(out)
        }
        Some(_) if m == Msg::Req => {
            if !args.len().is_multiple_of(2) {
                return Err(rt(format!(
                    "{func}: expected name, value pairs (got {} arguments)",
                    args.len()
                )));
            }
            let mut out = Vec::new();
            for (i, pair) in args.chunks(2).enumerate() {
                let name = str_arg(&pair[0], func, 2 * i + 1)?.into_owned();
                let value = name_arg(pair.get(1), func, 2 * i + 2)?;
                let set = line(&name, &value, "");
                out.push((name, value, set));
            }
            Ok(out)
        }
        Some(first) => {
            let name = str_arg(first, func, 1)?.into_owned();
            let value = name_arg(args.get(1), func, 2)?;
            // Positions 3.. are path, domain, expires, max_age, httponly, secure.
            let order = [2usize, 3, 4, 5, 6, 7];
            let keys = ["path", "domain", "expires", "max_age", "httponly", "secure"];
            let mut attrs = String::new();
            for (pos, key) in order.iter().zip(keys) {
                if let Some(v) = args.get(*pos) {
                    let attr = ATTRIBUTES
                        .iter()
                        .find(|(k, _)| *k == key)
                        .map_or(key, |(_, a)| *a);
                    attrs.push_str(&attribute(key, attr, v, func, pos + 1)?);
                }
            }
            let set = line(&name, &value, &attrs);
            Ok(vec![(name, value, set)])
        }
        None => Err(rt(format!("bad argument #1 to '{func}' (cookie expected)"))),
    }
}

/// One `;`-separated piece of a request's Cookie headers, as an edit rewrites them.
enum Piece {
    /// `name=value`, both trimmed.
    Pair(Vec<u8>, Vec<u8>),
    /// A piece without `=`: a cookie without a name (browsers send one for
    /// `document.cookie = "v"`). No script names it, so an edit leaves it as it came.
    Bare(Vec<u8>),
}

impl Piece {
    fn named(&self, name: &[u8]) -> bool {
        matches!(self, Self::Pair(n, _) if n == name)
    }
}

/// Rewrites a request's Cookie header through `edit` on its pieces (no header when none is
/// left).
fn edit_request_cookies(h: &mut HeaderMap, edit: impl FnOnce(&mut Vec<Piece>)) -> LResult<()> {
    let mut pieces: Vec<Piece> = h
        .get_all(COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .map(trim)
        .filter(|p| !p.is_empty())
        .map(|p| match p.iter().position(|b| *b == b'=') {
            Some(eq) => Piece::Pair(trim(&p[..eq]).to_vec(), trim(&p[eq + 1..]).to_vec()),
            None => Piece::Bare(p.to_vec()),
        })
        .collect();
    edit(&mut pieces);
    h.remove(COOKIE);
    if pieces.is_empty() {
        return Ok(());
    }
    let joined = pieces
        .iter()
        .map(|p| match p {
            Piece::Pair(n, v) => [n.as_slice(), b"=", v.as_slice()].concat(),
            Piece::Bare(b) => b.clone(),
        })
        .collect::<Vec<_>>()
        .join(&b"; "[..]);
    h.insert(
        COOKIE,
        HeaderValue::from_bytes(&joined).map_err(|_| rt("invalid cookie"))?,
    );
    Ok(())
}

/// add (replace=false) or replace the cookies an add/replace call names in the current message.
pub(super) fn put_cookie(ctx: &mut Ctx, args: &Args, func: &str, replace: bool) -> LResult<()> {
    let (h, m) = write_headers(ctx)?;
    let cookies = cookies_from_args(args, func, m)?;
    for (name, value, set_cookie) in cookies {
        if replace {
            remove_cookie(h, m, name.as_bytes())?;
        }
        match m {
            Msg::Req => edit_request_cookies(h, |pieces| {
                pieces.push(Piece::Pair(name.into_bytes(), value.into_bytes()));
            })?,
            Msg::Resp => {
                h.append(
                    SET_COOKIE,
                    HeaderValue::from_str(&set_cookie)
                        .map_err(|_| rt(format!("{func}: invalid cookie")))?,
                );
            }
        }
    }
    Ok(())
}

/// Removes every cookie called `name` from a message.
pub(super) fn remove_cookie(h: &mut HeaderMap, m: Msg, name: &[u8]) -> LResult<()> {
    match m {
        Msg::Req => edit_request_cookies(h, |pieces| pieces.retain(|p| !p.named(name))),
        Msg::Resp => {
            remove_set_cookie(h, name);
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

/// Distinct cookie names of a message, in order of appearance.
pub(super) fn cookie_names(h: &HeaderMap, m: Msg) -> Vec<&[u8]> {
    let all: Vec<&[u8]> = match m {
        Msg::Req => request_cookies(h).map(|(n, _)| n).collect(),
        Msg::Resp => h
            .get_all(SET_COOKIE)
            .iter()
            .filter_map(set_cookie_pair)
            .map(|(n, _)| n)
            .collect(),
    };
    let mut names: Vec<&[u8]> = Vec::with_capacity(all.len());
    for n in all {
        if !names.contains(&n) {
            names.push(n);
        }
    }
    names
}

/// One change of avi.http.update_cookie: the cookie's value, or an attribute set (`Some`)
/// or removed (`None`, a flag passed false).
enum CookieEdit {
    Value(String),
    Attr(&'static str, Option<String>),
}

/// The `attr, value` pairs after the cookie name.
fn cookie_edits(args: &Args) -> LResult<Vec<CookieEdit>> {
    const F: &str = "update_cookie";
    let rest = args.get(1..).unwrap_or_default();
    if rest.is_empty() || rest.len() % 2 != 0 {
        return Err(rt(format!(
            "{F}: expected (name, attribute, value [, attribute, value ...])"
        )));
    }
    rest.chunks(2)
        .enumerate()
        .map(|(i, pair)| {
            let attr = str_arg(&pair[0], F, 2 + 2 * i)?.to_ascii_lowercase();
            let value = &pair[1];
            let flag = |name| {
                let on = !matches!(value, Value::Nil | Value::Boolean(false));
                Ok(CookieEdit::Attr(name, on.then(String::new)))
            };
            let text = |name| Ok(CookieEdit::Attr(name, Some(attr_text(value, 3 + 2 * i)?)));
            match attr.as_str() {
                "value" => Ok(CookieEdit::Value(attr_text(value, 3 + 2 * i)?)),
                "path" => text("Path"),
                "domain" => text("Domain"),
                "expires" => text("Expires"),
                "maxage" | "max_age" | "max-age" => text("Max-Age"),
                "samesite" => text("SameSite"),
                "httponly" => flag("HttpOnly"),
                "secure" => flag("Secure"),
                other => Err(rt(format!("{F}: unknown cookie attribute '{other}'"))),
            }
        })
        .collect()
}

fn attr_text(v: &Value, pos: usize) -> LResult<String> {
    Ok(str_arg(v, "update_cookie", pos)?.into_owned())
}

/// Applies `edits` to one Set-Cookie value: attributes are matched case-insensitively,
/// changed in place or appended.
fn edit_set_cookie(v: &HeaderValue, edits: &[CookieEdit]) -> LResult<HeaderValue> {
    let text = String::from_utf8_lossy(v.as_bytes());
    let mut parts = text.split(';').map(|p| p.trim().to_string());
    let mut first = parts.next().unwrap_or_default();
    let mut attrs: Vec<String> = parts.filter(|p| !p.is_empty()).collect();
    for edit in edits {
        match edit {
            CookieEdit::Value(value) => {
                let name = first.split_once('=').map_or(first.as_str(), |(n, _)| n);
                first = format!("{name}={value}");
            }
            CookieEdit::Attr(name, value) => {
                let pos = attrs.iter().position(|a| {
                    a.split_once('=')
                        .map_or(a.as_str(), |(k, _)| k)
                        .trim()
                        .eq_ignore_ascii_case(name)
                });
                let new = value.as_ref().map(|v| match v.is_empty() {
                    true if matches!(*name, "HttpOnly" | "Secure") => (*name).to_string(),
                    _ => format!("{name}={v}"),
                });
                match (pos, new) {
                    (Some(i), Some(new)) => attrs[i] = new,
                    (None, Some(new)) => attrs.push(new),
                    (Some(i), None) => {
                        attrs.remove(i);
                    }
                    (None, None) => {}
                }
            }
        }
    }
    let joined = std::iter::once(first)
        .chain(attrs)
        .collect::<Vec<_>>()
        .join("; ");
    HeaderValue::from_str(&joined).map_err(|_| rt("update_cookie: invalid cookie"))
}

/// avi.http.update_cookie(name, attr, value [, attr, value ...]): changes the named cookie's
/// attributes (HTTP_RESP) or value ("value", both events); nothing when it is absent.
pub(super) fn update_cookie(ctx: &mut Ctx, args: &Args) -> LResult<()> {
    let name = name_arg(args.first(), "update_cookie", 1)?;
    let edits = cookie_edits(args)?;
    let (h, m) = write_headers(ctx)?;
    match m {
        Msg::Req => {
            let mut value = None;
            for e in &edits {
                match e {
                    CookieEdit::Value(v) => value = Some(v.clone()),
                    CookieEdit::Attr(a, _) => {
                        return Err(rt(format!(
                            "update_cookie: a request cookie has no {a} attribute"
                        )));
                    }
                }
            }
            let Some(value) = value else { return Ok(()) };
            edit_request_cookies(h, |pieces| {
                for p in pieces.iter_mut() {
                    if let Piece::Pair(n, v) = p
                        && *n == name.as_bytes()
                    {
                        *v = value.clone().into_bytes();
                    }
                }
            })
        }
        Msg::Resp => {
            let mut out = Vec::new();
            for v in h.get_all(SET_COOKIE) {
                let ours = set_cookie_pair(v).is_some_and(|(n, _)| n == name.as_bytes());
                out.push(if ours {
                    edit_set_cookie(v, &edits)?
                } else {
                    v.clone()
                });
            }
            h.remove(SET_COOKIE);
            for v in out {
                h.append(SET_COOKIE, v);
            }
            Ok(())
        }
    }
}
