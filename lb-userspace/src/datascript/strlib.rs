//! string.find, string.match, string.gmatch and string.gsub on the budgeted matcher of
//! [`super::pattern`], replacing LuaJIT's (whose backtracking no hook interrupts).
//!
//! They behave as LuaJIT's do (Lua 5.1 semantics: a negative or too large `init` is clamped,
//! `^` is no anchor in gmatch, `%x` in a gsub replacement is `x` for a non-digit `x`), and the
//! same functions are reached through the string metatable (`s:find(...)`). Every step of a
//! match is charged to the event's instruction budget and checked against its time limit.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use mlua::{Function, Lua, MultiValue, Table, Value, Variadic};

use super::pattern::{CHARGE_EVERY, Capture, Matcher, has_specials};
use super::vm::VmShared;

type LResult<T> = mlua::Result<T>;
type Args = Variadic<Value>;

/// What the functions charge their work to, and how much they may build outside the Lua heap.
pub(super) trait Budget: Send + Sync {
    /// Charge `steps` of work; an error ends the event.
    fn charge(&self, steps: u64) -> LResult<()>;
    /// Most bytes a result built in Rust may have.
    fn max_output(&self) -> usize;
}

impl Budget for VmShared {
    fn charge(&self, steps: u64) -> LResult<()> {
        VmShared::charge(self, steps)
    }
    fn max_output(&self) -> usize {
        self.env().limits.memory_bytes
    }
}

fn bad_arg(pos: usize, func: &str, expected: &str, got: Option<&Value>) -> mlua::Error {
    let got = got.map_or("no value", Value::type_name);
    mlua::Error::runtime(format!(
        "bad argument #{pos} to '{func}' ({expected} expected, got {got})"
    ))
}

/// A string argument; numbers are turned into strings as Lua does.
fn str_arg(lua: &Lua, args: &Args, pos: usize, func: &str) -> LResult<mlua::String> {
    let v = args.get(pos - 1);
    match v {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(n @ (Value::Integer(_) | Value::Number(_))) => lua
            .coerce_string(n.clone())?
            .ok_or_else(|| bad_arg(pos, func, "string", v)),
        _ => Err(bad_arg(pos, func, "string", v)),
    }
}

/// An optional integer argument (numbers are cut toward zero, as LuaJIT's lj_lib_optint).
fn int_arg(lua: &Lua, args: &Args, pos: usize, func: &str, default: i64) -> LResult<i64> {
    let v = args.get(pos - 1);
    match v {
        None | Some(Value::Nil) => Ok(default),
        Some(Value::Integer(i)) => Ok(*i),
        Some(other) => match lua.coerce_number(other.clone())? {
            Some(n) if n.is_finite() => Ok(n as i64),
            _ => Err(bad_arg(pos, func, "number", v)),
        },
    }
}

fn truthy(v: Option<&Value>) -> bool {
    !matches!(v, None | Some(Value::Nil) | Some(Value::Boolean(false)))
}

/// Where a search starts (0-based) for a 1-based, possibly negative `init`.
fn start_at(init: i64, len: usize) -> usize {
    let len = len as i64;
    let start = if init < 0 { init + len } else { init - 1 };
    start.clamp(0, len) as usize
}

fn capture_value(lua: &Lua, src: &[u8], c: Capture) -> LResult<Value> {
    match c {
        Capture::Text(r) => Ok(Value::String(lua.create_string(&src[r])?)),
        Capture::Position(p) => Ok(Value::Integer(p as i64)),
    }
}

fn capture_values(
    lua: &Lua,
    m: &Matcher<'_, '_>,
    s: usize,
    e: usize,
    whole: bool,
) -> LResult<Vec<Value>> {
    m.captures(s, e, whole)?
        .into_iter()
        .map(|c| capture_value(lua, m.subject(), c))
        .collect()
}

/// string.find (`find`) and string.match.
fn find_aux(lua: &Lua, sh: &dyn Budget, args: &Args, find: bool) -> LResult<MultiValue> {
    let func = if find { "find" } else { "match" };
    let s = str_arg(lua, args, 1, func)?;
    let p = str_arg(lua, args, 2, func)?;
    let init = int_arg(lua, args, 3, func, 1)?;
    let (src, pat) = (s.as_bytes(), p.as_bytes());
    let st = start_at(init, src.len());
    if find && (truthy(args.get(3)) || !has_specials(&pat)) {
        sh.charge((src.len() - st) as u64 / u64::from(CHARGE_EVERY))?;
        return Ok(match memchr::memmem::find(&src[st..], &pat) {
            Some(i) => MultiValue::from_iter([
                Value::Integer((st + i + 1) as i64),
                Value::Integer((st + i + pat.len()) as i64),
            ]),
            None => MultiValue::from_iter([Value::Nil]),
        });
    }
    let (pat, anchor) = match pat.strip_prefix(b"^") {
        Some(rest) => (rest, true),
        None => (&pat[..], false),
    };
    let mut charge = |n| sh.charge(n);
    let mut m = Matcher::new(&src, pat, &mut charge);
    let mut at = st;
    loop {
        if let Some(e) = m.try_at(at, 0)? {
            m.settle()?;
            let caps = capture_values(lua, &m, at, e, !find)?;
            return Ok(if find {
                [Value::Integer(at as i64 + 1), Value::Integer(e as i64)]
                    .into_iter()
                    .chain(caps)
                    .collect()
            } else {
                caps.into_iter().collect()
            });
        }
        if at >= src.len() || anchor {
            break;
        }
        at += 1;
    }
    m.settle()?;
    Ok(MultiValue::from_iter([Value::Nil]))
}

fn gmatch(lua: &Lua, sh: &Arc<dyn Budget>, args: &Args) -> LResult<Function> {
    let s = str_arg(lua, args, 1, "gmatch")?;
    let p = str_arg(lua, args, 2, "gmatch")?;
    let pos = AtomicUsize::new(0);
    let sh = Arc::clone(sh);
    lua.create_function(move |lua, ()| {
        let (src, pat) = (s.as_bytes(), p.as_bytes());
        let mut charge = |n| sh.charge(n);
        let mut m = Matcher::new(&src, &pat, &mut charge);
        let mut at = pos.load(Ordering::Relaxed);
        while at <= src.len() {
            if let Some(e) = m.try_at(at, 0)? {
                // An empty match moves on by one so the loop ends.
                pos.store(if e == at { e + 1 } else { e }, Ordering::Relaxed);
                m.settle()?;
                return Ok(capture_values(lua, &m, at, e, true)?
                    .into_iter()
                    .collect::<MultiValue>());
            }
            at += 1;
        }
        pos.store(at, Ordering::Relaxed);
        m.settle()?;
        Ok(MultiValue::new())
    })
}

/// What a gsub match is replaced with.
enum Replacement {
    Text(mlua::String),
    Table(Table),
    Function(Function),
}

impl Replacement {
    fn from_arg(lua: &Lua, args: &Args) -> LResult<Self> {
        match args.get(2) {
            Some(Value::Table(t)) => Ok(Self::Table(t.clone())),
            Some(Value::Function(f)) => Ok(Self::Function(f.clone())),
            Some(Value::String(_) | Value::Integer(_) | Value::Number(_)) => {
                Ok(Self::Text(str_arg(lua, args, 3, "gsub")?))
            }
            other => Err(bad_arg(3, "gsub", "string/function/table", other)),
        }
    }

    /// Appends the replacement of the match `s..e` to `out`.
    fn apply(
        &self,
        lua: &Lua,
        m: &Matcher<'_, '_>,
        s: usize,
        e: usize,
        out: &mut Vec<u8>,
    ) -> LResult<()> {
        let src = m.subject();
        let value = match self {
            Self::Text(r) => {
                let r = r.as_bytes();
                let mut i = 0;
                while i < r.len() {
                    let c = r[i];
                    i += 1;
                    if c != b'%' {
                        out.push(c);
                        continue;
                    }
                    let Some(&d) = r.get(i) else {
                        break;
                    };
                    i += 1;
                    match d {
                        b'0' => out.extend_from_slice(&src[s..e]),
                        b'1'..=b'9' => match m.capture(usize::from(d - b'1'), s, e)? {
                            Capture::Text(range) => out.extend_from_slice(&src[range]),
                            Capture::Position(p) => out.extend_from_slice(p.to_string().as_bytes()),
                        },
                        other => out.push(other),
                    }
                }
                return Ok(());
            }
            Self::Table(t) => t.get::<Value>(capture_value(lua, src, m.capture(0, s, e)?)?)?,
            Self::Function(f) => f.call::<Value>(
                capture_values(lua, m, s, e, true)?
                    .into_iter()
                    .collect::<MultiValue>(),
            )?,
        };
        match value {
            Value::Nil | Value::Boolean(false) => out.extend_from_slice(&src[s..e]),
            Value::String(v) => out.extend_from_slice(&v.as_bytes()),
            n @ (Value::Integer(_) | Value::Number(_)) => {
                if let Some(v) = lua.coerce_string(n)? {
                    out.extend_from_slice(&v.as_bytes());
                }
            }
            other => {
                return Err(mlua::Error::runtime(format!(
                    "invalid replacement value (a {})",
                    other.type_name()
                )));
            }
        }
        Ok(())
    }
}

fn gsub(lua: &Lua, sh: &dyn Budget, args: &Args) -> LResult<(mlua::String, i64)> {
    let s = str_arg(lua, args, 1, "gsub")?;
    let p = str_arg(lua, args, 2, "gsub")?;
    let repl = Replacement::from_arg(lua, args)?;
    let (src, pat) = (s.as_bytes(), p.as_bytes());
    let max_n = int_arg(lua, args, 4, "gsub", src.len() as i64 + 1)?;
    let (pat, anchor) = match pat.strip_prefix(b"^") {
        Some(rest) => (rest, true),
        None => (&pat[..], false),
    };
    // The result is built outside the Lua heap: bound it by the VM's limit.
    let max_out = sh.max_output();
    let mut charge = |n| sh.charge(n);
    let mut m = Matcher::new(&src, pat, &mut charge);
    let mut out = Vec::with_capacity(src.len());
    let (mut at, mut n) = (0, 0i64);
    while n < max_n {
        let end = m.try_at(at, 0)?;
        if let Some(e) = end {
            n += 1;
            repl.apply(lua, &m, at, e, &mut out)?;
            if out.len() > max_out {
                return Err(mlua::Error::runtime("gsub: not enough memory"));
            }
        }
        match end {
            Some(e) if e > at => at = e,
            _ if at < src.len() => {
                out.push(src[at]);
                at += 1;
            }
            _ => break,
        }
        if anchor {
            break;
        }
    }
    m.settle()?;
    out.extend_from_slice(&src[at..]);
    Ok((lua.create_string(&out)?, n))
}

/// Replace find, match, gmatch and gsub in the VM's string table (also the string
/// metatable's `__index`).
pub(super) fn install(lua: &Lua, sh: &Arc<VmShared>) -> LResult<()> {
    let string: Table = lua.globals().get("string")?;
    install_into(lua, &string, Arc::clone(sh) as Arc<dyn Budget>)
}

/// Set find, match, gmatch and gsub in `t`, charging `budget`.
pub(super) fn install_into(lua: &Lua, t: &Table, budget: Arc<dyn Budget>) -> LResult<()> {
    let b = Arc::clone(&budget);
    t.raw_set(
        "find",
        lua.create_function(move |lua, a: Args| find_aux(lua, &*b, &a, true))?,
    )?;
    let b = Arc::clone(&budget);
    t.raw_set(
        "match",
        lua.create_function(move |lua, a: Args| find_aux(lua, &*b, &a, false))?,
    )?;
    let b = Arc::clone(&budget);
    t.raw_set(
        "gmatch",
        lua.create_function(move |lua, a: Args| gmatch(lua, &b, &a))?,
    )?;
    t.raw_set(
        "gsub",
        lua.create_function(move |lua, a: Args| gsub(lua, &*budget, &a))?,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Unlimited;

    /// Runs LuaJIT's function and ours on the same arguments; the first difference, if any.
    const COMPARE: &str = r##"local s, p, init = ...
                        local function all(ok, ...) return ok, select("#", ...), {...} end
                        local function same(f, ...)
                          local ok1, n1, r1 = all(pcall(string[f], ...))
                          local ok2, n2, r2 = all(pcall(ours[f], ...))
                          if ok1 ~= ok2 or n1 ~= n2 then
                            return f .. ": " .. tostring(ok1) .. " " .. tostring(r1[1]) .. " / " .. tostring(ok2) .. " " .. tostring(r2[1])
                          end
                          for i = 1, n1 do
                            local a, b = r1[i], r2[i]
                            if not ok1 then
                              local function msg(e) return (tostring(e):match("^[^\n]*"):gsub("^.-: ", "")) end
                              a, b = msg(a), msg(b)
                            end
                            if a ~= b and type(a) ~= "function" then
                              return f .. " result " .. i .. ": " .. tostring(a) .. " / " .. tostring(b)
                            end
                          end
                        end
                        local function gm(g, ...)
                          local ok, it = pcall(g, ...)
                          if not ok then return "error" end
                          local out, n = {}, 0
                          while n < 50 do
                            local r = {pcall(it)}
                            if not r[1] then out[#out + 1] = "error" break end
                            if r[2] == nil then break end
                            for i = 2, #r do out[#out + 1] = tostring(r[i]) end
                            n = n + 1
                          end
                          return table.concat(out, "|")
                        end
                        local diff = same("find", s, p, init) or same("match", s, p, init)
                          or same("gsub", s, p, "<%0>") or same("gsub", s, p, "%%1", 2)
                          or same("gsub", s, p, "%2") or same("gsub", s, p, {a = "T", h = false})
                          or same("gsub", s, p, function(x) return x == "a" and 1 or nil end)
                          or same("gsub", s, p, "x", init)
                          or same("find", s, p, init, true)
                        if diff then return diff end
                        local g1, g2 = gm(string.gmatch, s, p), gm(ours.gmatch, s, p)
                        if g1 ~= g2 then return "gmatch: " .. g1 .. " / " .. g2 end"##;

    impl Budget for Unlimited {
        fn charge(&self, _: u64) -> LResult<()> {
            Ok(())
        }
        fn max_output(&self) -> usize {
            usize::MAX
        }
    }

    /// Ours against LuaJIT's own functions, on every pattern of a list against every subject:
    /// same results, same errors (by message).
    #[test]
    fn same_results_as_luajit() {
        let lua = Lua::new();
        let ours = lua.create_table().expect("table");
        install_into(&lua, &ours, Arc::new(Unlimited)).expect("install");
        lua.globals().set("ours", ours).expect("set");
        let subjects = [
            "",
            "a",
            "hello world",
            "key=value; other=2",
            "  padded  ",
            "(a(b)c)d",
            "aaa",
            "THE (quick) fox",
            "a.b-c+d*e?f",
            "x=1&y=&z",
            "\0mid",
            "192.0.2.1:8080",
            "a,b,,c",
            "ÄÖü",
            "[bracket]",
            "%percent%",
            "a\0b\0",
            "THE END",
            "aXbXc",
        ];
        let patterns = [
            "",
            "a",
            "^a",
            "a$",
            "^$",
            ".",
            "%a+",
            "%d+",
            "%s*",
            "(%w+)=(%w*)",
            "[^;]+",
            "[%w_]+",
            "()a()",
            "a-",
            "a*",
            "a?b",
            ".-",
            "(.-)%s",
            "%b()",
            "%f[%w]%w+",
            "(a)%1",
            "[]]",
            "[a-c]+",
            "[^%s]+$",
            "%.",
            "%-",
            "(%d+)%.(%d+)",
            "^(.-)%s*$",
            "(%a)(%a)",
            "x*",
            "[%a-]",
            "%",
            "[a",
            "(()",
            "%1",
            "%g",
            "%bx",
            "%f",
            "((a))",
            "[%]]",
            "[a-]",
            "(%w+)",
            "(h)(e)(l)(l)(o)",
            "$",
            "^",
            "a.-b",
            "%S+",
            "%u",
            "[^%]]",
            "%z",
            "[%a%d]+",
            "[^a-z]",
            "%w-%d",
            "(a*(.)%w(%s*))",
            "%f[%a]",
            "%f[^%z]",
            "\0",
            "X",
            "%x%x",
            "a\0.",
            "[+-]?%d",
            "%p+",
            "%c",
            "(%S+)%s*$",
            "^(%w+)",
            "a+$",
        ];
        let inits = ["nil", "1", "2", "-3", "100", "0"];
        let compare = lua.load(COMPARE).into_function().expect("compiles");
        let mut cases = 0;
        for s in subjects {
            for p in patterns {
                for init in inits {
                    let init: Value = lua.load(init).eval().expect("init");
                    let diff: Option<String> =
                        compare.call((s, p, init.clone())).expect("comparison runs");
                    assert_eq!(diff, None, "subject {s:?} pattern {p:?} init {init:?}");
                    cases += 1;
                }
            }
        }
        assert!(cases > 4000);
    }
}
