use std::sync::Arc;

use rcgen::{CertificateParams, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::pki_types::CertificateDer;

use super::*;
use crate::proxy::TlsInfo;

/// A client certificate (CN alice, O latch tests, a DNS SAN) and its DER.
fn client_cert() -> CertificateDer<'static> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = CertificateParams::new(vec!["alice.example.com".to_string()]).expect("params");
    params.distinguished_name.push(DnType::CommonName, "alice");
    params
        .distinguished_name
        .push(DnType::OrganizationName, "latch tests");
    params.self_signed(&key).expect("cert").der().clone()
}

/// Runs `script` at HTTP_REQ on a connection with `tls` and returns what it logged.
fn eval_tls(script: &str, tls: Option<TlsInfo>) -> String {
    let f = fx(script, "");
    let mut t = f.hooks.begin(TxnInfo {
        tls: tls.map(Arc::new),
        ..info()
    });
    let mut r = req("/", &[("host", "shop.example.com")]);
    forward(t.on_request(&mut r));
    t.log_output().unwrap_or_default()
}

const REPORT: &str = r#"
local function show(v) return type(v) .. ":" .. tostring(v) end
avi.vs.log(table.concat({
  show(avi.ssl.protocol()), show(avi.ssl.cipher()), show(avi.ssl.server_name()),
  show(avi.ssl.check_client_cert_validity()), show(avi.http.secure()),
  show(avi.http.protocol()), show(avi.http.scheme())}, "|"))
"#;

#[test]
fn plain_http_reports_no_tls() {
    assert_eq!(
        eval_tls(REPORT, None),
        "string:unknown|string:|string:|number:0|nil:nil|string:http|string:http://"
    );
}

#[test]
fn a_tls_connection_reports_version_cipher_sni_and_https() {
    let tls = TlsInfo::new(
        "TLSv1.2",
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        Some("shop.example.com".into()),
        None,
    );
    assert_eq!(
        eval_tls(REPORT, Some(tls.clone())),
        "string:TLSv1.2|string:ECDHE-RSA-AES128-GCM-SHA256|string:shop.example.com|number:0|string:on|string:https|string:https://"
    );
    assert_eq!(
        eval_tls("avi.vs.log(avi.ssl.cipher(true))", Some(tls)),
        "ECDHE-RSA-AES128-GCM-SHA256 TLSv1.2 Kx=ECDH Au=RSA Enc=AESGCM(128) Mac=AEAD"
    );
}

#[test]
fn client_cert_fields_by_constant_and_by_name() {
    let der = client_cert();
    let tls = TlsInfo::new(
        "TLSv1.3",
        "TLS13_AES_128_GCM_SHA256",
        None,
        Some(vec![der.clone()]),
    );
    let out = eval_tls(
        r#"
local subject, serial, fp = avi.ssl.client_cert(avi.CLIENT_CERT_SUBJECT, avi.CLIENT_CERT_SERIAL,
  avi.CLIENT_CERT_FINGERPRINT)
local issuer = avi.ssl.client_cert("avi.CLIENT_CERT_ISSUER")
local pem = avi.ssl.client_cert()
local san, version = avi.ssl.client_cert(avi.CLIENT_CERT_SAN_EXTENSION, avi.CLIENT_CERT_VERSION)
avi.vs.log(table.concat({subject, issuer, serial, fp, tostring(avi.ssl.check_client_cert_validity()),
  san, version, pem}, "|"))
"#,
        Some(tls),
    );
    let parts: Vec<&str> = out.splitn(8, '|').collect();
    assert_eq!(parts.len(), 8, "{out}");
    assert!(
        parts[0].contains("CN=alice") && parts[0].contains("O=latch tests"),
        "{out}"
    );
    assert_eq!(parts[0], parts[1], "self-signed: issuer is subject");
    assert!(
        !parts[2].is_empty()
            && parts[2]
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase()),
        "{out}"
    );
    use sha1::Digest;
    let fp: String = sha1::Sha1::digest(der.as_ref())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(parts[3], fp);
    assert_eq!(parts[4], "1");
    assert_eq!(parts[5], "DNS:alice.example.com");
    assert_eq!(parts[6], "3");
    assert!(
        parts[7].starts_with("-----BEGIN CERTIFICATE-----\n\t"),
        "{out}"
    );
    assert!(parts[7].ends_with("\n\t-----END CERTIFICATE-----"), "{out}");
}

#[test]
fn client_cert_without_a_certificate_is_nil_and_a_bad_field_an_error() {
    let tls = TlsInfo::new("TLSv1.3", "TLS13_AES_128_GCM_SHA256", None, None);
    assert_eq!(
        eval_tls(
            "avi.vs.log(tostring(avi.ssl.client_cert()) .. tostring(avi.ssl.client_cert(avi.CLIENT_CERT_SUBJECT)))",
            Some(tls.clone())
        ),
        "nilnil"
    );
    let out = eval_tls(
        "local ok, err = pcall(avi.ssl.client_cert, 42) avi.vs.log(tostring(ok) .. ' ' .. tostring(err))",
        Some(tls),
    );
    assert!(
        out.starts_with(
            "false runtime error: bad argument #1 to 'client_cert' (avi.CLIENT_CERT or avi.CLIENT_CERT_* expected)"
        ),
        "{out}"
    );
}
