//! Compile-time checks and mapping of Lua positions back to config files.

use std::path::PathBuf;

use mlua::{ChunkMode, Lua, StdLib};

use super::{Event, ScriptError, ScriptSource};

/// Prefix of the chunk names given to scripts; `latch#3:12:` in a Lua message is line 12 of
/// script 3, which [`ScriptSet::locate`] turns into `file:line:`.
pub(crate) const CHUNK_PREFIX: &str = "latch#";

/// The checked scripts of one virtual service, in configured order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScriptSet {
    vs_name: String,
    /// The scripts, each with a `first_line` of at least 1.
    pub(crate) scripts: Vec<ScriptSource>,
    /// Scripts of the events after the request has gone (HTTP_LB_DONE, HTTP_RESP, ...) read
    /// the request (so a copy of its head is kept past HTTP_REQ).
    pub(crate) resp_reads_request: bool,
}

/// A script as the set keeps it: a first line of at least 1.
fn normalized(s: ScriptSource) -> ScriptSource {
    ScriptSource {
        first_line: s.first_line.max(1),
        ..s
    }
}

impl ScriptSet {
    /// Check every script's syntax; all errors are returned, each as `file:line: message`.
    pub fn compile(
        vs_name: &str,
        scripts: Vec<ScriptSource>,
    ) -> Result<ScriptSet, Vec<ScriptError>> {
        let set = ScriptSet {
            vs_name: vs_name.to_string(),
            resp_reads_request: scripts
                .iter()
                .filter(|s| !matches!(s.event, Event::HttpReq | Event::HttpReqData))
                .any(|s| reads_request(&s.text)),
            scripts: scripts.into_iter().map(normalized).collect(),
        };
        // A bare VM is enough to parse: nothing runs.
        let lua = Lua::new_with(StdLib::NONE, mlua::LuaOptions::default()).map_err(|e| {
            vec![ScriptError {
                file: PathBuf::new(),
                line: 0,
                column: None,
                script: String::new(),
                message: format!("cannot create a Lua VM: {e}"),
            }]
        })?;
        let mut errors: Vec<ScriptError> = (0..set.scripts.len())
            .filter_map(|i| set.load(&lua, i).err())
            .collect();
        for script in &set.scripts {
            errors.extend(super::names::check(script));
        }
        if errors.is_empty() {
            Ok(set)
        } else {
            Err(errors)
        }
    }

    /// True when compiling `scripts` for `vs_name` would give this set: a reload keeps the
    /// set (and the VMs built for it) instead of compiling the same text again.
    pub fn compiled_from(&self, vs_name: &str, scripts: &[ScriptSource]) -> bool {
        self.vs_name == vs_name
            && self.scripts.len() == scripts.len()
            && self
                .scripts
                .iter()
                .zip(scripts)
                .all(|(ours, theirs)| *ours == normalized(theirs.clone()))
    }

    /// Virtual service name.
    pub fn vs_name(&self) -> &str {
        &self.vs_name
    }

    /// Number of scripts.
    pub fn len(&self) -> usize {
        self.scripts.len()
    }

    /// True when there are no scripts at all.
    pub fn is_empty(&self) -> bool {
        self.scripts.is_empty()
    }

    /// True when some script runs at `event`.
    pub fn has(&self, event: Event) -> bool {
        self.scripts.iter().any(|s| s.event == event)
    }

    /// Compile script `i` into `lua` (text only: bytecode is refused).
    pub(crate) fn load(&self, lua: &Lua, i: usize) -> Result<mlua::Function, ScriptError> {
        let text = lua51_escapes(&self.scripts[i].text);
        load_text(lua, text.as_ref(), &format!("{CHUNK_PREFIX}{i}")).map_err(|e| self.error(i, &e))
    }

    /// A Lua error of script `i` as a [`ScriptError`] located in the config.
    pub(crate) fn error(&self, i: usize, e: &mlua::Error) -> ScriptError {
        let s = &self.scripts[i];
        let raw = root_message(e);
        let (line, msg) = match find_position(&raw, i) {
            Some((lua_line, rest)) => (s.origin_line(lua_line), rest),
            None => {
                // Errors raised by avi.* carry no position; the traceback has it.
                let line = traceback(e)
                    .and_then(|tb| find_position(&tb, i))
                    .map(|(l, _)| s.origin_line(l))
                    .unwrap_or(s.first_line);
                (line, raw.clone())
            }
        };
        ScriptError {
            file: s.origin_file.clone(),
            line,
            column: None,
            script: s.name.clone(),
            message: self.locate(&msg),
        }
    }

    /// Rewrite every `latch#N:L:` in a message as `file:line:`.
    pub(crate) fn locate(&self, msg: &str) -> String {
        let mut out = String::with_capacity(msg.len());
        let mut rest = msg;
        while let Some(p) = rest.find(CHUNK_PREFIX) {
            out.push_str(&rest[..p]);
            let after = &rest[p + CHUNK_PREFIX.len()..];
            let parsed = parse_pos(after).and_then(|(idx, line, len)| {
                let s = self.scripts.get(idx)?;
                Some((
                    format!("{}:{}", s.origin_file.display(), s.origin_line(line)),
                    len,
                ))
            });
            match parsed {
                Some((loc, len)) => {
                    out.push_str(&loc);
                    rest = &after[len..];
                }
                None => {
                    out.push_str(CHUNK_PREFIX);
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        out
    }
}

/// Compiles Lua source named `name` in messages; bytecode is refused, since it can break out
/// of the sandbox.
pub(crate) fn load_text(
    lua: &Lua,
    text: impl mlua::AsChunk,
    name: &str,
) -> mlua::Result<mlua::Function> {
    lua.load(text)
        .set_name(format!("={name}"))
        .set_mode(ChunkMode::Text)
        .into_function()
}

/// `text` with the escapes Lua 5.1 accepts and LuaJIT refuses made plain: Lua 5.1 reads a
/// backslash before a character with no escape meaning (`"\!"`, `"\-"`) as that character,
/// LuaJIT stops with "invalid escape sequence", and public Avi scripts (written for Lua 5.1)
/// use them in patterns. Only short string literals change; comments, long strings and code
/// stay as written, and no line moves.
pub(crate) fn lua51_escapes(text: &str) -> std::borrow::Cow<'_, str> {
    /// What may follow a backslash in LuaJIT's short strings.
    fn known(c: u8) -> bool {
        matches!(
            c,
            b'a' | b'b' | b'f' | b'n' | b'r' | b't' | b'v' | b'x' | b'z' | b'u'
        ) || matches!(c, b'\\' | b'"' | b'\'' | b'\n' | b'\r')
            || c.is_ascii_digit()
    }
    let b = text.as_bytes();
    // Byte offsets of backslashes to drop.
    let mut drop = Vec::new();
    let long_level = |i: usize| -> Option<usize> {
        let eq = b.get(i + 1..)?.iter().take_while(|c| **c == b'=').count();
        (b.get(i) == Some(&b'[') && b.get(i + 1 + eq) == Some(&b'[')).then_some(eq)
    };
    let skip_long = |from: usize, eq: usize| -> usize {
        let close = format!("]{}]", "=".repeat(eq));
        text.get(from..)
            .and_then(|rest| rest.find(&close))
            .map_or(b.len(), |p| from + p + close.len())
    };
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'-' if b.get(i + 1) == Some(&b'-') => {
                i += 2;
                if let Some(eq) = long_level(i) {
                    i = skip_long(i + eq + 2, eq);
                } else {
                    while i < b.len() && b[i] != b'\n' {
                        i += 1;
                    }
                }
            }
            b'[' if long_level(i).is_some() => {
                let eq = long_level(i).unwrap_or(0);
                i = skip_long(i + eq + 2, eq);
            }
            quote @ (b'"' | b'\'') => {
                i += 1;
                while i < b.len() && b[i] != quote && b[i] != b'\n' {
                    if b[i] == b'\\' {
                        if let Some(&next) = b.get(i + 1)
                            && !known(next)
                        {
                            drop.push(i);
                        }
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    if drop.is_empty() {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for d in drop {
        out.push_str(&text[last..d]);
        last = d + 1;
    }
    out.push_str(&text[last..]);
    std::borrow::Cow::Owned(out)
}

/// `N:L` at the start of `s`: (N, L, bytes consumed).
fn parse_pos(s: &str) -> Option<(usize, usize, usize)> {
    let n_len = s.bytes().take_while(u8::is_ascii_digit).count();
    let idx = s.get(..n_len)?.parse().ok()?;
    let rest = s.get(n_len..)?.strip_prefix(':')?;
    let l_len = rest.bytes().take_while(u8::is_ascii_digit).count();
    let line = rest.get(..l_len)?.parse().ok()?;
    Some((idx, line, n_len + 1 + l_len))
}

/// The first `latch#i:LINE: ` in `msg`: (LINE, the message after it, or all of it).
fn find_position(msg: &str, i: usize) -> Option<(usize, String)> {
    let p = msg.find(&format!("{CHUNK_PREFIX}{i}:"))?;
    let after = &msg[p + CHUNK_PREFIX.len()..];
    let (_, line, len) = parse_pos(after)?;
    let rest = after[len..].strip_prefix(':').unwrap_or(&after[len..]);
    let rest = rest.trim_start();
    let text = if p == 0 {
        rest.to_string()
    } else {
        msg.to_string()
    };
    Some((line.max(1), text))
}

/// The innermost message of an mlua error, first line only (tracebacks are dropped).
pub(crate) fn root_message(e: &mlua::Error) -> String {
    match e {
        mlua::Error::CallbackError { cause, .. } => root_message(cause),
        mlua::Error::WithContext { cause, .. } => root_message(cause),
        mlua::Error::SyntaxError { message, .. } => first_line(message),
        mlua::Error::RuntimeError(m) => first_line(m),
        mlua::Error::MemoryError(m) => format!("memory limit exceeded ({})", first_line(m)),
        mlua::Error::ExternalError(x) => first_line(&x.to_string()),
        other => first_line(&other.to_string()),
    }
}

fn traceback(e: &mlua::Error) -> Option<String> {
    match e {
        mlua::Error::CallbackError { traceback, cause } => {
            traceback_inner(cause).or_else(|| Some(traceback.clone()))
        }
        mlua::Error::WithContext { cause, .. } => traceback(cause),
        _ => None,
    }
}

fn traceback_inner(e: &mlua::Error) -> Option<String> {
    match e {
        mlua::Error::CallbackError { .. } | mlua::Error::WithContext { .. } => traceback(e),
        _ => None,
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim_end().to_string()
}

/// Whether a response script may read the request (conservative, textual).
fn reads_request(text: &str) -> bool {
    [
        "HTTP_REQUEST",
        "get_path",
        "get_uri",
        "get_query",
        "method",
        "get_version",
        "hostname",
        "_tokens",
        "get_userid",
        "loadstring",
        "load",
    ]
    .iter()
    .any(|w| text.contains(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_lua_51_accepts_become_the_plain_character() {
        assert_eq!(lua51_escapes(r#"x = "a\!b\-c""#), r#"x = "a!b-c""#);
        assert_eq!(
            lua51_escapes(r"x = 'it\'s \n \\ \065 \x41'"),
            r"x = 'it\'s \n \\ \065 \x41'"
        );
        // Comments and long strings are not strings LuaJIT unescapes.
        let untouched = "-- \\! in a comment\nlocal s = [[\\!]] --[==[ \\! ]==]";
        assert_eq!(lua51_escapes(untouched), untouched);
    }

    #[test]
    fn a_script_with_a_lua_51_escape_compiles_and_means_the_character()
    -> Result<(), Box<dyn std::error::Error>> {
        let script = ScriptSource {
            event: Event::HttpReq,
            name: "s".into(),
            text: r#"return string.find("a!b", "\!")"#.into(),
            origin_file: PathBuf::from("vs.toml"),
            first_line: 1,
        };
        // LuaJIT alone refuses it.
        let lua = Lua::new();
        assert!(load_text(&lua, script.text.as_str(), "raw").is_err());
        let set = ScriptSet::compile("vs", vec![script]).map_err(|e| format!("{e:?}"))?;
        let found: Option<i64> = set.load(&lua, 0)?.call(())?;
        assert_eq!(found, Some(2));
        Ok(())
    }
}
