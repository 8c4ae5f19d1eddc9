//! `latch check` warnings: a numeric-looking string literal where a lifetime could be meant.
//!
//! Table functions tell their arguments apart by Lua type: only a number is a lifetime. A
//! public Avi example passes `"300"`, which then silently becomes a key or value. The lint is
//! textual (a small Lua tokenizer), so it only sees literals written at the call.

use super::{LintWarning, ScriptSource};

#[derive(Clone, Debug, PartialEq)]
pub(super) enum Tok {
    Name(String),
    Str(String),
    Other(char),
    Num,
}

/// The tokens of `src`, each with its 1-based line.
fn tokenize(src: &str) -> Vec<(Tok, usize)> {
    tokenize_with_columns(src)
        .into_iter()
        .map(|(t, line, _)| (t, line))
        .collect()
}

/// The tokens of `src`, each with its 1-based line and 1-based column (in bytes).
pub(super) fn tokenize_with_columns(src: &str) -> Vec<(Tok, usize, usize)> {
    let b = src.as_bytes();
    let mut i = 0;
    let mut line = 1;
    // Columns are rare (only reported findings need them), so they are computed from the
    // byte position rather than tracked through strings and comments.
    let col_at = |pos: usize| {
        pos - b[..pos]
            .iter()
            .rposition(|c| *c == b'\n')
            .map_or(0, |n| n + 1)
            + 1
    };
    let mut out = Vec::new();
    // Length of a long bracket opening `[==[` at i, returning the level.
    let long_open = |i: usize| -> Option<usize> {
        if b.get(i) != Some(&b'[') {
            return None;
        }
        let eq = b[i + 1..].iter().take_while(|c| **c == b'=').count();
        (b.get(i + 1 + eq) == Some(&b'[')).then_some(eq)
    };
    let skip_long = |mut i: usize, eq: usize, line: &mut usize| -> usize {
        let close: Vec<u8> = std::iter::once(b']')
            .chain(std::iter::repeat_n(b'=', eq))
            .chain(std::iter::once(b']'))
            .collect();
        while i < b.len() {
            if b[i..].starts_with(&close) {
                return i + close.len();
            }
            if b[i] == b'\n' {
                *line += 1;
            }
            i += 1;
        }
        i
    };
    while i < b.len() {
        let c = b[i];
        match c {
            b'\n' => {
                line += 1;
                i += 1;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                i += 2;
                if let Some(eq) = long_open(i) {
                    i = skip_long(i + eq + 2, eq, &mut line);
                } else {
                    while i < b.len() && b[i] != b'\n' {
                        i += 1;
                    }
                }
            }
            b'"' | b'\'' => {
                let start_line = line;
                let col = col_at(i);
                let mut s = Vec::new();
                i += 1;
                while i < b.len() && b[i] != c {
                    if b[i] == b'\\' && i + 1 < b.len() {
                        if b[i + 1] == b'\n' {
                            line += 1;
                        }
                        s.push(b[i + 1]);
                        i += 2;
                        continue;
                    }
                    if b[i] == b'\n' {
                        line += 1;
                    }
                    s.push(b[i]);
                    i += 1;
                }
                i += 1;
                out.push((
                    Tok::Str(String::from_utf8_lossy(&s).into_owned()),
                    start_line,
                    col,
                ));
            }
            b'[' if long_open(i).is_some() => {
                let eq = long_open(i).unwrap_or(0);
                let start_line = line;
                let col = col_at(i);
                let start = i + eq + 2;
                i = skip_long(start, eq, &mut line);
                let end = i.saturating_sub(eq + 2).max(start);
                let text = String::from_utf8_lossy(&b[start..end]).into_owned();
                out.push((Tok::Str(text), start_line, col));
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let s = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                out.push((Tok::Name(src[s..i].to_string()), line, col_at(s)));
            }
            c if c.is_ascii_digit() => {
                let col = col_at(i);
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                    i += 1;
                }
                out.push((Tok::Num, line, col));
            }
            c if c.is_ascii_whitespace() => i += 1,
            _ => {
                out.push((Tok::Other(c as char), line, col_at(i)));
                i += 1;
            }
        }
    }
    out
}

fn numeric(s: &str) -> bool {
    let t = s.trim();
    !t.is_empty() && t.parse::<f64>().is_ok()
}

/// Warnings for every script: `file:line: message`.
pub fn lint(scripts: &[ScriptSource]) -> Vec<LintWarning> {
    let mut out = Vec::new();
    for s in scripts {
        let toks = tokenize(&s.text);
        for (i, (t, line)) in toks.iter().enumerate() {
            let Tok::Name(name) = t else { continue };
            let func = name.as_str();
            if !matches!(func, "table_insert" | "table_lookup" | "table_refresh") {
                continue;
            }
            if toks.get(i + 1).map(|t| &t.0) != Some(&Tok::Other('(')) {
                continue;
            }
            // Split the arguments at top-level commas; each argument is one token list.
            let mut args: Vec<Vec<&Tok>> = vec![Vec::new()];
            let mut depth = 0usize;
            for (t, _) in &toks[i + 2..] {
                match t {
                    Tok::Other('(' | '{' | '[') => depth += 1,
                    Tok::Other(')' | '}' | ']') if depth == 0 => break,
                    Tok::Other(')' | '}' | ']') => depth -= 1,
                    Tok::Other(',') if depth == 0 => {
                        args.push(Vec::new());
                        continue;
                    }
                    _ => {}
                }
                if let Some(a) = args.last_mut() {
                    a.push(t);
                }
            }
            let n = args.len();
            // The positions where a number would be a lifetime.
            let lifetime_pos = match func {
                "table_insert" => [3, 4].contains(&n).then_some(n - 1),
                _ => [2, 3].contains(&n).then_some(n - 1),
            };
            let Some(p) = lifetime_pos else { continue };
            // Where the string would also be read as a value or key, a literal first argument
            // shows the author meant a table name: `table_insert("ids", "12345", "67890")`.
            let ambiguous = p == 2 && func == "table_insert" || p == 1 && func != "table_insert";
            if ambiguous && matches!(args[0].as_slice(), [Tok::Str(_)]) {
                continue;
            }
            if let [Tok::Str(lit)] = args[p].as_slice()
                && numeric(lit)
            {
                let meaning = match (func, n) {
                    ("table_insert", 3) => "(table, key, value)",
                    ("table_insert", _) => "(table, key, value, lifetime) and fails",
                    (_, 2) => "(table, key)",
                    _ => "(table, key, lifetime_exten) and fails",
                };
                out.push(LintWarning {
                    file: s.origin_file.clone(),
                    line: s.first_line.max(1) + line - 1,
                    column: None,
                    script: s.name.clone(),
                    message: format!(
                        "{func}: the string \"{lit}\" is not a lifetime (only a Lua number is); \
                         this call is read as {meaning}. Write {} if a lifetime is meant",
                        lit.trim()
                    ),
                });
            }
        }
    }
    out
}
