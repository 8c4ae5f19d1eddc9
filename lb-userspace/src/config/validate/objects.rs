//! Validation of the objects scripts name: string and IP groups (inline or from a file
//! relative to the config), rate limiters, and a virtual service's `rate_limit`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::Validator;
use crate::config::diag::Diagnostic;
use crate::config::groups::{
    DEFAULT_RATE_LIMIT_KEYS, IpEntry, IpGroup, RateLimiterConfig, StringEntry, StringGroup,
    VsRateLimit, file_lines, known_names, string_file_entry,
};
use crate::config::model::ServiceType;
use crate::config::raw::{
    RawIpGroup, RawRateLimiter, RawStringEntries, RawStringGroup, RawVsRateLimit, SStr,
};

/// Where a group's entries come from.
enum Source<'r, T> {
    Inline(&'r Spanned<T>),
    /// The file's path and its text.
    File(PathBuf, String),
}

impl Validator<'_> {
    /// A new name of `what` (`string group`, ...), or an error for an empty or repeated one.
    fn unique_name(
        &mut self,
        name: &SStr,
        seen: &mut HashMap<String, usize>,
        what: &str,
    ) -> Option<String> {
        let n = name.get_ref();
        if n.is_empty() {
            self.sink
                .error(name.span(), format!("{what} name must not be empty"));
            return None;
        }
        if let Some(&line) = seen.get(n) {
            self.sink.error(
                name.span(),
                format!("duplicate {what} name `{n}` (first defined on line {line})"),
            );
            return None;
        }
        seen.insert(n.clone(), self.line_of(&name.span()));
        Some(n.clone())
    }

    /// A group's new name and its entries' source: the inline `entries` or the text of
    /// `file`, exactly one of them.
    fn group_head<'r, T>(
        &mut self,
        name: &SStr,
        entries: Option<&'r Spanned<T>>,
        file: Option<&SStr>,
        what: &str,
        seen: &mut HashMap<String, usize>,
    ) -> Option<(String, Source<'r, T>)> {
        let source = self.group_source(name, entries, file, what);
        let name = self.unique_name(name, seen, what)?;
        Some((name, source?))
    }

    fn group_source<'r, T>(
        &mut self,
        name: &SStr,
        entries: Option<&'r Spanned<T>>,
        file: Option<&SStr>,
        what: &str,
    ) -> Option<Source<'r, T>> {
        match (entries, file) {
            (Some(_), Some(f)) => {
                self.sink.error(
                    f.span(),
                    format!("{what} has both `entries` and `file`; keep one"),
                );
                None
            }
            (None, None) => {
                self.sink
                    .error(name.span(), format!("{what} needs `entries` or `file`"));
                None
            }
            (Some(e), None) => Some(Source::Inline(e)),
            (None, Some(f)) => {
                let path = self.relative_path(f.get_ref());
                match std::fs::read_to_string(&path) {
                    Ok(text) => Some(Source::File(path, text)),
                    Err(e) => {
                        self.sink.error(
                            f.span(),
                            format!("cannot read {what} file {}: {e}", path.display()),
                        );
                        None
                    }
                }
            }
        }
    }

    pub(super) fn string_groups(
        &mut self,
        raws: &[RawStringGroup],
    ) -> BTreeMap<String, StringGroup> {
        let mut out = BTreeMap::new();
        let mut seen = HashMap::new();
        for raw in raws {
            let what = "string group";
            let Some((name, source)) = self.group_head(
                &raw.name,
                raw.entries.as_ref(),
                raw.file.as_ref(),
                what,
                &mut seen,
            ) else {
                continue;
            };
            let entries: Vec<StringEntry> = match source {
                Source::Inline(e) => match e.get_ref() {
                    RawStringEntries::List(keys) => keys
                        .iter()
                        .map(|k| StringEntry {
                            key: k.clone(),
                            value: None,
                        })
                        .collect(),
                    RawStringEntries::Map(pairs) => pairs
                        .iter()
                        .map(|(k, v)| StringEntry {
                            key: k.clone(),
                            value: Some(v.clone()),
                        })
                        .collect(),
                },
                Source::File(_, text) => file_lines(&text)
                    .map(|(_, line)| string_file_entry(line))
                    .collect(),
            };
            out.insert(name.clone(), StringGroup::new(name, entries));
        }
        out
    }

    pub(super) fn ip_groups(&mut self, raws: &[RawIpGroup]) -> BTreeMap<String, IpGroup> {
        let mut out = BTreeMap::new();
        let mut seen = HashMap::new();
        for raw in raws {
            let what = "ip group";
            let Some((name, source)) = self.group_head(
                &raw.name,
                raw.entries.as_ref(),
                raw.file.as_ref(),
                what,
                &mut seen,
            ) else {
                continue;
            };
            let mut entries = Vec::new();
            match source {
                Source::Inline(list) => {
                    for item in list.get_ref() {
                        match item.get_ref().parse::<IpEntry>() {
                            Ok(e) => entries.push(e),
                            Err(msg) => self.sink.error(item.span(), msg),
                        }
                    }
                }
                Source::File(path, text) => {
                    for (line, item) in file_lines(&text) {
                        match item.parse::<IpEntry>() {
                            Ok(e) => entries.push(e),
                            Err(message) => {
                                let raw_line = text.lines().nth(line - 1).unwrap_or("");
                                let col = raw_line.len() - raw_line.trim_start().len() + 1;
                                self.sink.push(Diagnostic {
                                    file: path.clone(),
                                    line,
                                    col,
                                    message,
                                });
                            }
                        }
                    }
                }
            }
            out.insert(name.clone(), IpGroup::new(name, &entries));
        }
        out
    }

    pub(super) fn rate_limiters(&mut self, raws: &[RawRateLimiter]) -> Vec<RateLimiterConfig> {
        let mut out = Vec::new();
        let mut seen = HashMap::new();
        for raw in raws {
            let Some(name) = self.unique_name(&raw.name, &mut seen, "rate limiter") else {
                continue;
            };
            let count = match u64::try_from(*raw.count.get_ref()) {
                Ok(n) if n >= 1 => n,
                _ => {
                    self.sink.error(
                        raw.count.span(),
                        format!(
                            "rate limiter count must be at least 1, got {}",
                            raw.count.get_ref()
                        ),
                    );
                    1
                }
            };
            let period = self.duration(raw.period.as_ref(), Duration::from_secs(1));
            let burst = match &raw.burst {
                None => 0,
                Some(b) => u64::try_from(*b.get_ref()).unwrap_or_else(|_| {
                    self.sink
                        .error(b.span(), "rate limiter burst must not be negative");
                    0
                }),
            };
            let max_keys = match &raw.max_keys {
                None => DEFAULT_RATE_LIMIT_KEYS,
                Some(m) => match usize::try_from(*m.get_ref()) {
                    Ok(n) if n >= 1 => n,
                    _ => {
                        self.sink
                            .error(m.span(), "rate limiter max_keys must be at least 1");
                        DEFAULT_RATE_LIMIT_KEYS
                    }
                },
            };
            out.push(RateLimiterConfig {
                name,
                count,
                period,
                burst: burst.max(count),
                max_keys,
            });
        }
        out
    }

    pub(super) fn vs_rate_limit(
        &mut self,
        raw: &Spanned<RawVsRateLimit>,
        kind: ServiceType,
        limiters: &[RateLimiterConfig],
    ) -> Option<VsRateLimit> {
        if kind != ServiceType::Http {
            self.sink.error(
                raw.span(),
                "rate_limit is for DataScripts (avi.vs.rate_limit), which run on http services only",
            );
            return None;
        }
        let r = raw.get_ref();
        let limiter = r.limiter.get_ref();
        if !limiters.iter().any(|l| &l.name == limiter) {
            self.sink.error(
                r.limiter.span(),
                format!(
                    "unknown rate limiter `{limiter}` ({})",
                    known_names(limiters.iter().map(|l| l.name.as_str()), "rate limiters")
                ),
            );
            return None;
        }
        Some(VsRateLimit {
            limiter: limiter.clone(),
            action: r.action.unwrap_or_default(),
        })
    }
}
