//! avi.vs.rate_limit and avi.vs.ratelimit.exceed, over the service's [`RateLimits`]
//! (`crate::datascript::RateLimits`: the buckets, shared by every VM of the service).
//!
//! - `avi.vs.ratelimit.exceed(name, key[, consume=1])`: true when `key` has exceeded the
//!   `[[rate_limiter]]` `name` (then nothing is taken); consume 0 only asks.
//! - `avi.vs.rate_limit(avi.RL_CUSTOM_STRING, key[, defer])`: counts `key` with the limiter
//!   of the service's `rate_limit` and returns `exceeded, action` (an avi.RL_ACTION_*). When
//!   exceeded and not deferred, the action happens at once and ends the event:
//!   `local_response` answers 429, `close_connection` answers 429 and closes the connection.

use std::sync::Arc;

use mlua::{Lua, Table, Value};

use super::args::{lua_type, name_arg, number};
use super::http::{build_response, flag, terminate};
use super::{Args, LResult, rt, txn, with_ctx};
use crate::config::RateLimitAction;
use crate::datascript::vm::VmShared;

/// avi.RL_CUSTOM_STRING (see `constants.rs`).
const RL_CUSTOM_STRING: f64 = 1.0;

/// The avi.RL_ACTION_* number of an action.
fn action_number(a: RateLimitAction) -> i64 {
    match a {
        RateLimitAction::None => 0,
        RateLimitAction::CloseConnection => 1,
        RateLimitAction::LocalResponse => 2,
    }
}

fn count(sh: &VmShared, func: &str, limiter: &str, key: &[u8], consume: f64) -> LResult<bool> {
    sh.env()
        .rate_limits
        .exceed(limiter, key, consume, sh.env().clock.now_ns())
        .map_err(|e| rt(format!("{func}: {e}")))
}

/// A key argument: a string or a number.
fn key_arg(v: Option<&Value>, func: &str) -> LResult<Vec<u8>> {
    match v {
        Some(Value::String(s)) => Ok(s.as_bytes().to_vec()),
        Some(v @ (Value::Integer(_) | Value::Number(_))) => {
            Ok(name_arg(Some(v), func, 2)?.into_bytes())
        }
        other => Err(rt(format!(
            "bad argument #2 to '{func}' (string expected, got {})",
            other.map_or("no value", lua_type)
        ))),
    }
}

/// Adds `rate_limit` and `ratelimit.exceed` to the avi.vs table.
pub(super) fn install(lua: &Lua, vs: &Table, sh: &Arc<VmShared>) -> LResult<()> {
    let s = Arc::clone(sh);
    let exceed = lua.create_function(move |_, a: Args| {
        let func = "exceed";
        let name = name_arg(a.first(), func, 1)?;
        let key = key_arg(a.get(1), func)?;
        let consume = match a.get(2) {
            None | Some(Value::Nil) => 1.0,
            Some(v) => number(v)
                .filter(|n| n.is_finite() && *n >= 0.0)
                .ok_or_else(|| {
                    rt(format!(
                        "bad argument #3 to '{func}' (a number >= 0 expected, got {})",
                        lua_type(v)
                    ))
                })?,
        };
        count(&s, "avi.vs.ratelimit.exceed", &name, &key, consume)
    })?;
    let ratelimit = lua.create_table()?;
    ratelimit.raw_set("exceed", exceed)?;
    vs.raw_set("ratelimit", ratelimit)?;

    let s = Arc::clone(sh);
    let rate_limit = lua.create_function(move |_, a: Args| {
        let func = "rate_limit";
        if a.first().and_then(number) != Some(RL_CUSTOM_STRING) {
            return Err(rt(format!(
                "bad argument #1 to '{func}' (avi.RL_CUSTOM_STRING expected)"
            )));
        }
        let key = key_arg(a.get(1), func)?;
        let defer = flag(a.get(2)).unwrap_or(false);
        let profile = s.env().rate_limits.profile().cloned().ok_or_else(|| {
            rt(format!(
                "avi.vs.rate_limit: virtual service '{}' has no rate_limit (rate_limit = {{ limiter = \"...\" }})",
                s.set.vs_name()
            ))
        })?;
        let exceeded = count(&s, "avi.vs.rate_limit", &profile.limiter, &key, 1.0)?;
        if exceeded && !defer {
            match profile.action {
                RateLimitAction::None => {}
                RateLimitAction::LocalResponse => {
                    return terminate(&s, build_response(429, None, None)?).map(|()| (true, 0));
                }
                RateLimitAction::CloseConnection => {
                    with_ctx(&s, |ctx| {
                        txn(ctx)?.close = true;
                        Ok(())
                    })?;
                    return terminate(&s, build_response(429, None, None)?).map(|()| (true, 0));
                }
            }
        }
        Ok((exceeded, action_number(profile.action)))
    })?;
    vs.raw_set("rate_limit", rate_limit)?;
    Ok(())
}
