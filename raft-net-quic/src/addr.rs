//! [`PeerAddr`]: where a peer is reached, as the operator wrote it: an IP
//! address or a DNS name, and a port. A name is kept as given and resolved
//! again at every connection attempt, so a peer whose IP address changes
//! (a container or a pod that comes back elsewhere) is found again without
//! anyone telling this node.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

/// The longest DNS name accepted (RFC 1035: 253 characters in text form).
pub const HOST_NAME_BYTES_MAX: usize = 253;

/// A peer's address: `ip:port`, `[ipv6]:port` or `name:port`.
///
/// Parsing checks the form only (a name is not looked up). A name is
/// lower-cased; a trailing dot is kept, since `raft-0.raft.` (absolute) and
/// `raft-0.raft` (searched in the resolver's domains) may resolve
/// differently, so the two are different addresses.
///
/// ```
/// use raft_net_quic::PeerAddr;
///
/// let a: PeerAddr = "raft-1.raft.default.svc:7000".parse()?;
/// assert_eq!(a.host(), "raft-1.raft.default.svc");
/// assert_eq!(a.port(), 7000);
/// assert!(a.ip().is_none());
///
/// let b: PeerAddr = "[::1]:7000".parse()?;
/// assert_eq!(b.socket_addr(), Some("[::1]:7000".parse()?));
/// assert_eq!(b.to_string(), "[::1]:7000");
///
/// assert!("no-port".parse::<PeerAddr>().is_err());
/// assert!("bad_name!:7000".parse::<PeerAddr>().is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerAddr {
    host: Host,
    port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Host {
    Ip(IpAddr),
    /// A DNS name, lower-cased.
    Name(String),
}

/// Why a peer address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("peer address {input:?}: {why} (expected ip:port, [ipv6]:port or name:port)")]
pub struct PeerAddrError {
    input: String,
    why: &'static str,
}

impl PeerAddr {
    /// The host as written: an IP address or a name (IPv6 without brackets).
    pub fn host(&self) -> String {
        match &self.host {
            Host::Ip(ip) => ip.to_string(),
            Host::Name(n) => n.clone(),
        }
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The IP address, when the host is one (no lookup is needed).
    pub fn ip(&self) -> Option<IpAddr> {
        match &self.host {
            Host::Ip(ip) => Some(*ip),
            Host::Name(_) => None,
        }
    }

    /// The socket address, when the host is an IP address.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.ip().map(|ip| SocketAddr::new(ip, self.port))
    }

    /// Whether the host is an unspecified IP address (`0.0.0.0`, `::`),
    /// which no peer can dial.
    pub fn is_unspecified(&self) -> bool {
        self.ip().is_some_and(|ip| ip.is_unspecified())
    }

    /// Looks the address up: the address itself for an IP, the system
    /// resolver's answer (`/etc/hosts`, DNS) for a name, at the time of the
    /// call.
    ///
    /// # Errors
    ///
    /// The name does not resolve, or resolves to no address.
    pub async fn resolve(&self) -> std::io::Result<Vec<SocketAddr>> {
        match &self.host {
            Host::Ip(ip) => Ok(vec![SocketAddr::new(*ip, self.port)]),
            Host::Name(name) => {
                let found: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), self.port))
                    .await?
                    .collect();
                if found.is_empty() {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("{name} resolves to no address"),
                    ));
                }
                Ok(found)
            }
        }
    }
}

impl From<SocketAddr> for PeerAddr {
    fn from(a: SocketAddr) -> Self {
        Self {
            host: Host::Ip(a.ip().to_canonical()),
            port: a.port(),
        }
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}:{}", self.port),
            Host::Name(n) => write!(f, "{n}:{}", self.port),
        }
    }
}

impl FromStr for PeerAddr {
    type Err = PeerAddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why| PeerAddrError {
            input: s.chars().take(300).collect(),
            why,
        };
        if let Ok(a) = s.parse::<SocketAddr>() {
            if let SocketAddr::V6(v6) = a {
                if v6.scope_id() != 0 {
                    return Err(bad("an IPv6 scope id (%…) is not supported"));
                }
            }
            return Ok(a.into());
        }
        let (host, port) = s.rsplit_once(':').ok_or_else(|| bad("no ':port'"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| bad("the port is not a number from 0 to 65535"))?;
        if port == 0 {
            return Err(bad("port 0 cannot be dialed"));
        }
        if host.starts_with('[') || host.contains(':') {
            return Err(bad("not a valid IPv6 address"));
        }
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(Self {
                host: Host::Ip(ip),
                port,
            });
        }
        check_name(host).map_err(bad)?;
        Ok(Self {
            host: Host::Name(host.to_ascii_lowercase()),
            port,
        })
    }
}

/// Checks a DNS host name (RFC 1123 labels: letters, digits and hyphens, 1
/// to 63 characters, not starting or ending with a hyphen; one trailing dot
/// allowed).
fn check_name(name: &str) -> Result<(), &'static str> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return Err("no host");
    }
    if name.len() > HOST_NAME_BYTES_MAX {
        return Err("the host name is longer than 253 characters");
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("a host name label is empty or longer than 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err("a host name has only letters, digits, '-' and '.'");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a host name label starts or ends with '-'");
        }
    }
    // The last label starts with a letter (RFC 3696, 2): anything else is
    // a number, which resolvers read as an IPv4 address in a form this type
    // does not know ("0x7f.1", "2130706433", "300.1.1.1").
    let last = name.rsplit('.').next().unwrap_or(name);
    if !last.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err(
            "not a valid IPv4 address, nor a host name (whose last label starts with a letter)",
        );
    }
    Ok(())
}

#[cfg(feature = "serde")]
impl serde::Serialize for PeerAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for PeerAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_addresses_keep_their_form() {
        for (input, shown) in [
            ("127.0.0.1:7000", "127.0.0.1:7000"),
            ("[::1]:7000", "[::1]:7000"),
            ("[::ffff:10.0.0.1]:7000", "10.0.0.1:7000"),
        ] {
            let a: PeerAddr = input.parse().unwrap();
            assert_eq!(a.to_string(), shown);
            assert!(a.ip().is_some());
        }
        let unspecified: PeerAddr = "0.0.0.0:7000".parse().unwrap();
        assert!(unspecified.is_unspecified());
    }

    #[test]
    fn names_are_kept_lower_cased_and_not_looked_up() {
        let a: PeerAddr = "Raft-0.Raft.NS.svc.cluster.local.:7000".parse().unwrap();
        assert_eq!(a.host(), "raft-0.raft.ns.svc.cluster.local.");
        assert_eq!(a.port(), 7000);
        assert_eq!(a.to_string(), "raft-0.raft.ns.svc.cluster.local.:7000");
        assert_eq!(a.to_string().parse::<PeerAddr>().unwrap(), a);
        let never: PeerAddr = "does-not-exist.invalid:1".parse().unwrap();
        assert!(never.ip().is_none());
    }

    #[test]
    fn malformed_addresses_are_refused_with_the_reason() {
        let long = format!("{}:7000", "a".repeat(64));
        for (input, why) in [
            ("node-1", "no ':port'"),
            ("node-1:", "the port"),
            ("node-1:70000", "the port"),
            ("node-1:0", "port 0"),
            (":7000", "no host"),
            ("no_underscore:7000", "letters, digits"),
            ("-dash:7000", "starts or ends"),
            ("a..b:7000", "empty"),
            (long.as_str(), "longer than 63"),
            ("::1:7000", "IPv6"),
            ("[::1]x:7000", "IPv6"),
            ("300.1.1.1:7000", "IPv4"),
            ("0x0:7000", "IPv4"),
            ("0x7f.1:7000", "IPv4"),
            ("2130706433:7000", "IPv4"),
            ("[fe80::1%2]:7000", "scope id"),
            ("node 1:7000", "letters, digits"),
        ] {
            let e = input.parse::<PeerAddr>().unwrap_err().to_string();
            assert!(e.contains(why), "{input}: {e}");
        }
    }

    #[tokio::test]
    async fn an_ip_resolves_to_itself_and_localhost_to_loopback() {
        let a: PeerAddr = "10.1.2.3:7000".parse().unwrap();
        assert_eq!(
            a.resolve().await.unwrap(),
            vec!["10.1.2.3:7000".parse().unwrap()]
        );
        let l: PeerAddr = "localhost:7000".parse().unwrap();
        let found = l.resolve().await.unwrap();
        assert!(
            found
                .iter()
                .all(|s| s.ip().is_loopback() && s.port() == 7000),
            "{found:?}"
        );
    }
}
