//! `raft-node health`: asks the local node's `/healthz` (or `/readyz`) and
//! turns the answer into an exit status, for a container `HEALTHCHECK` in
//! an image without a shell or curl.
//!
//! It reads the node's own `RAFT_*` variables (not its `--config` file)
//! to find it: the port of `RAFT_CLIENT_LISTEN`, HTTPS with
//! `RAFT_CLIENT_TLS`, the cluster CA `RAFT_TLS_CA`, and the node's
//! certificate and key (`RAFT_TLS_CERT`, `RAFT_TLS_KEY`, `{id}` replaced)
//! to present to a node that requires client certificates.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::Args;
use raft_core::NodeId;

use crate::client_tls::{certs, key, provider};
use crate::config::identity::{hostname, resolve_id, substitute_id, ID_PLACEHOLDER};

/// Most characters of the node's answer quoted in the one-line reason.
pub const REASON_BODY_CHARS: usize = 300;

/// `raft-node health` settings. Exit status 0 when the node answers 200,
/// 1 otherwise, with a one-line reason on stderr.
///
/// HTTPS is used when the endpoint is `https://` (by default, when
/// `RAFT_CLIENT_TLS=true`): the node's certificate is checked against
/// `--cacert`, and `--cert`/`--key` are presented when both are set. Bearer
/// tokens are never needed: `/healthz` and `/readyz` are open.
#[derive(Debug, Clone, Args)]
pub struct HealthArgs {
    /// Ask `/readyz` (a leader is known and this node applied everything it
    /// knows committed) instead of `/healthz` (the node runs and its
    /// storage answers).
    #[arg(long)]
    pub ready: bool,
    /// The node's base URL. [default: http://127.0.0.1:PORT, or https://…
    /// when RAFT_CLIENT_TLS=true; PORT and address from RAFT_CLIENT_LISTEN
    /// (a 0.0.0.0 or :: address is reached on loopback), else 8080]
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// How long to wait for the answer, connecting included, in
    /// milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub timeout_ms: u64,
    /// PEM file of the CA that signed the node's HTTPS certificate.
    #[arg(long, env = "RAFT_TLS_CA", value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// PEM file of the client certificate to present over HTTPS (`{id}` is
    /// replaced by the node id, as `raft-node run` does).
    #[arg(long, env = "RAFT_TLS_CERT", value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// PEM file of the private key of `--cert` (`{id}` replaced).
    #[arg(long, env = "RAFT_TLS_KEY", value_name = "FILE")]
    pub key: Option<PathBuf>,
}

/// The node's settings `health` reads from the environment, as text: a
/// bad value is reported as a failed check (exit status 1), not a usage
/// error.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeEnv {
    /// `RAFT_CLIENT_LISTEN`.
    pub client_listen: Option<String>,
    /// `RAFT_CLIENT_TLS`.
    pub client_tls: Option<String>,
    /// `RAFT_ID`.
    pub id: Option<String>,
    /// `RAFT_ID_FROM_HOSTNAME`.
    pub id_from_hostname: Option<String>,
}

impl NodeEnv {
    /// The variables of this process.
    pub fn from_process() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        NodeEnv {
            client_listen: var("RAFT_CLIENT_LISTEN"),
            client_tls: var("RAFT_CLIENT_TLS"),
            id: var("RAFT_ID"),
            id_from_hostname: var("RAFT_ID_FROM_HOSTNAME"),
        }
    }

    /// The node id, for a path with `{id}`.
    fn node_id(&self) -> anyhow::Result<NodeId> {
        let id = match &self.id {
            Some(v) => Some(
                v.parse()
                    .map_err(|_| anyhow!("RAFT_ID={v:?} is not a number"))?,
            ),
            None => None,
        };
        let from_hostname = parse_bool("RAFT_ID_FROM_HOSTNAME", self.id_from_hostname.as_deref())?;
        Ok(resolve_id(id, from_hostname, hostname)?)
    }
}

fn parse_bool(name: &str, v: Option<&str>) -> anyhow::Result<bool> {
    match v {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => bail!("{name}={other:?} is neither true nor false"),
    }
}

/// The URL `health` asks: `--endpoint` (or the node's address from its
/// environment) and the probe's path.
///
/// # Errors
///
/// A `RAFT_CLIENT_LISTEN` or `RAFT_CLIENT_TLS` that does not parse.
pub fn probe_url(endpoint: Option<&str>, ready: bool, env: &NodeEnv) -> anyhow::Result<String> {
    let path = if ready { "/readyz" } else { "/healthz" };
    if let Some(e) = endpoint {
        return Ok(format!("{}{path}", e.trim_end_matches('/')));
    }
    let listen: SocketAddr = match &env.client_listen {
        Some(v) => v
            .parse()
            .map_err(|_| anyhow!("RAFT_CLIENT_LISTEN={v:?} is not an ip:port address"))?,
        None => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 8080),
    };
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let scheme = if parse_bool("RAFT_CLIENT_TLS", env.client_tls.as_deref())? {
        "https"
    } else {
        "http"
    };
    Ok(format!(
        "{scheme}://{}{path}",
        SocketAddr::new(ip, listen.port())
    ))
}

/// The HTTP(S) client of the probe.
fn client(args: &HealthArgs, env: &NodeEnv, https: bool) -> anyhow::Result<reqwest::Client> {
    let builder = reqwest::Client::builder()
        .timeout(Duration::from_millis(args.timeout_ms))
        .redirect(reqwest::redirect::Policy::none());
    if !https {
        return Ok(builder.build()?);
    }
    let ca = args
        .cacert
        .as_deref()
        .context("an https endpoint needs --cacert (RAFT_TLS_CA)")?;
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(ca)? {
        roots.add(c).context("adding the CA certificate")?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let tls = match (&args.cert, &args.key) {
        (Some(cert), Some(k)) => {
            let cert = node_path(cert, env)?;
            let k = node_path(k, env)?;
            tls.with_client_auth_cert(certs(&cert)?, key(&k)?)
                .context("the client certificate and key do not match")?
        }
        _ => tls.with_no_client_auth(),
    };
    Ok(builder.use_preconfigured_tls(tls).build()?)
}

/// A path with `{id}` replaced when it has one.
fn node_path(path: &Path, env: &NodeEnv) -> anyhow::Result<PathBuf> {
    if !path.as_os_str().to_string_lossy().contains(ID_PLACEHOLDER) {
        return Ok(path.to_owned());
    }
    let id = env
        .node_id()
        .with_context(|| format!("{} names the node id", path.display()))?;
    Ok(substitute_id(path, id))
}

/// One line of at most [`REASON_BODY_CHARS`] characters of an answer.
pub fn one_line(body: &str) -> String {
    let line: String = body
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(REASON_BODY_CHARS)
        .collect();
    line
}

/// Runs the probe: `Ok` on 200 (the body is printed), an error naming the
/// URL and the answer or failure otherwise.
///
/// # Errors
///
/// Anything but a 200 answer.
pub async fn run(args: HealthArgs) -> anyhow::Result<()> {
    let env = NodeEnv::from_process();
    let url = probe_url(args.endpoint.as_deref(), args.ready, &env)?;
    let client = client(&args, &env, url.starts_with("https://"))?;
    let answer = client.get(&url).send().await.map_err(|e| {
        // reqwest's own message is "error sending request for url (…)";
        // the cause says what happened.
        let mut cause = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            cause = s.to_string();
            source = s.source();
        }
        let what = if e.is_timeout() {
            format!("no answer within {} ms", args.timeout_ms)
        } else if cause.contains("CertificateRequired")
            && (args.cert.is_none() || args.key.is_none())
        {
            format!(
                "{cause} (the node requires a client certificate, --client-ca: give --cert and \
                 --key, or RAFT_TLS_CERT and RAFT_TLS_KEY as the node has them)"
            )
        } else if url.starts_with("https://")
            && (args.cert.is_none() || args.key.is_none())
            && e.is_request()
            && !e.is_connect()
        {
            // Under TLS 1.3 the node's refusal of a client without a
            // certificate can come after the client's side of the
            // handshake: the connection, made, then fails before the
            // request, without the alert ("connection was not ready").
            // A connection that could not be made (refused: a node that
            // is down) says nothing of certificates.
            format!(
                "{cause} (if the node requires a client certificate, --client-ca: give --cert \
                 and --key, or RAFT_TLS_CERT and RAFT_TLS_KEY as the node has them)"
            )
        } else {
            cause
        };
        anyhow!("{url}: {what}")
    })?;
    let status = answer.status();
    let body = answer.text().await.unwrap_or_default();
    if status != reqwest::StatusCode::OK {
        bail!("{url} answered {status}: {}", one_line(&body));
    }
    println!("{}", one_line(&body));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(listen: Option<&str>, tls: Option<&str>) -> NodeEnv {
        NodeEnv {
            client_listen: listen.map(str::to_owned),
            client_tls: tls.map(str::to_owned),
            ..NodeEnv::default()
        }
    }

    #[test]
    fn the_default_url_follows_the_node_environment() {
        let url = |l, t, ready| probe_url(None, ready, &env(l, t)).unwrap();
        assert_eq!(url(None, None, false), "http://127.0.0.1:8080/healthz");
        assert_eq!(url(None, None, true), "http://127.0.0.1:8080/readyz");
        assert_eq!(
            url(Some("0.0.0.0:9000"), None, false),
            "http://127.0.0.1:9000/healthz"
        );
        assert_eq!(
            url(Some("[::]:9000"), Some("true"), true),
            "https://[::1]:9000/readyz"
        );
        assert_eq!(
            url(Some("10.1.2.3:8081"), Some("false"), false),
            "http://10.1.2.3:8081/healthz"
        );
        assert_eq!(
            probe_url(
                Some("https://node-1:8443/"),
                true,
                &env(Some("x"), Some("x"))
            )
            .unwrap(),
            "https://node-1:8443/readyz"
        );
    }

    #[test]
    fn a_bad_node_environment_is_named() {
        let err = probe_url(None, false, &env(Some("8080"), None)).unwrap_err();
        assert!(
            err.to_string().contains("RAFT_CLIENT_LISTEN=\"8080\""),
            "{err}"
        );
        let err = probe_url(None, false, &env(None, Some("yes"))).unwrap_err();
        assert!(err.to_string().contains("RAFT_CLIENT_TLS=\"yes\""), "{err}");
    }

    #[test]
    fn paths_with_the_id_placeholder_need_the_node_id() {
        let with_id = NodeEnv {
            id: Some("2".into()),
            ..NodeEnv::default()
        };
        assert_eq!(
            node_path(Path::new("/certs/node-{id}.pem"), &with_id).unwrap(),
            Path::new("/certs/node-2.pem")
        );
        assert_eq!(
            node_path(Path::new("/certs/node.pem"), &NodeEnv::default()).unwrap(),
            Path::new("/certs/node.pem")
        );
        let err = node_path(Path::new("/c/{id}.pem"), &NodeEnv::default()).unwrap_err();
        assert!(format!("{err:#}").contains("RAFT_ID"), "{err:#}");
        let bad = NodeEnv {
            id: Some("two".into()),
            ..NodeEnv::default()
        };
        let err = node_path(Path::new("/c/{id}.pem"), &bad).unwrap_err();
        assert!(format!("{err:#}").contains("RAFT_ID=\"two\""), "{err:#}");
    }

    #[test]
    fn the_reason_is_one_short_line() {
        assert_eq!(
            one_line("{\"ready\": false,\n  \"leader\": null}\n"),
            "{\"ready\": false, \"leader\": null}"
        );
        assert_eq!(one_line(&"x".repeat(1000)).len(), REASON_BODY_CHARS);
    }

    /// Review finding (LOW): the client-certificate hint of a failure
    /// before the request also named a refused connection (a node that is
    /// down), sending the operator after certificates.
    #[tokio::test]
    async fn a_refused_https_connection_does_not_mention_a_client_certificate() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let dir = tempfile::tempdir().unwrap();
        raft_net_quic::certs::write_dev_certs(dir.path(), &[1], &[]).unwrap();
        let args = HealthArgs {
            ready: false,
            endpoint: Some(format!("https://127.0.0.1:{port}")),
            timeout_ms: 5000,
            cacert: Some(dir.path().join("ca.pem")),
            cert: None,
            key: None,
        };
        let err = run(args).await.unwrap_err().to_string();
        assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
        assert!(!err.contains("client certificate"), "{err}");
    }

    /// The case of the hint (305c7ea): a connection that was made, then
    /// closed before the answer (TLS 1.3: the node refuses a client without
    /// a certificate after the client's side of the handshake) still
    /// mentions the client certificate.
    #[tokio::test]
    async fn an_https_connection_closed_after_the_handshake_mentions_a_client_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let names = ["127.0.0.1".to_owned()];
        let files = raft_net_quic::certs::write_dev_certs(dir.path(), &[1], &names).unwrap();
        let (_, cert, key_file) = &files.nodes[0];
        let server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs(cert).unwrap(), key(key_file).unwrap())
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                // The handshake completes; the connection closes unanswered.
                drop(acceptor.accept(tcp).await);
            }
        });
        let args = HealthArgs {
            ready: false,
            endpoint: Some(format!("https://127.0.0.1:{port}")),
            timeout_ms: 5000,
            cacert: Some(dir.path().join("ca.pem")),
            cert: None,
            key: None,
        };
        let err = run(args).await.unwrap_err().to_string();
        eprintln!("closed after the handshake: {err}");
        assert!(err.contains("client certificate"), "{err}");
    }
}
