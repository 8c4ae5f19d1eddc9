//! TOML configuration: schema, validation with file:line:col errors, diff between two configs.
//!
//! Parsing happens in two steps so that one run reports every mistake: the TOML document is
//! parsed into spanned values, each section and each `[[pool]]` / `[[virtual_service]]` is
//! deserialized on its own (serde stops at the first error of a struct), and then values and
//! cross-references are checked, each failure recorded with its location.

mod diag;
mod diff;
mod geo;
mod groups;
mod model;
mod raw;
mod tls;
mod validate;

#[cfg(test)]
mod tests;

use std::path::Path;

pub use diag::{ConfigErrors, Diagnostic};
pub use diff::{ConfigDiff, diff};
pub use geo::{GeoDatabase, GeoReader};
pub use groups::{
    DEFAULT_RATE_LIMIT_KEYS, Groups, IpEntry, IpGroup, RateLimitAction, RateLimiterConfig,
    StringEntry, StringGroup, StringMatch, VsRateLimit, known_names,
};
pub use model::*;
pub use tls::{
    CertError, CertFile, ClientCa, ClientCertMode, PoolTls, TlsCertificate, TlsSettings,
    TlsVersion, load_certificate, name_matches,
};

/// Reads and validates the config file at `path`, including the script files it names.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let bytes = std::fs::read(path)
        .map_err(|e| ConfigErrors::whole_file(path, format!("cannot read config: {e}")))?;
    let text =
        String::from_utf8(bytes).map_err(|e| not_utf8(path, e.as_bytes(), e.utf8_error()))?;
    parse(&text, path)
}

/// The error for a file that is not UTF-8, at the line and column of its first bad byte.
pub(crate) fn not_utf8(path: &Path, bytes: &[u8], e: std::str::Utf8Error) -> ConfigErrors {
    let valid = &bytes[..e.valid_up_to()];
    let line_start = valid.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let col = String::from_utf8_lossy(&valid[line_start..])
        .chars()
        .count()
        + 1;
    ConfigErrors {
        diagnostics: vec![Diagnostic {
            file: path.to_path_buf(),
            line: valid.iter().filter(|b| **b == b'\n').count() + 1,
            col,
            message: format!(
                "the file is not UTF-8 (invalid byte 0x{:02x}); save it as UTF-8",
                bytes.get(e.valid_up_to()).copied().unwrap_or(0)
            ),
        }],
    }
}

/// Validates config `text` as if read from `path`; script `file`s are resolved against
/// `path`'s directory and read from disk.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
    validate::build(text, path)
}
