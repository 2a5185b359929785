//! Delay and reordering of node-to-node UDP (QUIC) through a userspace
//! relay, since the kernel here has no `netem`.
//!
//! While a delay fault is on, each node namespace gets nftables rules per
//! peer that rewrite the destination of its UDP packets to that peer's Raft
//! port into a relay socket on the bridge address, and the source of what
//! comes back from that socket into the peer's address
//! ([`crate::netns::NodeFaults::redirect`]). The relay (tasks in the
//! harness process, in the root namespace) holds every datagram for
//! `base + uniform(0..=jitter)` and forwards it to the real peer from a
//! socket of its own; replies come back the same way and are delayed too.
//! Each datagram is scheduled on its own, so a jitter larger than the gap
//! between two datagrams reorders them.
//!
//! ```text
//! ns n1: 10.77.S.1:7000 --(rewrite)--> relay 10.77.S.254:P12 ... delay ...
//!        relay 10.77.S.254:u  -->  ns n2: 10.77.S.2:7000
//! ```
//!
//! The node that sends sees replies from the peer's real address; the peer
//! sees the relay's address, which QUIC treats as a path migration. The
//! rewriting is stateless (no conntrack), so it applies to connections that
//! were open before the fault, whichever side opened them. For such a
//! connection, what the server sends goes through the opposite pair and
//! arrives from that pair's address, which a QUIC client does not accept
//! until the server has migrated to the path its client now uses: that
//! direction stalls until the client's next packet (keep-alives are a
//! fraction of the election timeout), and again after healing. Healing deletes
//! the rules: new packets go directly again, and the relay only drains what
//! it holds. Partitions and loss rules compare node addresses, so they are
//! not combined with a delay (the nemesis never does).

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tokio::net::UdpSocket;
use tokio::task::JoinSet;

use crate::error::ChaosError;

/// Sources one relay pair remembers. Nodes send from their Raft port, so
/// one is the rule; the bound keeps anything else (a stray sender on the
/// bridge) from growing the table: past it, every mapping is forgotten.
const SOURCES_MAX: usize = 64;

/// Largest datagram relayed (QUIC keeps well below; IPv4 UDP cannot exceed).
const DATAGRAM_MAX: usize = 65_535;

/// Datagrams held at once; more are dropped, as a full queue would.
const IN_FLIGHT_MAX: u64 = 20_000;

/// What the relays do to each datagram, shared by all of them.
#[derive(Debug)]
struct Shaping {
    /// Fixed delay, µs.
    base_us: AtomicU64,
    /// Upper bound of the extra uniform delay, µs.
    jitter_us: AtomicU64,
    /// Draws the jitter (seeded, so a run's delays follow from its seed as
    /// far as the packets' arrival order does).
    rng: Mutex<ChaCha8Rng>,
    /// Datagrams received from the nodes, both directions.
    received: AtomicU64,
    /// Datagrams forwarded, both directions.
    relayed: AtomicU64,
    /// Datagrams held right now.
    in_flight: AtomicU64,
    /// Datagrams dropped because [`IN_FLIGHT_MAX`] were held.
    dropped: AtomicU64,
}

impl Shaping {
    fn delay(&self) -> Duration {
        let base = self.base_us.load(Ordering::Relaxed);
        let jitter = self.jitter_us.load(Ordering::Relaxed);
        let extra = if jitter == 0 {
            0
        } else {
            self.rng.lock().map_or(0, |mut r| r.gen_range(0..=jitter))
        };
        Duration::from_micros(base + extra)
    }

    /// Sends `data` from `socket` to `to` after a delay, in a task of its
    /// own so later datagrams may overtake it.
    fn send_later(self: &Arc<Self>, socket: Arc<UdpSocket>, data: Vec<u8>, to: SocketAddr) {
        self.received.fetch_add(1, Ordering::Relaxed);
        if self.in_flight.fetch_add(1, Ordering::Relaxed) >= IN_FLIGHT_MAX {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let delay = self.delay();
        let shaping = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            // A send error is a lost datagram, which UDP allows.
            if socket.send_to(&data, to).await.is_ok() {
                shaping.relayed.fetch_add(1, Ordering::Relaxed);
            }
            shaping.in_flight.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// The relays of one run: one listening socket per ordered pair of nodes,
/// made when a delay fault first needs it. Dropping it stops every receive
/// loop; datagrams already held are still sent when their delay ends.
#[derive(Debug)]
pub struct Relay {
    /// The bridge address the relay sockets bind to.
    ip: Ipv4Addr,
    /// Relay port per (from, to) node pair.
    ports: BTreeMap<(u64, u64), u16>,
    /// Shared shaping settings and counters.
    shaping: Arc<Shaping>,
    /// The pairs' receive loops (aborted on drop).
    tasks: JoinSet<()>,
}

impl Relay {
    /// A relay binding on `ip` (the bridge's address), with no delay until
    /// [`Relay::set_delay`].
    pub fn new(ip: Ipv4Addr) -> Self {
        Self {
            ip,
            ports: BTreeMap::new(),
            shaping: Arc::new(Shaping {
                base_us: AtomicU64::new(0),
                jitter_us: AtomicU64::new(0),
                rng: Mutex::new(ChaCha8Rng::seed_from_u64(0)),
                received: AtomicU64::new(0),
                relayed: AtomicU64::new(0),
                in_flight: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
            }),
            tasks: JoinSet::new(),
        }
    }

    /// Sets the delay of every datagram from now on: `base` plus a uniform
    /// draw from `0..=jitter`, drawn from `seed`.
    pub fn set_delay(&self, base: Duration, jitter: Duration, seed: u64) {
        let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.shaping.base_us.store(us(base), Ordering::Relaxed);
        self.shaping.jitter_us.store(us(jitter), Ordering::Relaxed);
        if let Ok(mut r) = self.shaping.rng.lock() {
            *r = ChaCha8Rng::seed_from_u64(seed);
        }
    }

    /// Datagrams forwarded so far, both directions.
    pub fn relayed(&self) -> u64 {
        self.shaping.relayed.load(Ordering::Relaxed)
    }

    /// Datagrams that reached the relay so far, both directions (sent on
    /// or not yet).
    pub fn received(&self) -> u64 {
        self.shaping.received.load(Ordering::Relaxed)
    }

    /// Datagrams dropped because too many were held at once.
    pub fn dropped(&self) -> u64 {
        self.shaping.dropped.load(Ordering::Relaxed)
    }

    /// The relay port that carries node `from`'s datagrams to `to` (the
    /// peer's real address), binding it the first time. Must be called
    /// inside a tokio runtime.
    ///
    /// # Errors
    ///
    /// When the socket cannot be bound.
    pub fn port_for(&mut self, from: u64, to: u64, dest: SocketAddrV4) -> Result<u16, ChaosError> {
        if let Some(p) = self.ports.get(&(from, to)) {
            return Ok(*p);
        }
        let bind_err = |e: std::io::Error| {
            ChaosError::Cluster(format!("relay for node {from} -> {to}: cannot bind: {e}"))
        };
        let std_sock =
            std::net::UdpSocket::bind(SocketAddrV4::new(self.ip, 0)).map_err(bind_err)?;
        std_sock.set_nonblocking(true).map_err(bind_err)?;
        let port = std_sock.local_addr().map_err(bind_err)?.port();
        let listen = Arc::new(UdpSocket::from_std(std_sock).map_err(bind_err)?);
        let shaping = Arc::clone(&self.shaping);
        let ip = self.ip;
        self.tasks
            .spawn(pair_loop(listen, SocketAddr::V4(dest), ip, shaping));
        self.ports.insert((from, to), port);
        Ok(port)
    }
}

/// One pair's loop: datagrams from the sending node (any of its source
/// ports) go to `dest` from an upstream socket per source; what comes back
/// on that socket goes to the source.
async fn pair_loop(listen: Arc<UdpSocket>, dest: SocketAddr, ip: Ipv4Addr, shaping: Arc<Shaping>) {
    let mut upstream: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut order: Vec<SocketAddr> = Vec::new();
    let mut replies = JoinSet::new();
    let mut buf = vec![0u8; DATAGRAM_MAX];
    loop {
        let Ok((n, src)) = listen.recv_from(&mut buf).await else {
            // ICMP errors surface as receive errors on some kernels: go on
            // (slowly, should an error persist).
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let up = match upstream.get(&src) {
            Some(u) => Arc::clone(u),
            None => {
                let Ok(sock) = UdpSocket::bind(SocketAddrV4::new(ip, 0)).await else {
                    continue;
                };
                let sock = Arc::new(sock);
                if order.len() >= SOURCES_MAX {
                    // Forget every mapping; dropping the set aborts and
                    // frees their reply tasks.
                    upstream.clear();
                    order.clear();
                    replies = JoinSet::new();
                }
                replies.spawn(reply_loop(
                    Arc::clone(&sock),
                    Arc::clone(&listen),
                    src,
                    Arc::clone(&shaping),
                ));
                upstream.insert(src, Arc::clone(&sock));
                order.push(src);
                sock
            }
        };
        shaping.send_later(up, buf[..n].to_vec(), dest);
    }
}

/// Replies from the peer on `up` go back to `src` through `listen`.
async fn reply_loop(
    up: Arc<UdpSocket>,
    listen: Arc<UdpSocket>,
    src: SocketAddr,
    shaping: Arc<Shaping>,
) {
    let mut buf = vec![0u8; DATAGRAM_MAX];
    loop {
        match up.recv_from(&mut buf).await {
            Ok((n, _)) => shaping.send_later(Arc::clone(&listen), buf[..n].to_vec(), src),
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}
