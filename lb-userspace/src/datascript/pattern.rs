//! Lua 5.1 patterns (as LuaJIT's string.find, match, gmatch and gsub read them) with a step
//! budget.
//!
//! LuaJIT's own matcher backtracks inside C, where the instruction hook never fires:
//! `string.rep("a", 3000):find(".-.-.-.-b")` would spin for hours. This is a port of the same
//! algorithm (lstrlib.c `match`) that reports every [`CHARGE_EVERY`] steps to a `charge`
//! callback, which ends the event once its instruction budget or time limit is spent. The
//! recursion depth is bounded as LuaJIT bounds it (`pattern too complex`).

use std::ops::Range;

/// Most captures in one pattern (LUA_MAXCAPTURES).
pub(crate) const MAX_CAPTURES: usize = 32;
/// Deepest recursion of the matcher (LuaJIT's LJ_MAX_XLEVEL).
const MAX_DEPTH: u32 = 200;
/// Steps between two calls of the charge callback.
pub(crate) const CHARGE_EVERY: u32 = 1024;

const CAP_UNFINISHED: isize = -1;
const CAP_POSITION: isize = -2;

/// Why a match stopped without an answer: a malformed pattern (a message as LuaJIT words it)
/// or the error the charge callback returned.
pub(crate) type PResult<T> = Result<T, mlua::Error>;

fn malformed(msg: &str) -> mlua::Error {
    mlua::Error::runtime(msg)
}

/// One capture of a match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Capture {
    /// Bytes of the subject.
    Text(Range<usize>),
    /// A position capture `()`: 1-based position in the subject.
    Position(usize),
}

/// Charge for `n` steps of work; an error ends the match.
pub(crate) type Charge<'c> = &'c mut dyn FnMut(u64) -> PResult<()>;

/// A match in progress of one pattern against one subject.
pub(crate) struct Matcher<'a, 'c> {
    src: &'a [u8],
    pat: &'a [u8],
    level: usize,
    capture: [(usize, isize); MAX_CAPTURES],
    depth: u32,
    steps: u32,
    charge: Charge<'c>,
}

/// True when `p` has a character that makes it a pattern rather than plain text
/// (lj_str_haspattern, which looks past a NUL byte).
pub(crate) fn has_specials(p: &[u8]) -> bool {
    p.iter().any(|c| b"^$*+?.([%-".contains(c))
}

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

fn match_class(c: u8, class: u8) -> bool {
    let res = match class.to_ascii_lowercase() {
        b'a' => c.is_ascii_alphabetic(),
        b'c' => c.is_ascii_control(),
        b'd' => c.is_ascii_digit(),
        b'g' => c.is_ascii_graphic(),
        b'l' => c.is_ascii_lowercase(),
        b'p' => c.is_ascii_punctuation(),
        b's' => is_space(c),
        b'u' => c.is_ascii_uppercase(),
        b'w' => c.is_ascii_alphanumeric(),
        b'x' => c.is_ascii_hexdigit(),
        b'z' => c == 0,
        _ => return class == c,
    };
    if class.is_ascii_uppercase() {
        !res
    } else {
        res
    }
}

impl<'a, 'c> Matcher<'a, 'c> {
    /// A matcher of `pat` against `src`. As in LuaJIT, a pattern ends at its first NUL byte
    /// (`%z` matches one).
    pub(crate) fn new(src: &'a [u8], pat: &'a [u8], charge: Charge<'c>) -> Self {
        let pat = pat
            .iter()
            .position(|&c| c == 0)
            .map_or(pat, |end| &pat[..end]);
        Self {
            src,
            pat,
            level: 0,
            capture: [(0, 0); MAX_CAPTURES],
            depth: 0,
            steps: 0,
            charge,
        }
    }

    /// The subject.
    pub(crate) fn subject(&self) -> &'a [u8] {
        self.src
    }

    /// Match the pattern from `p` at subject position `s`: the end of the match, if any.
    /// Captures of a previous attempt are forgotten.
    pub(crate) fn try_at(&mut self, s: usize, p: usize) -> PResult<Option<usize>> {
        self.level = 0;
        self.depth = 0;
        self.do_match(s, p)
    }

    /// Charge what is left of the step count (call once the match is over).
    pub(crate) fn settle(&mut self) -> PResult<()> {
        let n = std::mem::take(&mut self.steps);
        (self.charge)(u64::from(n))
    }

    fn step(&mut self, n: u32) -> PResult<()> {
        self.steps += n;
        if self.steps >= CHARGE_EVERY {
            self.settle()?;
        }
        Ok(())
    }

    /// Capture `i` of the last match `s..e` (the whole match when the pattern has none and
    /// `i` is 0).
    pub(crate) fn capture(&self, i: usize, s: usize, e: usize) -> PResult<Capture> {
        if i >= self.level {
            return if i == 0 {
                Ok(Capture::Text(s..e))
            } else {
                Err(malformed("invalid capture index"))
            };
        }
        let (start, len) = self.capture[i];
        match len {
            CAP_UNFINISHED => Err(malformed("unfinished capture")),
            CAP_POSITION => Ok(Capture::Position(start + 1)),
            len => Ok(Capture::Text(start..start + len as usize)),
        }
    }

    /// Every capture of the last match `s..e`: the whole match when the pattern has none and
    /// `whole` is set.
    pub(crate) fn captures(&self, s: usize, e: usize, whole: bool) -> PResult<Vec<Capture>> {
        let n = if self.level == 0 && whole {
            1
        } else {
            self.level
        };
        (0..n).map(|i| self.capture(i, s, e)).collect()
    }

    fn do_match(&mut self, s: usize, p: usize) -> PResult<Option<usize>> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(malformed("pattern too complex"));
        }
        let r = self.match_here(s, p);
        self.depth -= 1;
        r
    }

    fn match_here(&mut self, mut s: usize, mut p: usize) -> PResult<Option<usize>> {
        loop {
            self.step(1)?;
            let Some(&pc) = self.pat.get(p) else {
                return Ok(Some(s));
            };
            match pc {
                b'(' => {
                    return if self.pat.get(p + 1) == Some(&b')') {
                        self.start_capture(s, p + 2, CAP_POSITION)
                    } else {
                        self.start_capture(s, p + 1, CAP_UNFINISHED)
                    };
                }
                b')' => return self.end_capture(s, p + 1),
                b'$' if p + 1 == self.pat.len() => {
                    return Ok((s == self.src.len()).then_some(s));
                }
                b'%' => match self.pat.get(p + 1) {
                    Some(b'b') => match self.match_balance(s, p + 2)? {
                        Some(next) => {
                            s = next;
                            p += 4;
                            continue;
                        }
                        None => return Ok(None),
                    },
                    Some(b'f') => {
                        p += 2;
                        if self.pat.get(p) != Some(&b'[') {
                            return Err(malformed("missing '[' after '%f' in pattern"));
                        }
                        let ep = self.class_end(p)?;
                        let prev = s.checked_sub(1).map_or(0, |i| self.src[i]);
                        let cur = self.src.get(s).copied().unwrap_or(0);
                        if !self.match_bracket_class(prev, p, ep - 1)
                            && self.match_bracket_class(cur, p, ep - 1)
                        {
                            p = ep;
                            continue;
                        }
                        return Ok(None);
                    }
                    Some(&d) if d.is_ascii_digit() => match self.match_capture(s, d)? {
                        Some(next) => {
                            s = next;
                            p += 2;
                            continue;
                        }
                        None => return Ok(None),
                    },
                    _ => {}
                },
                _ => {}
            }
            let ep = self.class_end(p)?;
            let m = s < self.src.len() && self.single_match(self.src[s], p, ep);
            match self.pat.get(ep) {
                Some(b'?') => {
                    if m && let Some(end) = self.do_match(s + 1, ep + 1)? {
                        return Ok(Some(end));
                    }
                    p = ep + 1;
                }
                Some(b'*') => return self.max_expand(s, p, ep),
                Some(b'+') => {
                    return if m {
                        self.max_expand(s + 1, p, ep)
                    } else {
                        Ok(None)
                    };
                }
                Some(b'-') => return self.min_expand(s, p, ep),
                _ => {
                    if !m {
                        return Ok(None);
                    }
                    s += 1;
                    p = ep;
                }
            }
        }
    }

    /// End of the single-character class starting at `p`.
    fn class_end(&self, mut p: usize) -> PResult<usize> {
        let c = self.pat[p];
        p += 1;
        match c {
            b'%' => {
                if p >= self.pat.len() {
                    return Err(malformed("malformed pattern (ends with '%')"));
                }
                Ok(p + 1)
            }
            b'[' => {
                if self.pat.get(p) == Some(&b'^') {
                    p += 1;
                }
                // The first character of a set is never its end: "[]]" is a set of ']'.
                loop {
                    let Some(&cc) = self.pat.get(p) else {
                        return Err(malformed("malformed pattern (missing ']')"));
                    };
                    p += 1;
                    if cc == b'%' && p < self.pat.len() {
                        p += 1;
                    }
                    if self.pat.get(p) == Some(&b']') {
                        return Ok(p + 1);
                    }
                }
            }
            _ => Ok(p),
        }
    }

    /// `c` against the set `[...]` from `p` (its '[') to `ec` (its ']').
    fn match_bracket_class(&self, c: u8, mut p: usize, ec: usize) -> bool {
        let mut sig = true;
        if self.pat[p + 1] == b'^' {
            sig = false;
            p += 1;
        }
        loop {
            p += 1;
            if p >= ec {
                return !sig;
            }
            let pc = self.pat[p];
            if pc == b'%' {
                p += 1;
                if match_class(c, self.pat[p]) {
                    return sig;
                }
            } else if self.pat[p + 1] == b'-' && p + 2 < ec {
                p += 2;
                if pc <= c && c <= self.pat[p] {
                    return sig;
                }
            } else if pc == c {
                return sig;
            }
        }
    }

    fn single_match(&self, c: u8, p: usize, ep: usize) -> bool {
        match self.pat[p] {
            b'.' => true,
            b'%' => match_class(c, self.pat[p + 1]),
            b'[' => self.match_bracket_class(c, p, ep - 1),
            pc => pc == c,
        }
    }

    fn match_balance(&mut self, s: usize, p: usize) -> PResult<Option<usize>> {
        if p + 1 >= self.pat.len() {
            return Err(malformed("unbalanced pattern"));
        }
        let (open, close) = (self.pat[p], self.pat[p + 1]);
        if self.src.get(s) != Some(&open) {
            return Ok(None);
        }
        let mut depth = 1;
        for i in s + 1..self.src.len() {
            self.step(1)?;
            let c = self.src[i];
            if c == close {
                depth -= 1;
                if depth == 0 {
                    return Ok(Some(i + 1));
                }
            } else if c == open {
                depth += 1;
            }
        }
        Ok(None)
    }

    fn max_expand(&mut self, s: usize, p: usize, ep: usize) -> PResult<Option<usize>> {
        let mut i = 0;
        while s + i < self.src.len() && self.single_match(self.src[s + i], p, ep) {
            self.step(1)?;
            i += 1;
        }
        loop {
            if let Some(end) = self.do_match(s + i, ep + 1)? {
                return Ok(Some(end));
            }
            if i == 0 {
                return Ok(None);
            }
            i -= 1;
        }
    }

    fn min_expand(&mut self, mut s: usize, p: usize, ep: usize) -> PResult<Option<usize>> {
        loop {
            if let Some(end) = self.do_match(s, ep + 1)? {
                return Ok(Some(end));
            }
            if s < self.src.len() && self.single_match(self.src[s], p, ep) {
                s += 1;
            } else {
                return Ok(None);
            }
        }
    }

    fn start_capture(&mut self, s: usize, p: usize, what: isize) -> PResult<Option<usize>> {
        if self.level >= MAX_CAPTURES {
            return Err(malformed("too many captures"));
        }
        self.capture[self.level] = (s, what);
        self.level += 1;
        let r = self.do_match(s, p)?;
        if r.is_none() {
            self.level -= 1;
        }
        Ok(r)
    }

    fn end_capture(&mut self, s: usize, p: usize) -> PResult<Option<usize>> {
        let Some(l) = (0..self.level)
            .rev()
            .find(|&l| self.capture[l].1 == CAP_UNFINISHED)
        else {
            return Err(malformed("invalid pattern capture"));
        };
        self.capture[l].1 = (s - self.capture[l].0) as isize;
        let r = self.do_match(s, p)?;
        if r.is_none() {
            self.capture[l].1 = CAP_UNFINISHED;
        }
        Ok(r)
    }

    /// A back reference `%1`..`%9` at `s`.
    fn match_capture(&mut self, s: usize, digit: u8) -> PResult<Option<usize>> {
        let l = usize::from(digit - b'0');
        let valid = l >= 1 && l <= self.level && self.capture[l - 1].1 != CAP_UNFINISHED;
        if !valid {
            return Err(malformed("invalid capture index"));
        }
        let (start, len) = self.capture[l - 1];
        // A position capture never matches text.
        let Ok(len) = usize::try_from(len) else {
            return Ok(None);
        };
        // Comparing is work too: a back reference inside a backtracking loop is quadratic.
        self.step(
            u32::try_from(len / 64)
                .unwrap_or(u32::MAX)
                .min(CHARGE_EVERY),
        )?;
        let matches =
            self.src.len() - s >= len && self.src[start..start + len] == self.src[s..s + len];
        Ok(matches.then_some(s + len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_limit(_: u64) -> PResult<()> {
        Ok(())
    }

    /// First match of `pat` in `src` as string.find sees it: (start, end) 1-based and captures
    /// as text ("()" positions as numbers).
    fn find(src: &str, pat: &str) -> Result<Option<(usize, usize, Vec<String>)>, String> {
        let mut charge = no_limit;
        let (pat, anchor) = match pat.strip_prefix('^') {
            Some(p) => (p, true),
            None => (pat, false),
        };
        let mut m = Matcher::new(src.as_bytes(), pat.as_bytes(), &mut charge);
        let mut s = 0;
        loop {
            if let Some(e) = m.try_at(s, 0).map_err(|e| e.to_string())? {
                let caps = m
                    .captures(s, e, false)
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .map(|c| match c {
                        Capture::Text(r) => src[r].to_string(),
                        Capture::Position(p) => p.to_string(),
                    })
                    .collect();
                return Ok(Some((s + 1, e, caps)));
            }
            s += 1;
            if s > src.len() || anchor {
                return Ok(None);
            }
        }
    }

    fn caps(src: &str, pat: &str) -> Vec<String> {
        find(src, pat).expect("valid").expect("match").2
    }

    #[test]
    fn classes_sets_and_quantifiers() {
        assert_eq!(find("hello world", "o w"), Ok(Some((5, 7, vec![]))));
        assert_eq!(caps("key = value", "(%w+)%s*=%s*(%w+)"), ["key", "value"]);
        assert_eq!(caps("abc123", "^(%a+)(%d+)$"), ["abc", "123"]);
        assert_eq!(caps("x-y", "([^-]+)-(.*)"), ["x", "y"]);
        assert_eq!(caps("a]b", "([]])"), ["]"]);
        assert_eq!(caps("f00d", "(%x+)"), ["f00d"]);
        assert_eq!(caps("AbcD", "(%u)(%l)(%U)"), ["A", "b", "c"]);
        assert_eq!(caps("<<a>>", "<(.-)>"), ["<a"]);
        assert_eq!(caps("<<a>>", "<(.*)>"), ["<a>"]);
        assert_eq!(caps("color colour", "(colou?r)$"), ["colour"]);
        assert_eq!(caps("a.b", "(%.)"), ["."]);
        assert_eq!(caps("a\0b", "(%z)"), ["\0"]);
        assert_eq!(caps("x9", "([a-z])([0-9])"), ["x", "9"]);
        assert_eq!(find("abc", "^b"), Ok(None));
        assert_eq!(find("", ""), Ok(Some((1, 0, vec![]))));
        assert_eq!(find("a$b", "$b"), Ok(Some((2, 3, vec![]))));
    }

    #[test]
    fn balance_frontier_back_references_and_positions() {
        assert_eq!(caps("f(a(b)c) d", "(%b())"), ["(a(b)c)"]);
        assert_eq!(caps("THE (quick) fox", "%f[%a](%a+)%f[%A]"), ["THE"]);
        assert_eq!(caps("hello THE end", "%f[%u](%u+)"), ["THE"]);
        assert_eq!(caps("say 'hi' now", "(['\"])(.-)%1"), ["'", "hi"]);
        assert_eq!(caps("hello", "()ll()"), ["3", "5"]);
    }

    #[test]
    fn malformed_patterns_are_errors_worded_as_lua() {
        for (pat, msg) in [
            ("abc%", "malformed pattern (ends with '%')"),
            ("[abc", "malformed pattern (missing ']')"),
            ("%f(", "missing '[' after '%f' in pattern"),
            ("(a", "unfinished capture"),
            ("a)", "invalid pattern capture"),
            ("%1", "invalid capture index"),
            ("%b(", "unbalanced pattern"),
        ] {
            let err = find("abc(", pat).expect_err(pat);
            assert!(err.contains(msg), "{pat}: {err}");
        }
        let deep = "(".repeat(40) + &")".repeat(40);
        assert!(
            find("x", &deep)
                .expect_err("captures")
                .contains("too many captures")
        );
        let nested = "a?".repeat(300);
        assert!(
            find(&"a".repeat(300), &nested)
                .expect_err("depth")
                .contains("pattern too complex")
        );
    }

    #[test]
    fn backtracking_is_charged_and_stops_when_charge_fails() {
        let src = "a".repeat(3000);
        let mut spent = 0u64;
        let mut charge = |n: u64| {
            spent += n;
            if spent > 1_000_000 {
                Err(mlua::Error::runtime("budget"))
            } else {
                Ok(())
            }
        };
        let mut m = Matcher::new(src.as_bytes(), b".-.-.-.-b", &mut charge);
        let err = m.try_at(0, 0).expect_err("stopped");
        assert!(err.to_string().contains("budget"));
        assert!((1_000_000..1_000_000 + 2 * u64::from(CHARGE_EVERY)).contains(&spent));
    }

    #[test]
    fn specials_tell_patterns_from_plain_text() {
        assert!(!has_specials(b"abc def/x"));
        for p in [
            "a.b", "^a", "a$", "a*", "a+", "a?", "(a)", "[a]", "%a", "a-b",
        ] {
            assert!(has_specials(p.as_bytes()), "{p}");
        }
    }
}
