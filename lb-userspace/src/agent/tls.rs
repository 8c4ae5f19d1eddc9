//! The TLS side of an http virtual service: a rustls server configuration (aws-lc-rs
//! provider) built from the validated [`TlsSettings`]: the certificate chosen by SNI,
//! session resumption with rotating ticket keys, client certificates as configured.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use rustls::RootCertStore;
use rustls::server::{
    ClientHello, ResolvesServerCert, ServerConfig, ServerSessionMemoryCache, WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;

use crate::config::{ClientCertMode, PoolTls, TlsSettings, TlsVersion, name_matches};
use crate::proxy::UpstreamTls;

/// TLS 1.2 sessions (by id) each service's cache keeps for resumption.
const SESSION_CACHE_SIZE: usize = 16 * 1024;

/// Why a service's TLS configuration cannot be built (the config checks make this rare).
#[derive(Debug, thiserror::Error)]
pub enum TlsBuildError {
    /// rustls refused a part of it.
    #[error("virtual service `{vs}`: TLS: {reason}")]
    Rustls {
        /// The service.
        vs: String,
        /// What rustls said.
        reason: String,
    },
    /// rustls refused a pool's TLS to its servers.
    #[error("pool `{pool}`: TLS: {reason}")]
    Pool {
        /// The pool.
        pool: String,
        /// What rustls said.
        reason: String,
    },
}

/// How the proxy speaks TLS to the servers of pool `pool`.
pub fn upstream(pool: &str, tls: &PoolTls) -> Result<UpstreamTls, TlsBuildError> {
    Ok(UpstreamTls {
        config: tls.client_config().map_err(|reason| TlsBuildError::Pool {
            pool: pool.to_string(),
            reason,
        })?,
        server_name: tls
            .server_name
            .as_deref()
            .and_then(|n| rustls::pki_types::ServerName::try_from(n.to_string()).ok()),
    })
}

/// Chooses the certificate by the client's SNI: an exact name first, then a wildcard, else
/// the first certificate of the list.
#[derive(Debug)]
pub struct SniResolver {
    /// Each certificate with its names, in config order.
    certs: Vec<(Vec<String>, Arc<CertifiedKey>)>,
}

impl SniResolver {
    /// Over `settings`' certificates.
    pub fn new(settings: &TlsSettings) -> Self {
        Self {
            certs: settings
                .certificates
                .iter()
                .map(|c| (c.names.clone(), Arc::clone(&c.key)))
                .collect(),
        }
    }

    /// The certificate for `sni`.
    pub fn choose(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(host) = sni {
            let exact = |n: &String| !n.starts_with("*.") && name_matches(n, host);
            let wild = |n: &String| n.starts_with("*.") && name_matches(n, host);
            for test in [&exact as &dyn Fn(&String) -> bool, &wild] {
                if let Some((_, key)) = self.certs.iter().find(|(names, _)| names.iter().any(test))
                {
                    return Some(Arc::clone(key));
                }
            }
        }
        self.certs.first().map(|(_, k)| Arc::clone(k))
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.choose(hello.server_name())
    }
}

/// One ticket key rotator per service name for the life of the process, so resumption
/// survives a reload. rustls' aws-lc-rs `Ticketer` switches to a new key every 6 hours and
/// still accepts tickets of the previous one.
fn ticketer(vs: &str) -> Result<Arc<dyn rustls::server::ProducesTickets>, rustls::Error> {
    static TICKETERS: OnceLock<Mutex<HashMap<String, Arc<dyn rustls::server::ProducesTickets>>>> =
        OnceLock::new();
    let mut map = TICKETERS.get_or_init(Default::default).lock();
    if let Some(t) = map.get(vs) {
        return Ok(Arc::clone(t));
    }
    let t = rustls::crypto::aws_lc_rs::Ticketer::new()?;
    map.insert(vs.to_string(), Arc::clone(&t));
    Ok(t)
}

/// The rustls server configuration of service `vs`.
pub fn server_config(vs: &str, settings: &TlsSettings) -> Result<Arc<ServerConfig>, TlsBuildError> {
    let err = |reason: String| TlsBuildError::Rustls {
        vs: vs.to_string(),
        reason,
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let versions: &[&'static rustls::SupportedProtocolVersion] = match settings.min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions)
        .map_err(|e| err(e.to_string()))?;
    let builder = match (&settings.client_ca, settings.client_cert) {
        (Some(ca), mode) if mode != ClientCertMode::None => {
            let mut roots = RootCertStore::empty();
            for r in &ca.roots {
                roots
                    .add(r.clone())
                    .map_err(|e| err(format!("client_ca {}: {e}", ca.file.display())))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if mode == ClientCertMode::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| err(e.to_string()))?)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(SniResolver::new(settings)));
    config.alpn_protocols = settings
        .alpn
        .iter()
        .map(|p| p.as_bytes().to_vec())
        .collect();
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
    config.ticketer = ticketer(vs).map_err(|e| err(e.to_string()))?;
    // TLS 1.3 resumption hands out tickets (stateless, so they work across workers).
    config.send_tls13_tickets = 2;
    Ok(Arc::new(config))
}
