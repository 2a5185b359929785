//! The acceptor's verdict on a dialer's `Hello`, as a pure function: given
//! what the TLS handshake established (the peer's leaf certificate) and
//! what this node knows (its id, its peer table, the allowed set), either
//! the peer is welcome or a typed refusal says why, with the close code
//! the connection is closed with. No I/O: the accept path reads the
//! `Hello`, asks [`verify_hello`], and acts.

use raft_core::NodeId;
use rustls::pki_types::CertificateDer;

use super::close_code;
use crate::codec::Hello;
use crate::tls::certificate_names_node;

/// What this node knows when a `Hello` arrives.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HelloContext<'a> {
    /// This node's id.
    pub this: NodeId,
    /// The peer's leaf certificate (already verified against the CA by
    /// rustls); `None` when it presented none.
    pub leaf: Option<&'a CertificateDer<'static>>,
    /// Whether only nodes in the peer table may connect.
    pub refuse_unknown_peers: bool,
    /// Whether the claimed node is in the peer table.
    pub in_peer_table: bool,
    /// Whether the claimed node is in the allowed set (true without one).
    pub allowed: bool,
    /// This node's cluster id, if it has one.
    pub cluster: Option<u128>,
}

/// Why a `Hello` is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HelloRefusal {
    /// The dialer meant to reach another node.
    WrongNode { this: NodeId, wanted: NodeId },
    /// The dialer claims this node's own id.
    OwnId { this: NodeId },
    /// No client certificate.
    NoCertificate,
    /// The certificate does not name the claimed node.
    NotNamed { claimed: NodeId, detail: String },
    /// The claimed node is not in the peer table.
    UnknownPeer { peer: NodeId, this: NodeId },
    /// The claimed node is not in the allowed set.
    NotAllowed { peer: NodeId, this: NodeId },
    /// The peer already holds its share of connections.
    TooManyConnections {
        peer: NodeId,
        this: NodeId,
        max: usize,
    },
    /// The peer belongs to another cluster (both sides have an id, and
    /// they differ).
    WrongCluster {
        peer: NodeId,
        peer_cluster: u128,
        this: NodeId,
        this_cluster: u128,
    },
}

impl HelloRefusal {
    /// The application close code the connection is closed with.
    pub(crate) fn close_code(&self) -> u32 {
        match self {
            Self::WrongNode { .. } => close_code::WRONG_NODE,
            Self::OwnId { .. } | Self::NoCertificate | Self::NotNamed { .. } => {
                close_code::IDENTITY
            }
            Self::UnknownPeer { .. } | Self::NotAllowed { .. } => close_code::UNKNOWN_PEER,
            Self::TooManyConnections { .. } => close_code::TOO_MANY_CONNECTIONS,
            Self::WrongCluster { .. } => close_code::WRONG_CLUSTER,
        }
    }
}

impl std::fmt::Display for HelloRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::WrongNode { this, wanted } => write!(f, "this is node {this}, not node {wanted}"),
            Self::OwnId { this } => write!(f, "peer claims this node's own id {this}"),
            Self::NoCertificate => f.write_str("no client certificate"),
            Self::NotNamed { claimed, detail } => write!(f, "peer claims node {claimed}: {detail}"),
            Self::UnknownPeer { peer, this } => write!(
                f,
                "node {peer} is not a peer of node {this} (not a member it knows)"
            ),
            Self::NotAllowed { peer, this } => write!(
                f,
                "node {peer} is not a member of node {this}'s configuration"
            ),
            Self::TooManyConnections { peer, this, max } => write!(
                f,
                "node {peer} already holds {max} connections to node {this}"
            ),
            Self::WrongCluster {
                peer,
                peer_cluster,
                this,
                this_cluster,
            } => write!(
                f,
                "wrong cluster: node {peer} is of cluster {peer_cluster:032x}, node {this} of \
                 cluster {this_cluster:032x}"
            ),
        }
    }
}

/// The verdict on `hello` (the per-peer connection cap is checked after,
/// when a slot is taken).
pub(crate) fn verify_hello(hello: &Hello, ctx: &HelloContext<'_>) -> Result<(), HelloRefusal> {
    if hello.to != ctx.this {
        return Err(HelloRefusal::WrongNode {
            this: ctx.this,
            wanted: hello.to,
        });
    }
    if hello.from == ctx.this {
        return Err(HelloRefusal::OwnId { this: ctx.this });
    }
    let leaf = ctx.leaf.ok_or(HelloRefusal::NoCertificate)?;
    certificate_names_node(leaf, hello.from).map_err(|detail| HelloRefusal::NotNamed {
        claimed: hello.from,
        detail,
    })?;
    check_cluster(hello.from, hello.cluster, ctx.this, ctx.cluster)?;
    if ctx.refuse_unknown_peers && !ctx.in_peer_table {
        return Err(HelloRefusal::UnknownPeer {
            peer: hello.from,
            this: ctx.this,
        });
    }
    if !ctx.allowed {
        return Err(HelloRefusal::NotAllowed {
            peer: hello.from,
            this: ctx.this,
        });
    }
    Ok(())
}

/// Refuses a peer of another cluster: both sides name a cluster id and
/// they differ. A side without one (a node of the previous release, a
/// data directory written before cluster ids, a node still joining) is
/// accepted as before.
pub(crate) fn check_cluster(
    peer: NodeId,
    peer_cluster: Option<u128>,
    this: NodeId,
    this_cluster: Option<u128>,
) -> Result<(), HelloRefusal> {
    match (peer_cluster, this_cluster) {
        (Some(p), Some(t)) if p != t => Err(HelloRefusal::WrongCluster {
            peer,
            peer_cluster: p,
            this,
            this_cluster: t,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::DevCa;

    fn leaf(ca: &DevCa, node: NodeId) -> CertificateDer<'static> {
        let cert = ca.issue_node(node, &[]).unwrap();
        CertificateDer::from_pem_slice(cert.cert_pem.as_bytes()).unwrap()
    }

    fn ctx<'a>(leaf: Option<&'a CertificateDer<'static>>) -> HelloContext<'a> {
        HelloContext {
            this: 1,
            leaf,
            refuse_unknown_peers: true,
            in_peer_table: true,
            allowed: true,
            cluster: Some(0xaa),
        }
    }

    fn hello(from: NodeId, to: NodeId) -> Hello {
        Hello {
            from,
            to,
            cluster: Some(0xaa),
        }
    }

    /// Same cluster: welcome. Another cluster: refused with close code
    /// WRONG_CLUSTER and both ids named. No id on either side (a peer of
    /// the previous release, a node without one): welcome, as before.
    #[test]
    fn a_peer_of_another_cluster_is_refused_and_one_without_an_id_is_not() {
        let ca = DevCa::generate("t").unwrap();
        let cert = leaf(&ca, 2);
        assert_eq!(verify_hello(&hello(2, 1), &ctx(Some(&cert))), Ok(()));
        let other = Hello {
            cluster: Some(0xbb),
            ..hello(2, 1)
        };
        let e = verify_hello(&other, &ctx(Some(&cert))).unwrap_err();
        assert_eq!(e.close_code(), close_code::WRONG_CLUSTER, "{e}");
        let text = e.to_string();
        assert!(text.contains("wrong cluster"), "{text}");
        assert!(text.contains(&format!("{:032x}", 0xbb)), "{text}");
        assert!(text.contains(&format!("{:032x}", 0xaa)), "{text}");
        assert!(text.contains("node 2") && text.contains("node 1"), "{text}");
        let previous_release = Hello {
            cluster: None,
            ..hello(2, 1)
        };
        assert_eq!(verify_hello(&previous_release, &ctx(Some(&cert))), Ok(()));
        let without = HelloContext {
            cluster: None,
            ..ctx(Some(&cert))
        };
        assert_eq!(verify_hello(&other, &without), Ok(()));
        assert_eq!(check_cluster(2, None, 1, None), Ok(()));
        // The dialer's check of the acceptor's Welcome is the same rule.
        let e = check_cluster(1, Some(0xbb), 2, Some(0xaa)).unwrap_err();
        assert_eq!(e.close_code(), close_code::WRONG_CLUSTER);
        assert_eq!(check_cluster(1, Some(0xaa), 2, Some(0xaa)), Ok(()));
    }

    use rustls::pki_types::pem::PemObject;

    #[test]
    fn a_member_with_its_own_certificate_is_welcome() {
        let ca = DevCa::generate("t").unwrap();
        let cert = leaf(&ca, 2);
        assert_eq!(verify_hello(&hello(2, 1), &ctx(Some(&cert))), Ok(()));
    }

    #[test]
    fn each_refusal_has_its_reason_and_close_code() {
        let ca = DevCa::generate("t").unwrap();
        let cert2 = leaf(&ca, 2);
        let hello_2_1 = hello(2, 1);
        let cases: Vec<(Hello, HelloContext<'_>, u32, &str)> = vec![
            (
                hello(2, 3),
                ctx(Some(&cert2)),
                close_code::WRONG_NODE,
                "not node 3",
            ),
            (
                hello(1, 1),
                ctx(Some(&cert2)),
                close_code::IDENTITY,
                "own id",
            ),
            (
                hello_2_1,
                ctx(None),
                close_code::IDENTITY,
                "no client certificate",
            ),
            (
                hello(3, 1),
                ctx(Some(&cert2)),
                close_code::IDENTITY,
                "claims node 3",
            ),
            (
                hello_2_1,
                HelloContext {
                    in_peer_table: false,
                    ..ctx(Some(&cert2))
                },
                close_code::UNKNOWN_PEER,
                "not a peer",
            ),
            (
                hello_2_1,
                HelloContext {
                    allowed: false,
                    ..ctx(Some(&cert2))
                },
                close_code::UNKNOWN_PEER,
                "configuration",
            ),
        ];
        for (h, ctx, code, text) in cases {
            let e = verify_hello(&h, &ctx).unwrap_err();
            assert_eq!(e.close_code(), code, "{e}");
            assert!(e.to_string().contains(text), "{e} lacks {text:?}");
        }
        // Not in the peer table, but unknown peers are let in.
        let open = HelloContext {
            in_peer_table: false,
            refuse_unknown_peers: false,
            ..ctx(Some(&cert2))
        };
        assert_eq!(verify_hello(&hello_2_1, &open), Ok(()));
        let full = HelloRefusal::TooManyConnections {
            peer: 2,
            this: 1,
            max: 4,
        };
        assert_eq!(full.close_code(), close_code::TOO_MANY_CONNECTIONS);
        assert!(full.to_string().contains("4 connections"));
    }
}
