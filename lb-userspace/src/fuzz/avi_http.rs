//! Cookie, query, header and URI parsing behind `avi.http` (`datascript/api/http.rs`,
//! `datascript/api/http/cookie.rs`, `datascript/api/http/uri.rs`): hostile requests and
//! responses (repeated and malformed Cookie and Set-Cookie headers, odd queries, escapes,
//! hosts) meet scripts that call the functions with arguments of every Lua type, each call
//! under pcall.
//!
//! Properties: no panic and no error escaping pcall (the request is forwarded, the response
//! passed on); what a script writes it reads back (a replaced cookie or header, a removed
//! one, a query set from a table, a path set); the cookie names a script sees are those an
//! independent reading of the headers finds; the edited request target stays a valid URI.

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use latch_tests::fuzz;

use super::{Service, info, lua_literal};
use crate::datascript::Event;
use crate::proxy::hooks::{HookFactory, RequestVerdict, ResponseVerdict};

const PATHS: &[&str] = &[
    "/",
    "/a/b",
    "/%41%zz",
    "/a%2Fb/",
    "//x//y",
    "/%E2%82%AC",
    "/a+b",
    "/.././c",
    "/%",
];
const QUERY_PARTS: &[&str] = &[
    "a=1",
    "a=2",
    "b",
    "c=",
    "%20=%2B",
    "+=+",
    "x=%zz",
    "",
    "k=v=w",
    "=",
    "JSESSIONID=q",
    "%E2%82%AC=%FF",
    "a%00=b",
];
const HOSTS: &[&str] = &[
    "shop.example",
    "shop.example:8080",
    "[2001:db8::1]:80",
    "",
    "a..b",
    "x:y:z",
    "[::1",
    "SHOP.Example.",
    "127.0.0.1:99999",
];
const COOKIES: &[&str] = &[
    "a=1; b=2",
    "JSESSIONID=abc",
    "  c = 3 ;d=4;;",
    "novalue",
    "=v",
    "a=1; a=2",
    "q=\"x y\"",
    ";;;",
    "e==f",
    "g=h\t",
    "ü=1",
];
const SET_COOKIES: &[&str] = &[
    "JSESSIONID=abc; Path=/; HttpOnly",
    "a=1",
    "b=2; Secure; SameSite=Lax",
    "=x",
    "c",
    "d=; Max-Age=0",
    "a=3; path=/x; Domain=shop.example",
];
const OTHER_HEADERS: &[(&str, &str)] = &[
    ("x-a", "1"),
    ("x-a", "2"),
    ("user-agent", "fuzz/1.0"),
    ("authorization", "Basic YTpi"),
    ("x-empty", ""),
];

#[derive(Clone, Debug)]
struct Message {
    path: &'static str,
    query: Option<Vec<&'static str>>,
    host: Option<&'static str>,
    cookies: Vec<&'static str>,
    set_cookies: Vec<&'static str>,
    others: Vec<(&'static str, &'static str)>,
}

fn message() -> impl Strategy<Value = Message> {
    (
        proptest::sample::select(PATHS),
        proptest::option::of(proptest::collection::vec(
            proptest::sample::select(QUERY_PARTS),
            0..4,
        )),
        proptest::option::of(proptest::sample::select(HOSTS)),
        proptest::collection::vec(proptest::sample::select(COOKIES), 0..3),
        proptest::collection::vec(proptest::sample::select(SET_COOKIES), 0..3),
        proptest::collection::vec(proptest::sample::select(OTHER_HEADERS), 0..3),
    )
        .prop_map(
            |(path, query, host, cookies, set_cookies, others)| Message {
                path,
                query,
                host,
                cookies,
                set_cookies,
                others,
            },
        )
}

impl Message {
    fn request(&self) -> Result<http::request::Parts, String> {
        let uri = match &self.query {
            Some(q) => format!("{}?{}", self.path, q.join("&")),
            None => self.path.to_string(),
        };
        let mut b = http::Request::builder().method("GET").uri(uri);
        if let Some(h) = self.host {
            b = b.header("host", h);
        }
        for c in &self.cookies {
            b = b.header("cookie", c.as_bytes());
        }
        for (n, v) in &self.others {
            b = b.header(*n, *v);
        }
        Ok(b.body(()).map_err(|e| e.to_string())?.into_parts().0)
    }

    fn response(&self) -> Result<http::response::Parts, String> {
        let mut b = http::Response::builder().status(200);
        for c in &self.set_cookies {
            b = b.header("set-cookie", c.as_bytes());
        }
        Ok(b.body(()).map_err(|e| e.to_string())?.into_parts().0)
    }
}

/// Arguments of every Lua type, and strings that matter to the parsers.
const ARGS: &[&str] = &[
    "\"a\"",
    "\"JSESSIONID\"",
    "\"\"",
    "\"=\"",
    "\";\"",
    "\" \"",
    "\"\\r\\n\"",
    "\"\\0\"",
    "\"%zz\"",
    "\"/\"",
    "\"//a/../b\"",
    "\"?x=1&y\"",
    "\"\\255\"",
    "string.rep('a', 300)",
    "\"Set-Cookie\"",
    "\"Cookie\"",
    "\"Host\"",
    "\"content_type\"",
    "\"x-a\"",
    "\"path\"",
    "\"value\"",
    "\"httponly\"",
    "\"max_age\"",
    "\"Lax\"",
    "0",
    "-1",
    "1.5",
    "1e308",
    "0/0",
    "math.huge",
    "2^53",
    "3",
    "nil",
    "true",
    "false",
    "\"false\"",
    "{}",
    "{a=\"b\"}",
    "{1, 2, 3}",
    "{name=\"n\", value=\"v\", path=\"/\", expires=10, max_age=0, secure=true}",
    "{a={\"x\", \"y\"}, b=true, c=false}",
    "{jsessionid=\"1\", path=\"/p\", httponly=true}",
    "avi.HTTP_REQUEST",
    "avi.HTTP_RESPONSE",
    "avi.QUERY_TABLE",
    "avi.QUERY_STRING",
    "function() end",
];

/// Functions called with any arguments (response and redirect end the event: rarely).
const FUNCS: &[&str] = &[
    "get_header",
    "add_header",
    "replace_header",
    "remove_header",
    "add_cookie",
    "replace_cookie",
    "remove_cookie",
    "get_cookie",
    "cookie_exists",
    "get_cookie_names",
    "update_cookie",
    "get_path",
    "get_uri",
    "get_query",
    "method",
    "get_version",
    "hostname",
    "get_path_tokens",
    "get_host_tokens",
    "status",
    "get_userid",
    "set_userid",
    "protocol",
    "scheme",
    "secure",
    "get_reqvar",
    "set_reqvar",
    "set_path",
    "set_uri",
    "set_query",
    "set_server_timeout",
    "get_request_id",
];

/// Cookie names and values, header names and values a script writes and reads back.
const NAMES: &[&str] = &["a", "JSESSIONID", "n-1", "x_y", "Ü"];
const VALUES: &[&str] = &["1", "", "v=w", "abc def", "\"q\"", "%41", "é", "a+b"];
/// Query values a table form must carry as data. Not '%': set_query leaves escapes as they
/// are, by design (`datascript/api/http/uri.rs`), so that `{q = avi.http.get_query("q")}`
/// keeps an already-encoded value.
const QUERY_VALUES: &[&str] = &["1", "", "v=w", "abc def", "\"q\"", "é", "a+b", "x&y?z#"];

const ANSWERS: &[(&str, &str)] = &[
    ("response", "403"),
    ("response", "200, {a=\"b\"}, \"body\""),
    ("response", "0/0"),
    ("redirect", "\"/x\""),
    ("redirect", "\"http://h.example/\", 307"),
    ("redirect", "nil"),
];

#[derive(Clone, Debug)]
enum Op {
    /// Any function with any arguments; only a panic or an escaped error fails.
    Chaos(&'static str, Vec<&'static str>),
    ReplaceCookie(&'static str, &'static str),
    RemoveCookie(&'static str),
    /// update_cookie(name, "value", value): a cookie there gets the value, none appears.
    UpdateCookie(&'static str, &'static str),
    /// add_header: the value joins those there.
    AddHeader(&'static str, &'static str),
    ReplaceHeader(&'static str, &'static str),
    RemoveHeader(&'static str),
    SetQuery(&'static str, &'static str),
    SetPath(&'static str),
    /// avi.http.response or redirect (and its arguments): ends the event.
    Answer((&'static str, &'static str)),
}

fn op() -> impl Strategy<Value = Op> {
    let name = proptest::sample::select(NAMES);
    let value = proptest::sample::select(VALUES);
    prop_oneof![
        8 => (
            proptest::sample::select(FUNCS),
            proptest::collection::vec(proptest::sample::select(ARGS), 0..4)
        )
            .prop_map(|(f, a)| Op::Chaos(f, a)),
        2 => (name.clone(), value.clone()).prop_map(|(n, v)| Op::ReplaceCookie(n, v)),
        1 => name.clone().prop_map(Op::RemoveCookie),
        1 => (name.clone(), value.clone()).prop_map(|(n, v)| Op::UpdateCookie(n, v)),
        1 => (name.clone(), value.clone()).prop_map(|(n, v)| Op::AddHeader(n, v)),
        2 => (name.clone(), value.clone()).prop_map(|(n, v)| Op::ReplaceHeader(n, v)),
        1 => name.clone().prop_map(Op::RemoveHeader),
        2 => (name, proptest::sample::select(QUERY_VALUES)).prop_map(|(n, v)| Op::SetQuery(n, v)),
        1 => proptest::sample::select(&["/p", "/a b/c", "/?#", "/ü", "/x%y"][..]).prop_map(Op::SetPath),
        1 => proptest::sample::select(ANSWERS).prop_map(Op::Answer),
    ]
}

/// Lua for one op: a call under pcall, and for the writes a read back that logs `FAIL`
/// when it differs.
fn lua(op: &Op, resp: bool) -> String {
    let l = |s: &str| lua_literal(s.as_bytes());
    let expect = |call: String, check: String, what: String| {
        format!(
            "do local ok, e = pcall({call}) if ok then local got = {check} \
             if not (got) then avi.vs.log('FAIL ' .. {}) end end end\n",
            l(&what)
        )
    };
    match op {
        // Indexed, so the load-time check of which event may call what lets every call
        // through to the functions' own checks.
        Op::Chaos(f, args) => format!(
            "pcall(avi.http[{}]{}{})\n",
            l(f),
            if args.is_empty() { "" } else { ", " },
            args.join(", ")
        ),
        Op::ReplaceCookie(n, v) => expect(
            format!("avi.http.replace_cookie, {}, {}", l(n), l(v)),
            format!("avi.http.get_cookie({}) == {}", l(n), l(v)),
            format!("replace_cookie({n}, {v}) then get_cookie"),
        ),
        Op::RemoveCookie(n) => expect(
            format!("avi.http.remove_cookie, {}", l(n)),
            format!("avi.http.get_cookie({}) == nil", l(n)),
            format!("remove_cookie({n}) then get_cookie"),
        ),
        Op::UpdateCookie(n, v) => format!(
            "do local had = avi.http.get_cookie({n}) ~= nil \
             local ok = pcall(avi.http.update_cookie, {n}, 'value', {v}) \
             local now = avi.http.get_cookie({n}) \
             if ok and ((had and now ~= {v}) or (not had and now ~= nil)) then \
             avi.vs.log('FAIL ' .. {what}) end end\n",
            n = l(n),
            v = l(v),
            what = l(&format!("update_cookie({n}, value, {v}) then get_cookie"))
        ),
        Op::AddHeader(n, v) => format!(
            "do local readable, before = pcall(avi.http.get_header, {n}) \
             local ok = pcall(avi.http.add_header, {n}, {v}) \
             local want = readable and (before and (before .. ', ' .. {v}) or {v}) \
             if readable and ok and avi.http.get_header({n}) ~= want then \
             avi.vs.log('FAIL ' .. {what}) end end\n",
            n = l(n),
            v = l(v),
            what = l(&format!("add_header({n}, {v}) then get_header"))
        ),
        Op::ReplaceHeader(n, v) => expect(
            format!("avi.http.replace_header, {}, {}", l(n), l(v)),
            format!("avi.http.get_header({}) == {}", l(n), l(v)),
            format!("replace_header({n}, {v}) then get_header"),
        ),
        Op::RemoveHeader(n) => expect(
            format!("avi.http.remove_header, {}", l(n)),
            format!("avi.http.get_header({}) == nil", l(n)),
            format!("remove_header({n}) then get_header"),
        ),
        // The request line exists in both events, but only HTTP_REQ may rewrite it.
        Op::SetQuery(n, v) if !resp => expect(
            format!("avi.http.set_query, {{[{}] = {}}}", l(n), l(v)),
            format!(
                "avi.http.get_query({}, true) == {} and avi.http.get_query(avi.QUERY_TABLE)[{}] == {}",
                l(n),
                l(v),
                l(n),
                l(v)
            ),
            format!("set_query({{{n}={v}}}) then get_query"),
        ),
        Op::SetPath(p) if !resp => expect(
            format!("avi.http.set_path, {}", l(p)),
            format!("avi.http.get_path() == {}", l(p)),
            format!("set_path({p}) then get_path"),
        ),
        Op::SetQuery(..) | Op::SetPath(_) => String::new(),
        Op::Answer((f, args)) => format!("pcall(avi.http[{}], {args})\n", l(f)),
    }
}

#[derive(Clone, Debug)]
struct Case {
    message: Message,
    request_ops: Vec<Op>,
    response_ops: Vec<Op>,
}

/// Only cookie edits: the request's other cookies must come through them unchanged.
fn cookie_op() -> impl Strategy<Value = Op> {
    let name = proptest::sample::select(NAMES);
    prop_oneof![
        (name.clone(), proptest::sample::select(VALUES)).prop_map(|(n, v)| Op::ReplaceCookie(n, v)),
        name.clone().prop_map(Op::RemoveCookie),
        (name, proptest::sample::select(VALUES)).prop_map(|(n, v)| Op::UpdateCookie(n, v)),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        message(),
        prop_oneof![
            3 => proptest::collection::vec(op(), 0..8),
            1 => proptest::collection::vec(cookie_op(), 1..4),
        ],
        proptest::collection::vec(op(), 0..8),
    )
        .prop_map(|(message, request_ops, response_ops)| Case {
            message,
            request_ops,
            response_ops,
        })
}

fn script(ops: &[Op], resp: bool) -> String {
    ops.iter().map(|o| lua(o, resp)).collect()
}

/// Names of cookies in Cookie headers, read independently of `cookie.rs`: `;`-separated
/// pairs with a `=`, names trimmed of ASCII whitespace, first appearance first.
fn cookie_names(h: &http::HeaderMap) -> Vec<String> {
    let mut names = Vec::new();
    for v in h.get_all(http::header::COOKIE) {
        for pair in v.as_bytes().split(|b| *b == b';') {
            if let Some(eq) = pair.iter().position(|b| *b == b'=') {
                let name = String::from_utf8_lossy(pair[..eq].trim_ascii()).into_owned();
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
    }
    names
}

/// The `;`-separated pieces of a request's Cookie headers, trimmed, empty ones left out.
fn cookie_pieces(h: &http::HeaderMap) -> Vec<String> {
    h.get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .map(|p| String::from_utf8_lossy(p.trim_ascii()).into_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

/// The Cookie pieces after cookie edits `ops`, if that is all the script does: a piece
/// named otherwise (or with no name) stays as it was, in its place.
fn expected_pieces(before: Vec<String>, ops: &[Op]) -> Option<Vec<String>> {
    let named = |piece: &str, name: &str| {
        piece
            .split_once('=')
            .is_some_and(|(n, _)| n.trim_matches(|c: char| c.is_ascii_whitespace()) == name)
    };
    let tidy = |piece: String| match piece.split_once('=') {
        Some((n, v)) => format!(
            "{}={}",
            n.trim_matches(|c: char| c.is_ascii_whitespace()),
            v.trim_matches(|c: char| c.is_ascii_whitespace())
        ),
        None => piece,
    };
    if ops.is_empty() {
        return Some(before);
    }
    // An edit writes the header anew: blanks around names and values go.
    let mut pieces: Vec<String> = before.into_iter().map(tidy).collect();
    for op in ops {
        match op {
            Op::RemoveCookie(n) => pieces.retain(|p| !named(p, n)),
            Op::UpdateCookie(n, v) => {
                for p in pieces.iter_mut().filter(|p| named(p, n)) {
                    *p = format!("{n}={v}");
                }
            }
            Op::ReplaceCookie(n, v) => {
                pieces.retain(|p| !named(p, n));
                pieces.push(format!("{n}={v}"));
            }
            _ => return None,
        }
    }
    Some(pieces)
}

fn check(case: &Case) -> Result<(), TestCaseError> {
    let fail = |e: String| TestCaseError::fail(e);
    let names_probe = "local n = avi.http.get_cookie_names() \
        avi.vs.log('NAMES ' .. table.concat(n, '\\1'))\n";
    let req_script = format!("{names_probe}{}", script(&case.request_ops, false));
    let resp_script = script(&case.response_ops, true);
    let svc = Service::new(&[(Event::HttpReq, req_script), (Event::HttpResp, resp_script)])
        .map_err(fail)?;
    let mut req = case.message.request().map_err(fail)?;
    let expected_names = cookie_names(&req.headers);
    let before = cookie_pieces(&req.headers);
    let mut txn = svc.hooks.begin(info());
    let answered_in_request = case.request_ops.iter().any(|o| matches!(o, Op::Answer(_)));
    let forwarded = match txn.on_request(&mut req) {
        RequestVerdict::Forward(_) => true,
        RequestVerdict::Respond(r) => {
            prop_assert!(
                answered_in_request && r.status() != http::StatusCode::INTERNAL_SERVER_ERROR,
                "request answered {} without avi.http.response: {:?}",
                r.status(),
                txn.log_output()
            );
            false
        }
    };
    if forwarded && let Some(want) = expected_pieces(before, &case.request_ops) {
        prop_assert_eq!(
            cookie_pieces(&req.headers),
            want,
            "the Cookie header after {:?}",
            case.request_ops
        );
    }
    // The request as it would be sent: a valid head.
    let uri = req.uri.to_string();
    prop_assert!(uri.parse::<http::Uri>().is_ok(), "unsendable URI {}", uri);
    // The proxy runs HTTP_RESP only for a forwarded request.
    if forwarded {
        let mut resp = case.message.response().map_err(fail)?;
        let answered = case.response_ops.iter().any(|o| matches!(o, Op::Answer(_)));
        let server = "192.0.2.11:8080".parse().expect("address");
        if let ResponseVerdict::Respond(r) = txn.on_response(&mut resp, server) {
            prop_assert!(
                answered && r.status() != http::StatusCode::INTERNAL_SERVER_ERROR,
                "response replaced by {} without avi.http.response: {:?}",
                r.status(),
                txn.log_output()
            );
        }
    }
    let log = txn.log_output().unwrap_or_default();
    let failures: Vec<&str> = log.lines().filter(|l| l.starts_with("FAIL")).collect();
    prop_assert!(failures.is_empty(), "{:?}", failures);
    let names = log
        .lines()
        .find_map(|l| l.strip_prefix("NAMES "))
        .map(|n| {
            n.split('\u{1}')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let expected: Vec<String> = expected_names
        .into_iter()
        .filter(|n| !n.is_empty())
        .collect();
    prop_assert_eq!(
        names,
        expected,
        "get_cookie_names of {:?}",
        case.message.cookies
    );
    Ok(())
}

#[test]
fn parsing_and_rewrites_hold_up() {
    fuzz::run("avi_http", case(), |c| check(&c));
}

/// Findings of this target, kept.
mod regressions {
    use super::*;

    /// A script's cookie edit dropped the client's cookies without a name (`Cookie: v`, as
    /// browsers send for `document.cookie = "v"`): the server got `a=1` for `v` and `a=1`.
    #[test]
    fn cookie_edits_keep_cookies_without_a_name() {
        let message = Message {
            path: "/",
            query: None,
            host: None,
            cookies: vec!["novalue; b = 2", "sid"],
            set_cookies: vec![],
            others: vec![],
        };
        for (ops, want) in [
            (vec![Op::ReplaceCookie("a", "1")], "novalue; b=2; sid; a=1"),
            (vec![Op::RemoveCookie("b")], "novalue; sid"),
            (vec![Op::RemoveCookie("novalue")], "novalue; b=2; sid"),
        ] {
            let case = Case {
                message: message.clone(),
                request_ops: ops.clone(),
                response_ops: vec![],
            };
            if let Err(e) = check(&case) {
                panic!("{ops:?}: {e}");
            }
            let svc = Service::new(&[(Event::HttpReq, script(&ops, false))]).expect("script");
            let mut req = message.request().expect("request");
            let mut txn = svc.hooks.begin(info());
            assert!(matches!(
                txn.on_request(&mut req),
                RequestVerdict::Forward(_)
            ));
            let cookie = req
                .headers
                .get(http::header::COOKIE)
                .expect("cookie header");
            assert_eq!(cookie.as_bytes(), want.as_bytes(), "{ops:?}");
        }
    }
}
