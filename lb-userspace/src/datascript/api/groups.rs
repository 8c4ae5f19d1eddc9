//! avi.ipgroup and avi.stringgroup: the `[[ip_group]]`s and `[[string_group]]`s of the config
//! (matching itself is [`crate::config::StringGroup`] and [`crate::config::IpGroup`]).
//!
//! Return values where Avi's pages disagree (README, "Groups and rate limiters"):
//! `avi.stringgroup.*` returns `(value, matched)`. For a key-value entry `value` is its mapped
//! value; for a plain entry it is the matching key itself, so the documented single-result
//! form `if avi.stringgroup.beginswith(g, path) then` works for plain groups too. No match
//! gives `nil, false`. A nil string (an absent header) matches nothing.

use std::net::IpAddr;
use std::sync::Arc;

use mlua::{Lua, Table, Value};

use super::args::{lua_type, name_arg};
use super::{Args, LResult, Namespace, rt};
use crate::config::{StringMatch, known_names};
use crate::datascript::vm::VmShared;

pub(super) const IPGROUP: Namespace = Namespace {
    name: "ipgroup",
    install: install_ipgroup,
    constants: &[],
};

pub(super) const STRINGGROUP: Namespace = Namespace {
    name: "stringgroup",
    install: install_stringgroup,
    constants: &[],
};

/// The bytes of a string or number argument; nil is `None`.
fn subject(v: Option<&Value>, func: &str) -> LResult<Option<Vec<u8>>> {
    match v {
        None | Some(Value::Nil) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_bytes().to_vec())),
        Some(Value::Integer(i)) => Ok(Some(i.to_string().into_bytes())),
        Some(Value::Number(n)) => Ok(Some(super::args::number_string(*n).into_bytes())),
        Some(other) => Err(rt(format!(
            "bad argument #2 to '{func}' (string expected, got {})",
            lua_type(other)
        ))),
    }
}

fn install_ipgroup(lua: &Lua, sh: &Arc<VmShared>) -> LResult<Table> {
    let t = lua.create_table()?;
    let s = Arc::clone(sh);
    t.raw_set(
        "contains",
        lua.create_function(move |_, a: Args| {
            let name = name_arg(a.first(), "contains", 1)?;
            let groups = &s.env().groups;
            let group = groups.ip.get(&name).ok_or_else(|| {
                rt(format!(
                    "avi.ipgroup.contains: unknown ip group '{name}' ({})",
                    known_names(groups.ip.keys().map(String::as_str), "ip groups")
                ))
            })?;
            // An address that is not one (nil, a bad header) is in no group.
            let ip = subject(a.get(1), "contains")?
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|t| t.trim().parse::<IpAddr>().ok());
            Ok(ip.is_some_and(|ip| group.contains(ip)))
        })?,
    )?;
    Ok(t)
}

const MATCHERS: [(&str, StringMatch); 4] = [
    ("equals", StringMatch::Equals),
    ("beginswith", StringMatch::BeginsWith),
    ("endswith", StringMatch::EndsWith),
    ("contains", StringMatch::Contains),
];

fn install_stringgroup(lua: &Lua, sh: &Arc<VmShared>) -> LResult<Table> {
    let t = lua.create_table()?;
    for (name, how) in MATCHERS {
        for case_sensitive in [false, true] {
            let func = if case_sensitive {
                format!("{name}_CASE")
            } else {
                name.to_string()
            };
            let s = Arc::clone(sh);
            let f = func.clone();
            t.raw_set(
                func,
                lua.create_function(move |l, a: Args| {
                    let group_name = name_arg(a.first(), &f, 1)?;
                    let groups = &s.env().groups;
                    let group = groups.string.get(&group_name).ok_or_else(|| {
                        rt(format!(
                            "avi.stringgroup.{f}: unknown string group '{group_name}' ({})",
                            known_names(groups.string.keys().map(String::as_str), "string groups")
                        ))
                    })?;
                    let found = subject(a.get(1), &f)?
                        .and_then(|text| group.find(how, case_sensitive, &text));
                    match found {
                        Some(e) => {
                            let value = e.value.as_deref().unwrap_or(&e.key);
                            Ok((Value::String(l.create_string(value)?), true))
                        }
                        None => Ok((Value::Nil, false)),
                    }
                })?,
            )?;
        }
    }
    Ok(t)
}
