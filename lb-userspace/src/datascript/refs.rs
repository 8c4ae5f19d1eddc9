//! Load-time checks of the objects a script names with a string literal, as Avi refuses a
//! DataScript at save whose pool, server, group or rate limiter does not exist: the first
//! argument of `avi.pool.select`, `get_servers`, `get_server_status` (and a literal server
//! address after it), `avi.ipgroup.contains`, `avi.stringgroup.*` and
//! `avi.vs.ratelimit.exceed`; and `avi.vs.rate_limit` in a service without a `rate_limit`.
//!
//! Only literals written at the call are checked (`avi.pool.select("web")`); a name computed
//! at run time is a run-time error, as in Avi.

use std::net::{IpAddr, SocketAddr};

use super::lint::{Tok, tokenize_with_columns};
use super::{ScriptError, ScriptSource};
use crate::config::{Config, VirtualServiceConfig, known_names as known};

/// One call found in a script: its avi.* path, position and literal string arguments (None
/// for an argument that is not a lone literal).
struct Call {
    path: String,
    line: usize,
    col: usize,
    args: Vec<Option<(String, usize, usize)>>,
}

/// Every `avi.a.b(...)` call of `text` with its leading literal arguments.
fn calls(text: &str) -> Vec<Call> {
    let toks = tokenize_with_columns(text);
    let mut out = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let is_avi = matches!(&toks[i].0, Tok::Name(n) if n == "avi")
            && !matches!(
                i.checked_sub(1).map(|p| &toks[p].0),
                Some(Tok::Other('.' | ':'))
            );
        if !is_avi {
            i += 1;
            continue;
        }
        let (line, col) = (toks[i].1, toks[i].2);
        let mut path = String::from("avi");
        let mut j = i + 1;
        while let (Some((Tok::Other('.'), ..)), Some((Tok::Name(m), ..))) =
            (toks.get(j), toks.get(j + 1))
        {
            path.push('.');
            path.push_str(m);
            j += 2;
        }
        let mut args = Vec::new();
        if matches!(toks.get(j), Some((Tok::Other('('), ..))) {
            j += 1;
            // Leading arguments, each a lone literal or not; stops at the first non-literal.
            loop {
                match (toks.get(j), toks.get(j + 1)) {
                    (Some((Tok::Str(s), l, c)), Some((Tok::Other(end @ (',' | ')')), ..))) => {
                        args.push(Some((s.clone(), *l, *c)));
                        j += 2;
                        if *end == ')' {
                            break;
                        }
                    }
                    _ => {
                        args.push(None);
                        break;
                    }
                }
            }
        }
        out.push(Call {
            path,
            line,
            col,
            args,
        });
        i = j.max(i + 1);
    }
    out
}

/// True when `server` (`ip`, `ip:port`, `[v6]:port`) names one of `addrs`.
fn server_in(addrs: &[SocketAddr], server: &str) -> bool {
    if let Ok(sa) = server.parse::<SocketAddr>() {
        return addrs.contains(&sa);
    }
    match server.trim_matches(['[', ']']).parse::<IpAddr>() {
        Ok(ip) => addrs.iter().any(|a| a.ip() == ip),
        Err(_) => false,
    }
}

/// Every literal object name in the scripts of `vs` that `config` does not have.
pub fn check_references(config: &Config, vs: &VirtualServiceConfig) -> Vec<ScriptError> {
    let mut out = Vec::new();
    for script in &vs.datascripts {
        for call in calls(&script.text) {
            check_call(config, vs, script, &call, &mut out);
        }
    }
    out
}

fn check_call(
    config: &Config,
    vs: &VirtualServiceConfig,
    script: &ScriptSource,
    call: &Call,
    out: &mut Vec<ScriptError>,
) {
    let mut err = |line: usize, col: usize, message: String| {
        out.push(ScriptError {
            file: script.origin_file.clone(),
            line: script.origin_line(line),
            column: Some(col),
            script: script.name.clone(),
            message,
        })
    };
    let first = call.args.first().cloned().flatten();
    let path = call.path.as_str();
    match path {
        "avi.pool.select" | "avi.pool.get_servers" | "avi.pool.get_server_status" => {
            let Some((pool, line, col)) = first else {
                return;
            };
            let Some(p) = config.pool(&pool) else {
                let names = config.pools.iter().map(|p| p.name.as_str());
                err(
                    line,
                    col,
                    format!("{path}: unknown pool `{pool}` ({})", known(names, "pools")),
                );
                return;
            };
            if path != "avi.pool.get_servers"
                && let Some(Some((server, line, col))) = call.args.get(1)
                && !server_in(&p.addrs(), server)
            {
                let addrs: Vec<String> = p.addrs().iter().map(ToString::to_string).collect();
                err(
                    *line,
                    *col,
                    format!(
                        "{path}: server `{server}` is not in pool `{pool}` (its servers: {})",
                        addrs.join(", ")
                    ),
                );
            }
        }
        "avi.ipgroup.contains" => {
            if let Some((name, line, col)) = first
                && !config.groups.ip.contains_key(&name)
            {
                let names = config.groups.ip.keys().map(String::as_str);
                err(
                    line,
                    col,
                    format!(
                        "{path}: unknown ip group `{name}` ({})",
                        known(names, "ip groups")
                    ),
                );
            }
        }
        _ if path.starts_with("avi.stringgroup.") => {
            if let Some((name, line, col)) = first
                && !config.groups.string.contains_key(&name)
            {
                let names = config.groups.string.keys().map(String::as_str);
                err(
                    line,
                    col,
                    format!(
                        "{path}: unknown string group `{name}` ({})",
                        known(names, "string groups")
                    ),
                );
            }
        }
        "avi.vs.ratelimit.exceed" => {
            if let Some((name, line, col)) = first
                && config.rate_limiter(&name).is_none()
            {
                let names = config.rate_limiters.iter().map(|r| r.name.as_str());
                err(
                    line,
                    col,
                    format!(
                        "{path}: unknown rate limiter `{name}` ({})",
                        known(names, "rate limiters")
                    ),
                );
            }
        }
        "avi.vs.rate_limit" if vs.rate_limit.is_none() => err(
            call.line,
            call.col,
            format!(
                "avi.vs.rate_limit needs a rate_limit on virtual service `{}` (rate_limit = {{ limiter = \"...\" }})",
                vs.name
            ),
        ),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const CONFIG: &str = r#"
[[pool]]
name = "web"
servers = ["192.0.2.11:8080", "192.0.2.12:8080"]

[[string_group]]
name = "bots"
entries = ["bot"]

[[ip_group]]
name = "office"
entries = ["192.0.2.0/24"]

[[rate_limiter]]
name = "per-client"
count = 10

[[virtual_service]]
name = "shop"
listen = "198.51.100.10:80"
type = "http"
pool = "web"

[[virtual_service.datascript]]
event = "HTTP_REQ"
script = '''
"#;

    fn problems(script: &str) -> Vec<String> {
        let text = format!("{CONFIG}{script}\n'''\n");
        let config = crate::config::parse(&text, Path::new("latch.toml")).expect("config");
        check_references(&config, &config.virtual_services[0])
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn existing_names_and_computed_names_pass() {
        let ok = r#"avi.pool.select("web", "192.0.2.11", 8080)
avi.pool.select("web", "192.0.2.12:8080")
local up, all = avi.pool.get_servers("web")
local s = avi.pool.get_server_status("web", avi.vs.client_ip())
local pool = "nope"; avi.pool.select(pool)
if avi.ipgroup.contains("office", avi.vs.client_ip()) then end
local v, m = avi.stringgroup.beginswith_CASE("bots", "x")
local e = avi.vs.ratelimit.exceed("per-client", "k")
local n = avi.pool.select("w" .. "eb")"#;
        assert_eq!(problems(ok), Vec::<String>::new());
    }

    #[test]
    fn unknown_literal_names_are_refused_at_their_position() {
        let bad = r#"avi.pool.select("webb")
avi.pool.get_server_status("web", "192.0.2.99")
  if avi.ipgroup.contains('offices', avi.vs.client_ip()) then end
local v = avi.stringgroup.equals("robots", "x")
local e = avi.vs.ratelimit.exceed("per-ip", "k")
avi.vs.rate_limit(avi.RL_CUSTOM_STRING, "k")"#;
        // The script starts on line 27 of the config.
        assert_eq!(
            problems(bad),
            [
                "latch.toml:27:17: avi.pool.select: unknown pool `webb` (known pools: `web`)",
                "latch.toml:28:35: avi.pool.get_server_status: server `192.0.2.99` is not in pool `web` (its servers: 192.0.2.11:8080, 192.0.2.12:8080)",
                "latch.toml:29:27: avi.ipgroup.contains: unknown ip group `offices` (known ip groups: `office`)",
                "latch.toml:30:34: avi.stringgroup.equals: unknown string group `robots` (known string groups: `bots`)",
                "latch.toml:31:35: avi.vs.ratelimit.exceed: unknown rate limiter `per-ip` (known rate limiters: `per-client`)",
                "latch.toml:32:1: avi.vs.rate_limit needs a rate_limit on virtual service `shop` (rate_limit = { limiter = \"...\" })",
            ]
        );
    }
}
