//! Small MaxMind DB files for tests of `avi.utils.get_geo_from_ip`: no real GeoIP database
//! is needed (or shipped), and every address a test looks up is its own RFC 5737 one.
//!
//! Writes format 2.0 as MaxMind specifies it: an IPv4 search tree with 24-bit records, the
//! data section, and the metadata map after the `\xAB\xCD\xEFMaxMind.com` marker.
//!
//! ```
//! use latch_tests::mmdb::{Value, ipv4_database};
//!
//! let db = ipv4_database(&[(
//!     "192.0.2.0/24",
//!     Value::Map(vec![("country", Value::Map(vec![("iso_code", Value::Str("US"))]))]),
//! )]);
//! assert!(db.windows(14).any(|w| w == b"\xAB\xCD\xEFMaxMind.com"));
//! ```

use std::net::Ipv4Addr;

/// A value of the data section.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// UTF-8 string.
    Str(&'static str),
    /// 16-bit unsigned integer.
    U16(u16),
    /// 32-bit unsigned integer.
    U32(u32),
    /// 64-bit unsigned integer.
    U64(u64),
    /// Double.
    Double(f64),
    /// Map with string keys, in this order.
    Map(Vec<(&'static str, Value)>),
    /// Array.
    Array(Vec<Value>),
}

/// Type numbers of the format.
const STRING: u8 = 2;
const DOUBLE: u8 = 3;
const UINT16: u8 = 5;
const UINT32: u8 = 6;
const MAP: u8 = 7;
const UINT64: u8 = 9;
const ARRAY: u8 = 11;

/// The control byte(s) of a field of type `kind` and `size`.
fn control(out: &mut Vec<u8>, kind: u8, size: usize) {
    let (bits, extra): (u8, Vec<u8>) = match size {
        0..29 => (size as u8, vec![]),
        29..285 => (29, vec![(size - 29) as u8]),
        _ => (30, ((size - 285) as u16).to_be_bytes().to_vec()),
    };
    if kind <= 7 {
        out.push((kind << 5) | bits);
    } else {
        // Extended type: type 0 in the control byte, the rest in the next one.
        out.push(bits);
        out.push(kind - 7);
    }
    out.extend(extra);
}

fn uint(out: &mut Vec<u8>, kind: u8, v: u64) {
    let bytes = v.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    control(out, kind, 8 - skip);
    out.extend(&bytes[skip..]);
}

fn encode(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Str(s) => {
            control(out, STRING, s.len());
            out.extend(s.as_bytes());
        }
        Value::Double(d) => {
            control(out, DOUBLE, 8);
            out.extend(d.to_be_bytes());
        }
        Value::U16(n) => uint(out, UINT16, u64::from(*n)),
        Value::U32(n) => uint(out, UINT32, u64::from(*n)),
        Value::U64(n) => uint(out, UINT64, *n),
        Value::Map(fields) => {
            control(out, MAP, fields.len());
            for (k, v) in fields {
                encode(out, &Value::Str(k));
                encode(out, v);
            }
        }
        Value::Array(items) => {
            control(out, ARRAY, items.len());
            for v in items {
                encode(out, v);
            }
        }
    }
}

/// A search-tree record: a node, no data, or an offset in the data section.
#[derive(Clone, Copy)]
enum Record {
    Empty,
    Node(usize),
    Data(usize),
}

/// An IPv4 database mapping each `"a.b.c.d/len"` prefix (len 1 to 32) to its record.
///
/// # Panics
/// On a prefix that does not parse or that lies inside an earlier one (test data only).
pub fn ipv4_database(entries: &[(&str, Value)]) -> Vec<u8> {
    let mut nodes = vec![[Record::Empty; 2]];
    let mut data = Vec::new();
    for (prefix, record) in entries {
        let (addr, len) = prefix.split_once('/').expect("prefix as a.b.c.d/len");
        let bits = u32::from(addr.parse::<Ipv4Addr>().expect("IPv4 address"));
        let len: usize = len.parse().expect("prefix length");
        assert!((1..=32).contains(&len), "prefix length {len}");
        let offset = data.len();
        encode(&mut data, record);
        let mut node = 0;
        for i in 0..len {
            let bit = ((bits >> (31 - i)) & 1) as usize;
            if i + 1 == len {
                nodes[node][bit] = Record::Data(offset);
            } else if let Record::Node(next) = nodes[node][bit] {
                node = next;
            } else {
                assert!(
                    matches!(nodes[node][bit], Record::Empty),
                    "{prefix} is inside an earlier prefix"
                );
                nodes.push([Record::Empty; 2]);
                let next = nodes.len() - 1;
                nodes[node][bit] = Record::Node(next);
                node = next;
            }
        }
    }
    let count = nodes.len();
    let mut out = Vec::new();
    for record in nodes.iter().flatten() {
        let v = match *record {
            Record::Empty => count,
            Record::Node(n) => n,
            // Data pointers count from the end of the 16-byte separator.
            Record::Data(off) => count + 16 + off,
        } as u32;
        out.extend(&v.to_be_bytes()[1..]);
    }
    out.extend([0u8; 16]);
    out.extend(data);
    out.extend(b"\xAB\xCD\xEFMaxMind.com");
    let metadata = Value::Map(vec![
        ("binary_format_major_version", Value::U16(2)),
        ("binary_format_minor_version", Value::U16(0)),
        ("build_epoch", Value::U64(1_700_000_000)),
        ("database_type", Value::Str("latch-test-City")),
        (
            "description",
            Value::Map(vec![("en", Value::Str("latch test"))]),
        ),
        ("ip_version", Value::U16(4)),
        ("languages", Value::Array(vec![Value::Str("en")])),
        ("node_count", Value::U32(count as u32)),
        ("record_size", Value::U16(24)),
    ]);
    encode(&mut out, &metadata);
    out
}

/// A country-only record in GeoIP2 form: `{country = {iso_code, names = {en}}}`.
pub fn country(iso_code: &'static str, name: &'static str) -> Value {
    Value::Map(vec![(
        "country",
        Value::Map(vec![
            ("iso_code", Value::Str(iso_code)),
            ("names", Value::Map(vec![("en", Value::Str(name))])),
        ]),
    )])
}
