//! What is unsafe in a configuration, and bearer token files: read only
//! when nobody but their owner can read or change them.

use std::path::Path;

use super::{ConfigError, NodeConfig};

/// Whether `host` (a host name or address, without port) names this
/// machine only.
fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The host of `host:port` (IPv6 in brackets).
fn host_of(addr: &str) -> &str {
    match addr.rsplit_once(':') {
        Some((host, _)) => host,
        None => addr,
    }
}

impl NodeConfig {
    /// Whether the HTTP API authenticates the callers of its data routes:
    /// a user bearer token or client certificates. An admin token alone
    /// guards only the admin routes and leaves `/v1/kv` open.
    pub fn api_authenticated(&self) -> bool {
        self.auth_token.is_some() || (self.client_tls && self.client_ca.is_some())
    }

    /// What is unsafe about these settings, one sentence each, for the log
    /// at start (empty when nothing is): an API exposed with no token and
    /// no TLS, tokens that travel in clear between nodes or to `--join`,
    /// and a data API left open beside an admin token.
    pub fn security_warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let exposed = !self.client_listen.ip().is_loopback();
        let tokens = self.auth_token.is_some() || self.admin_token.is_some();
        if exposed && !tokens && !self.client_tls {
            out.push(format!(
                "the HTTP API listens on {} with no bearer token and no TLS (--insecure): anyone \
                who can reach it can read and write every key and change the cluster",
                self.client_listen
            ));
        } else if exposed && !self.api_authenticated() {
            out.push(format!(
                "the HTTP API listens on {} without authentication (--insecure): anyone who can \
                reach it can read and write every key and change the cluster",
                self.client_listen
            ));
        }
        let members_remote = exposed
            || !is_loopback_host(host_of(&self.advertise.client_addr))
            || self
                .initial_cluster
                .iter()
                .any(|m| !is_loopback_host(host_of(&m.client_addr)));
        if tokens && !self.client_tls && members_remote {
            out.push(
                "bearer tokens without --client-tls: clients send them, and followers forward \
                them to the leader in the Authorization header, over plain HTTP, where anyone on \
                the network path can read them; use --client-tls"
                    .to_string(),
            );
        }
        if let Some(join) = &self.join {
            if tokens && join.starts_with("http://") {
                out.push(format!(
                    "--join {join} sends the admin token in clear (plain HTTP); join through an \
                    https:// URL"
                ));
            }
        }
        if self.admin_token.is_some() && self.auth_token.is_none() {
            out.push(
                "only --admin-token-file is set: the admin routes need its token, but /v1/kv and \
                GET /v1/cluster are open to anyone; set --auth-token-file too"
                    .to_string(),
            );
        }
        out
    }
}

/// Reads a bearer token file: one token of at least 16 visible ASCII
/// characters, in a file that only its owner can read (a mode that lets
/// the group or others read it is refused, naming the fix). The checks are
/// raftkv-client's [`raft_client::read_token_file`], so `raft-node ctl`
/// and the node accept the same files.
///
/// # Errors
///
/// [`ConfigError`] naming the file: unreadable, readable by others, owned
/// by another user, or not holding a valid token.
pub fn read_token(path: &Path) -> Result<String, ConfigError> {
    raft_client::read_token_file(path).map_err(|e| match e {
        // The message alone: the node prints it as a configuration error.
        raft_client::Error::Config(message) => ConfigError(message),
        other => ConfigError(other.to_string()),
    })
}
