//! The objects DataScripts name: `[[string_group]]`, `[[ip_group]]` and `[[rate_limiter]]`,
//! with the matching logic of `avi.stringgroup.*` and `avi.ipgroup.contains` (pure, so it is
//! tested without a Lua VM).
//!
//! Groups are parsed and indexed once, when the config loads; a reload builds new ones and the
//! scripts of the new config see them all at once.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;

/// How `avi.stringgroup.*` compares a string with the group's keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StringMatch {
    /// The whole string is a key.
    Equals,
    /// The string starts with a key.
    BeginsWith,
    /// The string ends with a key.
    EndsWith,
    /// A key occurs in the string.
    Contains,
}

/// One entry of a string group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StringEntry {
    /// What is matched.
    pub key: String,
    /// The mapped value of a key-value entry.
    pub value: Option<String>,
}

/// `[[string_group]]`: a plain list of strings or key-value pairs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StringGroup {
    /// Name scripts pass to `avi.stringgroup.*`.
    pub name: String,
    /// Entries sorted by key length, then key: the first match is the shortest, and ties are
    /// decided the same way on every load.
    entries: Vec<StringEntry>,
    /// The keys in ASCII lower case, same order, for case-insensitive matching.
    lower: Vec<Vec<u8>>,
    /// Exact key to entry index, and lower-cased key to the first (shortest) entry index.
    exact: HashMap<Vec<u8>, usize>,
    exact_lower: HashMap<Vec<u8>, usize>,
}

impl StringGroup {
    /// A group of `entries` (duplicates keep the first).
    pub fn new(name: impl Into<String>, mut entries: Vec<StringEntry>) -> StringGroup {
        entries.sort_by(|a, b| (a.key.len(), &a.key).cmp(&(b.key.len(), &b.key)));
        entries.dedup_by(|b, a| a.key == b.key);
        let lower: Vec<Vec<u8>> = entries
            .iter()
            .map(|e| e.key.as_bytes().to_ascii_lowercase())
            .collect();
        let mut exact = HashMap::with_capacity(entries.len());
        let mut exact_lower = HashMap::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            exact.entry(e.key.as_bytes().to_vec()).or_insert(i);
            exact_lower.entry(lower[i].clone()).or_insert(i);
        }
        StringGroup {
            name: name.into(),
            entries,
            lower,
            exact,
            exact_lower,
        }
    }

    /// The entries, shortest key first.
    pub fn entries(&self) -> &[StringEntry] {
        &self.entries
    }

    /// The shortest entry whose key matches `s` the way `how` says; case-insensitive (ASCII)
    /// unless `case_sensitive`.
    pub fn find(&self, how: StringMatch, case_sensitive: bool, s: &[u8]) -> Option<&StringEntry> {
        let folded;
        let s = if case_sensitive {
            s
        } else {
            folded = s.to_ascii_lowercase();
            &folded
        };
        let keys = |i: usize| -> &[u8] {
            if case_sensitive {
                self.entries[i].key.as_bytes()
            } else {
                &self.lower[i]
            }
        };
        let index = match how {
            StringMatch::Equals => {
                let map = if case_sensitive {
                    &self.exact
                } else {
                    &self.exact_lower
                };
                map.get(s).copied()
            }
            StringMatch::BeginsWith => (0..self.entries.len()).find(|&i| s.starts_with(keys(i))),
            StringMatch::EndsWith => (0..self.entries.len()).find(|&i| s.ends_with(keys(i))),
            StringMatch::Contains => (0..self.entries.len()).find(|&i| contains(s, keys(i))),
        };
        index.map(|i| &self.entries[i])
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || memchr::memmem::find(haystack, needle).is_some()
}

/// `[[ip_group]]`: addresses, prefixes and ranges, IPv4 and IPv6.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpGroup {
    /// Name scripts pass to `avi.ipgroup.contains`.
    pub name: String,
    /// Disjoint, sorted, inclusive ranges.
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

/// One entry of an IP group: an address, a prefix or an inclusive range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpEntry {
    /// `192.0.2.0/24`, `2001:db8::/32` (an address is a prefix of full length).
    Net(IpNet),
    /// `192.0.2.10-192.0.2.20`, both ends of the same family.
    Range(IpAddr, IpAddr),
}

impl std::str::FromStr for IpEntry {
    type Err = String;

    /// An address, `addr/len` or `first-last`.
    fn from_str(text: &str) -> Result<IpEntry, String> {
        let t = text.trim();
        if let Some((a, b)) = t.split_once('-') {
            let bad = || {
                format!("invalid range `{text}`: expected first-last, e.g. 192.0.2.10-192.0.2.20")
            };
            let a: IpAddr = a.trim().parse().map_err(|_| bad())?;
            let b: IpAddr = b.trim().parse().map_err(|_| bad())?;
            if a.is_ipv4() != b.is_ipv4() {
                return Err(format!("range `{text}` mixes IPv4 and IPv6"));
            }
            if a > b {
                return Err(format!("range `{text}` ends before it starts"));
            }
            return Ok(IpEntry::Range(a, b));
        }
        if t.contains('/') {
            return t.parse::<IpNet>().map(IpEntry::Net).map_err(|_| {
                format!("invalid prefix `{text}`: expected e.g. 192.0.2.0/24 or 2001:db8::/32")
            });
        }
        t.parse::<IpAddr>()
            .map(|a| IpEntry::Net(IpNet::from(a)))
            .map_err(|_| {
                format!(
                    "invalid IP group entry `{text}`: expected an address, a prefix (192.0.2.0/24) or a range (192.0.2.10-192.0.2.20)"
                )
            })
    }
}

impl IpEntry {
    fn bounds(self) -> (IpAddr, IpAddr) {
        match self {
            IpEntry::Net(n) => (n.network(), n.broadcast()),
            IpEntry::Range(a, b) => (a, b),
        }
    }
}

impl IpGroup {
    /// A group of `entries`.
    pub fn new(name: impl Into<String>, entries: &[IpEntry]) -> IpGroup {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for e in entries {
            match e.bounds() {
                (IpAddr::V4(a), IpAddr::V4(b)) => v4.push((u32::from(a), u32::from(b))),
                (IpAddr::V6(a), IpAddr::V6(b)) => v6.push((u128::from(a), u128::from(b))),
                // FromStr refuses mixed ranges; a prefix has one family.
                _ => {}
            }
        }
        IpGroup {
            name: name.into(),
            v4: merge(v4),
            v6: merge(v6),
        }
    }

    /// True when `ip` is in an entry. An IPv4-mapped IPv6 address (`::ffff:192.0.2.1`) is
    /// its IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => within(&self.v4, u32::from(a)),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => within(&self.v4, u32::from(v4)),
                None => within(&self.v6, u128::from(a)),
            },
        }
    }
}

/// Sorted, disjoint ranges covering `ranges`.
fn merge<T: Ord + Copy + num_like::Step>(mut ranges: Vec<(T, T)>) -> Vec<(T, T)> {
    ranges.sort();
    let mut out: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        match out.last_mut() {
            Some(last) if lo <= last.1.next_or_max() => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

fn within<T: Ord + Copy>(ranges: &[(T, T)], x: T) -> bool {
    let i = ranges.partition_point(|&(lo, _)| lo <= x);
    i > 0 && x <= ranges[i - 1].1
}

mod num_like {
    /// The integer after this one, saturating (adjacent ranges merge).
    pub trait Step {
        fn next_or_max(self) -> Self;
    }
    impl Step for u32 {
        fn next_or_max(self) -> Self {
            self.saturating_add(1)
        }
    }
    impl Step for u128 {
        fn next_or_max(self) -> Self {
            self.saturating_add(1)
        }
    }
}

/// The string and IP groups of a config, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Groups {
    /// `[[string_group]]`s.
    pub string: BTreeMap<String, StringGroup>,
    /// `[[ip_group]]`s.
    pub ip: BTreeMap<String, IpGroup>,
}

/// What `avi.vs.rate_limit` does when the count is exceeded and the script did not defer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitAction {
    /// Nothing: the script decides.
    None,
    /// Answer 429 Too Many Requests and end the event.
    #[default]
    LocalResponse,
    /// Close the client connection after an empty 429 and end the event.
    CloseConnection,
}

/// `[[rate_limiter]]`: `count` per `period`, with bursts up to `burst`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimiterConfig {
    /// Name scripts pass to `avi.vs.ratelimit.exceed` and a virtual service's `rate_limit`.
    pub name: String,
    /// Requests (tokens) allowed per period, refilled evenly over it.
    pub count: u64,
    /// The period. Default 1s.
    pub period: Duration,
    /// Tokens a key may save up: the larger of `count` and `burst` (Avi: a burst below the
    /// count has no effect).
    pub burst: u64,
    /// Most keys tracked per virtual service; the least recently used go first. Default
    /// 100,000.
    pub max_keys: usize,
}

/// Default `max_keys` of a rate limiter.
pub const DEFAULT_RATE_LIMIT_KEYS: usize = 100_000;

/// A virtual service's `rate_limit`: the profile `avi.vs.rate_limit` uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsRateLimit {
    /// The `[[rate_limiter]]` it counts with.
    pub limiter: String,
    /// What happens when the count is exceeded.
    pub action: RateLimitAction,
}

/// "known X: `a`, `b`" or "no X are defined", for errors about a name that does not exist.
pub fn known_names<'a>(names: impl Iterator<Item = &'a str>, what: &str) -> String {
    let known: Vec<String> = names.map(|n| format!("`{n}`")).collect();
    if known.is_empty() {
        format!("no {what} are defined")
    } else {
        format!("known {what}: {}", known.join(", "))
    }
}

/// The entries of a group file: one a line, trimmed; blank lines and lines starting with `#`
/// are skipped. Each comes with its 1-based line.
pub(crate) fn file_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
}

/// A string group file line: `key`, or `key<TAB>value` for a key-value entry.
pub(crate) fn string_file_entry(line: &str) -> StringEntry {
    match line.split_once('\t') {
        Some((k, v)) => StringEntry {
            key: k.trim_end().to_string(),
            value: Some(v.trim_start().to_string()),
        },
        None => StringEntry {
            key: line.to_string(),
            value: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(keys: &[&str]) -> StringGroup {
        StringGroup::new(
            "g",
            keys.iter()
                .map(|k| StringEntry {
                    key: (*k).to_string(),
                    value: None,
                })
                .collect(),
        )
    }

    fn key_of(g: &StringGroup, how: StringMatch, case: bool, s: &str) -> Option<String> {
        g.find(how, case, s.as_bytes()).map(|e| e.key.clone())
    }

    #[test]
    fn each_match_kind_finds_the_shortest_matching_key() {
        let g = plain(&["/api/v1", "/api", "/static", ".jpg", "bot", "googlebot"]);
        use StringMatch::*;
        assert_eq!(key_of(&g, Equals, false, "/api"), Some("/api".into()));
        assert_eq!(key_of(&g, Equals, false, "/api/"), None);
        assert_eq!(
            key_of(&g, BeginsWith, false, "/api/v1/x"),
            Some("/api".into())
        );
        assert_eq!(key_of(&g, BeginsWith, false, "/ap"), None);
        assert_eq!(key_of(&g, EndsWith, false, "/a/b.jpg"), Some(".jpg".into()));
        assert_eq!(
            key_of(&g, Contains, false, "Mozilla Googlebot/2.1"),
            Some("bot".into())
        );
        assert_eq!(key_of(&g, Contains, false, "curl"), None);
    }

    #[test]
    fn matching_ignores_ascii_case_unless_asked() {
        let g = plain(&["/Admin", "X"]);
        use StringMatch::*;
        assert_eq!(key_of(&g, Equals, false, "/ADMIN"), Some("/Admin".into()));
        assert_eq!(key_of(&g, Equals, true, "/ADMIN"), None);
        assert_eq!(key_of(&g, Equals, true, "/Admin"), Some("/Admin".into()));
        assert_eq!(key_of(&g, BeginsWith, true, "/admin/x"), None);
        assert_eq!(
            key_of(&g, BeginsWith, false, "/admin/x"),
            Some("/Admin".into())
        );
        assert_eq!(key_of(&g, Contains, true, "axb"), None);
        assert_eq!(key_of(&g, EndsWith, false, "abx"), Some("X".into()));
    }

    #[test]
    fn key_value_entries_keep_their_values_and_duplicates_keep_the_first() {
        let g = StringGroup::new(
            "kv",
            vec![
                StringEntry {
                    key: "/shop".into(),
                    value: Some("pool-shop".into()),
                },
                StringEntry {
                    key: "/shop".into(),
                    value: Some("ignored".into()),
                },
            ],
        );
        assert_eq!(g.entries().len(), 1);
        let e = g.find(StringMatch::BeginsWith, false, b"/SHOP/cart");
        assert_eq!(e.and_then(|e| e.value.as_deref()), Some("pool-shop"));
    }

    #[test]
    fn ip_entries_parse_addresses_prefixes_and_ranges() {
        let ok = |s: &str| s.parse::<IpEntry>().expect(s);
        assert_eq!(
            ok("192.0.2.1"),
            IpEntry::Net("192.0.2.1/32".parse().expect("net"))
        );
        assert_eq!(
            ok(" 2001:db8::/32 "),
            IpEntry::Net("2001:db8::/32".parse().expect("net"))
        );
        assert!(matches!(ok("192.0.2.10-192.0.2.20"), IpEntry::Range(..)));
        for bad in [
            "192.0.2",
            "192.0.2.0/33",
            "192.0.2.9-2001:db8::1",
            "192.0.2.9-192.0.2.1",
            "x-y",
        ] {
            assert!(bad.parse::<IpEntry>().is_err(), "{bad}");
        }
    }

    #[test]
    fn ip_group_contains_addresses_in_any_entry() {
        let entries: Vec<IpEntry> = [
            "192.0.2.7",
            "198.51.100.0/24",
            "203.0.113.10-203.0.113.20",
            "203.0.113.21",
            "2001:db8:1::/48",
        ]
        .iter()
        .map(|s| s.parse().expect(s))
        .collect();
        let g = IpGroup::new("g", &entries);
        let has = |s: &str| g.contains(s.parse().expect(s));
        assert!(has("192.0.2.7"));
        assert!(!has("192.0.2.8"));
        assert!(has("198.51.100.255"));
        assert!(has("203.0.113.10") && has("203.0.113.15") && has("203.0.113.21"));
        assert!(!has("203.0.113.9") && !has("203.0.113.22"));
        assert!(has("2001:db8:1:ffff::1"));
        assert!(!has("2001:db8:2::1"));
        assert!(has("::ffff:192.0.2.7"));
        assert_eq!(g.v4.len(), 3, "adjacent ranges merge: {:?}", g.v4);
        assert!(
            IpGroup::new("all", &["0.0.0.0/0".parse().expect("net")])
                .contains("255.255.255.255".parse().expect("ip"))
        );
    }

    #[test]
    fn group_files_skip_comments_and_split_key_values_at_a_tab() {
        let text = "# bots\n\nGooglebot\n  bingbot  \n/shop\tpool-shop\n";
        let lines: Vec<_> = file_lines(text).collect();
        assert_eq!(
            lines,
            [(3, "Googlebot"), (4, "bingbot"), (5, "/shop\tpool-shop")]
        );
        assert_eq!(
            string_file_entry("/shop\tpool-shop"),
            StringEntry {
                key: "/shop".into(),
                value: Some("pool-shop".into())
            }
        );
    }
}
