//! The CASES.toml schema and its reading, with `file:line:col` errors like the config's.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::config::{ConfigErrors, Diagnostic, ScriptEvent, ScriptSource};

/// One CASES.toml file.
#[derive(Debug)]
pub struct CaseFile {
    /// The file itself.
    pub path: PathBuf,
    /// The latch config the scripts come from, resolved against the file's directory;
    /// `None` uses the built-in config (see [`super::BUILTIN_CONFIG`]).
    pub config: Option<PathBuf>,
    /// The virtual service whose scripts run; `None` when the config has one http service.
    pub virtual_service: Option<String>,
    /// Scripts written in the cases file; when present they replace the service's scripts.
    pub scripts: Vec<ScriptSource>,
    /// The cases, in file order.
    pub cases: Vec<Case>,
}

/// One request through the service's scripts and what should come of it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// Shown in the report.
    pub name: String,
    /// Seconds the clock moves forward before this case (table lifetimes).
    #[serde(default)]
    pub advance: u64,
    /// Servers marked down for this case (`ip:port`, in whichever pool has them).
    #[serde(default)]
    pub down: Vec<SocketAddr>,
    /// The client's request.
    #[serde(default)]
    pub request: RequestSpec,
    /// The server's answer, when the request is forwarded (default: 200, no headers).
    #[serde(default)]
    pub response: ResponseSpec,
    /// Table entries stored before the request.
    #[serde(default)]
    pub table: Vec<EntrySpec>,
    /// What should happen.
    #[serde(default)]
    pub expect: Expect,
}

/// Header values: one string, several (a repeated header), or `false` for "absent" in an
/// expectation.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum HeaderValues {
    /// One value.
    One(String),
    /// The header repeated, in order.
    Many(Vec<String>),
    /// Absent (expectations only).
    Absent(bool),
}

impl HeaderValues {
    /// The values, empty for "absent".
    pub fn values(&self) -> Vec<String> {
        match self {
            HeaderValues::One(v) => vec![v.clone()],
            HeaderValues::Many(v) => v.clone(),
            HeaderValues::Absent(_) => Vec::new(),
        }
    }
}

/// A cookie value, or `false` for "absent" in an expectation.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum CookieValue {
    /// Present with this value.
    Value(String),
    /// Absent (expectations only).
    Absent(bool),
}

/// The client's request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    /// Method (default GET).
    #[serde(default = "default_method")]
    pub method: String,
    /// Request target as the client sends it (default `/`).
    #[serde(default = "default_uri")]
    pub uri: String,
    /// Headers, in order of the table (a list value repeats the header).
    #[serde(default, deserialize_with = "pairs")]
    pub headers: Vec<(String, HeaderValues)>,
    /// Cookies, sent in one Cookie header after `headers`.
    #[serde(default)]
    pub cookies: BTreeMap<String, String>,
    /// The client's address.
    #[serde(default = "default_client")]
    pub client: SocketAddr,
    /// Request body (its length is sent as Content-Length).
    #[serde(default)]
    pub body: Option<String>,
    /// The client connection is TLS (avi.ssl.*, avi.http.secure); absent: plain HTTP.
    #[serde(default)]
    pub tls: Option<TlsSpec>,
}

/// `tls = { version = "1.3", cipher = "...", sni = "shop.example.com" }` of a request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSpec {
    /// "1.2" or "1.3" (default 1.3).
    #[serde(default)]
    pub version: Option<String>,
    /// The suite's rustls name, e.g. `TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256` (default
    /// `TLS13_AES_128_GCM_SHA256` for 1.3, `TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256` for 1.2).
    #[serde(default)]
    pub cipher: Option<String>,
    /// The SNI name the client sent.
    #[serde(default)]
    pub sni: Option<String>,
}

impl TlsSpec {
    /// The connection facts the scripts see, or why the spec is wrong.
    pub fn info(&self) -> Result<crate::proxy::TlsInfo, String> {
        let (protocol, cipher) = match self.version.as_deref().unwrap_or("1.3") {
            "1.3" => ("TLSv1.3", "TLS13_AES_128_GCM_SHA256"),
            "1.2" => ("TLSv1.2", "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"),
            other => {
                return Err(format!(
                    "tls version {other:?}: expected \"1.2\" or \"1.3\""
                ));
            }
        };
        let cipher = self.cipher.as_deref().unwrap_or(cipher);
        Ok(crate::proxy::TlsInfo::new(
            protocol,
            cipher,
            self.sni.clone(),
            None,
        ))
    }
}

impl Default for RequestSpec {
    fn default() -> Self {
        Self {
            method: default_method(),
            uri: default_uri(),
            headers: Vec::new(),
            cookies: BTreeMap::new(),
            client: default_client(),
            body: None,
            tls: None,
        }
    }
}

fn default_method() -> String {
    "GET".to_string()
}

fn default_uri() -> String {
    "/".to_string()
}

fn default_client() -> SocketAddr {
    SocketAddr::from(([203, 0, 113, 7], 40000))
}

/// The server's answer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseSpec {
    /// Status (default 200).
    #[serde(default = "default_status")]
    pub status: u16,
    /// Headers, as for the request.
    #[serde(default, deserialize_with = "pairs")]
    pub headers: Vec<(String, HeaderValues)>,
    /// Response body (what HTTP_RESP_DATA scripts read).
    #[serde(default)]
    pub body: Option<String>,
    /// The server fails instead of answering: HTTP_RESP_FAILED runs and, unless a script
    /// answers, the client gets the proxy's 502 (504 for `timeout`).
    #[serde(default)]
    pub failure: Option<ServerFailure>,
}

impl Default for ResponseSpec {
    fn default() -> Self {
        Self {
            status: default_status(),
            headers: Vec::new(),
            body: None,
            failure: None,
        }
    }
}

/// How a server fails (`response.failure`), as the proxy tells the failures apart.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ServerFailure {
    /// The connection to the server failed (502).
    Connect,
    /// No response within the response timeout (504).
    Timeout,
    /// The server reset the connection or sent no valid response (502).
    Reset,
}

impl ServerFailure {
    /// The status the proxy answers with, as `proxy/handler.rs` does.
    pub fn status(self) -> u16 {
        match self {
            ServerFailure::Timeout => 504,
            ServerFailure::Connect | ServerFailure::Reset => 502,
        }
    }

    /// The proxy's reason, as the report shows it.
    pub fn reason(self) -> &'static str {
        match self {
            ServerFailure::Connect => "connect failed",
            ServerFailure::Timeout => "response timeout",
            ServerFailure::Reset => "bad or reset response",
        }
    }
}

fn default_status() -> u16 {
    200
}

/// A table entry (before the case, or expected after it).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EntrySpec {
    /// Named table; the default table when absent.
    #[serde(default)]
    pub table: Option<String>,
    /// Key.
    pub key: String,
    /// Value.
    pub value: String,
    /// Lifetime in seconds (before: default 300; after: checked only when given).
    #[serde(default)]
    pub lifetime: Option<u64>,
}

/// What a case expects; every field left out is not checked.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The pool the request went to.
    pub pool: Option<String>,
    /// The server the request went to (`ip:port`), or `false` for "not forwarded".
    pub server: Option<ServerExpect>,
    /// Method of the forwarded request.
    pub method: Option<String>,
    /// Target of the forwarded request (path and query).
    pub uri: Option<String>,
    /// Headers of the forwarded request (names case-insensitive).
    #[serde(default, deserialize_with = "pairs")]
    pub request_headers: Vec<(String, HeaderValues)>,
    /// Cookies of the forwarded request.
    #[serde(default)]
    pub request_cookies: BTreeMap<String, CookieValue>,
    /// Status the client gets.
    pub status: Option<u16>,
    /// True when a script answered (avi.http.response, redirect, or a script error's 500);
    /// false when the client gets the server's response.
    pub local: Option<bool>,
    /// Headers the client gets.
    #[serde(default, deserialize_with = "pairs")]
    pub response_headers: Vec<(String, HeaderValues)>,
    /// Set-Cookie values the client gets, by cookie name (the cookie's value only).
    #[serde(default)]
    pub response_cookies: BTreeMap<String, CookieValue>,
    /// Body of a local response.
    pub body: Option<String>,
    /// Whether a script asked to close the client connection (avi.http.close_conn).
    pub close_connection: Option<bool>,
    /// The user id a script set for the access log (avi.http.set_userid).
    pub user_id: Option<String>,
    /// The server timeout a script set for this request, in ms (avi.http.set_server_timeout).
    pub server_timeout_ms: Option<u64>,
    /// Every line the scripts logged with avi.vs.log, in order.
    pub log: Option<Vec<String>>,
    /// Text that must appear in the log.
    #[serde(default)]
    pub log_contains: Vec<String>,
    /// A script error: the text it must contain (e.g. `"cases.toml:12:"` or a message), or
    /// `false` for "no error". Without it, an error fails the case.
    pub error: Option<ErrorExpect>,
    /// Every table write of the case, in order, as [`super::run::TableOp`] shows them.
    pub table_ops: Option<Vec<String>>,
    /// Every live table entry after the case (all tables).
    pub tables_after: Option<Vec<EntrySpec>>,
}

/// `server = "ip:port"` or `server = false`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum ServerExpect {
    /// Forwarded to this server.
    Addr(SocketAddr),
    /// Not forwarded (`false`).
    None(bool),
}

/// `error = "text"` or `error = false`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum ErrorExpect {
    /// An error containing this text.
    Contains(String),
    /// No error (`false`).
    None(bool),
}

/// A TOML table as its `(key, value)` pairs, in the order the file writes them.
fn pairs<'de, D, V>(d: D) -> Result<Vec<(String, V)>, D::Error>
where
    D: serde::Deserializer<'de>,
    V: Deserialize<'de>,
{
    struct Pairs<V>(std::marker::PhantomData<V>);
    impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for Pairs<V> {
        type Value = Vec<(String, V)>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a table of header names")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(pair) = map.next_entry::<String, V>()? {
                out.push(pair);
            }
            Ok(out)
        }
    }
    d.deserialize_map(Pairs(std::marker::PhantomData))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    config: Option<String>,
    virtual_service: Option<String>,
    #[serde(default)]
    script: Vec<RawScript>,
    #[serde(default)]
    case: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScript {
    event: ScriptEvent,
    script: Option<Spanned<String>>,
    file: Option<String>,
}

/// Reads and checks the cases file at `path`.
pub fn load(path: &Path) -> Result<CaseFile, ConfigErrors> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors::whole_file(path, format!("cannot read cases file: {e}")))?;
    parse(&text, path)
}

/// Parses cases `text` as if read from `path`.
pub fn parse(text: &str, path: &Path) -> Result<CaseFile, ConfigErrors> {
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let (line, col) = line_col(text, e.span().map_or(0, |s| s.start));
        ConfigErrors {
            diagnostics: vec![Diagnostic {
                file: path.to_path_buf(),
                line,
                col,
                message: e.message().trim_end().to_string(),
            }],
        }
    })?;
    let base = path.parent().unwrap_or(Path::new("")).to_path_buf();
    let mut scripts = Vec::new();
    for (i, s) in raw.script.into_iter().enumerate() {
        let name = format!("script#{}", i + 1);
        match (s.script, s.file) {
            (Some(body), None) => {
                let start = body.span().start;
                let first_line = string_first_line(text, start);
                scripts.push(ScriptSource {
                    event: s.event,
                    name,
                    text: body.into_inner(),
                    origin_file: path.to_path_buf(),
                    first_line,
                });
            }
            (None, Some(file)) => {
                let file = base.join(file);
                let body = std::fs::read_to_string(&file).map_err(|e| {
                    ConfigErrors::whole_file(path, format!("cannot read {}: {e}", file.display()))
                })?;
                scripts.push(ScriptSource {
                    event: s.event,
                    name: file.display().to_string(),
                    text: body,
                    origin_file: file,
                    first_line: 1,
                });
            }
            _ => {
                return Err(ConfigErrors::whole_file(
                    path,
                    format!(
                        "[[script]] number {} needs either `script` or `file`",
                        i + 1
                    ),
                ));
            }
        }
    }
    if raw.case.is_empty() {
        return Err(ConfigErrors::whole_file(path, "no [[case]] in the file"));
    }
    Ok(CaseFile {
        path: path.to_path_buf(),
        config: raw.config.map(|c| base.join(c)),
        virtual_service: raw.virtual_service,
        scripts,
        cases: raw.case,
    })
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, col)
}

/// Line on which a string value starting at `offset` has its first character: TOML drops a
/// newline right after an opening `'''` or `"""`.
fn string_first_line(text: &str, offset: usize) -> usize {
    let (line, _) = line_col(text, offset);
    let rest = text.get(offset..).unwrap_or("");
    match rest
        .strip_prefix("'''")
        .or_else(|| rest.strip_prefix("\"\"\""))
    {
        Some(r) if r.starts_with('\n') || r.starts_with("\r\n") => line + 1,
        _ => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_field_is_reported_at_its_line_and_column() {
        let text = "[[case]]\nname = \"x\"\n[case.expect]\nstatus = \"two hundred\"\n";
        let err = parse(text, Path::new("c.toml")).expect_err("bad status");
        let shown = err.to_string();
        assert!(shown.starts_with("c.toml:4:10: "), "{shown}");
    }

    #[test]
    fn an_unknown_key_is_refused() {
        let text = "[[case]]\nname = \"x\"\nexpekt = 1\n";
        let err = parse(text, Path::new("c.toml")).expect_err("unknown key");
        assert!(err.to_string().starts_with("c.toml:3:1: "), "{err}");
    }

    #[test]
    fn inline_scripts_keep_their_lines_and_defaults_fill_the_request() {
        let text = "[[script]]\nevent = \"HTTP_REQ\"\nscript = '''\navi.vs.log(1)\n'''\n[[case]]\nname = \"x\"\n";
        let f = parse(text, Path::new("c.toml")).expect("parses");
        assert_eq!(f.scripts.len(), 1);
        assert_eq!(f.scripts[0].first_line, 4);
        assert_eq!(f.cases[0].request.method, "GET");
        assert_eq!(f.cases[0].request.uri, "/");
        assert_eq!(f.cases[0].response.status, 200);
    }

    #[test]
    fn a_file_without_cases_is_refused() {
        assert!(parse("config = \"x.toml\"\n", Path::new("c.toml")).is_err());
    }
}
