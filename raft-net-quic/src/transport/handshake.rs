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
        }
    }

    use rustls::pki_types::pem::PemObject;

    #[test]
    fn a_member_with_its_own_certificate_is_welcome() {
        let ca = DevCa::generate("t").unwrap();
        let cert = leaf(&ca, 2);
        assert_eq!(
            verify_hello(&Hello { from: 2, to: 1 }, &ctx(Some(&cert))),
            Ok(())
        );
    }

    #[test]
    fn each_refusal_has_its_reason_and_close_code() {
        let ca = DevCa::generate("t").unwrap();
        let cert2 = leaf(&ca, 2);
        let hello = Hello { from: 2, to: 1 };
        let cases: Vec<(Hello, HelloContext<'_>, u32, &str)> = vec![
            (
                Hello { from: 2, to: 3 },
                ctx(Some(&cert2)),
                close_code::WRONG_NODE,
                "not node 3",
            ),
            (
                Hello { from: 1, to: 1 },
                ctx(Some(&cert2)),
                close_code::IDENTITY,
                "own id",
            ),
            (
                hello,
                ctx(None),
                close_code::IDENTITY,
                "no client certificate",
            ),
            (
                Hello { from: 3, to: 1 },
                ctx(Some(&cert2)),
                close_code::IDENTITY,
                "claims node 3",
            ),
            (
                hello,
                HelloContext {
                    in_peer_table: false,
                    ..ctx(Some(&cert2))
                },
                close_code::UNKNOWN_PEER,
                "not a peer",
            ),
            (
                hello,
                HelloContext {
                    allowed: false,
                    ..ctx(Some(&cert2))
                },
                close_code::UNKNOWN_PEER,
                "configuration",
            ),
        ];
        for (hello, ctx, code, text) in cases {
            let e = verify_hello(&hello, &ctx).unwrap_err();
            assert_eq!(e.close_code(), code, "{e}");
            assert!(e.to_string().contains(text), "{e} lacks {text:?}");
        }
        // Not in the peer table, but unknown peers are let in.
        let open = HelloContext {
            in_peer_table: false,
            refuse_unknown_peers: false,
            ..ctx(Some(&cert2))
        };
        assert_eq!(verify_hello(&hello, &open), Ok(()));
        let full = HelloRefusal::TooManyConnections {
            peer: 2,
            this: 1,
            max: 4,
        };
        assert_eq!(full.close_code(), close_code::TOO_MANY_CONNECTIONS);
        assert!(full.to_string().contains("4 connections"));
    }
}
