//! Validation of a virtual service's `tls = { ... }`: every certificate and key read and
//! checked now, so `latch check` and a reload refuse a missing, unreadable or mismatched one
//! with its path and the reason.

use toml::Spanned;

use super::Validator;
use crate::config::model::ServiceType;
use crate::config::raw::{RawPoolTls, RawTls, SStr};
use crate::config::tls::{
    CertFile, ClientCa, ClientCertMode, PoolTls, TlsSettings, TlsVersion, load_certificate,
    load_client_ca,
};

/// ALPN protocols the proxy speaks to clients.
const ALPN_KNOWN: &[&str] = &["h2", "http/1.1"];

impl Validator<'_> {
    /// A CA file (relative to the config), and false when it was named but is unusable
    /// (reported).
    fn ca_file(&mut self, file: Option<&SStr>) -> (Option<ClientCa>, bool) {
        let Some(f) = file else {
            return (None, true);
        };
        match load_client_ca(&self.relative_path(f.get_ref())) {
            Ok(ca) => (Some(ca), true),
            Err(why) => {
                self.sink.error(f.span(), why);
                (None, false)
            }
        }
    }

    /// A pool's TLS to its servers, or `None` after reporting what is wrong.
    pub(super) fn pool_tls(&mut self, raw: &Spanned<RawPoolTls>) -> Option<PoolTls> {
        let t = raw.get_ref();
        let verify = t.verify.unwrap_or(true);
        let mut ok = true;
        let (ca, ca_ok) = self.ca_file(t.ca.as_ref());
        ok &= ca_ok;
        if verify && t.ca.is_none() {
            self.sink.error(
                raw.span(),
                "pool tls needs ca, the CA file the servers' certificates are checked against (or verify = false to skip the check)",
            );
            ok = false;
        }
        if let Some(name) = t.server_name.as_ref()
            && rustls_pki_types::ServerName::try_from(name.get_ref().as_str()).is_err()
        {
            self.sink.error(
                name.span(),
                format!(
                    "server_name `{}` is not a DNS name or an IP address",
                    name.get_ref()
                ),
            );
            ok = false;
        }
        ok.then(|| PoolTls {
            ca,
            server_name: t.server_name.as_ref().map(|n| n.get_ref().clone()),
            verify,
        })
    }

    /// The service's TLS settings, or `None` after reporting what is wrong.
    pub(super) fn tls(
        &mut self,
        raw: &Spanned<RawTls>,
        kind: ServiceType,
        fast_path: bool,
    ) -> Option<TlsSettings> {
        if kind != ServiceType::Http {
            self.sink.error(
                raw.span(),
                format!(
                    "tls only applies to http services; {} services are forwarded by XDP without decrypting",
                    kind.as_str()
                ),
            );
            return None;
        }
        if fast_path {
            self.sink.error(
                raw.span(),
                "fast_path cannot be used with tls: a pinned client's packets would go from XDP straight to a server, which cannot decrypt a TLS session the proxy terminated",
            );
        }
        let raw_tls = raw.get_ref();
        let mut ok = true;
        let mut certificates = Vec::new();
        if raw_tls.certificates.get_ref().is_empty() {
            self.sink.error(
                raw_tls.certificates.span(),
                "tls needs at least one certificate: certificates = [{ cert = \"shop.pem\", key = \"shop.key\" }]",
            );
            ok = false;
        }
        for c in raw_tls.certificates.get_ref() {
            let c = c.get_ref();
            let cert = self.relative_path(c.cert.get_ref());
            let key = self.relative_path(c.key.get_ref());
            match load_certificate(&cert, &key) {
                Ok(loaded) => certificates.push(loaded),
                Err(e) => {
                    let span = match e.file {
                        CertFile::Cert => c.cert.span(),
                        CertFile::Key => c.key.span(),
                    };
                    self.sink.error(span, e.message);
                    ok = false;
                }
            }
        }
        let min_version = match raw_tls.min_version.as_ref() {
            None => TlsVersion::V1_2,
            Some(v) => match v.get_ref().as_str() {
                "1.2" => TlsVersion::V1_2,
                "1.3" => TlsVersion::V1_3,
                other => {
                    self.sink.error(
                        v.span(),
                        format!("unknown min_version `{other}`: expected \"1.2\" or \"1.3\""),
                    );
                    ok = false;
                    TlsVersion::V1_2
                }
            },
        };
        let alpn = match raw_tls.alpn.as_ref() {
            None => vec!["http/1.1".to_string()],
            Some(list) => {
                if list.get_ref().is_empty() {
                    self.sink
                        .error(list.span(), "alpn must name at least one protocol");
                    ok = false;
                }
                let mut out = Vec::new();
                for p in list.get_ref() {
                    if ALPN_KNOWN.contains(&p.get_ref().as_str()) {
                        out.push(p.get_ref().clone());
                    } else {
                        self.sink.error(
                            p.span(),
                            format!(
                                "unknown ALPN protocol `{}`: expected \"h2\" or \"http/1.1\"",
                                p.get_ref()
                            ),
                        );
                        ok = false;
                    }
                }
                out
            }
        };
        let (client_ca, ca_ok) = self.ca_file(raw_tls.client_ca.as_ref());
        ok &= ca_ok;
        let client_cert = match raw_tls.client_cert.as_ref() {
            None if raw_tls.client_ca.is_some() => ClientCertMode::Required,
            None => ClientCertMode::None,
            Some(m) => {
                let mode = match m.get_ref().as_str() {
                    "none" => ClientCertMode::None,
                    "optional" => ClientCertMode::Optional,
                    "required" => ClientCertMode::Required,
                    other => {
                        self.sink.error(
                            m.span(),
                            format!(
                                "unknown client_cert `{other}`: expected \"none\", \"optional\" or \"required\""
                            ),
                        );
                        ok = false;
                        ClientCertMode::None
                    }
                };
                if mode != ClientCertMode::None && raw_tls.client_ca.is_none() {
                    self.sink.error(
                        m.span(),
                        format!(
                            "client_cert = \"{}\" needs client_ca, the CA file client certificates are checked against",
                            mode.as_str()
                        ),
                    );
                    ok = false;
                }
                mode
            }
        };
        (ok && !fast_path).then_some(TlsSettings {
            certificates,
            min_version,
            alpn,
            client_ca,
            client_cert,
        })
    }
}
