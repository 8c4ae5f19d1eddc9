//! TLS termination with real clients (curl, `openssl s_client`, a rustls client) through
//! `latch run` in the LB namespace: TLS 1.2 and 1.3, SNI choosing among certificates
//! (wildcards, the first as default), ECDSA and RSA keys in PKCS#8, SEC1 and PKCS#1 PEM,
//! session resumption, client certificates, certificates replaced by SIGHUP under an open
//! connection and a bad certificate refused on reload. Certificates are made by the test
//! (rcgen). Needs root: `#[ignore]`d, run with `--include-ignored`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use latch_tests::{CertFiles, DataScript, KeyAlg, KeyForm, TestCa, Tls, Topology, VirtualService};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::netns_config::{
    HTTP_PORT, TestResult, lb_agent, start_agent, vs_metric, wait_for, web_pool,
};

/// The VIP on `port`.
pub(crate) fn vip(topo: &Topology, port: u16) -> SocketAddr {
    SocketAddr::from((topo.vip(), port))
}

/// `argv` in the client namespace: whether it exited 0, and stdout and stderr together.
fn client_cmd(
    topo: &Topology,
    argv: &[&str],
    stdin: Option<&[u8]>,
) -> Result<(bool, String), String> {
    let mut cmd: Command = topo.client().command(argv);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("{argv:?}: {e}"))?;
    if let (Some(mut input), Some(bytes)) = (child.stdin.take(), stdin) {
        let _ = input.write_all(bytes);
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{argv:?}: {e}"))?;
    Ok((
        out.status.success(),
        format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

/// curl over TLS to `https://{name}:{port}{path}` resolved to the VIP; extra args appended.
pub(crate) fn curl(
    topo: &Topology,
    ca: &Path,
    name: &str,
    port: u16,
    path: &str,
    extra: &[&str],
) -> Result<(bool, String), String> {
    let resolve = format!("{name}:{port}:{}", topo.vip());
    let url = format!("https://{name}:{port}{path}");
    let ca = ca.to_string_lossy();
    let mut argv = vec![
        "curl",
        "-sS",
        "-v",
        "--max-time",
        "10",
        "--cacert",
        &ca,
        "--resolve",
        &resolve,
        "-w",
        "\nstatus=%{http_code}\n",
    ];
    argv.extend_from_slice(extra);
    argv.push(&url);
    client_cmd(topo, &argv, None)
}

/// `openssl s_client` to the VIP's `port`, sending `request` once connected.
fn s_client(
    topo: &Topology,
    port: u16,
    args: &[&str],
    request: &[u8],
) -> Result<(bool, String), String> {
    let connect = vip(topo, port).to_string();
    // -ign_eof: read until the server closes (after the answer to `Connection: close`), so
    // TLS 1.3 tickets, which follow the handshake, are in.
    let mut argv = vec![
        "timeout", "10", "openssl", "s_client", "-ign_eof", "-connect", &connect,
    ];
    argv.extend_from_slice(args);
    client_cmd(topo, &argv, Some(request))
}

/// The subject line `openssl x509` prints for a PEM certificate file.
fn subject_of(cert: &Path) -> Result<String, String> {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-in"])
        .arg(cert)
        .output()
        .map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

const GET_CLOSE: &[u8] =
    b"GET /headers HTTP/1.1\r\nHost: shop.example.com\r\nConnection: close\r\n\r\n";

#[test]
#[ignore = "needs root: creates network namespaces"]
fn tls_12_and_13_sni_wildcards_key_formats_resumption_and_access_log() -> TestResult {
    // The default: ECDSA with a SEC1 key; a wildcard RSA one with a PKCS#1 key; an ECDSA one
    // with a PKCS#8 key.
    let Pki {
        topo,
        dir,
        ca,
        shop,
    } = Pki::with(2, KeyForm::Traditional)?;
    let blog = ca.server(
        dir.path(),
        "blog",
        &["*.blog.example.org"],
        KeyAlg::Rsa2048,
        KeyForm::Traditional,
    )?;
    let api = ca.server(
        dir.path(),
        "api",
        &["api.example.net"],
        KeyAlg::EcdsaP256,
        KeyForm::Pkcs8,
    )?;
    for (files, begin) in [
        (&shop, "BEGIN EC PRIVATE KEY"),
        (&blog, "BEGIN RSA PRIVATE KEY"),
        (&api, "BEGIN PRIVATE KEY"),
    ] {
        let text = std::fs::read_to_string(&files.key)?;
        assert!(text.contains(begin), "{}: {text}", files.key.display());
    }
    let agent = start_agent(&topo, |agent| {
        lb_agent(&topo, agent)
            .pool(web_pool(&topo))
            .virtual_service(
                VirtualService::http("secure", vip(&topo, 443), "web").tls(Tls::new(&[
                    shop.clone(),
                    blog.clone(),
                    api.clone(),
                ])),
            )
    })?;
    let ca_file = ca.cert_file.clone();
    let out = topo.client().run(|| -> Result<Vec<String>, String> {
        let mut failures = Vec::new();
        // curl with TLS 1.2 and with TLS 1.3, each by SNI.
        for (name, version, flags) in [
            (
                "shop.example.com",
                "TLSv1.2",
                ["--tlsv1.2", "--tls-max", "1.2"],
            ),
            (
                "shop.example.com",
                "TLSv1.3",
                ["--tlsv1.3", "--tls-max", "1.3"],
            ),
            (
                "www.blog.example.org",
                "TLSv1.2",
                ["--tlsv1.2", "--tls-max", "1.2"],
            ),
            (
                "api.example.net",
                "TLSv1.3",
                ["--tlsv1.3", "--tls-max", "1.3"],
            ),
        ] {
            let (ok, text) = curl(&topo, &ca_file, name, 443, "/headers", &flags)?;
            if !ok
                || !text.contains("status=200")
                || !text.contains(&format!("SSL connection using {version}"))
            {
                failures.push(format!("curl {name} {version}: {text}"));
            }
            if !text.contains(&format!("host: {name}"))
                || !text.contains("x-forwarded-proto: https")
            {
                failures.push(format!(
                    "curl {name}: the backend did not get the request: {text}"
                ));
            }
        }
        // A wildcard covers one label only: curl refuses the default certificate it gets.
        let (ok, text) = curl(&topo, &ca_file, "a.b.blog.example.org", 443, "/", &[])?;
        if ok {
            failures.push(format!("a.b.blog.example.org verified: {text}"));
        }
        // openssl s_client: the certificate served for each SNI, and without SNI the first.
        let ca_arg = ca_file.to_string_lossy().to_string();
        for (sni, want) in [
            (Some("x.blog.example.org"), &blog),
            (Some("api.example.net"), &api),
            (Some("unknown.example.com"), &shop),
            (None, &shop),
        ] {
            let mut args = vec!["-CAfile", &ca_arg, "-verify_return_error"];
            match sni {
                Some(name) => args.extend(["-servername", name]),
                None => args.push("-noservername"),
            }
            let (_, text) = s_client(&topo, 443, &args, GET_CLOSE)?;
            let subject = subject_of(&want.cert)?;
            let cn = subject.trim_start_matches("subject=").trim();
            if !text.contains(cn) {
                failures.push(format!("s_client {sni:?}: expected {cn}: {text}"));
            }
            if !text.contains("HTTP/1.1 200") {
                failures.push(format!("s_client {sni:?}: no 200: {text}"));
            }
        }
        // Resumption with a TLS 1.2 ticket and a TLS 1.3 ticket.
        for version in ["-tls1_2", "-tls1_3"] {
            let sess = dir.path().join(format!("sess{version}"));
            let sess = sess.to_string_lossy().to_string();
            let base = [
                "-CAfile",
                ca_arg.as_str(),
                "-servername",
                "shop.example.com",
                version,
            ];
            let mut first = base.to_vec();
            first.extend(["-sess_out", &sess]);
            let (_, text) = s_client(&topo, 443, &first, GET_CLOSE)?;
            if !text.contains("HTTP/1.1 200") {
                failures.push(format!("first {version}: {text}"));
            }
            let mut second = base.to_vec();
            second.extend(["-sess_in", &sess]);
            let (_, text) = s_client(&topo, 443, &second, GET_CLOSE)?;
            if !text.contains("Reused, TLSv1") {
                failures.push(format!("not resumed with {version}: {text}"));
            }
        }
        // TLS 1.1 is refused.
        let (ok, text) = s_client(
            &topo,
            443,
            &["-tls1_1", "-servername", "shop.example.com"],
            GET_CLOSE,
        )?;
        if ok && text.contains("HTTP/1.1 200") {
            failures.push(format!("TLS 1.1 accepted: {text}"));
        }
        Ok(failures)
    })?;
    assert!(out.is_empty(), "{}", out.join("\n---\n"));
    // The access log has version, cipher and SNI.
    wait_for("access log lines with TLS", Duration::from_secs(5), || {
        // Text or JSON lines, with or without quotes around the values.
        let log = latch_tests::strip_ansi(&agent.log()).replace(['"', '\\'], "");
        Ok(log.lines().any(|l| {
            l.contains("tls_version=TLSv1.2")
                && l.contains("tls_sni=www.blog.example.org")
                && l.contains("tls_cipher=ECDHE-RSA-")
        }) && log.lines().any(|l| {
            l.contains("tls_version=TLSv1.3")
                && l.contains("tls_sni=api.example.net")
                && l.contains("tls_cipher=TLS_")
        }))
    })?;
    Ok(())
}

/// A rustls client trusting `ca`, without resumption (each connection sees the certificate).
pub(crate) fn rustls_client(
    ca: &Path,
    client: Option<&CertFiles>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).map_err(|e| e.to_string())? {
        roots
            .add(c.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some(files) => {
            let chain = CertificateDer::pem_file_iter(&files.cert)
                .map_err(|e| e.to_string())?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&files.key)
                .map_err(|e| e.to_string())?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| e.to_string())?
        }
    };
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS connection to `addr` for `name`, handshake done.
pub(crate) fn tls_connect(
    addr: SocketAddr,
    name: &str,
    config: Arc<rustls::ClientConfig>,
) -> Result<TlsStream, String> {
    let tcp =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let server = ServerName::try_from(name.to_string()).map_err(|e| e.to_string())?;
    let conn = rustls::ClientConnection::new(config, server).map_err(|e| e.to_string())?;
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream
            .conn
            .complete_io(&mut stream.sock)
            .map_err(|e| format!("handshake: {e}"))?;
    }
    Ok(stream)
}

/// One keep-alive GET on `stream`: the status and the body.
pub(crate) fn tls_get(
    stream: &mut TlsStream,
    name: &str,
    path: &str,
) -> Result<(u16, String), String> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {name}\r\n\r\n");
    stream
        .write_all(req.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection closed before a response".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(format!("bad status line: {head}"))?;
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .ok_or(format!("no content-length: {head}"))?;
    while buf.len() < head_end + len {
        let n = stream
            .read(&mut chunk)
            .map_err(|e| format!("read body: {e}"))?;
        if n == 0 {
            return Err("connection closed in the body".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok((
        status,
        String::from_utf8_lossy(&buf[head_end..head_end + len]).to_string(),
    ))
}

/// The leaf certificate a connection got.
fn leaf(stream: &TlsStream) -> Option<Vec<u8>> {
    stream
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
}

fn file_leaf(cert: &Path) -> Result<Vec<u8>, String> {
    CertificateDer::pem_file_iter(cert)
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("empty")?
        .map(|c| c.as_ref().to_vec())
        .map_err(|e| e.to_string())
}

/// The name of the certificate most tests serve.
pub(crate) const SHOP: &str = "shop.example.com";

/// A one-backend topology with its backends started, a CA and an ECDSA certificate for
/// [`SHOP`] (PKCS#8 key) in a temporary directory.
pub(crate) struct Pki {
    pub topo: Topology,
    pub dir: tempfile::TempDir,
    pub ca: TestCa,
    pub shop: CertFiles,
}

impl Pki {
    pub fn new() -> Result<Self, Box<dyn std::error::Error>> {
        Self::with(1, KeyForm::Pkcs8)
    }

    /// `backends` backends, the [`SHOP`] key written as `form`.
    fn with(backends: usize, form: KeyForm) -> Result<Self, Box<dyn std::error::Error>> {
        let topo = Topology::builder().backends(backends).build()?;
        topo.start_backends(HTTP_PORT, None)?;
        let dir = tempfile::tempdir()?;
        let ca = TestCa::new(dir.path(), "test-ca")?;
        let shop = ca.server(dir.path(), "shop", &[SHOP], KeyAlg::EcdsaP256, form)?;
        Ok(Self {
            topo,
            dir,
            ca,
            shop,
        })
    }
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn sighup_replaces_the_certificate_under_an_open_connection_and_refuses_a_bad_one() -> TestResult {
    let Pki {
        topo,
        dir,
        ca,
        shop: v1,
    } = Pki::new()?;
    let name = SHOP;
    let v1_leaf = file_leaf(&v1.cert)?;
    let agent = start_agent(&topo, |agent| {
        lb_agent(&topo, agent)
            .pool(web_pool(&topo))
            .virtual_service(
                VirtualService::http("secure", vip(&topo, 443), "web")
                    .tls(Tls::new(std::slice::from_ref(&v1))),
            )
    })?;
    let client = rustls_client(&ca.cert_file, None)?;
    let addr = vip(&topo, 443);
    let mut open = topo
        .client()
        .run(|| tls_connect(addr, name, client.clone()))?;
    assert_eq!(leaf(&open), Some(v1_leaf.clone()));
    assert_eq!(tls_get(&mut open, name, "/")?.0, 200);

    // A new certificate and key under the same file names, then SIGHUP.
    let v2 = ca.server(
        dir.path(),
        "shop",
        &[name],
        KeyAlg::Rsa2048,
        KeyForm::Traditional,
    )?;
    let v2_leaf = file_leaf(&v2.cert)?;
    assert_ne!(v1_leaf, v2_leaf);
    let log = agent.reload()?;
    assert!(log.contains("configuration reloaded"), "{log}");
    let mut fresh = topo
        .client()
        .run(|| tls_connect(addr, name, client.clone()))?;
    assert_eq!(
        leaf(&fresh),
        Some(v2_leaf.clone()),
        "a new connection gets the new certificate"
    );
    assert_eq!(tls_get(&mut fresh, name, "/")?.0, 200);
    // The connection opened before the reload goes on.
    assert_eq!(
        tls_get(&mut open, name, "/")?.0,
        200,
        "the open connection was dropped"
    );

    // A certificate whose key does not match: the reload is refused with path and reason,
    // and the running certificate stays.
    let other = ca.server(
        dir.path(),
        "other",
        &[name],
        KeyAlg::EcdsaP256,
        KeyForm::Pkcs8,
    )?;
    std::fs::copy(&other.cert, &v2.cert)?;
    let log = agent.reload()?;
    assert!(log.contains("reload refused"), "{log}");
    let shown = v2.key.display().to_string();
    assert!(
        log.contains(&shown) && log.contains("does not match"),
        "{log}"
    );
    let mut after = topo
        .client()
        .run(|| tls_connect(addr, name, client.clone()))?;
    assert_eq!(
        leaf(&after),
        Some(v2_leaf),
        "the refused certificate was used"
    );
    assert_eq!(tls_get(&mut after, name, "/")?.0, 200);
    assert_eq!(tls_get(&mut open, name, "/")?.0, 200);
    assert_eq!(tls_get(&mut fresh, name, "/")?.0, 200);

    // A missing file is refused the same way.
    std::fs::remove_file(&v2.key)?;
    let log = agent.reload()?;
    assert!(
        log.contains("reload refused") && log.contains(&shown),
        "{log}"
    );
    assert_eq!(tls_get(&mut open, name, "/")?.0, 200);
    Ok(())
}

/// Reports what avi.ssl says of the client certificate in `X-Client`.
const CLIENT_FACTS: &str = r#"
local subject = avi.ssl.client_cert(avi.CLIENT_CERT_SUBJECT)
local cn = subject and string.match(subject, "CN=[%w]+") or "none"
avi.http.add_header("X-Client", avi.ssl.check_client_cert_validity() .. " " .. cn)
"#;

#[test]
#[ignore = "needs root: creates network namespaces"]
fn client_certificates_required_optional_and_none() -> TestResult {
    let Pki {
        topo,
        dir,
        ca,
        shop: server,
    } = Pki::new()?;
    let clients = TestCa::new(dir.path(), "client-ca")?;
    let strangers = TestCa::new(dir.path(), "stranger-ca")?;
    let name = SHOP;
    let alice = clients.client(dir.path(), "alice", "alice")?;
    let mallory = strangers.client(dir.path(), "mallory", "mallory")?;
    let tls = || Tls::new(std::slice::from_ref(&server));
    let _agent = start_agent(&topo, |agent| {
        lb_agent(&topo, agent)
            .pool(web_pool(&topo))
            .virtual_service(
                VirtualService::http("required", vip(&topo, 443), "web")
                    .tls(tls().client_certs(&clients.cert_file, "required")),
            )
            .virtual_service(
                VirtualService::http("optional", vip(&topo, 444), "web")
                    .tls(tls().client_certs(&clients.cert_file, "optional"))
                    .datascript(DataScript::request(CLIENT_FACTS)),
            )
            .virtual_service(VirtualService::http("none", vip(&topo, 445), "web").tls(tls()))
    })?;
    let ca_file = ca.cert_file.clone();
    let failures = topo.client().run(|| -> Result<Vec<String>, String> {
        let mut failures = Vec::new();
        let with = |files: &CertFiles| {
            vec![
                "--cert".to_string(),
                files.cert.to_string_lossy().into_owned(),
                "--key".to_string(),
                files.key.to_string_lossy().into_owned(),
            ]
        };
        let alice_args = with(&alice);
        let mallory_args = with(&mallory);
        let none: Vec<String> = Vec::new();
        for (port, args, want_ok, what) in [
            (443, &alice_args, true, "required, valid"),
            (443, &none, false, "required, absent"),
            (443, &mallory_args, false, "required, unknown CA"),
            (444, &alice_args, true, "optional, valid"),
            (444, &none, true, "optional, absent"),
            (444, &mallory_args, false, "optional, unknown CA"),
            (445, &none, true, "none, absent"),
            (445, &alice_args, true, "none, presented anyway"),
        ] {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (ok, text) = curl(&topo, &ca_file, name, port, "/headers", &args)?;
            let served = ok && text.contains("status=200");
            if served != want_ok {
                failures.push(format!("{what}: served={served}: {text}"));
            }
            // The scripts of the optional service see the certificate, or its absence.
            let facts = match (port, what) {
                (444, "optional, valid") => Some("x-client: 1 CN=alice"),
                (444, "optional, absent") => Some("x-client: 0 none"),
                _ => None,
            };
            if let Some(want) = facts
                && !text.contains(want)
            {
                failures.push(format!("{what}: expected `{want}`: {text}"));
            }
        }
        Ok(failures)
    })?;
    assert!(failures.is_empty(), "{}", failures.join("\n---\n"));
    Ok(())
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn handshakes_and_failed_handshakes_are_counted() -> TestResult {
    let Pki {
        topo,
        ca,
        shop: server,
        dir: _dir,
    } = Pki::new()?;
    let name = SHOP;
    let _agent = start_agent(&topo, |agent| {
        lb_agent(&topo, agent)
            .pool(web_pool(&topo))
            .virtual_service(
                VirtualService::http("secure", vip(&topo, 443), "web")
                    .tls(Tls::new(std::slice::from_ref(&server))),
            )
    })?;
    let addr = vip(&topo, 443);
    // Plain HTTP to a TLS listener is a failed handshake, never a response.
    let url = format!("http://{addr}/");
    let (ok, text) = topo
        .client()
        .run(|| client_cmd(&topo, &["curl", "-sS", "--max-time", "5", &url], None))?;
    assert!(!ok, "plain HTTP was served on the TLS listener: {text}");
    let (ok, text) = topo
        .client()
        .run(|| curl(&topo, &ca.cert_file, name, 443, "/", &[]))?;
    assert!(ok && text.contains("status=200"), "{text}");
    wait_for("the counters", Duration::from_secs(5), || {
        Ok(
            vs_metric(&topo, "latch_http_tls_handshakes_total", "secure")? == 1.0
                && vs_metric(&topo, "latch_http_tls_handshake_failures_total", "secure")? == 1.0,
        )
    })?;
    Ok(())
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn tls_to_pool_servers_with_health_monitors() -> TestResult {
    use latch_tests::{HealthMonitor, Pool, ServeConfig};

    let Pki { topo, dir, ca, .. } = Pki::new()?;
    let Some(b1) = topo.backend(1) else {
        return Err("no backend".into());
    };
    // The backend serves TLS on 8443 with a certificate for backend.internal.
    let files = ca.server(
        dir.path(),
        "backend",
        &["backend.internal"],
        KeyAlg::EcdsaP256,
        KeyForm::Pkcs8,
    )?;
    let tls_addr = SocketAddr::from((b1.addr, 8443));
    topo.start_server_in(
        &b1.ns,
        ServeConfig {
            name: "b1-tls".into(),
            http: Some(tls_addr),
            udp: None,
            tls: Some(files),
        },
    )?;
    let stranger = TestCa::new(dir.path(), "stranger-ca")?;
    // Three failed probes in a row mark a server down: one slow probe on a loaded machine
    // must not take the verified pool's only server out between two requests.
    let monitor = || {
        HealthMonitor::http("/healthz", Duration::from_millis(200))
            .fall(3)
            .rise(1)
    };
    let _agent = start_agent(&topo, |agent| {
        lb_agent(&topo, agent)
            .pool(
                Pool::new("verified", [tls_addr])
                    .tls(Some(&ca.cert_file), Some("backend.internal"), true)
                    .health_monitor(monitor()),
            )
            .pool(
                Pool::new("wrong-ca", [tls_addr])
                    .tls(Some(&stranger.cert_file), Some("backend.internal"), true)
                    .health_monitor(monitor()),
            )
            .pool(Pool::new("unverified", [tls_addr]).tls(None, None, false))
            .virtual_service(VirtualService::http("verified", vip(&topo, 80), "verified"))
            .virtual_service(VirtualService::http("wrong-ca", vip(&topo, 81), "wrong-ca"))
            .virtual_service(VirtualService::http(
                "unverified",
                vip(&topo, 82),
                "unverified",
            ))
    })?;
    let get = |port: u16| {
        topo.client().run(|| {
            latch_tests::http_get(vip(&topo, port), "/headers", &[]).map_err(|e| e.to_string())
        })
    };
    // The server's certificate is checked: its pool is up and serves over TLS.
    wait_for(
        "the verified pool up and serving",
        Duration::from_secs(5),
        || Ok(get(80)?.status == 200),
    )?;
    let r = get(80)?;
    assert_eq!(r.backend.as_deref(), Some("b1-tls"), "{r:?}");
    // A certificate of another CA: the monitor's TLS handshake fails, the server is down and
    // the service has no server (503; without the monitor the request would fail with 502).
    wait_for("the wrong-CA pool down", Duration::from_secs(5), || {
        Ok(get(81)?.status == 503)
    })?;
    // verify = false accepts the certificate.
    assert_eq!(get(82)?.status, 200);
    Ok(())
}
