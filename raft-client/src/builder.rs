//! [`ClientBuilder`]: endpoints, TLS, token, timeouts, retries.

use std::path::Path;
use std::time::Duration;

use crate::client::{Client, Endpoints};
use crate::error::{Error, Result};

/// How requests that did not get a definite answer are sent again.
///
/// A request is retried (on the next endpoint, or the leader's when it is
/// known) when nothing was applied: the connection was refused, or the node
/// answered 503, or 409 with `Retry-After` (a membership change in
/// progress). Reads are also retried after a timeout, a lost connection or
/// 504; writes only when they carry an idempotency key
/// ([`IdempotencyKeys`]), since without one a second attempt could apply
/// the write twice. The wait before attempt `n + 1` is the larger of the
/// backoff (doubling from `initial_backoff` up to `max_backoff`) and the
/// answer's `Retry-After`; when that wait would pass `budget` (counted
/// from the first attempt) the last error is returned instead.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1).
    pub max_attempts: u32,
    /// Wait before the second attempt.
    pub initial_backoff: Duration,
    /// Longest wait between two attempts, unless `Retry-After` asks for
    /// more.
    pub max_backoff: Duration,
    /// Longest time from the first attempt to the start of the last.
    pub budget: Duration,
}

impl RetryPolicy {
    /// One attempt, never retried.
    pub fn none() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// Sets [`RetryPolicy::max_attempts`].
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    /// Sets [`RetryPolicy::budget`].
    pub fn budget(mut self, budget: Duration) -> Self {
        self.budget = budget;
        self
    }

    /// Sets the backoff bounds.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max;
        self
    }
}

impl Default for RetryPolicy {
    /// 10 attempts within 20 s, backoff from 50 ms to 1 s: long enough to
    /// ride out a leader election (one to two election timeouts).
    fn default() -> Self {
        Self {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            budget: Duration::from_secs(20),
        }
    }
}

/// Whether writes carry an `Idempotency-Key` when the caller gives none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum IdempotencyKeys {
    /// Every write without a key of its own gets a random 128-bit one, so a
    /// write whose answer was lost is sent again safely: the node answers a
    /// retry with the first result (within its `--idempotency-window`).
    /// The cost is one small record per write in every replica's store
    /// until it leaves the window.
    #[default]
    Generate,
    /// Writes carry a key only when the caller gives one; a write without
    /// one whose outcome is unknown fails with
    /// [`Error::OutcomeUnknown`](crate::Error::OutcomeUnknown) and is never
    /// sent again.
    Off,
}

/// Builds a [`Client`]. Start with [`Client::builder`].
#[derive(Clone)]
pub struct ClientBuilder {
    endpoints: Vec<String>,
    token: Option<String>,
    ca_pem: Vec<Vec<u8>>,
    identity_pem: Option<Vec<u8>>,
    connect_timeout: Duration,
    request_timeout: Duration,
    retry: RetryPolicy,
    idempotency: IdempotencyKeys,
    max_answer_bytes: usize,
    pool_max_idle_per_host: usize,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("endpoints", &self.endpoints)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("ca_certificates", &self.ca_pem.len())
            .field("identity", &self.identity_pem.is_some())
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("retry", &self.retry)
            .field("idempotency", &self.idempotency)
            .field("max_answer_bytes", &self.max_answer_bytes)
            .finish()
    }
}

impl ClientBuilder {
    pub(crate) fn new(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            token: None,
            ca_pem: Vec::new(),
            identity_pem: None,
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            idempotency: IdempotencyKeys::default(),
            max_answer_bytes: 64 << 20,
            pool_max_idle_per_host: 32,
        }
    }

    /// A bearer token sent with every request (`Authorization: Bearer`).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Reads the bearer token from a file, which like the node's must be
    /// readable by its owner only and belong to this user (or root).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the file: unreadable, open to others, or
    /// not one token of at least 16 visible ASCII characters.
    pub fn token_file(self, path: impl AsRef<Path>) -> Result<Self> {
        let token = read_token_file(path.as_ref())?;
        Ok(self.token(token))
    }

    /// Trusts the CA certificates in this PEM text for `https://` endpoints
    /// (the cluster CA, `ca.pem`). Without one, `https://` endpoints are
    /// refused: no system roots are trusted.
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem.push(pem.into());
        self
    }

    /// [`ClientBuilder::ca_pem`] from a file.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when the file cannot be read.
    pub fn ca_file(self, path: impl AsRef<Path>) -> Result<Self> {
        Ok(self.ca_pem(read(path.as_ref())?))
    }

    /// A client certificate and its private key (PEM) to present, for
    /// nodes started with `--client-ca`.
    pub fn identity_pem(mut self, cert_pem: &[u8], key_pem: &[u8]) -> Self {
        let mut pem = key_pem.to_vec();
        pem.push(b'\n');
        pem.extend_from_slice(cert_pem);
        self.identity_pem = Some(pem);
        self
    }

    /// [`ClientBuilder::identity_pem`] from files.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when a file cannot be read.
    pub fn identity_files(self, cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Result<Self> {
        let (cert, key) = (read(cert.as_ref())?, read(key.as_ref())?);
        Ok(self.identity_pem(&cert, &key))
    }

    /// Longest wait for a connection (default 2 s).
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// Longest wait for one attempt's whole answer, connecting included
    /// (default 10 s). Set it above the nodes' `--request-timeout-ms`, so a
    /// write the node cannot finish gets its 504 rather than a client
    /// timeout.
    pub fn request_timeout(mut self, t: Duration) -> Self {
        self.request_timeout = t;
        self
    }

    /// How failed attempts are retried (default [`RetryPolicy::default`]).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Whether writes get generated idempotency keys (default
    /// [`IdempotencyKeys::Generate`]).
    pub fn idempotency_keys(mut self, mode: IdempotencyKeys) -> Self {
        self.idempotency = mode;
        self
    }

    /// Largest answer body read (default 64 MiB); a larger one fails with
    /// [`Error::InvalidAnswer`].
    pub fn max_answer_bytes(mut self, bytes: usize) -> Self {
        self.max_answer_bytes = bytes;
        self
    }

    /// Idle connections kept per node (default 32).
    pub fn pool_max_idle_per_host(mut self, n: usize) -> Self {
        self.pool_max_idle_per_host = n;
        self
    }

    /// Builds the client.
    ///
    /// # Errors
    ///
    /// [`Error::Config`]: no endpoint, an endpoint that is not an
    /// `http://` or `https://` URL, an `https://` endpoint without a CA, a
    /// zero timeout or attempt count, unusable PEM.
    pub fn build(self) -> Result<Client> {
        if self.endpoints.is_empty() {
            return Err(Error::Config("no endpoint given".into()));
        }
        let mut endpoints = Vec::with_capacity(self.endpoints.len());
        for e in &self.endpoints {
            endpoints.push(normalize_endpoint(e)?);
        }
        if self.ca_pem.is_empty() && endpoints.iter().any(|e| e.starts_with("https://")) {
            return Err(Error::Config(
                "an https:// endpoint needs a CA certificate (the CA that signed the node's \
                 certificate; ca_file or ca_pem)"
                    .into(),
            ));
        }
        if self.connect_timeout.is_zero() || self.request_timeout.is_zero() {
            return Err(Error::Config("timeouts must be positive".into()));
        }
        if self.retry.max_attempts == 0 {
            return Err(Error::Config("max_attempts must be at least 1".into()));
        }
        if let Some(t) = &self.token {
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(Error::Config(
                    "a token must be visible ASCII characters".into(),
                ));
            }
        }
        let http = self.http_client()?;
        Ok(Client::from_parts(
            http,
            Endpoints::new(endpoints),
            self.token.map(|t| format!("Bearer {t}")),
            self.retry,
            self.idempotency,
            self.max_answer_bytes,
            self.request_timeout,
        ))
    }

    fn http_client(&self) -> Result<reqwest::Client> {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(self.connect_timeout)
            .timeout(self.request_timeout)
            .pool_max_idle_per_host(self.pool_max_idle_per_host)
            // The node's idle timeout is 60 s by default: let connections
            // go well before, so a request rarely races a close.
            .pool_idle_timeout(Duration::from_secs(20))
            .redirect(reqwest::redirect::Policy::none());
        for pem in &self.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| Error::Config(format!("CA certificate: {e}")))?;
            if certs.is_empty() {
                return Err(Error::Config("no CA certificate in the PEM text".into()));
            }
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        if let Some(pem) = &self.identity_pem {
            let id = reqwest::Identity::from_pem(pem).map_err(|e| {
                Error::Config(format!(
                    "the client certificate and key are not a certificate and its private key: {e}"
                ))
            })?;
            b = b.identity(id);
        }
        b.build()
            .map_err(|e| Error::Config(format!("building the HTTP client: {e}")))
    }
}

/// `http://host:port` without a trailing slash; anything else is refused.
pub(crate) fn normalize_endpoint(e: &str) -> Result<String> {
    let trimmed = e.trim().trim_end_matches('/');
    let rest = trimmed
        .strip_prefix("http://")
        .or_else(|| trimmed.strip_prefix("https://"));
    match rest {
        Some(host) if !host.is_empty() && !host.contains(['/', '?', '#', ' ']) => {
            Ok(trimmed.to_owned())
        }
        _ => Err(Error::Config(format!(
            "endpoint {e:?} must be http://HOST:PORT or https://HOST:PORT"
        ))),
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::Config(format!("reading {}: {e}", path.display())))
}

/// Reads a bearer token file: one open file for the checks and the read
/// (the path cannot be swapped in between), a mode that gives the group
/// and others no access, owned by this user or root, one token of at
/// least 16 visible ASCII characters (surrounding white space ignored).
/// raft-node reads its `--auth-token-file` and `--admin-token-file` with
/// this function, so the client and the node accept the same files and
/// say the same about the others.
///
/// One exception for systemd: a file in the service's credentials directory
/// (`$CREDENTIALS_DIRECTORY`, from `LoadCredential=`) may also be readable
/// by its group. systemd 254 and later give a `DynamicUser=` service its
/// credentials as root's files of mode 0440 with an ACL for the service's
/// user, in a directory only that service can enter.
///
/// # Errors
///
/// [`Error::Config`] naming the file and what is wrong: it cannot be opened
/// or read (the system's reason), its mode lets others in (with the fix,
/// `chmod 600`), another user owns it, or it holds no valid token.
pub fn read_token_file(path: &Path) -> Result<String> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let cannot = |e: std::io::Error| {
        Error::Config(format!("cannot read token file {}: {e}", path.display()))
    };
    let mut file = std::fs::File::open(path).map_err(cannot)?;
    let meta = file.metadata().map_err(cannot)?;
    let mode = meta.permissions().mode() & 0o777;
    let credential = std::env::var_os("CREDENTIALS_DIRECTORY")
        .is_some_and(|dir| in_directory(path, Path::new(&dir)));
    if !mode_allowed(mode, credential) {
        return Err(Error::Config(format!(
            "token file {} has mode {mode:04o}: other users can read or change it; make it \
             readable by its owner only (`chmod 600 {}`; in Kubernetes, `defaultMode: 0400` \
             on the secret volume)",
            path.display(),
            path.display()
        )));
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(Error::Config(format!(
            "token file {} belongs to user {}, not to this process's user ({me}) or root: \
             whoever owns it can change the token",
            path.display(),
            meta.uid()
        )));
    }
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(cannot)?;
    let token = text.trim().to_owned();
    if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::Config(format!(
            "token file {} must hold one token of at least 16 visible ASCII characters",
            path.display()
        )));
    }
    Ok(token)
}

/// Whether a token file of `mode` may be used: no access for the group or
/// others; for a systemd credential (`credential`), read access for the
/// group too.
fn mode_allowed(mode: u32, credential: bool) -> bool {
    let forbidden = if credential { 0o037 } else { 0o077 };
    mode & forbidden == 0
}

/// Whether `path` is a file directly in `dir` (both resolved).
fn in_directory(path: &Path, dir: &Path) -> bool {
    match (
        path.canonicalize()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf)),
        dir.canonicalize(),
    ) {
        (Some(parent), Ok(dir)) => parent == dir,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_systemd_credential_may_be_group_readable_and_nothing_else_may() {
        // systemd 254+: root-owned, mode 0440 plus an ACL for the service.
        assert!(mode_allowed(0o440, true));
        assert!(mode_allowed(0o400, true) && mode_allowed(0o600, false));
        for (mode, credential) in [
            (0o440, false),
            (0o640, false),
            (0o460, true),
            (0o444, true),
            (0o404, false),
        ] {
            assert!(
                !mode_allowed(mode, credential),
                "{mode:o} credential={credential}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("auth-token");
        std::fs::write(&file, "x").unwrap();
        assert!(in_directory(&file, dir.path()));
        let other = tempfile::tempdir().unwrap();
        assert!(!in_directory(&file, other.path()));
        let nested = dir.path().join("sub");
        std::fs::create_dir(&nested).unwrap();
        std::fs::write(nested.join("t"), "x").unwrap();
        assert!(!in_directory(&nested.join("t"), dir.path()));
    }

    #[test]
    fn endpoints_must_be_http_urls() {
        assert_eq!(
            normalize_endpoint("http://127.0.0.1:8080/").unwrap(),
            "http://127.0.0.1:8080"
        );
        for bad in ["127.0.0.1:8080", "ftp://x", "http://", "http://a/b"] {
            assert!(normalize_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_https_endpoint_needs_a_ca() {
        let err = ClientBuilder::new(vec!["https://127.0.0.1:1".into()])
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("CA"), "{err}");
        assert!(ClientBuilder::new(Vec::new()).build().is_err());
    }

    #[test]
    fn a_token_file_open_to_others_is_refused_naming_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        std::fs::write(&path, "0123456789abcdef0123").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_token_file(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600") && err.contains("0644"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_token_file(&path).unwrap(), "0123456789abcdef0123");
        std::fs::write(&path, "short").unwrap();
        assert!(read_token_file(&path).is_err());
    }

    #[test]
    fn the_debug_output_hides_the_token() {
        let b = ClientBuilder::new(vec!["http://a:1".into()]).token("secret-token-value");
        assert!(!format!("{b:?}").contains("secret"));
    }
}
