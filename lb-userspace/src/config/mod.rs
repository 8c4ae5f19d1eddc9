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
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors::whole_file(path, format!("cannot read config: {e}")))?;
    parse(&text, path)
}

/// Validates config `text` as if read from `path`; script `file`s are resolved against
/// `path`'s directory and read from disk.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
    validate::build(text, path)
}
