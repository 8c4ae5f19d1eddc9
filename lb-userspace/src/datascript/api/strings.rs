//! Avi's string extensions: `string.beginswith(s, t)`, `endswith` and `contains`, added to the
//! real `string` table so the method form `s:beginswith("x")` works too.
//!
//! Plain text, not patterns, case-sensitive. Numbers are taken as their text
//! (`string.endswith(avi.vs.client_port(), "0")` is Avi's example); a nil subject is false,
//! since Avi's own base64 example tests a header that may be absent. `contains` searches in
//! linear time (memchr's two-way search), so no subject and needle can keep a worker in C.

use mlua::{Lua, Table, Value};

use super::args::lua_type;
use super::{Args, LResult, rt};

/// The text of argument `pos`; None for a nil subject (argument 1).
fn text(lua: &Lua, a: &Args, pos: usize, func: &str) -> LResult<Option<mlua::String>> {
    match a.get(pos - 1) {
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(n @ (Value::Integer(_) | Value::Number(_))) => lua.coerce_string(n.clone()),
        None | Some(Value::Nil) if pos == 1 => Ok(None),
        other => Err(rt(format!(
            "bad argument #{pos} to '{func}' (string expected, got {})",
            other.map_or("no value", lua_type)
        ))),
    }
}

/// Registers `string.<name>` as `test(subject, part)` on the two arguments' bytes.
fn register(
    lua: &Lua,
    string: &Table,
    name: &'static str,
    test: fn(&[u8], &[u8]) -> bool,
) -> LResult<()> {
    let f = lua.create_function(move |lua, a: Args| {
        // A bad second argument is an error even when the subject is nil.
        let part = text(lua, &a, 2, name)?
            .ok_or_else(|| rt(format!("bad argument #2 to '{name}' (string expected)")))?;
        Ok(match text(lua, &a, 1, name)? {
            Some(subject) => test(&subject.as_bytes(), &part.as_bytes()),
            None => false,
        })
    })?;
    string.raw_set(name, f)
}

pub(super) fn install(lua: &Lua) -> LResult<()> {
    let string: Table = lua.globals().get("string")?;
    register(lua, &string, "beginswith", |s, t| s.starts_with(t))?;
    register(lua, &string, "endswith", |s, t| s.ends_with(t))?;
    register(lua, &string, "contains", |s, t| {
        memchr::memmem::find(s, t).is_some()
    })
}
