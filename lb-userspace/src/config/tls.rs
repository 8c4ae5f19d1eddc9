//! TLS material of a virtual service: certificates and keys read from PEM files, checked
//! (readable, parseable, key matching the certificate) and indexed by the names they serve.
//!
//! Everything a `latch check` can find wrong with a certificate is found here, so a reload
//! that would fail on it is refused with the file and the reason before anything changes.
//! The handshake itself (rustls with the aws-lc-rs provider) is built by the agent from these.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

/// The lowest TLS version a service accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3 (the default).
    V1_2,
    /// TLS 1.3 only.
    V1_3,
}

/// Whether clients must present a certificate signed by `client_ca`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientCertMode {
    /// No certificate is asked for.
    None,
    /// A certificate is asked for; a client without one is served, one with an invalid one
    /// is refused in the handshake.
    Optional,
    /// A valid certificate is required to complete the handshake.
    Required,
}

impl ClientCertMode {
    /// Config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientCertMode::None => "none",
            ClientCertMode::Optional => "optional",
            ClientCertMode::Required => "required",
        }
    }
}

/// One `{ cert = "...", key = "..." }`: the chain, its key, and the DNS names it serves.
#[derive(Clone)]
pub struct TlsCertificate {
    /// The PEM certificate chain file (leaf first), resolved against the config's directory.
    pub cert_file: PathBuf,
    /// The PEM private key file.
    pub key_file: PathBuf,
    /// DNS names of the leaf (subjectAltName, or the subject CN when it has none), lowercase;
    /// a wildcard is kept as `*.example.com`.
    pub names: Vec<String>,
    /// Chain and signing key, ready for the handshake.
    pub key: Arc<CertifiedKey>,
    /// SHA-256 of the chain and key bytes: equal files give equal certificates, so a reload
    /// sees a replaced file as a change.
    fingerprint: [u8; 32],
}

impl PartialEq for TlsCertificate {
    fn eq(&self, other: &Self) -> bool {
        self.cert_file == other.cert_file
            && self.key_file == other.key_file
            && self.fingerprint == other.fingerprint
    }
}

impl fmt::Debug for TlsCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("TlsCertificate")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("names", &self.names)
            .finish()
    }
}

/// `client_ca`: the roots client certificates must chain to.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientCa {
    /// The PEM file.
    pub file: PathBuf,
    /// Its certificates, DER.
    pub roots: Vec<CertificateDer<'static>>,
}

/// `tls = { ... }` of an http virtual service.
#[derive(Clone, Debug, PartialEq)]
pub struct TlsSettings {
    /// Never empty; the first is served when the client's SNI matches no other (or it sent
    /// none).
    pub certificates: Vec<TlsCertificate>,
    /// Lowest accepted version. Default 1.2.
    pub min_version: TlsVersion,
    /// ALPN protocols offered, in preference order. Default `["http/1.1"]`.
    pub alpn: Vec<String>,
    /// Roots for client certificates.
    pub client_ca: Option<ClientCa>,
    /// Default `required` when `client_ca` is given, else `none`.
    pub client_cert: ClientCertMode,
}

/// Which file of a certificate pair a [`CertError`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertFile {
    /// The certificate chain.
    Cert,
    /// The private key (also for a key that does not match the certificate).
    Key,
}

/// Why a certificate pair cannot be used; the message names the path.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CertError {
    /// The file at fault.
    pub file: CertFile,
    /// What is wrong, with the path.
    pub message: String,
}

fn at(file: CertFile) -> impl Fn(String) -> CertError {
    move |message| CertError { file, message }
}

/// A pool's `tls`: how the proxy and the health monitor speak TLS to its servers.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolTls {
    /// Roots the servers' certificates must chain to.
    pub ca: Option<ClientCa>,
    /// The name sent as SNI and checked in the server's certificate; `None` uses the server's
    /// IP address (its certificate then needs an IP subjectAltName).
    pub server_name: Option<String>,
    /// Check the server's certificate (default true; false accepts any certificate).
    pub verify: bool,
}

impl PoolTls {
    /// The rustls client configuration (aws-lc-rs), HTTP/1.1 over ALPN.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        self.client_config_with(rustls::crypto::aws_lc_rs::default_provider())
            .map(Arc::new)
    }

    /// [`PoolTls::client_config`] with another provider (the TLS benchmark's client limits
    /// the key exchange groups to what its peers' clients offer).
    pub fn client_config_with(
        &self,
        provider: rustls::crypto::CryptoProvider,
    ) -> Result<rustls::ClientConfig, String> {
        let provider = Arc::new(provider);
        let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let mut config = if self.verify {
            let mut roots = rustls::RootCertStore::empty();
            for c in self.ca.iter().flat_map(|ca| &ca.roots) {
                roots.add(c.clone()).map_err(|e| e.to_string())?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider)))
                .with_no_client_auth()
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }

    /// The name to connect to `server` with: `server_name`, else its address.
    pub fn name_for(&self, server: std::net::IpAddr) -> rustls_pki_types::ServerName<'static> {
        self.server_name
            .as_deref()
            .and_then(|n| rustls_pki_types::ServerName::try_from(n.to_string()).ok())
            .unwrap_or(rustls_pki_types::ServerName::IpAddress(server.into()))
    }
}

/// `verify = false`: any certificate is accepted; the handshake's signatures are still
/// checked, so the session is encrypted to whoever holds the presented key.
#[derive(Debug)]
struct AnyServerCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Reads one certificate chain and its key; the error names the file that is wrong.
pub fn load_certificate(cert_file: &Path, key_file: &Path) -> Result<TlsCertificate, CertError> {
    let (cert_err, key_err) = (at(CertFile::Cert), at(CertFile::Key));
    let cert_pem = read(cert_file, "certificate").map_err(&cert_err)?;
    let key_pem = read(key_file, "key").map_err(&key_err)?;
    let chain = parse_certificates(&cert_pem, cert_file).map_err(&cert_err)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        key_err(format!(
            "no private key in {}: expected a PKCS#8, SEC1 (EC) or PKCS#1 (RSA) PEM key ({e})",
            key_file.display()
        ))
    })?;
    let mut hash = Sha256::new();
    for c in &chain {
        hash.update(c.as_ref());
    }
    hash.update(key.secret_der());
    let fingerprint: [u8; 32] = hash.finalize().into();
    let leaf = chain.first().ok_or_else(|| {
        cert_err(format!(
            "no certificate in {}: expected a PEM `BEGIN CERTIFICATE` block",
            cert_file.display()
        ))
    })?;
    let names = leaf_names(leaf).map_err(|e| {
        cert_err(format!(
            "cannot parse the certificate in {}: {e}",
            cert_file.display()
        ))
    })?;
    let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key).map_err(|e| {
        key_err(format!(
            "unsupported private key in {}: {e} (ECDSA P-256/P-384, RSA 2048+ and Ed25519 are supported)",
            key_file.display()
        ))
    })?;
    let certified = CertifiedKey::new(chain, signing);
    if let Err(e) = certified.keys_match() {
        let why = match e {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                "its public key differs from the certificate's".to_string()
            }
            other => other.to_string(),
        };
        return Err(key_err(format!(
            "key {} does not match certificate {}: {why}",
            key_file.display(),
            cert_file.display()
        )));
    }
    Ok(TlsCertificate {
        cert_file: cert_file.to_path_buf(),
        key_file: key_file.to_path_buf(),
        names,
        key: Arc::new(certified),
        fingerprint,
    })
}

/// Reads `client_ca`.
pub fn load_client_ca(file: &Path) -> Result<ClientCa, String> {
    let pem = read(file, "CA")?;
    let roots = parse_certificates(&pem, file)?;
    if roots.is_empty() {
        return Err(format!(
            "no certificate in {}: expected a PEM `BEGIN CERTIFICATE` block",
            file.display()
        ));
    }
    Ok(ClientCa {
        file: file.to_path_buf(),
        roots,
    })
}

fn read(file: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(file).map_err(|e| format!("cannot read {what} file {}: {e}", file.display()))
}

fn parse_certificates(pem: &[u8], file: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad PEM in {}: {e}", file.display()))
}

/// The DNS names of a certificate: its subjectAltName DNS entries, else its subject CN.
fn leaf_names(der: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der.as_ref()).map_err(|e| e.to_string())?;
    let mut names: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(e.to_string()),
    };
    if names.is_empty() {
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    Ok(names)
}

/// True when certificate name `pattern` (maybe `*.example.com`) covers `host`: a wildcard
/// stands for exactly one leftmost label (RFC 6125 section 6.4.3).
pub fn name_matches(pattern: &str, host: &str) -> bool {
    let host = host.trim_end_matches('.');
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest.eq_ignore_ascii_case(suffix)),
        None => pattern.eq_ignore_ascii_case(host),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_one_label() {
        assert!(name_matches("*.example.com", "a.example.com"));
        assert!(name_matches("*.example.com", "A.Example.COM."));
        assert!(!name_matches("*.example.com", "a.b.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(!name_matches("*.example.com", ".example.com"));
        assert!(name_matches("shop.example.com", "SHOP.example.com"));
        assert!(!name_matches("shop.example.com", "shop.example.org"));
    }
}
