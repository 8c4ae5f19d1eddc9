//! What a finished TLS handshake tells the transactions of its connection ([`TlsInfo`]), with
//! the cipher suites under the OpenSSL names Avi's `avi.ssl.cipher` reports.

use std::sync::Arc;

use rustls::pki_types::CertificateDer;

/// One cipher suite rustls (aws-lc-rs) negotiates, as OpenSSL's `SSL_CIPHER_description`
/// names it.
#[derive(Debug, PartialEq, Eq)]
pub struct CipherNames {
    /// The IANA / rustls name, e.g. `TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256`.
    pub iana: &'static str,
    /// The OpenSSL name, e.g. `ECDHE-RSA-AES128-GCM-SHA256` (TLS 1.3: `TLS_AES_128_GCM_SHA256`).
    pub openssl: &'static str,
    /// Key exchange (`Kx=`).
    pub kx: &'static str,
    /// Authentication (`Au=`).
    pub au: &'static str,
    /// Encryption (`Enc=`).
    pub enc: &'static str,
}

const CIPHERS: &[CipherNames] = &[
    CipherNames {
        iana: "TLS13_AES_128_GCM_SHA256",
        openssl: "TLS_AES_128_GCM_SHA256",
        kx: "any",
        au: "any",
        enc: "AESGCM(128)",
    },
    CipherNames {
        iana: "TLS13_AES_256_GCM_SHA384",
        openssl: "TLS_AES_256_GCM_SHA384",
        kx: "any",
        au: "any",
        enc: "AESGCM(256)",
    },
    CipherNames {
        iana: "TLS13_CHACHA20_POLY1305_SHA256",
        openssl: "TLS_CHACHA20_POLY1305_SHA256",
        kx: "any",
        au: "any",
        enc: "CHACHA20/POLY1305(256)",
    },
    CipherNames {
        iana: "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        openssl: "ECDHE-ECDSA-AES128-GCM-SHA256",
        kx: "ECDH",
        au: "ECDSA",
        enc: "AESGCM(128)",
    },
    CipherNames {
        iana: "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        openssl: "ECDHE-ECDSA-AES256-GCM-SHA384",
        kx: "ECDH",
        au: "ECDSA",
        enc: "AESGCM(256)",
    },
    CipherNames {
        iana: "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        openssl: "ECDHE-ECDSA-CHACHA20-POLY1305",
        kx: "ECDH",
        au: "ECDSA",
        enc: "CHACHA20/POLY1305(256)",
    },
    CipherNames {
        iana: "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        openssl: "ECDHE-RSA-AES128-GCM-SHA256",
        kx: "ECDH",
        au: "RSA",
        enc: "AESGCM(128)",
    },
    CipherNames {
        iana: "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        openssl: "ECDHE-RSA-AES256-GCM-SHA384",
        kx: "ECDH",
        au: "RSA",
        enc: "AESGCM(256)",
    },
    CipherNames {
        iana: "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        openssl: "ECDHE-RSA-CHACHA20-POLY1305",
        kx: "ECDH",
        au: "RSA",
        enc: "CHACHA20/POLY1305(256)",
    },
];

/// The names of a suite by its IANA name; an unknown one keeps that name for all.
fn cipher_names(iana: &str) -> Option<&'static CipherNames> {
    CIPHERS.iter().find(|c| c.iana == iana)
}

/// The TLS facts of one client connection, shared by its transactions.
#[derive(Clone, Debug)]
pub struct TlsInfo {
    /// `TLSv1.2` or `TLSv1.3`.
    pub protocol: &'static str,
    /// The negotiated suite, `None` only for a suite this table lacks (see `cipher_iana`).
    pub cipher: Option<&'static CipherNames>,
    /// The negotiated suite's IANA name.
    pub cipher_iana: String,
    /// The SNI name the client sent.
    pub server_name: Option<String>,
    /// The ALPN protocol agreed on.
    pub alpn: Option<String>,
    /// The client's certificate chain (leaf first), verified against `client_ca` in the
    /// handshake; `None` when it sent none.
    pub client_chain: Option<Arc<Vec<CertificateDer<'static>>>>,
}

impl TlsInfo {
    /// Facts given directly (tests and `latch script test` cases): `protocol` is `TLSv1.2`
    /// or `TLSv1.3`, `cipher_iana` a rustls suite name such as `TLS13_AES_128_GCM_SHA256`.
    pub fn new(
        protocol: &'static str,
        cipher_iana: &str,
        server_name: Option<String>,
        client_chain: Option<Vec<CertificateDer<'static>>>,
    ) -> Self {
        Self {
            protocol,
            cipher: cipher_names(cipher_iana),
            cipher_iana: cipher_iana.to_string(),
            server_name,
            alpn: None,
            client_chain: client_chain.map(Arc::new),
        }
    }

    /// The facts of a finished handshake.
    pub fn of(conn: &rustls::ServerConnection) -> Self {
        let protocol = match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "unknown",
        };
        let cipher_iana = conn
            .negotiated_cipher_suite()
            .and_then(|s| s.suite().as_str())
            .unwrap_or("unknown")
            .to_string();
        Self {
            protocol,
            cipher: cipher_names(&cipher_iana),
            cipher_iana,
            server_name: conn.server_name().map(str::to_string),
            alpn: conn
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
            client_chain: conn
                .peer_certificates()
                .filter(|c| !c.is_empty())
                .map(|c| Arc::new(c.iter().map(|d| d.clone().into_owned()).collect())),
        }
    }

    /// The OpenSSL name of the suite (`avi.ssl.cipher()`).
    pub fn cipher_name(&self) -> &str {
        self.cipher.map_or(self.cipher_iana.as_str(), |c| c.openssl)
    }

    /// OpenSSL's one-line description (`avi.ssl.cipher(true)`):
    /// `ECDHE-RSA-AES128-GCM-SHA256 TLSv1.2 Kx=ECDH Au=RSA Enc=AESGCM(128) Mac=AEAD`.
    pub fn cipher_description(&self) -> String {
        match self.cipher {
            Some(c) => format!(
                "{} {} Kx={} Au={} Enc={} Mac=AEAD",
                c.openssl, self.protocol, c.kx, c.au, c.enc
            ),
            None => format!("{} {}", self.cipher_iana, self.protocol),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_suite_rustls_offers_has_openssl_names() {
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        for suite in &provider.cipher_suites {
            let iana = suite.suite().as_str().unwrap_or("?");
            assert!(cipher_names(iana).is_some(), "no OpenSSL name for {iana}");
        }
    }
}
