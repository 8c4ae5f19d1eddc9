//! The avi.* functions, one module per Avi namespace.
//!
//! Each function reaches the transaction through the VM's [`Ctx`], filled by the event runner
//! for the duration of one event. Errors are Lua errors (catchable with pcall) unless the event
//! has to end (budget, avi.http.response/redirect).
//!
//! Adding a namespace (avi.utils, avi.crypto, avi.ipgroup, avi.stringgroup, avi.ssl, ...) is
//! adding a module beside [`http`], [`vs`] and [`pool`] that exports a [`Namespace`], and one
//! line in [`NAMESPACES`]. Its installer builds the namespace table with the helpers of
//! [`args`] and the [`reg!`] macro; Lua that is easier to write in Lua goes in a `.lua` file
//! next to the module, loaded with `include_str!`. The sandbox makes every namespace table
//! read-only, so installers need not.

mod args;
mod constants;
mod crypto;
mod groups;
mod http;
mod pool;
mod ratelimit;
mod ssl;
mod strings;
mod utils;
mod vs;

use std::sync::Arc;

use mlua::{Lua, Table, Value, Variadic};

use super::vm::{Ctx, TxnState, VmShared};

pub(crate) use http::RESP_FAILED_ALLOWED;
pub(crate) use vs::vs_log;

type LResult<T> = mlua::Result<T>;
type Args = Variadic<Value>;

/// One avi.* namespace.
pub(super) struct Namespace {
    /// The namespace is `avi.<name>`.
    name: &'static str,
    /// Builds the namespace table.
    install: fn(&Lua, &Arc<VmShared>) -> LResult<Table>,
    /// Constants the namespace adds to `avi` itself (avi.HTTP_REQUEST, ...).
    constants: &'static [(&'static str, i64)],
}

/// Every namespace scripts see.
const NAMESPACES: &[Namespace] = &[
    http::NAMESPACE,
    vs::NAMESPACE,
    pool::NAMESPACE,
    utils::NAMESPACE,
    crypto::NAMESPACE,
    groups::IPGROUP,
    groups::STRINGGROUP,
    ssl::NAMESPACE,
];

/// Build the `avi` table (the sandbox makes it and its namespaces read-only), and add Avi's
/// extensions to the `string` library.
pub(crate) fn install(lua: &Lua, sh: &Arc<VmShared>) -> LResult<Table> {
    strings::install(lua)?;
    let avi = lua.create_table()?;
    constants::install(&avi)?;
    for ns in NAMESPACES {
        for (name, value) in ns.constants {
            avi.raw_set(*name, *value)?;
        }
        avi.raw_set(ns.name, (ns.install)(lua, sh)?)?;
    }
    Ok(avi)
}

fn rt(msg: impl std::fmt::Display) -> mlua::Error {
    mlua::Error::runtime(msg)
}

/// Runs `f` on the VM's context (the current event's transaction and messages).
fn with_ctx<R>(sh: &VmShared, f: impl FnOnce(&mut Ctx) -> LResult<R>) -> LResult<R> {
    let mut g = sh
        .ctx
        .try_lock()
        .ok_or_else(|| rt("avi: re-entrant call"))?;
    f(&mut g)
}

fn txn(ctx: &mut Ctx) -> LResult<&mut TxnState> {
    ctx.txn
        .as_deref_mut()
        .ok_or_else(|| rt("avi: called outside a DataScript event"))
}

/// Registers `avi.<ns>.<name>` as a function of the VM's shared state `s`, the Lua state `l`
/// and the call's arguments `a`.
macro_rules! reg {
    ($lua:expr, $t:expr, $sh:expr, $name:literal, |$l:ident, $s:ident, $a:ident| $body:expr) => {{
        let $s = std::sync::Arc::clone($sh);
        $t.raw_set(
            $name,
            $lua.create_function(move |$l: &mlua::Lua, $a: crate::datascript::api::Args| {
                let $s: &crate::datascript::vm::VmShared = &$s;
                let _ = (&$l, &$a);
                $body
            })?,
        )?;
    }};
}
use reg;
