//! Diagnostics that point into the config file: `file:line:col: message`.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem found in a configuration, located in a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// File the problem is in (the config file or a script file it names).
    pub file: PathBuf,
    /// 1-based line; 0 when the problem is about the whole file (e.g. it cannot be read).
    pub line: usize,
    /// 1-based column in characters; 0 together with `line == 0`.
    pub col: usize,
    /// What is wrong, in one line.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.col,
                self.message
            )
        }
    }
}

/// Every problem found in a configuration, in file order. A config with any of them is refused
/// as a whole, so the user gets the complete list in one go instead of fixing errors one by one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors {
    /// The problems, sorted by file, line and column.
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl ConfigErrors {
    /// A single diagnostic about a whole file.
    pub fn whole_file(file: &Path, message: impl Into<String>) -> Self {
        Self {
            diagnostics: vec![Diagnostic {
                file: file.to_path_buf(),
                line: 0,
                col: 0,
                message: message.into(),
            }],
        }
    }

    /// Number of problems.
    pub fn len(&self) -> usize {
        self.diagnostics.len()
    }

    /// True when there are no problems (never the case for a returned error).
    pub fn is_empty(&self) -> bool {
        self.diagnostics.is_empty()
    }
}

/// Maps byte offsets of one text to line and column, and collects diagnostics against it.
pub(crate) struct Sink<'a> {
    file: &'a Path,
    text: &'a str,
    /// Byte offset at which each line starts.
    line_starts: Vec<usize>,
    pub(crate) diagnostics: Vec<Diagnostic>,
}

impl<'a> Sink<'a> {
    pub(crate) fn new(file: &'a Path, text: &'a str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Self {
            file,
            text,
            line_starts,
            diagnostics: Vec::new(),
        }
    }

    /// 1-based (line, column) of a byte offset; the column counts characters.
    pub(crate) fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line_idx = match self.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i.saturating_sub(1),
        };
        let start = self.line_starts.get(line_idx).copied().unwrap_or(0);
        let col = self
            .text
            .get(start..offset)
            .map(|s| s.chars().count())
            .unwrap_or(0);
        (line_idx + 1, col + 1)
    }

    pub(crate) fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        let (line, col) = self.line_col(span.start);
        self.diagnostics.push(Diagnostic {
            file: self.file.to_path_buf(),
            line,
            col,
            message: message.into(),
        });
    }

    /// Adds a diagnostic about another file (a script file), or about the whole config file.
    pub(crate) fn push(&mut self, diagnostic: Diagnostic) {
        self.diagnostics.push(diagnostic);
    }

    /// A toml error: syntax or a serde error from a value deserializer. `fallback` locates
    /// errors toml could not place (rare: e.g. an integer overflow).
    pub(crate) fn toml_error(&mut self, err: &toml::de::Error, fallback: Range<usize>) {
        let span = err.span().unwrap_or(fallback);
        self.error(span, err.message().trim_end().to_string());
    }

    pub(crate) fn text(&self) -> &'a str {
        self.text
    }

    /// `value` if nothing was reported, else every diagnostic.
    pub(crate) fn into_result<T>(self, value: T) -> Result<T, ConfigErrors> {
        if self.diagnostics.is_empty() {
            Ok(value)
        } else {
            Err(self.into_errors())
        }
    }

    /// The diagnostics in file order.
    pub(crate) fn into_errors(mut self) -> ConfigErrors {
        self.diagnostics
            .sort_by(|a, b| (&a.file, a.line, a.col).cmp(&(&b.file, b.line, b.col)));
        self.diagnostics.dedup();
        ConfigErrors {
            diagnostics: self.diagnostics,
        }
    }
}
