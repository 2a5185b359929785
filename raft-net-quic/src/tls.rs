//! Mutual TLS: a node's identity (its certificate, key and the cluster CA),
//! the rustls configurations built from it, and the check that binds a peer's
//! claimed node id to its certificate.
//!
//! Every node certificate carries the DNS name [`node_dns_name`]`(id)` among
//! its subject alternative names. A dialer verifies the acceptor's certificate
//! against the cluster CA *for that name*, so reaching the wrong node (or an
//! impostor) fails the TLS handshake; the acceptor verifies the dialer's
//! certificate against the CA during the handshake and then checks that it
//! names the node id the dialer claims in its `Hello`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use raft_core::NodeId;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::RootCertStore;

/// The ALPN protocol name of the peer protocol. The protocol *version* is
/// negotiated in the handshake frame, so a mismatch gets a clear error.
pub const ALPN: &[u8] = b"raft-net";

/// The ALPN protocol name of the peer protocol with the forwarding
/// messages (`ForwardPropose`, `ReadIndexRequest` and their answers).
/// A node that speaks them offers it ahead of [`ALPN`]; the acceptor picks
/// the first of its own list the dialer offered, so two such nodes agree
/// on it and a node from before it agrees on [`ALPN`].
pub const ALPN_FORWARD: &[u8] = b"raft-net/forward";

/// The DNS name a node's certificate must carry: `node-<id>.raft`.
pub fn node_dns_name(id: NodeId) -> String {
    format!("node-{id}.raft")
}

/// Why TLS material could not be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or parsed.
    #[error("cannot load {what} from {path}: {detail}")]
    Load {
        /// What the file should hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it failed.
        detail: String,
    },
    /// PEM text held nothing usable.
    #[error("no {0} found in the PEM data")]
    Missing(&'static str),
    /// The node's own certificate does not fit the node id or the CA.
    #[error("certificate for node {node} is not valid: {detail}")]
    Invalid {
        /// The node id the certificate was loaded for.
        node: NodeId,
        /// The verifier's verdict.
        detail: String,
    },
    /// rustls refused the configuration.
    #[error("tls configuration: {0}")]
    Config(String),
}

/// A node's TLS identity: its certificate chain and private key, and the
/// cluster CA that every peer certificate must chain to.
pub struct NodeTls {
    node: NodeId,
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// Certificate revocation lists checked for every peer (both roles).
    crls: Vec<CertificateRevocationListDer<'static>>,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTls")
            .field("node", &self.node)
            .field("chain_len", &self.chain.len())
            .field("roots", &self.roots.len())
            .field("crls", &self.crls.len())
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl NodeTls {
    /// Builds an identity from PEM text: the CA certificate(s), the node's
    /// certificate chain (leaf first) and its private key (PKCS#8, PKCS#1 or
    /// SEC1).
    ///
    /// # Errors
    ///
    /// [`TlsError::Missing`] when a part is absent, [`TlsError::Invalid`] when
    /// the certificate does not chain to the CA or does not name `node`.
    pub fn from_pem(
        node: NodeId,
        ca_pem: &[u8],
        cert_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<Self, TlsError> {
        let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(ca_pem)
            .collect::<Result<_, _>>()
            .map_err(|_| TlsError::Missing("CA certificate"))?;
        if cas.is_empty() {
            return Err(TlsError::Missing("CA certificate"));
        }
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|_| TlsError::Missing("certificate"))?;
        if chain.is_empty() {
            return Err(TlsError::Missing("certificate"));
        }
        let key =
            PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| TlsError::Missing("private key"))?;
        let mut roots = RootCertStore::empty();
        for ca in cas {
            roots.add(ca).map_err(|e| TlsError::Invalid {
                node,
                detail: format!("CA certificate rejected: {e}"),
            })?;
        }
        let tls = Self {
            node,
            roots: Arc::new(roots),
            chain,
            key,
            crls: Vec::new(),
        };
        tls.check_own_certificate()?;
        Ok(tls)
    }

    /// The same identity checking peers against the certificate revocation
    /// lists in `crl_pem` (one or more PEM `X509 CRL` blocks, signed by the
    /// cluster CA), in both roles: a dialer refuses a revoked acceptor, an
    /// acceptor a revoked dialer. Only the peer's own (end-entity)
    /// certificate is checked; a CRL must be present for its issuer, or the
    /// peer is refused (unknown revocation status). Replaces any earlier
    /// lists; an empty `crl_pem` is an error (use no CRL instead).
    ///
    /// # Errors
    ///
    /// [`TlsError::Missing`] when `crl_pem` holds no CRL,
    /// [`TlsError::Invalid`] when this node's own certificate is revoked or
    /// the lists are not from its issuer.
    pub fn with_crl_pem(&self, crl_pem: &[u8]) -> Result<Self, TlsError> {
        let tls = self.with_crls_unchecked(crl_pem)?;
        tls.check_own_certificate()?;
        Ok(tls)
    }

    /// For a reload: the identity with the lists in `crl_pem`, and whether
    /// they revoke this node's own certificate (then they are still good
    /// for checking peers; the caller warns). Lists that are not from the
    /// CA, or that do not parse, are an error.
    pub(crate) fn with_crl_pem_for_reload(&self, crl_pem: &[u8]) -> Result<(Self, bool), TlsError> {
        let tls = self.with_crls_unchecked(crl_pem)?;
        match tls.own_certificate_status() {
            Ok(()) => Ok((tls, false)),
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)) => {
                Ok((tls, true))
            }
            Err(e) => Err(TlsError::Invalid {
                node: self.node,
                detail: format!("the revocation lists cannot check this node's certificate: {e}"),
            }),
        }
    }

    fn with_crls_unchecked(&self, crl_pem: &[u8]) -> Result<Self, TlsError> {
        let crls: Vec<CertificateRevocationListDer<'static>> =
            CertificateRevocationListDer::pem_slice_iter(crl_pem)
                .collect::<Result<_, _>>()
                .map_err(|_| TlsError::Missing("certificate revocation list"))?;
        if crls.is_empty() {
            return Err(TlsError::Missing("certificate revocation list"));
        }
        let tls = Self {
            node: self.node,
            roots: self.roots.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            crls,
        };
        // Builds the verifiers: a list that does not parse fails here.
        tls.server_verifier()?;
        Ok(tls)
    }

    /// [`NodeTls::with_crl_pem`] with the lists read from a file.
    ///
    /// # Errors
    ///
    /// [`TlsError::Load`] naming the file, otherwise as
    /// [`NodeTls::with_crl_pem`].
    pub fn with_crl_file(&self, path: impl AsRef<Path>) -> Result<Self, TlsError> {
        let path = path.as_ref();
        let pem = std::fs::read(path).map_err(|e| TlsError::Load {
            what: "the certificate revocation list",
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
        self.with_crl_pem(&pem).map_err(|e| TlsError::Load {
            what: "the certificate revocation list",
            path: path.to_path_buf(),
            detail: e.to_string(),
        })
    }

    /// How many revocation lists are checked.
    pub fn crl_count(&self) -> usize {
        self.crls.len()
    }

    fn server_verifier(&self) -> Result<Arc<rustls::client::WebPkiServerVerifier>, TlsError> {
        let mut b = rustls::client::WebPkiServerVerifier::builder_with_provider(
            self.roots.clone(),
            provider(),
        );
        if !self.crls.is_empty() {
            b = b
                .with_crls(self.crls.iter().cloned())
                .only_check_end_entity_revocation();
        }
        b.build().map_err(|e| TlsError::Config(e.to_string()))
    }

    fn client_verifier(
        &self,
    ) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
        let mut b = rustls::server::WebPkiClientVerifier::builder_with_provider(
            self.roots.clone(),
            provider(),
        );
        if !self.crls.is_empty() {
            b = b
                .with_crls(self.crls.iter().cloned())
                .only_check_end_entity_revocation();
        }
        b.build().map_err(|e| TlsError::Config(e.to_string()))
    }

    /// Checks a peer's certificate chain (leaf first) again, with the
    /// current revocation lists: as an acceptor would (`inbound`, the peer
    /// dialed us) or as a dialer of node `peer` would. Used after the lists
    /// change, to close connections of peers revoked since they connected.
    pub(crate) fn recheck_peer(
        &self,
        chain: &[CertificateDer<'static>],
        peer: NodeId,
        inbound: bool,
    ) -> Result<(), String> {
        let Some((leaf, rest)) = chain.split_first() else {
            return Err("no certificate".into());
        };
        if inbound {
            self.client_verifier()
                .map_err(|e| e.to_string())?
                .verify_client_cert(leaf, rest, UnixTime::now())
                .map(|_| ())
                .map_err(|e| e.to_string())
        } else {
            let name = server_name(peer).map_err(|e| e.to_string())?;
            self.server_verifier()
                .map_err(|e| e.to_string())?
                .verify_server_cert(leaf, rest, &name, &[], UnixTime::now())
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    }

    /// Loads an identity from PEM files.
    ///
    /// # Errors
    ///
    /// [`TlsError::Load`] naming the file that could not be read, otherwise as
    /// [`NodeTls::from_pem`].
    pub fn from_pem_files(
        node: NodeId,
        ca_path: impl AsRef<Path>,
        cert_path: impl AsRef<Path>,
        key_path: impl AsRef<Path>,
    ) -> Result<Self, TlsError> {
        let read = |what: &'static str, p: &Path| {
            std::fs::read(p).map_err(|e| TlsError::Load {
                what,
                path: p.to_path_buf(),
                detail: e.to_string(),
            })
        };
        let ca = read("the CA certificate", ca_path.as_ref())?;
        let cert = read("the node certificate", cert_path.as_ref())?;
        let key = read("the private key", key_path.as_ref())?;
        Self::from_pem(node, &ca, &cert, &key)
    }

    /// The node id this identity is for.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// Fails fast, on the misconfigured node, when its certificate would be
    /// refused by every peer.
    fn check_own_certificate(&self) -> Result<(), TlsError> {
        self.own_certificate_status()
            .map_err(|e| TlsError::Invalid {
                node: self.node,
                detail: format!(
                    "{e} (it must be signed by the cluster CA, name {} and not be revoked)",
                    node_dns_name(self.node)
                ),
            })?;
        Ok(())
    }

    /// This node's certificate checked as a peer would check it.
    fn own_certificate_status(&self) -> Result<(), rustls::Error> {
        let verifier = self
            .server_verifier()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let name = server_name(self.node).map_err(|e| rustls::Error::General(e.to_string()))?;
        verifier
            .verify_server_cert(
                &self.chain[0],
                &self.chain[1..],
                &name,
                &[],
                UnixTime::now(),
            )
            .map(|_| ())
    }

    /// The rustls server configuration: presents this node's certificate and
    /// requires a client certificate signed by the cluster CA (and not
    /// revoked, when revocation lists are loaded). Public for
    /// tools that speak the protocol themselves (tests, probes).
    ///
    /// # Errors
    ///
    /// [`TlsError::Config`] if rustls refuses the key or certificates.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        let verifier = self.client_verifier()?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Config(e.to_string()))?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        Ok(cfg)
    }

    /// The rustls client configuration: trusts only the cluster CA and
    /// presents this node's certificate. Dial node `id` with the server name
    /// [`node_dns_name`]`(id)`.
    ///
    /// # Errors
    ///
    /// [`TlsError::Config`] if rustls refuses the key or certificates.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_webpki_verifier(self.server_verifier()?)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Config(e.to_string()))?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        Ok(cfg)
    }
}

/// The TLS server name under which node `id` is dialed.
pub(crate) fn server_name(id: NodeId) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(node_dns_name(id)).map_err(|e| TlsError::Config(e.to_string()))
}

/// The end of the validity period (`notAfter`) of the first certificate in
/// `pem` (a node's own, leaf first), in seconds since the Unix epoch: what
/// `raft_tls_cert_expiry_timestamp_seconds` exports.
///
/// # Errors
///
/// [`TlsError::Missing`] when `pem` holds no certificate,
/// [`TlsError::Config`] when it does not parse.
pub fn certificate_not_after(pem: &[u8]) -> Result<i64, TlsError> {
    let leaf = CertificateDer::pem_slice_iter(pem)
        .next()
        .ok_or(TlsError::Missing("certificate"))?
        .map_err(|_| TlsError::Missing("certificate"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| TlsError::Config(format!("bad certificate: {e}")))?;
    Ok(cert.validity().not_after.timestamp())
}

/// Checks that a peer's (already CA-verified) leaf certificate names
/// `claimed` exactly: a DNS subject alternative name equal to
/// `node-<claimed>.raft`. Wildcard names do not count, so a certificate for
/// `*.raft` cannot speak for every node.
pub(crate) fn certificate_names_node(
    leaf: &CertificateDer<'_>,
    claimed: NodeId,
) -> Result<(), String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| format!("bad certificate: {e}"))?;
    let want = node_dns_name(claimed);
    let named = cert
        .subject_alternative_name()
        .map_err(|e| format!("bad subject alternative names: {e}"))?
        .is_some_and(|san| {
            san.value
                .general_names
                .iter()
                .any(|n| matches!(n, GeneralName::DNSName(d) if d.eq_ignore_ascii_case(&want)))
        });
    if named {
        Ok(())
    } else {
        Err(format!("certificate does not name node {claimed} ({want})"))
    }
}
