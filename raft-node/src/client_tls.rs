//! Optional TLS on the client API: HTTPS with the node's certificate,
//! optionally requiring client certificates, and the HTTPS client followers
//! use to forward to the leader (it trusts the cluster CA and presents the
//! node's certificate, so a leader that requires client certificates
//! accepts it).

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::NodeConfig;

pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub(crate) fn certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing certificates in {}", path.display()))?;
    if certs.is_empty() {
        bail!("no certificate in {}", path.display());
    }
    Ok(certs)
}

pub(crate) fn key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&pem)
        .with_context(|| format!("no private key in {}", path.display()))
}

/// The HTTPS server configuration of the client API.
///
/// # Errors
///
/// Unreadable or invalid PEM files, or a configuration rustls refuses.
pub fn server_config(cfg: &NodeConfig) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?;
    let builder = match &cfg.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs(ca)?.into_iter().chain(certs(&cfg.tls_ca)?) {
                roots.add(c).context("adding a CA certificate")?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .context("building the client certificate verifier")?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs(&cfg.tls_cert)?, key(&cfg.tls_key)?)
        .context("the node certificate and key do not match")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The client followers forward with: HTTPS when the API uses it.
///
/// # Errors
///
/// Unreadable PEM files or a client reqwest cannot build.
pub fn forwarding_client(cfg: &NodeConfig) -> anyhow::Result<reqwest::Client> {
    // Idle pooled connections are let go well before the leader's idle
    // timeout closes them, so a forwarded write rarely races a close.
    let builder = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .pool_idle_timeout(cfg.http_idle_timeout / 2);
    if !cfg.client_tls {
        return Ok(builder.build()?);
    }
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(&cfg.tls_ca)? {
        roots.add(c).context("adding the cluster CA")?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs(&cfg.tls_cert)?, key(&cfg.tls_key)?)
        .context("the node certificate and key do not match")?;
    Ok(builder.use_preconfigured_tls(tls).build()?)
}
