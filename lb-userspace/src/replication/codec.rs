//! Redis key layout and the change messages hosts publish: pure, no I/O.
//!
//! A table entry lives at `latch:<len>:<vs>:<len>:<table>:<key>`: the virtual service and
//! table names are length-prefixed (in bytes) so that any name, even one containing `:`,
//! decodes back unambiguously, and the key is the rest. Changes travel on [`CHANNEL`] as JSON
//! carrying the origin's node id, so that a host ignores its own echoes.

use serde::{Deserialize, Serialize};

/// Every latch key starts with this (what the reconcile SCANs for).
pub const KEY_PREFIX: &str = "latch:";
/// The pattern matching every latch table key.
pub const KEY_PATTERN: &str = "latch:*";
/// The Pub/Sub channel changes are published on.
pub const CHANNEL: &str = "latch:changes";

/// Why a Redis key or message is not one of ours.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The key does not have the `latch:<len>:<vs>:<len>:<table>:<key>` layout.
    #[error("not a latch table key: {key:?}")]
    Key {
        /// The key as found.
        key: String,
    },
    /// The message is not a change message.
    #[error("bad change message: {reason}")]
    Message {
        /// The JSON error.
        reason: String,
    },
}

/// The Redis key of (`vs`, `table`, `key`).
pub fn encode_key(vs: &str, table: &str, key: &str) -> String {
    format!(
        "{KEY_PREFIX}{}:{vs}:{}:{table}:{key}",
        vs.len(),
        table.len()
    )
}

/// A decoded Redis key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyParts {
    /// Virtual service.
    pub vs: String,
    /// Table ("" for the default table).
    pub table: String,
    /// Key inside the table.
    pub key: String,
}

/// Splits `<len>:<field>:` off the front of `s`.
fn take_field(s: &str) -> Option<(&str, &str)> {
    let (len, rest) = s.split_once(':')?;
    if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let len: usize = len.parse().ok()?;
    let field = rest.get(..len)?;
    let rest = rest.get(len..)?.strip_prefix(':')?;
    Some((field, rest))
}

/// (vs, table, key) of a key made by [`encode_key`].
pub fn decode_key(redis_key: &str) -> Result<KeyParts, CodecError> {
    let parts = redis_key.strip_prefix(KEY_PREFIX).and_then(|rest| {
        let (vs, rest) = take_field(rest)?;
        let (table, key) = take_field(rest)?;
        Some(KeyParts {
            vs: vs.to_string(),
            table: table.to_string(),
            key: key.to_string(),
        })
    });
    parts.ok_or_else(|| CodecError::Key {
        key: redis_key.to_string(),
    })
}

/// What happened to an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeOp {
    /// Stored, refreshed or replaced: holds `value` for `ttl_ms` more.
    Up,
    /// Removed (script, admin API, flush).
    Rm,
    /// Expired on the origin.
    Ex,
}

/// One change as published on [`CHANNEL`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The origin's node id.
    pub node: String,
    /// What happened.
    pub op: ChangeOp,
    /// Virtual service.
    pub vs: String,
    /// Table.
    pub table: String,
    /// Key.
    pub key: String,
    /// The value (for [`ChangeOp::Up`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Remaining lifetime in milliseconds (for [`ChangeOp::Up`]); a duration rather than a
    /// deadline because every host's CLOCK_MONOTONIC counts from its own boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
}

impl Change {
    /// The JSON text published.
    pub fn encode(&self) -> String {
        // Serialising plain strings and integers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses a published message.
    pub fn decode(text: &str) -> Result<Self, CodecError> {
        let c: Change = serde_json::from_str(text).map_err(|e| CodecError::Message {
            reason: e.to_string(),
        })?;
        if c.op == ChangeOp::Up && (c.value.is_none() || c.ttl_ms.is_none()) {
            return Err(CodecError::Message {
                reason: "an `up` change needs value and ttl_ms".into(),
            });
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_whatever_the_names_contain() {
        for (vs, table, key) in [
            ("shop", "", "abc"),
            ("a:b", "t:1", "k:2:x"),
            ("", "", ""),
            ("vs", "ids", "12345"),
            ("ü", "é:", ":"),
        ] {
            let k = encode_key(vs, table, key);
            assert!(k.starts_with(KEY_PREFIX));
            assert_eq!(
                decode_key(&k),
                Ok(KeyParts {
                    vs: vs.into(),
                    table: table.into(),
                    key: key.into()
                }),
                "{k}"
            );
        }
        assert_eq!(encode_key("shop", "", "abc"), "latch:4:shop:0::abc");
        // Distinct triples never share a key even when their concatenations do.
        assert_ne!(encode_key("a:", "b", "c"), encode_key("a", ":b", "c"));
    }

    #[test]
    fn foreign_keys_are_refused() {
        for k in [
            "latch:changes",
            "other:4:shop:0::k",
            "latch:9:shop:0::k",
            "latch:4:shopX0::k",
            "latch:x:shop:0::k",
            "latch:4:shop:1::k",
            "latch:-1:shop:0::k",
        ] {
            assert!(decode_key(k).is_err(), "{k}");
        }
    }

    #[test]
    fn changes_round_trip_and_bad_ones_are_refused() {
        let up = Change {
            node: "lb-1".into(),
            op: ChangeOp::Up,
            vs: "shop".into(),
            table: "".into(),
            key: "s1".into(),
            value: Some("192.0.2.11".into()),
            ttl_ms: Some(1_200_000),
        };
        assert_eq!(Change::decode(&up.encode()), Ok(up.clone()));
        let rm = Change {
            op: ChangeOp::Rm,
            value: None,
            ttl_ms: None,
            ..up.clone()
        };
        let text = rm.encode();
        assert!(!text.contains("ttl_ms"), "{text}");
        assert_eq!(Change::decode(&text), Ok(rm));
        let missing_ttl = Change { ttl_ms: None, ..up };
        assert!(Change::decode(&missing_ttl.encode()).is_err());
        assert!(Change::decode("not json").is_err());
        assert!(Change::decode(r#"{"node":"x","op":"zap","vs":"","table":"","key":""}"#).is_err());
    }
}
