//! Load-time checks of the avi.* names a script writes, as Avi checks a DataScript at save:
//! a name that does not exist (with the nearest one that does), and a function used in an
//! event where Avi does not allow it. Without them such a script compiles and then fails every
//! request that reaches the call with a 500.
//!
//! The valid names are read from the API itself (the namespace installers of [`super::api`]
//! run once in a scratch VM), so a function added there is known here without a second list.
//! Only names written literally (`avi.http.get_cookie`) are checked; `avi.http[name]` is a
//! runtime matter.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use mlua::{Lua, StdLib, Table, Value};

use super::api::RESP_FAILED_ALLOWED;
use super::lint::{Tok, tokenize_with_columns};
use super::vm::VmShared;
use super::{DsLimits, Event, ScriptEnv, ScriptError, ScriptSet, ScriptSource};
use crate::proxy::StaticPoolView;
use crate::tables::{MonotonicClock, NoMirror, TableLimits, VsTables};

/// What a dotted avi name is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A table whose members are the API (`avi.http`): a member that is not there is an error.
    Namespace,
    /// A table scripts fill themselves (`avi.vs.reqvar`): any member is fine.
    Open,
    /// A function or constant.
    Leaf,
}

/// Tables reached through a metatable rather than stored in the namespace, which the walk of
/// the installed tables cannot see.
const OPEN_TABLES: [&str; 1] = ["avi.vs.reqvar"];

/// The events where the request can still change: it has not gone to the server yet.
const REQUEST_EVENTS: &[Event] = &[Event::HttpReq, Event::HttpReqData];
/// The events that know the chosen server.
const SERVER_EVENTS: &[Event] = &[Event::HttpLbDone, Event::HttpResp, Event::HttpRespData];
/// The events with a server response.
const RESPONSE_EVENTS: &[Event] = &[Event::HttpResp, Event::HttpRespData];

/// Functions Avi allows in some events only (DATASCRIPT-API.md, section (a), each function's
/// "evt" column and the events list): a request rewrite means nothing once the request has
/// gone, the chosen server is not known before, a body only in its data event. In
/// HTTP_RESP_FAILED only the avi.http functions of [`RESP_FAILED_ALLOWED`] may run.
const EVENT_ONLY: [(&str, &[Event]); 15] = [
    (
        "avi.http.redirect",
        &[Event::HttpReq, Event::HttpReqData, Event::HttpRespFailed],
    ),
    ("avi.http.set_path", REQUEST_EVENTS),
    ("avi.http.set_uri", REQUEST_EVENTS),
    ("avi.http.set_query", REQUEST_EVENTS),
    ("avi.http.set_server_timeout", REQUEST_EVENTS),
    ("avi.pool.select", REQUEST_EVENTS),
    ("avi.pool.chash", REQUEST_EVENTS),
    ("avi.vs.rate_limit", REQUEST_EVENTS),
    ("avi.vs.ratelimit.exceed", REQUEST_EVENTS),
    ("avi.http.status", RESPONSE_EVENTS),
    ("avi.pool.server_ip", SERVER_EVENTS),
    ("avi.pool.get_server_info", SERVER_EVENTS),
    ("avi.http.get_req_body", &[Event::HttpReqData]),
    ("avi.http.get_response_body", &[Event::HttpRespData]),
    ("avi.http.set_response_body_buffer_size", &[Event::HttpResp]),
];

/// Why `path` may not be called in `event`, if it may not.
fn event_rule(path: &str, event: Event) -> Option<String> {
    if event == Event::HttpRespFailed
        && let Some(func) = path.strip_prefix("avi.http.")
        && !RESP_FAILED_ALLOWED.contains(&func)
    {
        return Some(format!(
            "{path} is not allowed in HTTP_RESP_FAILED scripts (only avi.http.{} are)",
            RESP_FAILED_ALLOWED.join(", avi.http.")
        ));
    }
    let (_, only) = EVENT_ONLY.iter().find(|(name, _)| *name == path)?;
    if only.contains(&event) {
        return None;
    }
    let events: Vec<String> = only.iter().map(ToString::to_string).collect();
    Some(format!(
        "{path} is not allowed in {event} scripts (Avi allows it in {} only)",
        events.join(", ")
    ))
}

/// Every avi.* name the API installs, with its kind.
fn api_names() -> &'static BTreeMap<String, Kind> {
    static NAMES: OnceLock<BTreeMap<String, Kind>> = OnceLock::new();
    NAMES.get_or_init(|| {
        let mut names = BTreeMap::new();
        // Installing needs a Lua state and a VM's shared state; nothing is ever called. If it
        // failed, every VM would fail the same way, so an empty list reports nothing new.
        if let Err(e) = scratch_install(&mut names) {
            tracing::error!(error = %e, "cannot list the avi.* names for script checks");
        }
        for open in OPEN_TABLES {
            names.insert(open.to_string(), Kind::Open);
        }
        names
    })
}

fn scratch_install(names: &mut BTreeMap<String, Kind>) -> mlua::Result<()> {
    // The installers' Lua parts use the standard libraries a VM has.
    let libs = StdLib::TABLE | StdLib::STRING | StdLib::MATH | StdLib::OS | StdLib::BIT;
    let lua = Lua::new_with(libs, mlua::LuaOptions::default())?;
    let set = ScriptSet::compile("", Vec::new())
        .map_err(|_| mlua::Error::runtime("an empty script set does not compile"))?;
    let env = ScriptEnv {
        tables: Arc::new(VsTables::new(
            "",
            TableLimits::default(),
            Arc::new(NoMirror),
        )),
        pools: Arc::new(StaticPoolView::new(&[])),
        clock: Arc::new(MonotonicClock),
        limits: DsLimits::default(),
        observer: None,
        geo: None,
        groups: Arc::default(),
        rate_limits: Arc::default(),
    };
    let shared = Arc::new(VmShared::new(&Arc::new(env), &Arc::new(set)));
    let avi = super::api::install(&lua, &shared)?;
    walk(&avi, "avi", 0, names);
    Ok(())
}

fn walk(table: &Table, prefix: &str, depth: usize, out: &mut BTreeMap<String, Kind>) {
    let mut members = 0;
    for (key, value) in table.pairs::<Value, Value>().flatten() {
        let Value::String(key) = key else { continue };
        let name = format!("{prefix}.{}", key.to_string_lossy());
        members += 1;
        match value {
            Value::Table(t) if depth < 3 => walk(&t, &name, depth + 1, out),
            _ => {
                out.insert(name, Kind::Leaf);
            }
        }
    }
    let kind = if members == 0 {
        Kind::Open
    } else {
        Kind::Namespace
    };
    out.insert(prefix.to_string(), kind);
}

/// The closest valid name in the same namespace, if one is close enough to be a likely typo.
fn nearest(namespace: &str, wrong: &str) -> Option<&'static str> {
    let names = api_names();
    let prefix = format!("{namespace}.");
    names
        .keys()
        .filter_map(|n| {
            let member = n.strip_prefix(&prefix)?;
            (!member.contains('.')).then_some((n.as_str(), member))
        })
        .map(|(full, member)| (full, strsim::jaro_winkler(member, wrong)))
        .filter(|(_, score)| *score >= 0.8)
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(full, _)| full)
}

/// Every problem with the literal avi.* names of `script`.
pub(crate) fn check(script: &ScriptSource) -> Vec<ScriptError> {
    let names = api_names();
    let toks = tokenize_with_columns(&script.text);
    let mut out = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let starts_path = matches!(&toks[i].0, Tok::Name(n) if n == "avi")
            // `x.avi` or `x:avi` is some other table's field.
            && !matches!(i.checked_sub(1).map(|p| &toks[p].0), Some(Tok::Other('.' | ':')));
        if !starts_path {
            i += 1;
            continue;
        }
        let mut path = String::from("avi");
        let mut j = i + 1;
        while let (Some((Tok::Other('.'), ..)), Some((Tok::Name(member), line, col))) =
            (toks.get(j), toks.get(j + 1))
        {
            let parent = path.clone();
            path = format!("{parent}.{member}");
            j += 2;
            match names.get(&parent) {
                Some(Kind::Namespace) if !names.contains_key(&path) => {
                    let hint = nearest(&parent, member)
                        .map(|n| format!("; did you mean {n}?"))
                        .unwrap_or_default();
                    out.push(located(
                        script,
                        *line,
                        *col,
                        format!("{path} does not exist{hint}"),
                    ));
                    break;
                }
                Some(Kind::Namespace) => {}
                // Members of an open table or of a function's result are not API names.
                _ => break,
            }
        }
        if let Some(message) = event_rule(&path, script.event)
            && let Some((_, line, col)) = toks.get(i)
        {
            out.push(located(script, *line, *col, message));
        }
        i = j.max(i + 1);
    }
    out
}

fn located(script: &ScriptSource, line: usize, col: usize, message: String) -> ScriptError {
    ScriptError {
        file: script.origin_file.clone(),
        line: script.origin_line(line),
        column: Some(col),
        script: script.name.clone(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn script(event: Event, text: &str) -> ScriptSource {
        ScriptSource {
            event,
            name: "s".into(),
            text: text.into(),
            origin_file: PathBuf::from("vs.toml"),
            first_line: 10,
        }
    }

    fn messages(event: Event, text: &str) -> Vec<String> {
        check(&script(event, text))
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn the_names_come_from_the_installed_api() {
        let names = api_names();
        assert_eq!(names.get("avi.http"), Some(&Kind::Namespace));
        assert_eq!(names.get("avi.http.get_cookie"), Some(&Kind::Leaf));
        assert_eq!(names.get("avi.vs.table_insert"), Some(&Kind::Leaf));
        assert_eq!(names.get("avi.HTTP_REQUEST"), Some(&Kind::Leaf));
        assert_eq!(names.get("avi.vs.reqvar"), Some(&Kind::Open));
        assert_eq!(names.get("avi.vs.ratelimit.exceed"), Some(&Kind::Leaf));
        assert_eq!(names.get("avi.ipgroup.contains"), Some(&Kind::Leaf));
        assert_eq!(
            names.get("avi.stringgroup.endswith_CASE"),
            Some(&Kind::Leaf)
        );
    }

    #[test]
    fn a_misspelt_function_is_refused_with_its_position_and_the_nearest_name() {
        let text = "local c = avi.http.get_cookie('a')\nif c then avi.http.get_cokie('b') end";
        assert_eq!(
            messages(Event::HttpReq, text),
            ["vs.toml:11:20: avi.http.get_cokie does not exist; did you mean avi.http.get_cookie?"]
        );
    }

    #[test]
    fn an_unknown_namespace_is_refused() {
        assert_eq!(
            messages(Event::HttpReq, "avi.htp.method()"),
            ["vs.toml:10:5: avi.htp does not exist; did you mean avi.http?"]
        );
        assert_eq!(
            messages(Event::HttpReq, "avi.nothing_like_it()"),
            ["vs.toml:10:5: avi.nothing_like_it does not exist"]
        );
    }

    #[test]
    fn valid_names_open_tables_and_other_tables_pass() {
        let text = "avi.vs.reqvar.anything = avi.vs.client_ip()\n\
                    local t = {avi = 1}; local x = t.avi\n\
                    -- avi.http.nonsense in a comment\n\
                    local s = 'avi.http.nonsense in a string'\n\
                    avi.vs.log(avi.HTTP_REQUEST)";
        assert_eq!(messages(Event::HttpReq, text), Vec::<String>::new());
    }

    #[test]
    fn event_only_functions_are_refused_in_the_other_event() {
        assert_eq!(
            messages(Event::HttpResp, "\n  avi.http.redirect('/x')"),
            [
                "vs.toml:11:3: avi.http.redirect is not allowed in HTTP_RESP scripts (Avi allows it in HTTP_REQ, HTTP_REQ_DATA, HTTP_RESP_FAILED only)"
            ]
        );
        assert_eq!(
            messages(Event::HttpReq, "local ip = avi.pool.server_ip()"),
            [
                "vs.toml:10:12: avi.pool.server_ip is not allowed in HTTP_REQ scripts (Avi allows it in HTTP_LB_DONE, HTTP_RESP, HTTP_RESP_DATA only)"
            ]
        );
        assert_eq!(
            messages(Event::HttpReq, "avi.http.redirect('/x')"),
            Vec::<String>::new()
        );
    }

    #[test]
    fn the_new_events_have_their_own_rules() {
        let none = Vec::<String>::new();
        assert_eq!(
            messages(Event::HttpReqData, "local b = avi.http.get_req_body(4)"),
            none
        );
        assert_eq!(
            messages(Event::HttpReq, "local b = avi.http.get_req_body()"),
            [
                "vs.toml:10:11: avi.http.get_req_body is not allowed in HTTP_REQ scripts (Avi allows it in HTTP_REQ_DATA only)"
            ]
        );
        assert_eq!(
            messages(
                Event::HttpRespData,
                "local b = avi.http.get_response_body(1, 0)"
            ),
            none
        );
        assert_eq!(
            messages(
                Event::HttpResp,
                "avi.http.set_response_body_buffer_size(64)"
            ),
            none
        );
        assert_eq!(
            messages(
                Event::HttpLbDone,
                "local ip, port = avi.pool.get_server_info()"
            ),
            none
        );
        assert_eq!(
            messages(Event::HttpLbDone, "avi.pool.select('p')"),
            [
                "vs.toml:10:1: avi.pool.select is not allowed in HTTP_LB_DONE scripts (Avi allows it in HTTP_REQ, HTTP_REQ_DATA only)"
            ]
        );
        let failed = "if avi.http.internal_status() == '504' then\n\
                      avi.http.response(503, {}, 'try later')\n\
                      else avi.http.redirect('/sorry') end\n\
                      avi.vs.log('failed')";
        assert_eq!(messages(Event::HttpRespFailed, failed), none);
        assert_eq!(
            messages(Event::HttpRespFailed, "local h = avi.http.get_header('a')"),
            [
                "vs.toml:10:11: avi.http.get_header is not allowed in HTTP_RESP_FAILED scripts (only avi.http.response, avi.http.redirect, avi.http.internal_status are)"
            ]
        );
    }
}
