//! TLS configuration texts of latch and HAProxy, and the one line `openssl s_client -brief`
//! prints about the negotiated session: pure functions, unit-tested.

use std::{net::SocketAddrV4, path::Path};

use crate::http::conf::{Upstream, haproxy_with, latch as latch_http};

/// The ALPN list both LBs offer.
pub const ALPN: [&str; 2] = ["h2", "http/1.1"];

/// latch: bench http's plain config (no scripts) with `tls` on the virtual service.
pub fn latch(
    agent_section: &str,
    workers: usize,
    listen: SocketAddrV4,
    ups: &[Upstream],
    cert: &Path,
    key: &Path,
) -> String {
    let alpn: Vec<String> = ALPN.iter().map(|p| format!("\"{p}\"")).collect();
    // The virtual service is the config's last table, so its keys can follow.
    format!(
        "{}tls = {{ certificates = [{{ cert = \"{}\", key = \"{}\" }}], alpn = [{}] }}\n",
        latch_http(agent_section, workers, listen, ups, false, false),
        cert.display(),
        key.display(),
        alpn.join(", ")
    )
}

/// HAProxy: round robin, `http-reuse always`, TLS on the bind with `pem` (certificate then
/// key in one file), the same ALPN list; every TLS setting else is HAProxy's default.
pub fn haproxy(listen: SocketAddrV4, threads: usize, ups: &[Upstream], pem: &Path) -> String {
    haproxy_with(
        &format!("{listen} ssl crt {} alpn {}", pem.display(), ALPN.join(",")),
        threads,
        ups,
        "",
    )
}

/// `TLSv1.3 TLS_AES_256_GCM_SHA384 X25519` from `openssl s_client -brief`'s report.
pub fn session_summary(text: &str) -> Option<String> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .map(|v| v.trim_start_matches(':').trim().to_string())
    };
    let version = field("Protocol version")?;
    let cipher = field("Ciphersuite")?;
    // "X25519, 253 bits" or "ECDH, prime256v1, 256 bits": the group's name.
    let group = field("Server Temp Key").map(|k| {
        let parts: Vec<&str> = k.split(", ").collect();
        let i = if parts.first() == Some(&"ECDH") { 1 } else { 0 };
        parts.get(i).copied().unwrap_or_default().to_string()
    });
    Some(match group {
        Some(g) => format!("{version} {cipher} {g}"),
        None => format!("{version} {cipher}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ups() -> Vec<Upstream> {
        vec![Upstream {
            name: "b1".into(),
            addr: SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 11), 8080),
        }]
    }

    fn vip() -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 20), 443)
    }

    #[test]
    fn latch_terminates_tls_with_alpn_and_no_scripts() {
        let c = latch(
            "[agent]\n",
            2,
            vip(),
            &ups(),
            Path::new("/t/c.pem"),
            Path::new("/t/c.key"),
        );
        assert!(c.contains("workers = 2\n"));
        assert!(c.contains("listen = \"198.51.100.20:443\"\n"));
        assert!(c.ends_with(
            "tls = { certificates = [{ cert = \"/t/c.pem\", key = \"/t/c.key\" }], alpn = [\"h2\", \"http/1.1\"] }\n"
        ));
        assert!(!c.contains("datascript"));
    }

    #[test]
    fn haproxy_binds_ssl_with_the_combined_pem() {
        let c = haproxy(vip(), 1, &ups(), Path::new("/t/both.pem"));
        assert!(c.contains("nbthread 1\n"));
        assert!(c.contains("bind 198.51.100.20:443 ssl crt /t/both.pem alpn h2,http/1.1\n"));
        assert!(c.contains("http-reuse always\n  server b1 192.0.2.11:8080\n"));
        assert!(!c.contains("stick"));
    }

    #[test]
    fn session_summary_names_version_cipher_and_group() {
        let tls13 = "CONNECTION ESTABLISHED\nProtocol version: TLSv1.3\nCiphersuite: TLS_AES_256_GCM_SHA384\nPeer certificate: CN = bench.example\nHash used: SHA256\nSignature type: ECDSA\nVerification error: unable to get local issuer certificate\nServer Temp Key: X25519, 253 bits\nDONE\n";
        assert_eq!(
            session_summary(tls13).as_deref(),
            Some("TLSv1.3 TLS_AES_256_GCM_SHA384 X25519")
        );
        let ecdh = "Protocol version: TLSv1.2\nCiphersuite: ECDHE-RSA-AES128-GCM-SHA256\nServer Temp Key: ECDH, prime256v1, 256 bits\n";
        assert_eq!(
            session_summary(ecdh).as_deref(),
            Some("TLSv1.2 ECDHE-RSA-AES128-GCM-SHA256 prime256v1")
        );
        assert_eq!(session_summary("connect: Connection refused"), None);
    }
}
