//! Certificates for TLS tests, made with rcgen: a CA, server certificates for given names
//! (ECDSA P-256 or RSA 2048, the key as PKCS#8 or as the traditional SEC1 / PKCS#1 PEM) and
//! client certificates, written to PEM files.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256,
};

use crate::error::{Error, Result, io};

/// The key algorithm of a generated certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyAlg {
    /// ECDSA on P-256.
    EcdsaP256,
    /// RSA, 2048 bits.
    Rsa2048,
}

/// How the private key is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyForm {
    /// `BEGIN PRIVATE KEY`.
    Pkcs8,
    /// `BEGIN EC PRIVATE KEY` (SEC1) or `BEGIN RSA PRIVATE KEY` (PKCS#1), converted by
    /// `openssl pkey -traditional`.
    Traditional,
}

/// A certificate and key written to files.
#[derive(Clone, Debug)]
pub struct CertFiles {
    /// PEM certificate.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// A test certificate authority.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// Its certificate, PEM, written to a file.
    pub cert_file: PathBuf,
}

fn rc(e: rcgen::Error) -> Error {
    certs(format!("rcgen: {e}"))
}

fn certs(what: String) -> Error {
    Error::Certificates { what }
}

fn key_pair(alg: KeyAlg) -> Result<KeyPair> {
    match alg {
        KeyAlg::EcdsaP256 => KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(rc),
        KeyAlg::Rsa2048 => {
            KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048).map_err(rc)
        }
    }
}

impl TestCa {
    /// A new CA named `name`, its certificate written to `dir/<name>.pem`.
    pub fn new(dir: &Path, name: &str) -> Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rc)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer =
            CertifiedIssuer::self_signed(params, key_pair(KeyAlg::EcdsaP256)?).map_err(rc)?;
        let cert_file = dir.join(format!("{name}.pem"));
        std::fs::write(&cert_file, issuer.pem()).map_err(io(cert_file.display().to_string()))?;
        Ok(Self { issuer, cert_file })
    }

    /// A server certificate for `names` (the first is also the CN), written to
    /// `dir/<file>.pem` and `dir/<file>.key`.
    pub fn server(
        &self,
        dir: &Path,
        file: &str,
        names: &[&str],
        alg: KeyAlg,
        form: KeyForm,
    ) -> Result<CertFiles> {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .map_err(rc)?;
        if let Some(cn) = names.first() {
            params.distinguished_name.push(DnType::CommonName, *cn);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.write(dir, file, params, alg, form)
    }

    /// A client certificate with common name `cn`.
    pub fn client(&self, dir: &Path, file: &str, cn: &str) -> Result<CertFiles> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rc)?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "latch tests");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.write(dir, file, params, KeyAlg::EcdsaP256, KeyForm::Pkcs8)
    }

    fn write(
        &self,
        dir: &Path,
        file: &str,
        params: CertificateParams,
        alg: KeyAlg,
        form: KeyForm,
    ) -> Result<CertFiles> {
        let key = key_pair(alg)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(rc)?;
        let files = CertFiles {
            cert: dir.join(format!("{file}.pem")),
            key: dir.join(format!("{file}.key")),
        };
        std::fs::write(&files.cert, cert.pem()).map_err(io(files.cert.display().to_string()))?;
        std::fs::write(&files.key, key.serialize_pem())
            .map_err(io(files.key.display().to_string()))?;
        if form == KeyForm::Traditional {
            to_traditional(&files.key)?;
        }
        Ok(files)
    }
}

/// A TLS server configuration (rustls, aws-lc-rs) serving `files`, for TLS test backends.
pub fn server_config(files: &CertFiles) -> Result<std::sync::Arc<rustls::ServerConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|i| i.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| certs(format!("{}: {e}", files.cert.display())))?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| certs(format!("{}: {e}", files.key.display())))?;
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| certs(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| certs(e.to_string()))?;
    Ok(std::sync::Arc::new(config))
}

/// Rewrites a PKCS#8 PEM key in place as SEC1 (EC) or PKCS#1 (RSA).
pub fn to_traditional(key: &Path) -> Result<()> {
    let out_path = key.with_extension("traditional");
    let out = std::process::Command::new("openssl")
        .args(["pkey", "-traditional", "-in"])
        .arg(key)
        .arg("-out")
        .arg(&out_path)
        .output()
        .map_err(io("openssl pkey"))?;
    if !out.status.success() {
        return Err(certs(format!(
            "openssl pkey -traditional failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    std::fs::rename(&out_path, key).map_err(io(key.display().to_string()))
}
