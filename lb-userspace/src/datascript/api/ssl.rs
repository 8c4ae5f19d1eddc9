//! avi.ssl: the TLS facts of the client connection (`TxnInfo::tls`, from the proxy's
//! handshake) and its client certificate.
//!
//! Values on a plain-HTTP connection (README, "avi.ssl"): `protocol()` is "unknown",
//! `cipher()` and `server_name()` are "", `client_cert(...)` is nil for each field asked, and
//! `check_client_cert_validity()` is 0. A TLS connection without SNI has `server_name()` "".
//! Certificates are verified in the handshake (`client_ca`), so a presented certificate is a
//! valid one: `check_client_cert_validity()` is 0 or 1, never 2.

use std::sync::Arc;

use mlua::{Lua, Table, Value, Variadic};
use sha1::{Digest, Sha1};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::args::{cached_str, lua_str};
use super::{LResult, Namespace, reg, rt, txn, with_ctx};
use crate::datascript::vm::VmShared;
use crate::proxy::TlsInfo;

pub(super) const NAMESPACE: Namespace = Namespace {
    name: "ssl",
    install,
    constants: FIELDS,
};

/// avi.CLIENT_CERT...: the fields `client_cert` can return.
const FIELDS: &[(&str, i64)] = &[
    ("CLIENT_CERT", 1),
    ("CLIENT_CERT_SUBJECT", 2),
    ("CLIENT_CERT_ISSUER", 3),
    ("CLIENT_CERT_SERIAL", 4),
    ("CLIENT_CERT_FINGERPRINT", 5),
    ("CLIENT_CERT_NOTVALIDBEFORE", 6),
    ("CLIENT_CERT_NOTVALIDAFTER", 7),
    ("CLIENT_CERT_VERSION", 8),
    ("CLIENT_CERT_SIGALG", 9),
    ("CLIENT_CERT_ESCAPED", 10),
    ("CLIENT_CERT_SAN_EXTENSION", 11),
    ("CLIENT_CERT_X509_EXTENSIONS", 12),
];

/// A field argument: one of the constants, or its name as a string (`"avi.CLIENT_CERT_ISSUER"`
/// appears in one of Avi's examples).
fn field(v: &Value, pos: usize) -> LResult<i64> {
    let by_name = |name: &str| {
        let name = name.strip_prefix("avi.").unwrap_or(name);
        FIELDS.iter().find(|(n, _)| *n == name).map(|&(_, f)| f)
    };
    let found = match v {
        Value::Integer(i) => FIELDS.iter().any(|&(_, f)| f == *i).then_some(*i),
        Value::Number(n) => FIELDS
            .iter()
            .find(|&&(_, f)| f as f64 == *n)
            .map(|&(_, f)| f),
        Value::String(s) => s.to_str().ok().and_then(|s| by_name(&s)),
        _ => None,
    };
    found.ok_or_else(|| {
        rt(format!(
            "bad argument #{pos} to 'client_cert' (avi.CLIENT_CERT or avi.CLIENT_CERT_* expected)"
        ))
    })
}

fn tls(sh: &VmShared) -> LResult<Option<Arc<TlsInfo>>> {
    with_ctx(sh, |ctx| Ok(txn(ctx)?.info.tls.clone()))
}

fn hex(bytes: &[u8], upper: bool) -> String {
    bytes
        .iter()
        .map(|b| {
            if upper {
                format!("{b:02X}")
            } else {
                format!("{b:02x}")
            }
        })
        .collect()
}

/// PEM as Avi returns it: a tab before every line but the first.
fn tabbed_pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut lines = vec!["-----BEGIN CERTIFICATE-----".to_string()];
    lines.extend(
        b64.as_bytes()
            .chunks(64)
            .map(|c| String::from_utf8_lossy(c).into_owned()),
    );
    lines.push("-----END CERTIFICATE-----".to_string());
    lines.join("\n\t")
}

/// OpenSSL's time format: `Jan  1 00:00:00 2026 GMT`.
fn openssl_time(t: &x509_parser::time::ASN1Time) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let d = t.to_datetime();
    let month = MONTHS
        .get(usize::from(u8::from(d.month())).saturating_sub(1))
        .copied()
        .unwrap_or("?");
    format!(
        "{month} {:>2} {:02}:{:02}:{:02} {} GMT",
        d.day(),
        d.hour(),
        d.minute(),
        d.second(),
        d.year()
    )
}

/// One field of the leaf certificate `der`.
fn cert_field(der: &[u8], field: i64) -> Option<String> {
    if field == 1 {
        return Some(tabbed_pem(der));
    }
    if field == 10 {
        let pem = tabbed_pem(der).replace("\n\t", "\n");
        return Some(
            percent_encoding::utf8_percent_encode(&pem, percent_encoding::NON_ALPHANUMERIC)
                .to_string(),
        );
    }
    if field == 5 {
        return Some(hex(&Sha1::digest(der), false));
    }
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let registry = x509_parser::objects::oid_registry();
    Some(match field {
        2 => cert.subject().to_string(),
        3 => cert.issuer().to_string(),
        4 => hex(cert.raw_serial(), true),
        6 => openssl_time(&cert.validity().not_before),
        7 => openssl_time(&cert.validity().not_after),
        8 => (cert.version().0 + 1).to_string(),
        9 => x509_parser::objects::oid2sn(&cert.signature_algorithm.algorithm, registry)
            .map(str::to_string)
            .unwrap_or_else(|_| cert.signature_algorithm.algorithm.to_id_string()),
        11 => match cert.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .map(|n| match n {
                    GeneralName::DNSName(d) => format!("DNS:{d}"),
                    GeneralName::RFC822Name(e) => format!("email:{e}"),
                    GeneralName::URI(u) => format!("URI:{u}"),
                    GeneralName::IPAddress(ip) => match ip.len() {
                        4 => format!("IP Address:{}.{}.{}.{}", ip[0], ip[1], ip[2], ip[3]),
                        _ => format!("IP Address:{}", hex(ip, true)),
                    },
                    other => format!("{other:?}"),
                })
                .collect::<Vec<_>>()
                .join(", "),
            _ => String::new(),
        },
        12 => cert
            .extensions()
            .iter()
            .map(|e| {
                x509_parser::objects::oid2sn(&e.oid, registry)
                    .map(str::to_string)
                    .unwrap_or_else(|_| e.oid.to_id_string())
            })
            .collect::<Vec<_>>()
            .join(", "),
        _ => return None,
    })
}

fn install(lua: &Lua, sh: &Arc<VmShared>) -> LResult<Table> {
    let ssl = lua.create_table()?;
    reg!(lua, ssl, sh, "protocol", |l, s, a| {
        let t = tls(s)?;
        cached_str(l, s, t.as_ref().map_or("unknown", |t| t.protocol))
    });
    reg!(lua, ssl, sh, "cipher", |l, s, a| {
        let verbose = matches!(a.first(), Some(Value::Boolean(true)));
        let text = match tls(s)? {
            None => String::new(),
            Some(t) if verbose => t.cipher_description(),
            Some(t) => t.cipher_name().to_string(),
        };
        lua_str(l, text.as_bytes())
    });
    reg!(lua, ssl, sh, "server_name", |l, s, a| {
        let t = tls(s)?;
        let name = t.as_ref().and_then(|t| t.server_name.as_deref());
        lua_str(l, name.unwrap_or("").as_bytes())
    });
    reg!(lua, ssl, sh, "client_cert", |l, s, a| {
        let fields: Vec<i64> = if a.is_empty() {
            vec![1]
        } else {
            a.iter()
                .enumerate()
                .map(|(i, v)| field(v, i + 1))
                .collect::<LResult<_>>()?
        };
        let t = tls(s)?;
        let leaf = t
            .as_ref()
            .and_then(|t| t.client_chain.as_ref())
            .and_then(|c| c.first());
        let mut out = Variadic::new();
        for f in fields {
            out.push(match leaf.and_then(|der| cert_field(der.as_ref(), f)) {
                Some(v) => lua_str(l, v.as_bytes())?,
                None => Value::Nil,
            });
        }
        Ok(out)
    });
    reg!(lua, ssl, sh, "check_client_cert_validity", |l, s, a| {
        let t = tls(s)?;
        Ok(i64::from(t.is_some_and(|t| t.client_chain.is_some())))
    });
    Ok(ssl)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_arguments_take_constants_and_their_names() {
        assert_eq!(field(&Value::Integer(3), 1).ok(), Some(3));
        assert_eq!(field(&Value::Number(5.0), 1).ok(), Some(5));
        assert!(field(&Value::Integer(99), 1).is_err());
        assert!(field(&Value::Nil, 1).is_err());
    }

    #[test]
    fn pem_lines_after_the_first_start_with_a_tab() {
        let pem = tabbed_pem(&[0u8; 100]);
        let lines: Vec<&str> = pem.split('\n').collect();
        assert_eq!(lines[0], "-----BEGIN CERTIFICATE-----");
        assert!(lines[1..].iter().all(|l| l.starts_with('\t')), "{pem}");
        assert_eq!(lines.last().copied(), Some("\t-----END CERTIFICATE-----"));
    }
}
