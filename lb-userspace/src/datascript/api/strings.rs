//! Avi's string extensions: `string.beginswith`, `endswith` and `contains` (see strings.lua),
//! added to the real `string` table, so the method form `s:beginswith("x")` works too.

use mlua::Lua;

use super::LResult;

const STRINGS_LUA: &str = include_str!("strings.lua");

pub(super) fn install(lua: &Lua) -> LResult<()> {
    lua.load(STRINGS_LUA).set_name("=avi-strings").exec()
}
