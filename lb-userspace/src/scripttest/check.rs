//! Comparing what happened with what a case expects: one [`Mismatch`] per field that differs.

use std::collections::BTreeMap;

use http::HeaderMap;
use http::header::{COOKIE, SET_COOKIE};

use super::cases::{CookieValue, EntrySpec, ErrorExpect, Expect, HeaderValues, ServerExpect};
use super::run::Happened;
use crate::tables::DEFAULT_TABLE;

/// A field whose value is not the expected one.
#[derive(Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// Which field (`status`, `request header x-user`, ...).
    pub field: String,
    /// Expected, as shown.
    pub expected: String,
    /// Got, as shown.
    pub got: String,
}

fn show_opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "(none)".to_string(), |v| v.to_string())
}

fn show_values(v: &[String]) -> String {
    match v {
        [] => "(absent)".to_string(),
        [one] => format!("{one:?}"),
        many => format!("{many:?}"),
    }
}

fn header_values(map: &HeaderMap, name: &str) -> Vec<String> {
    map.get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

/// Cookie name → value of a request's Cookie headers.
fn request_cookies(map: &HeaderMap) -> BTreeMap<String, String> {
    header_values(map, COOKIE.as_str())
        .iter()
        .flat_map(|v| v.split(';').map(str::to_string).collect::<Vec<_>>())
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            Some((k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

/// Cookie name → value of a response's Set-Cookie headers (the last one of a name wins).
fn response_cookies(map: &HeaderMap) -> BTreeMap<String, String> {
    header_values(map, SET_COOKIE.as_str())
        .iter()
        .filter_map(|v| {
            let first = v.split(';').next()?;
            let (k, v) = first.split_once('=')?;
            Some((k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

/// An entry as `[TABLE] KEY=VALUE Ns`, the lifetime only when `with_lifetime`.
fn show_entry(table: &str, key: &str, value: &str, lifetime: Option<u64>) -> String {
    let table = if table == DEFAULT_TABLE {
        String::new()
    } else {
        format!("[{table}] ")
    };
    match lifetime {
        Some(s) => format!("{table}{key}={value} {s}s"),
        None => format!("{table}{key}={value}"),
    }
}

struct Diff(Vec<Mismatch>);

impl Diff {
    fn check(&mut self, field: impl Into<String>, expected: String, got: String) {
        if expected != got {
            self.0.push(Mismatch {
                field: field.into(),
                expected,
                got,
            });
        }
    }

    fn headers(&mut self, what: &str, expected: &[(String, HeaderValues)], got: &HeaderMap) {
        for (name, values) in expected {
            let want = values.values();
            let have = header_values(got, &name.to_ascii_lowercase());
            self.check(
                format!("{what} header {name}"),
                show_values(&want),
                show_values(&have),
            );
        }
    }

    fn cookies(
        &mut self,
        what: &str,
        expected: &BTreeMap<String, CookieValue>,
        got: &BTreeMap<String, String>,
    ) {
        for (name, value) in expected {
            let want = match value {
                CookieValue::Value(v) => format!("{v:?}"),
                CookieValue::Absent(_) => "(absent)".to_string(),
            };
            let have = got
                .get(name)
                .map_or_else(|| "(absent)".to_string(), |v| format!("{v:?}"));
            self.check(format!("{what} cookie {name}"), want, have);
        }
    }

    fn lines(&mut self, field: &str, expected: &[String], got: &[String]) {
        let n = expected.len().max(got.len());
        for i in 0..n {
            self.check(
                format!("{field}[{}]", i + 1),
                show_opt(expected.get(i).map(|s| format!("{s:?}"))),
                show_opt(got.get(i).map(|s| format!("{s:?}"))),
            );
        }
    }
}

/// Every mismatch between `expect` and `got`.
pub fn compare(expect: &Expect, got: &Happened) -> Vec<Mismatch> {
    let mut d = Diff(Vec::new());
    let request = got.request.as_ref();
    if let Some(pool) = &expect.pool {
        d.check("pool", pool.clone(), show_opt(got.pool.as_ref()));
    }
    match &expect.server {
        Some(ServerExpect::Addr(a)) => d.check("server", a.to_string(), show_opt(got.server)),
        Some(ServerExpect::None(_)) => d.check("server", "(none)".into(), show_opt(got.server)),
        None => {}
    }
    if let Some(m) = &expect.method {
        d.check("method", m.clone(), show_opt(request.map(|r| &r.method)));
    }
    if let Some(u) = &expect.uri {
        d.check("uri", u.clone(), show_opt(request.map(|r| &r.uri)));
    }
    let empty = HeaderMap::new();
    let req_headers = request.map_or(&empty, |r| &r.headers);
    d.headers("request", &expect.request_headers, req_headers);
    d.cookies(
        "request",
        &expect.request_cookies,
        &request_cookies(req_headers),
    );
    if let Some(s) = expect.status {
        d.check("status", s.to_string(), got.status.to_string());
    }
    if let Some(l) = expect.local {
        let show = |local: bool| if local { "local" } else { "server" }.to_string();
        d.check("answered by", show(l), show(got.local));
    }
    d.headers("response", &expect.response_headers, &got.response_headers);
    d.cookies(
        "response",
        &expect.response_cookies,
        &response_cookies(&got.response_headers),
    );
    if let Some(b) = &expect.body {
        d.check(
            "body",
            format!("{b:?}"),
            show_opt(got.body.as_ref().map(|b| format!("{b:?}"))),
        );
    }
    if let Some(close) = expect.close_connection {
        d.check(
            "close connection",
            close.to_string(),
            got.close_connection.to_string(),
        );
    }
    if let Some(user) = &expect.user_id {
        d.check("user id", user.clone(), show_opt(got.user_id.as_ref()));
    }
    if let Some(ms) = expect.server_timeout_ms {
        d.check(
            "server timeout ms",
            ms.to_string(),
            show_opt(got.server_timeout_ms),
        );
    }
    if let Some(log) = &expect.log {
        d.lines("log", log, &got.log);
    }
    let all_log = got.log.join("\n");
    for text in &expect.log_contains {
        if !all_log.contains(text.as_str()) {
            d.check("log contains", format!("{text:?}"), format!("{all_log:?}"));
        }
    }
    match &expect.error {
        Some(ErrorExpect::Contains(text)) => match &got.error {
            Some(e) if e.contains(text.as_str()) => {}
            other => d.check(
                "error",
                format!("an error containing {text:?}"),
                show_opt(other.as_ref()),
            ),
        },
        // Without an expectation an error is a failure too: it answers 500.
        Some(ErrorExpect::None(_)) | None => {
            d.check("error", "(none)".into(), show_opt(got.error.as_ref()))
        }
    }
    if let Some(ops) = &expect.table_ops {
        d.lines("table op", ops, &got.table_ops);
    }
    if let Some(entries) = &expect.tables_after {
        let mut want: Vec<&EntrySpec> = entries.iter().collect();
        want.sort_by(|a, b| (&a.table, &a.key).cmp(&(&b.table, &b.key)));
        let want: Vec<String> = want
            .iter()
            .map(|e| {
                show_entry(
                    e.table.as_deref().unwrap_or(DEFAULT_TABLE),
                    &e.key,
                    &e.value,
                    e.lifetime,
                )
            })
            .collect();
        let mut have: Vec<(String, String)> = got
            .tables_after
            .iter()
            .map(|e| {
                let key = (e.table.clone(), e.key.clone());
                // Show the lifetime only where the expectation gives one.
                let lifetime = entries
                    .iter()
                    .find(|x| {
                        x.table.as_deref().unwrap_or(DEFAULT_TABLE) == e.table && x.key == e.key
                    })
                    .and_then(|x| x.lifetime)
                    .map(|_| e.remaining_s(got.now_ns));
                (
                    format!("{}\u{0}{}", key.0, key.1),
                    show_entry(&e.table, &e.key, &e.value, lifetime),
                )
            })
            .collect();
        have.sort();
        let have: Vec<String> = have.into_iter().map(|(_, s)| s).collect();
        d.lines("table entry", &want, &have);
    }
    d.0
}
