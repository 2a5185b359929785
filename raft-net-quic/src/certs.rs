//! Development certificates (rcgen): a cluster CA and node certificates that
//! name their node id, as PEM. Used by the tests, the benchmarks and
//! `raft-node certs`. For production, issue certificates from your own CA
//! with the same subject alternative name, `node-<id>.raft`
//! ([`crate::tls::node_dns_name`]).
//!
//! ```
//! use raft_net_quic::certs::DevCa;
//! use raft_net_quic::NodeTls;
//!
//! let ca = DevCa::generate("example cluster").unwrap();
//! let node1 = ca.issue_node(1, &["localhost".into()]).unwrap();
//! let tls = NodeTls::from_pem(1, ca.cert_pem().as_bytes(), node1.cert_pem.as_bytes(),
//!                             node1.key_pem.as_bytes()).unwrap();
//! assert_eq!(tls.node(), 1);
//! ```

use std::path::{Path, PathBuf};

use raft_core::NodeId;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use rustls::pki_types::pem::PemObject;

use crate::tls::node_dns_name;

/// Why certificates could not be created or written.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen refused the parameters or key.
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    /// The issued certificate did not make a TLS identity.
    #[error("node TLS identity: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// A file could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// A development certificate authority.
pub struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa").finish_non_exhaustive()
    }
}

/// A node certificate and its private key, as PEM.
#[derive(Clone)]
pub struct NodeCert {
    /// The node it names.
    pub node: NodeId,
    /// The certificate (PEM).
    pub cert_pem: String,
    /// The private key (PKCS#8 PEM).
    pub key_pem: String,
}

impl std::fmt::Debug for NodeCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCert")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl DevCa {
    /// Creates a new CA whose common name is `name`.
    ///
    /// # Errors
    ///
    /// [`CertError::Generate`] if rcgen fails.
    pub fn generate(name: &str) -> Result<Self, CertError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        Ok(Self {
            issuer: Issuer::new(params, key),
            cert_pem: cert.pem(),
            key_pem,
        })
    }

    /// Loads a CA created earlier (its certificate and key PEM).
    ///
    /// # Errors
    ///
    /// [`CertError::Generate`] if the PEM cannot be parsed.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(Self {
            issuer,
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
        })
    }

    /// The CA certificate (PEM): every node's trust root.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key (PEM). Keep it away from the nodes in production.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Issues a certificate for node `node`, valid for mutual TLS in both
    /// roles. It names `node-<id>.raft` and, in addition, `extra_names`
    /// (host names or IP addresses, for the client API).
    ///
    /// # Errors
    ///
    /// [`CertError::Generate`] if a name is not a valid DNS name or address.
    pub fn issue_node(&self, node: NodeId, extra_names: &[String]) -> Result<NodeCert, CertError> {
        let mut names = vec![node_dns_name(node)];
        names.extend(extra_names.iter().cloned());
        self.issue(node, names)
    }

    /// Issues a certificate for `node` (no extra names) and makes it the
    /// node's TLS identity under this CA: the set-up of an in-process
    /// node, a test or a benchmark in one call.
    ///
    /// ```
    /// let ca = raft_net_quic::certs::DevCa::generate("test").unwrap();
    /// assert_eq!(ca.node_tls(3).unwrap().node(), 3);
    /// ```
    ///
    /// # Errors
    ///
    /// [`CertError::Generate`] if rcgen fails, [`CertError::Tls`] if rustls
    /// refuses the result.
    pub fn node_tls(&self, node: NodeId) -> Result<crate::NodeTls, CertError> {
        let c = self.issue_node(node, &[])?;
        Ok(crate::NodeTls::from_pem(
            node,
            self.cert_pem.as_bytes(),
            c.cert_pem.as_bytes(),
            c.key_pem.as_bytes(),
        )?)
    }

    /// Issues a certificate for `node` that carries exactly `names` as subject
    /// alternative names (no automatic `node-<id>.raft`): for tests of
    /// certificates that name the wrong node.
    ///
    /// # Errors
    ///
    /// [`CertError::Generate`] if a name is invalid.
    pub fn issue_with_names(
        &self,
        node: NodeId,
        names: Vec<String>,
    ) -> Result<NodeCert, CertError> {
        self.issue(node, names)
    }

    /// A certificate revocation list (PEM) signed by this CA that revokes the
    /// given node certificates (PEM); an empty slice gives an empty list.
    /// Load it with `--tls-crl` ([`NodeTls::with_crl_pem`](crate::NodeTls::with_crl_pem)).
    ///
    /// # Errors
    ///
    /// [`CertError::Generate`] if a certificate does not parse or rcgen
    /// fails.
    pub fn revocation_list(&self, revoked_cert_pems: &[&str]) -> Result<String, CertError> {
        let mut revoked = Vec::new();
        for pem in revoked_cert_pems {
            let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
                .map_err(|_| rcgen::Error::CouldNotParseCertificate)?;
            let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
                .map_err(|_| rcgen::Error::CouldNotParseCertificate)?;
            revoked.push(rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from_slice(cert.raw_serial()),
                revocation_time: rcgen::date_time_ymd(2020, 1, 1),
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            });
        }
        let params = rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2020, 1, 1),
            next_update: rcgen::date_time_ymd(2100, 1, 1),
            crl_number: rcgen::SerialNumber::from(rand::random::<u32>() as u64 + 1),
            issuing_distribution_point: None,
            revoked_certs: revoked,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }

    fn issue(&self, node: NodeId, names: Vec<String>) -> Result<NodeCert, CertError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("raft node {node}"));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(NodeCert {
            node,
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// The files [`write_dev_certs`] created.
#[derive(Debug, Clone)]
pub struct DevCertFiles {
    /// `ca.pem`.
    pub ca_cert: PathBuf,
    /// `ca.key`.
    pub ca_key: PathBuf,
    /// `(node, node-<id>.pem, node-<id>.key)` for each node.
    pub nodes: Vec<(NodeId, PathBuf, PathBuf)>,
}

/// Creates `dir` if needed and writes a new CA (`ca.pem`, `ca.key`) and, for
/// each node id, `node-<id>.pem` and `node-<id>.key`. When `ca.pem` and
/// `ca.key` already exist, they are reused so that new nodes join the same
/// cluster. Private keys are written with mode 0600.
///
/// # Errors
///
/// [`CertError::Io`] naming the file that failed, [`CertError::Generate`]
/// for a bad name.
pub fn write_dev_certs(
    dir: &Path,
    nodes: &[NodeId],
    extra_names: &[String],
) -> Result<DevCertFiles, CertError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CertError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let ca_cert = dir.join("ca.pem");
    let ca_key = dir.join("ca.key");
    let ca = if ca_cert.exists() && ca_key.exists() {
        let cert = std::fs::read_to_string(&ca_cert).map_err(io(&ca_cert))?;
        let key = std::fs::read_to_string(&ca_key).map_err(io(&ca_key))?;
        // The key that mints every certificate is reused, not rewritten:
        // close it to others too.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&ca_key, std::fs::Permissions::from_mode(0o600))
                .map_err(io(&ca_key))?;
        }
        DevCa::from_pem(&cert, &key)?
    } else {
        let ca = DevCa::generate("raft development CA")?;
        std::fs::write(&ca_cert, ca.cert_pem()).map_err(io(&ca_cert))?;
        write_private(&ca_key, ca.key_pem()).map_err(io(&ca_key))?;
        ca
    };
    let mut files = DevCertFiles {
        ca_cert,
        ca_key,
        nodes: Vec::new(),
    };
    for &node in nodes {
        let c = ca.issue_node(node, extra_names)?;
        let cert = dir.join(format!("node-{node}.pem"));
        let key = dir.join(format!("node-{node}.key"));
        std::fs::write(&cert, &c.cert_pem).map_err(io(&cert))?;
        write_private(&key, &c.key_pem).map_err(io(&key))?;
        files.nodes.push((node, cert, key));
    }
    Ok(files)
}

/// Writes a private key so that it is never readable by anyone but its
/// owner, whatever the file held before: the text goes to a new temporary
/// file created with mode 0600 beside `path`, is synced, and replaces
/// `path` by a rename (the directory synced after it). A key file that
/// existed with a looser mode (0644, say) ends up 0600 like a new one, and
/// no reader ever sees a partly written key.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("a key file needs a file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let _ = std::fs::remove_file(&tmp);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let written = (|| {
        let mut f = opts.open(&tmp)?;
        // The mode given at creation is masked by the umask; set it
        // explicitly so that it is exactly 0600.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn octal(mode: u32) -> String {
        format!("{mode:04o}")
    }

    #[test]
    fn private_keys_are_0600_even_when_the_file_existed_with_another_mode() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("node-1.key");
        let ca_key = dir.path().join("ca.key");
        // A key file left world-readable (by an older version, a copy, an
        // editor): issuing the node again rewrites it 0600.
        std::fs::write(&key, "old key").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let files = write_dev_certs(dir.path(), &[1, 2], &[]).unwrap();
        for (_, _, k) in &files.nodes {
            assert_eq!(octal(mode(k)), "0600", "{}", k.display());
        }
        assert_eq!(octal(mode(&ca_key)), "0600");
        assert_ne!(std::fs::read_to_string(&key).unwrap(), "old key");
        // Again, over keys made 0666: every write fixes the mode, and the
        // reused CA key is closed too.
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o666)).unwrap();
        std::fs::set_permissions(&ca_key, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_dev_certs(dir.path(), &[1], &[]).unwrap();
        assert_eq!(octal(mode(&key)), "0600");
        assert_eq!(octal(mode(&ca_key)), "0600", "the reused CA key");
        // No temporary file is left behind.
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.contains(".tmp-")), "{names:?}");
    }
}
