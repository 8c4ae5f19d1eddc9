//! avi.vs: the virtual service and client of the transaction, the script log, avi.vs.reqvar
//! and the persistence tables (avi.vs.table_*).
//!
//! # What a table write does
//!
//! This is the one place that follows an `avi.vs.table_insert` (and its siblings) from the
//! script to the kernel.
//!
//! 1. **Argument roles** (`vs_tables.lua`, by argument count and Lua type; only a Lua number
//!    stands in a lifetime position):
//!    `table_insert(key, value)`, `(key, value, lifetime)`, `(table, key, value)`,
//!    `(table, key, value, lifetime)`; `table_lookup` and `table_refresh` take
//!    `([table,] key [, lifetime_exten])`; `table_remove` takes `([table,] key)`. The table
//!    defaults to [`DEFAULT_TABLE`], the lifetime (and the lookup/refresh extension) to
//!    [`DEFAULT_LIFETIME_S`]. Keys and values are strings or numbers, stored as their string
//!    form. A lifetime must be a number of seconds, at least 1 for an insert and at least 0
//!    for an extension (fractions are cut off); anything else is a Lua error.
//! 2. **The tables** ([`crate::tables::VsTables`], called by the primitives below with the
//!    [`ScriptEnv`](crate::datascript::ScriptEnv) clock): an insert stores a new (or expired)
//!    key, while a live key keeps its value and only has its lifetime reset, capped at the
//!    configured maximum. A refused insert (key or value too long, table full) returns false
//!    to the script and is logged at debug level; it is no Lua error. `table_lookup` and
//!    `table_refresh` extend a live entry by the extension (never beyond the maximum
//!    lifetime); `table_remove` removes it.
//! 3. **Who is told, synchronously on the request thread:**
//!    - The tables' mirror, under the key's shard lock, so one key's changes arrive in order.
//!      In the agent it is the kernel mirror ([`crate::dataplane::KernelMirror`], DS_TABLE)
//!      followed by the fast path (`agent::fastpath::FastPath`). A new entry or a new value
//!      (`Mirror::upsert`; an expired entry replaced in place is first a `Mirror::remove`)
//!      and a removal or expiry (`Mirror::remove`) are written to DS_TABLE at once (one
//!      syscall), so a kill -9 loses none of them. A change of lifetime alone
//!      (`Mirror::extend`, which the tables skip while the expiry moved less than a second
//!      since the last one they sent) is queued and reaches the kernel at the next
//!      `KernelMirror::flush`, which the agent runs ten times a second. Entries whose key or
//!      value is longer than a DS_TABLE slot stay in user space only. The fast path ignores
//!      upserts there and, at once, updates the addresses that carried an entry that leaves.
//!    - The replicator (Redis, with `[replication]`), after the mirror: it only queues the
//!      change (upserts coalesced per key), and never hears of changes another host made.
//!    - The script table observer ([`ScriptTableObserver`](crate::datascript::ScriptTableObserver),
//!      the fast path in the agent), after the tables returned, with the transaction: told of
//!      every successful insert, of every lookup or refresh of a live entry with a non-zero
//!      extension, and of every removal of a live entry by a script. When the entry's value
//!      is a server of the service's fast-path pool and the client is IPv4 (and not in a
//!      `fast_path_exclude` group), the client address carries the key: a new (address, key)
//!      is recorded in DS_TABLE at once, and the address is pinned to that server in PERSIST
//!      while it carries at most `fast_path_max_sessions` keys of that server (unpinned at
//!      once beyond), unless the same pin exists and its expiry moved by less than a second.
//!      Removals it leaves to its mirror side above, which sees every removal, scripted or
//!      not, and pins an address again once it is back within the limit.

use std::sync::Arc;

use mlua::{Function, Lua, Table, Value};

use super::args::{cached_str, lua_str, number_string};
use super::{Args, LResult, Namespace, reg, rt, txn, with_ctx};
use crate::datascript::ScriptEnv;
use crate::datascript::compile::{CHUNK_PREFIX, root_message};
use crate::datascript::vm::{Ctx, VmShared};
use crate::tables::DEFAULT_TABLE;

pub(super) const NAMESPACE: Namespace = Namespace {
    name: "vs",
    install,
    constants: &[],
};

/// Lifetime of an entry inserted without one, and extension of a lookup or refresh without
/// one, in seconds.
const DEFAULT_LIFETIME_S: u64 = 300;

/// Argument roles of avi.vs.table_*, wrapped around the primitives below.
const TABLE_LUA: &str = include_str!("vs_tables.lua");

// ---- logging ---------------------------------------------------------------------------------

pub(crate) fn vs_log(sh: &VmShared, args: &Args) -> LResult<()> {
    let mut line = String::new();
    for (i, a) in args.iter().enumerate() {
        if i > 0 {
            line.push(' ');
        }
        match a {
            Value::String(s) => line.push_str(&s.to_string_lossy()),
            Value::Integer(n) => line.push_str(&n.to_string()),
            Value::Number(n) => line.push_str(&number_string(*n)),
            Value::Boolean(b) => line.push_str(if *b { "true" } else { "false" }),
            Value::Nil => line.push_str("nil"),
            Value::Error(e) => line.push_str(&root_message(e)),
            other => line.push_str(
                &other
                    .to_string()
                    .unwrap_or_else(|_| other.type_name().into()),
            ),
        }
    }
    if line.contains(CHUNK_PREFIX) {
        line = sh.set.locate(&line);
    }
    with_ctx(sh, |ctx| {
        let t = txn(ctx)?;
        tracing::debug!(vs = %t.info.vs_name, "{line}");
        if !t.log.is_empty() {
            t.log.push('\n');
        }
        t.log.push_str(&line);
        Ok(())
    })
}

// ---- tables ----------------------------------------------------------------------------------

fn now(env: &ScriptEnv) -> u64 {
    env.clock.now_ns()
}

fn observe_upsert(sh: &VmShared, env: &ScriptEnv, table: &str, key: &str) -> LResult<()> {
    let Some(obs) = env.observer.as_ref() else {
        return Ok(());
    };
    let Some(entry) = env.tables.get(table, key, now(env)) else {
        return Ok(());
    };
    with_ctx(sh, |ctx| {
        obs.upserted(&txn(ctx)?.info, &entry);
        Ok(())
    })
}

fn lifetime_s(v: f64, func: &str, allow_zero: bool) -> LResult<u64> {
    if !v.is_finite() || v < 0.0 || (!allow_zero && v < 1.0) {
        return Err(rt(format!(
            "{func}: lifetime must be {} seconds, got {}",
            if allow_zero { ">= 0" } else { ">= 1" },
            number_string(v)
        )));
    }
    Ok(v.floor() as u64)
}

/// The table primitives take resolved arguments; the Lua wrappers in `vs_tables.lua` decide
/// which argument is which by count and Lua type, as the contract says. Strings cross the
/// boundary as Rust strings (numbers are turned into strings by Lua itself, integers
/// without ".0"), which is much cheaper than handles to Lua values.
fn table_insert(
    sh: &VmShared,
    table: &str,
    key: &str,
    value: &str,
    lifetime: f64,
) -> LResult<bool> {
    let lifetime = lifetime_s(lifetime, "table_insert", false)?;
    let env = sh.env();
    match env.tables.insert(table, key, value, lifetime, now(&env)) {
        Ok(_) => {
            observe_upsert(sh, &env, table, key)?;
            Ok(true)
        }
        Err(e) => {
            tracing::debug!(vs = %sh.set.vs_name(), table = %table, error = %e, "table_insert refused");
            Ok(false)
        }
    }
}

fn table_lookup(
    lua: &Lua,
    sh: &VmShared,
    table: &str,
    key: &str,
    exten: f64,
) -> LResult<(Option<mlua::String>, f64)> {
    let exten = lifetime_s(exten, "table_lookup", true)?;
    let env = sh.env();
    match env.tables.lookup(table, key, exten, now(&env)) {
        Some((value, remaining)) => {
            if exten > 0 {
                observe_upsert(sh, &env, table, key)?;
            }
            Ok((Some(cached_str(lua, sh, &value)?), remaining as f64))
        }
        None => Ok((None, 0.0)),
    }
}

fn table_refresh(sh: &VmShared, table: &str, key: &str, exten: f64) -> LResult<bool> {
    let exten = lifetime_s(exten, "table_refresh", true)?;
    let env = sh.env();
    let live = env.tables.refresh(table, key, exten, now(&env));
    if live && exten > 0 {
        observe_upsert(sh, &env, table, key)?;
    }
    Ok(live)
}

fn table_remove(sh: &VmShared, table: &str, key: &str) -> LResult<bool> {
    let env = sh.env();
    let removed = env.tables.remove(table, key, now(&env));
    if removed && let Some(obs) = env.observer.as_ref() {
        with_ctx(sh, |ctx| {
            obs.removed(&txn(ctx)?.info, table, key);
            Ok(())
        })?;
    }
    Ok(removed)
}

/// The transaction's avi.vs.reqvar table (also avi.http.get_reqvar/set_reqvar), created on
/// first use.
pub(super) fn reqvar(lua: &Lua, ctx: &mut Ctx) -> LResult<Table> {
    let t = txn(ctx)?;
    match &t.reqvar {
        Some(table) => Ok(table.clone()),
        None => {
            let table = lua.create_table()?;
            t.reqvar = Some(table.clone());
            Ok(table)
        }
    }
}

fn install(lua: &Lua, sh: &Arc<VmShared>) -> LResult<Table> {
    let vs = lua.create_table()?;
    reg!(lua, vs, sh, "name", |l, s, a| with_ctx(s, |ctx| {
        lua_str(l, txn(ctx)?.info.vs_name.as_bytes())
    }));
    reg!(lua, vs, sh, "ip", |l, s, a| with_ctx(s, |ctx| {
        lua_str(l, txn(ctx)?.info.vs_addr.ip().to_string().as_bytes())
    }));
    // Ports are strings, as Avi documents: scripts compare `avi.vs.port() ~= "443"`.
    reg!(lua, vs, sh, "port", |l, s, a| {
        let port = with_ctx(s, |ctx| Ok(txn(ctx)?.info.vs_addr.port()))?;
        cached_str(l, s, &port.to_string())
    });
    reg!(lua, vs, sh, "client_ip", |l, s, a| with_ctx(s, |ctx| {
        lua_str(l, txn(ctx)?.info.client.ip().to_string().as_bytes())
    }));
    reg!(lua, vs, sh, "client_port", |l, s, a| with_ctx(s, |ctx| {
        lua_str(l, txn(ctx)?.info.client.port().to_string().as_bytes())
    }));
    reg!(lua, vs, sh, "log", |l, s, a| vs_log(s, &a));
    let sh1 = Arc::clone(sh);
    let ins = lua.create_function(move |_, (t, k, v, life): (String, String, String, f64)| {
        table_insert(&sh1, &t, &k, &v, life)
    })?;
    let sh1 = Arc::clone(sh);
    let look = lua.create_function(move |l, (t, k, e): (String, String, f64)| {
        table_lookup(l, &sh1, &t, &k, e)
    })?;
    let sh1 = Arc::clone(sh);
    let refr = lua.create_function(move |_, (t, k, e): (String, String, f64)| {
        table_refresh(&sh1, &t, &k, e)
    })?;
    let sh1 = Arc::clone(sh);
    let rem = lua.create_function(move |_, (t, k): (String, String)| table_remove(&sh1, &t, &k))?;
    let (f_ins, f_look, f_refr, f_rem): (Function, Function, Function, Function) =
        lua.load(TABLE_LUA).set_name("=avi.vs").call((
            ins,
            look,
            refr,
            rem,
            DEFAULT_TABLE,
            DEFAULT_LIFETIME_S as f64,
        ))?;
    vs.raw_set("table_insert", f_ins)?;
    vs.raw_set("table_lookup", f_look)?;
    vs.raw_set("table_refresh", f_refr)?;
    vs.raw_set("table_remove", f_rem)?;
    super::ratelimit::install(lua, &vs, sh)?;
    // avi.vs.reqvar: a per-request table reached through __index, since avi is shared.
    let reqvar_sh = Arc::clone(sh);
    let vs_mt = lua.create_table()?;
    vs_mt.raw_set(
        "__index",
        lua.create_function(move |l, (_t, k): (Value, Value)| {
            if !matches!(&k, Value::String(s) if s.as_bytes().as_ref() == b"reqvar") {
                return Ok(Value::Nil);
            }
            with_ctx(&reqvar_sh, |ctx| reqvar(l, ctx).map(Value::Table))
        })?,
    )?;
    vs.set_metatable(Some(vs_mt))?;
    Ok(vs)
}
