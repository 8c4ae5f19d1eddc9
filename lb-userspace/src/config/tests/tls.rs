use std::path::PathBuf;

use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256, RsaKeySize};

use super::*;

/// A self-signed certificate for `names` written as `dir/<file>.pem` and `.key` (PKCS#8).
fn cert(dir: &Path, file: &str, names: &[&str], rsa: bool) -> (PathBuf, PathBuf) {
    let key = if rsa {
        KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_2048)
    } else {
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
    }
    .expect("key");
    let params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        .expect("params");
    let c = params.self_signed(&key).expect("cert");
    let (cp, kp) = (
        dir.join(format!("{file}.pem")),
        dir.join(format!("{file}.key")),
    );
    std::fs::write(&cp, c.pem()).expect("write cert");
    std::fs::write(&kp, key.serialize_pem()).expect("write key");
    (cp, kp)
}

fn tls_config(dir: &Path, vs_extra: &str) -> Result<Config, Vec<String>> {
    let text = format!("{BASE}{vs_extra}\n");
    parse(&text, &dir.join("latch.toml"))
        .map_err(|e| e.diagnostics.iter().map(|d| d.to_string()).collect())
}

#[test]
fn tls_loads_certificates_with_their_names_and_defaults() {
    let dir = tempfile::tempdir().expect("tempdir");
    cert(
        dir.path(),
        "shop",
        &["shop.example.com", "www.example.com"],
        false,
    );
    cert(dir.path(), "wild", &["*.example.org"], true);
    let c = tls_config(
        dir.path(),
        r#"tls = { certificates = [{ cert = "shop.pem", key = "shop.key" }, { cert = "wild.pem", key = "wild.key" }] }"#,
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    let tls = c.virtual_services[0].tls.as_ref().expect("tls");
    assert_eq!(tls.certificates.len(), 2);
    assert_eq!(
        tls.certificates[0].names,
        ["shop.example.com", "www.example.com"]
    );
    assert_eq!(tls.certificates[1].names, ["*.example.org"]);
    assert_eq!(tls.certificates[0].cert_file, dir.path().join("shop.pem"));
    assert_eq!(tls.min_version, TlsVersion::V1_2);
    assert_eq!(tls.alpn, ["http/1.1"]);
    assert_eq!(tls.client_cert, ClientCertMode::None);

    // Same files: equal; a replaced key and certificate: a change a reload sees.
    let again = tls_config(
        dir.path(),
        r#"tls = { certificates = [{ cert = "shop.pem", key = "shop.key" }, { cert = "wild.pem", key = "wild.key" }] }"#,
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    assert!(diff(&c, &again).is_empty());
    cert(dir.path(), "shop", &["shop.example.com"], false);
    let replaced = tls_config(
        dir.path(),
        r#"tls = { certificates = [{ cert = "shop.pem", key = "shop.key" }, { cert = "wild.pem", key = "wild.key" }] }"#,
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(diff(&c, &replaced).services_changed, ["shop"]);
}

#[test]
fn missing_unreadable_and_mismatched_files_are_refused_with_path_and_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    cert(d, "a", &["a.example.com"], false);
    cert(d, "b", &["b.example.com"], true);
    std::fs::create_dir(d.join("dir.pem")).expect("mkdir");
    std::fs::write(d.join("garbage.pem"), "not a certificate\n").expect("write");
    let shown = |f: &str| d.join(f).display().to_string();

    let e = tls_config(
        d,
        r#"tls = { certificates = [{ cert = "nope.pem", key = "a.key" }] }"#,
    )
    .expect_err("missing");
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].contains("latch.toml:13:") && e[0].contains(&shown("nope.pem")),
        "{e:?}"
    );
    assert!(
        e[0].contains("cannot read certificate file") && e[0].contains("No such file"),
        "{e:?}"
    );

    for (cert, key, wants) in [
        ("dir.pem", "a.key", ["Is a directory", "dir.pem"]),
        ("garbage.pem", "a.key", ["no certificate in", "garbage.pem"]),
        ("a.pem", "garbage.pem", ["no private key in", "garbage.pem"]),
    ] {
        let e = tls_config(
            d,
            &format!(r#"tls = {{ certificates = [{{ cert = "{cert}", key = "{key}" }}] }}"#),
        )
        .expect_err(cert);
        assert!(
            e[0].contains(wants[0]) && e[0].contains(&shown(wants[1])),
            "{e:?}"
        );
    }
    let e = tls_config(
        d,
        r#"tls = { certificates = [{ cert = "a.pem", key = "garbage.pem" }] }"#,
    )
    .expect_err("no key");
    // Located at the key.
    let col = r#"tls = { certificates = [{ cert = "a.pem", key = "#.len() + 1;
    assert!(e[0].contains(&format!("latch.toml:13:{col}:")), "{e:?}");

    let e = tls_config(
        d,
        r#"tls = { certificates = [{ cert = "a.pem", key = "b.key" }] }"#,
    )
    .expect_err("mismatch");
    assert!(
        e[0].contains(&format!(
            "key {} does not match certificate {}",
            shown("b.key"),
            shown("a.pem")
        )),
        "{e:?}"
    );
}

#[test]
fn tls_options_are_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    cert(d, "a", &["a.example.com"], false);
    let certs = r#"certificates = [{ cert = "a.pem", key = "a.key" }]"#;
    let c = tls_config(
        d,
        &format!(r#"tls = {{ {certs}, min_version = "1.3", client_ca = "a.pem", client_cert = "optional", alpn = ["h2", "http/1.1"] }}"#),
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    let tls = c.virtual_services[0].tls.as_ref().expect("tls");
    assert_eq!(tls.min_version, TlsVersion::V1_3);
    assert_eq!(tls.client_cert, ClientCertMode::Optional);
    assert_eq!(tls.alpn, ["h2", "http/1.1"]);
    let c = tls_config(d, &format!(r#"tls = {{ {certs}, client_ca = "a.pem" }}"#))
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(
        c.virtual_services[0].tls.as_ref().map(|t| t.client_cert),
        Some(ClientCertMode::Required)
    );

    for (extra, want) in [
        (r#"min_version = "1.1""#, "unknown min_version `1.1`"),
        (r#"client_cert = "required""#, "needs client_ca"),
        (
            r#"client_cert = "maybe", client_ca = "a.pem""#,
            "unknown client_cert `maybe`",
        ),
        (r#"alpn = ["spdy/3"]"#, "unknown ALPN protocol `spdy/3`"),
        (r#"client_ca = "nope.pem""#, "cannot read CA file"),
    ] {
        let e = tls_config(d, &format!("tls = {{ {certs}, {extra} }}")).expect_err(extra);
        assert!(e.iter().any(|m| m.contains(want)), "{extra}: {e:?}");
    }
    let e = tls_config(d, "tls = { certificates = [] }").expect_err("empty");
    assert!(e[0].contains("at least one certificate"), "{e:?}");
}

#[test]
fn fast_path_and_l4_services_refuse_tls_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    cert(d, "a", &["a.example.com"], false);
    let e = tls_config(
        d,
        "fast_path = \"client_ip\"\ntls = { certificates = [{ cert = \"a.pem\", key = \"a.key\" }] }",
    )
    .expect_err("fast_path with tls");
    assert!(
        e.iter().any(|m| m.contains("latch.toml:14:")
            && m.contains("fast_path cannot be used with tls")
            && m.contains("cannot decrypt")),
        "{e:?}"
    );
    let text = format!(
        "{}\ntls = {{ certificates = [{{ cert = \"a.pem\", key = \"a.key\" }}] }}\n",
        BASE.replace("type = \"http\"", "type = \"tcp\"")
    );
    let e = parse(&text, &d.join("latch.toml")).expect_err("tcp with tls");
    assert!(
        e.to_string().contains("tls only applies to http services"),
        "{e}"
    );
}

#[test]
fn pool_tls_is_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    cert(d, "a", &["a.example.com"], false);
    let pool = |extra: &str| {
        let text = BASE.replace(
            "servers = [\"192.0.2.11:8080\", \"192.0.2.12:8080\"]",
            &format!("servers = [\"192.0.2.11:8080\", \"192.0.2.12:8080\"]\ntls = {{ {extra} }}"),
        );
        parse(&text, &d.join("latch.toml"))
    };
    let c = pool(r#"ca = "a.pem", server_name = "backend.internal""#).expect("valid");
    let tls = c.pools[0].tls.as_ref().expect("tls");
    assert!(tls.verify);
    assert_eq!(tls.server_name.as_deref(), Some("backend.internal"));
    assert!(tls.client_config().is_ok());
    assert!(
        pool("verify = false").expect("no check").pools[0]
            .tls
            .is_some()
    );
    for (extra, want) in [
        ("", "pool tls needs ca"),
        (r#"ca = "nope.pem""#, "cannot read CA file"),
        (
            r#"ca = "a.pem", server_name = "not a name""#,
            "is not a DNS name or an IP address",
        ),
    ] {
        let e = pool(extra).expect_err(extra).to_string();
        assert!(e.contains(want), "{extra}: {e}");
    }
    let text = BASE.replace("type = \"http\"", "type = \"tcp\"").replace(
        "servers = [\"192.0.2.11:8080\", \"192.0.2.12:8080\"]",
        "servers = [\"192.0.2.11:8080\"]\ntls = { verify = false }",
    );
    let e = parse(&text, &d.join("latch.toml"))
        .expect_err("tls pool under a tcp service")
        .to_string();
    assert!(
        e.contains("speaks TLS to its servers, which only http services do"),
        "{e}"
    );
}
