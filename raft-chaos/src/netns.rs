//! The network: one Linux network namespace per node, each joined to a
//! bridge in the root namespace by a veth pair, and the faults the nemesis
//! injects into it (nftables drop rules for partitions and packet loss, a
//! tc token bucket for bandwidth, and nftables rules that rewrite
//! node-to-node UDP addresses to send it through the delay relay of
//! [`crate::relay`]).
//!
//! Layout of one run whose prefix is `rc<pid><letter>` (`rc4242a`):
//!
//! ```text
//! root ns:   bridge rc4242abr  10.77.S.254/24   <- the clients live here
//!              |-- veth rc4242ah1 <-> eth0 in ns rc4242a-n1  10.77.S.1/24
//!              |-- veth rc4242ah2 <-> eth0 in ns rc4242a-n2  10.77.S.2/24
//!              ...
//! ```
//!
//! Every node namespace has an nftables table `raftchaos` with an input and
//! an output chain; faults are written into these chains atomically (one
//! `nft -f` script per node), so a partition drops node-to-node traffic
//! (Raft over QUIC and request forwarding over HTTP) and never the clients'
//! traffic, which comes from the bridge address.
//!
//! Where iptables is installed, the run also inserts a rule at the head of
//! the host's `FORWARD` chain that accepts traffic across its own bridge:
//! Docker sets that chain's policy to `DROP` and makes bridged frames pass
//! through it (see [`Net::create`]).
//!
//! Everything is created by [`Net::create`] and removed by [`Drop`], also on
//! panic; [`cleanup_stale`] removes what a run killed with SIGKILL left.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::error::ChaosError;

/// Nodes one network can hold (addresses .1 to .N of the /24).
pub const NODES_MAX: u64 = 32;

/// The nftables table the harness owns in every node namespace.
const TABLE: &str = "raftchaos";

/// The nftables table that exists only while a node's UDP is redirected
/// into the delay relay.
const RELAY_TABLE: &str = "raftchaos_delay";

/// Runs a command, returning its stdout, or an error with its stderr.
pub(crate) fn run_cmd(program: &str, args: &[&str]) -> Result<String, ChaosError> {
    run_cmd_stdin(program, args, None)
}

/// Like [`run_cmd`], writing `stdin` to the command's standard input.
pub(crate) fn run_cmd_stdin(
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, ChaosError> {
    let command = format!("{program} {}", args.join(" "));
    let fail = |status: String, stderr: String| ChaosError::Command {
        command: command.clone(),
        status,
        stderr,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot start: {e}"), String::new()))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|e| fail(format!("writing stdin: {e}"), String::new()))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| fail(format!("waiting: {e}"), String::new()))?;
    if !out.status.success() {
        return Err(fail(
            out.status.to_string(),
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Checks that the harness can run here: root, `ip` with network
/// namespaces, and `nft` (installed through apt-get when missing).
///
/// # Errors
///
/// [`ChaosError::Unsupported`] with the reason.
pub fn preflight() -> Result<(), ChaosError> {
    if !rustix::process::geteuid().is_root() {
        return Err(ChaosError::Unsupported(
            "the chaos harness must run as root (network namespaces, nftables)".into(),
        ));
    }
    run_cmd("ip", &["netns", "list"])
        .map_err(|e| ChaosError::Unsupported(format!("no usable `ip netns`: {e}")))?;
    if run_cmd("nft", &["--version"]).is_err() {
        eprintln!("raft-chaos: nft is missing; installing nftables with apt-get");
        // `update` may fail offline with a usable cache: try the install anyway.
        let _ = run_cmd("apt-get", &["update", "-qq"]);
        run_cmd("apt-get", &["install", "-y", "-qq", "nftables"])
            .map_err(|e| ChaosError::Unsupported(format!("cannot install nftables: {e}")))?;
    }
    // A throwaway namespace proves the kernel lets us create them. Tests in
    // one process call this concurrently: each call gets its own name.
    static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let probe = format!("rc{}z{n}-probe", std::process::id());
    run_cmd("ip", &["netns", "add", &probe])
        .map_err(|e| ChaosError::Unsupported(format!("cannot create a namespace: {e}")))?;
    let _ = run_cmd("ip", &["netns", "del", &probe]);
    Ok(())
}

/// For tests: whether the harness can run here ([`preflight`]). When it
/// cannot, prints why and returns `false` so the test can skip, unless
/// `CI_REQUIRE_NETNS=1` is set, where it panics instead (CI must not skip).
///
/// # Panics
///
/// When the harness cannot run and `CI_REQUIRE_NETNS=1`.
pub fn available_for_tests(test: &str) -> bool {
    match preflight() {
        Ok(()) => true,
        Err(e) => {
            assert!(
                std::env::var("CI_REQUIRE_NETNS").as_deref() != Ok("1"),
                "CI_REQUIRE_NETNS=1 but the chaos harness cannot run here: {e}"
            );
            eprintln!("SKIPPED {test}: {e}");
            false
        }
    }
}

/// The process id in a harness name (`rc<pid>...`), if it is one.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("rc")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    if digits.is_empty() {
        return None;
    }
    digits.parse().ok()
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes namespaces (and the processes in them) and links that earlier
/// harness processes, now dead, left behind. Returns what was removed.
pub fn cleanup_stale() -> Vec<String> {
    let mut removed = Vec::new();
    let own = std::process::id();
    let Ok(list) = run_cmd("ip", &["netns", "list"]) else {
        return removed;
    };
    for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
        if owner_pid(ns).is_some_and(|pid| pid != own && !pid_alive(pid)) {
            kill_namespace_processes(ns);
            if run_cmd("ip", &["netns", "del", ns]).is_ok() {
                removed.push(format!("netns {ns}"));
            }
        }
    }
    if let Ok(rules) = run_cmd("iptables", &["-w", "10", "-S", "FORWARD"]) {
        for bridge in admitted_bridges(&rules) {
            let stale = owner_pid(&bridge).is_some_and(|pid| pid != own && !pid_alive(pid));
            if stale && run_cmd("iptables", &forward_rule("-D", &bridge)).is_ok() {
                removed.push(format!("iptables FORWARD rule for {bridge}"));
            }
        }
    }
    if let Ok(links) = run_cmd("ip", &["-o", "link", "show"]) {
        for line in links.lines() {
            // "12: rc4242abr: <BROADCAST,..." or "13: rc4242ah1@if2: ..."
            let Some(name) = line.split(':').nth(1).map(str::trim) else {
                continue;
            };
            let name = name.split('@').next().unwrap_or(name);
            let stale = owner_pid(name).is_some_and(|pid| pid != own && !pid_alive(pid));
            if stale && run_cmd("ip", &["link", "del", name]).is_ok() {
                removed.push(format!("link {name}"));
            }
        }
    }
    removed
}

fn kill_namespace_processes(ns: &str) {
    if let Ok(pids) = run_cmd("ip", &["netns", "pids", ns]) {
        for pid in pids.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                // A stopped process must be continued to die promptly.
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::CONT);
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

/// The faults currently written into one node's namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeFaults {
    /// Nodes whose packets this node drops on input.
    pub drop_from: BTreeSet<u64>,
    /// Nodes this node's packets to are dropped on output.
    pub drop_to: BTreeSet<u64>,
    /// Percentage (0..=100) of packets from other nodes dropped at random.
    pub loss_pct: u8,
    /// Egress bandwidth limit in kbit/s, if any.
    pub rate_kbit: Option<u32>,
    /// This node's UDP to these peers goes through the delay relay
    /// ([`crate::relay`]).
    pub redirect: Vec<Redirect>,
}

/// One peer whose UDP port a node reaches through a relay socket on the
/// bridge address instead of directly (stateless address rewriting by
/// nftables in the node's namespace, both ways).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Redirect {
    /// The peer node.
    pub to: u64,
    /// The peer's UDP port whose traffic is redirected.
    pub port: u16,
    /// The relay's port on [`Net::client_ip`].
    pub via_port: u16,
}

/// The network of one run. Dropping it removes everything it created.
#[derive(Debug)]
pub struct Net {
    /// Prefix of every name this run creates, `rc<pid><letter>`.
    prefix: String,
    /// Third octet of the run's 10.77.S.0/24.
    subnet: u8,
    /// Node ids with a namespace, in creation order (for teardown).
    nodes: Vec<u64>,
    /// Whether the bridge exists (for teardown).
    bridge_made: bool,
    /// Whether an iptables rule admits the bridge's forwarded traffic (for
    /// teardown; see [`admit_bridge`]).
    bridge_admitted: bool,
}

static RUNS: AtomicU32 = AtomicU32::new(0);

impl Net {
    /// Creates the bridge and a namespace per node id, and (where iptables
    /// is installed) lets traffic across the bridge through the host's
    /// `FORWARD` chain, which Docker's `DROP` policy would otherwise close
    /// to bridged frames.
    ///
    /// # Errors
    ///
    /// When a command fails; what was made so far is removed.
    pub fn create(ids: &[u64]) -> Result<Self, ChaosError> {
        let run = RUNS.fetch_add(1, Ordering::Relaxed);
        let letter = char::from(b'a' + (run % 26) as u8);
        let prefix = format!("rc{}{letter}", std::process::id());
        // Choosing a free subnet and taking it (the bridge's address) is one
        // step for the threads of this process: two runs created at once
        // must not both see the same subnet free.
        static CLAIM: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let claim = CLAIM
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let subnet = free_subnet(run)?;
        let mut net = Net {
            prefix,
            subnet,
            nodes: Vec::new(),
            bridge_made: false,
            bridge_admitted: false,
        };
        let br = net.bridge();
        run_cmd("ip", &["link", "add", &br, "type", "bridge"])?;
        net.bridge_made = true;
        net.bridge_admitted = admit_bridge(&br)?;
        let cidr = format!("{}/24", net.client_ip());
        run_cmd("ip", &["addr", "add", &cidr, "dev", &br])?;
        run_cmd("ip", &["link", "set", &br, "up"])?;
        drop(claim);
        for &id in ids {
            net.add_node(id)?;
        }
        Ok(net)
    }

    /// Adds a namespace for node `id`, joined to the bridge.
    ///
    /// # Errors
    ///
    /// When a command fails, or `id` is out of range or already present.
    pub fn add_node(&mut self, id: u64) -> Result<(), ChaosError> {
        if id == 0 || id > NODES_MAX || self.nodes.contains(&id) {
            return Err(ChaosError::Cluster(format!(
                "node id {id} is out of range 1..={NODES_MAX} or taken"
            )));
        }
        let ns = self.namespace(id);
        run_cmd("ip", &["netns", "add", &ns])?;
        self.nodes.push(id);
        let host = format!("{}h{id}", self.prefix);
        run_cmd(
            "ip",
            &[
                "link", "add", &host, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ],
        )?;
        run_cmd(
            "ip",
            &["link", "set", &host, "master", &self.bridge(), "up"],
        )?;
        let cidr = format!("{}/24", self.node_ip(id));
        run_cmd("ip", &["-n", &ns, "addr", "add", &cidr, "dev", "eth0"])?;
        run_cmd("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        run_cmd("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
        let table = format!(
            "table inet {TABLE} {{\n\
             \tchain input {{ type filter hook input priority 0; policy accept; }}\n\
             \tchain output {{ type filter hook output priority 0; policy accept; }}\n\
             }}\n"
        );
        run_cmd_stdin(
            "ip",
            &["netns", "exec", &ns, "nft", "-f", "-"],
            Some(&table),
        )?;
        Ok(())
    }

    /// Removes node `id`'s namespace (killing anything still in it).
    pub fn remove_node(&mut self, id: u64) {
        let ns = self.namespace(id);
        kill_namespace_processes(&ns);
        // Deleting the host end deletes the pair now; the namespace's own
        // end would go only when the kernel frees the namespace, which can
        // lag behind `ip netns del`.
        let _ = run_cmd("ip", &["link", "del", &format!("{}h{id}", self.prefix)]);
        let _ = run_cmd("ip", &["netns", "del", &ns]);
        self.nodes.retain(|n| *n != id);
    }

    /// The namespace of node `id`.
    pub fn namespace(&self, id: u64) -> String {
        format!("{}-n{id}", self.prefix)
    }

    /// The bridge's name.
    fn bridge(&self) -> String {
        format!("{}br", self.prefix)
    }

    /// The address of node `id`.
    pub fn node_ip(&self, id: u64) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet, id as u8)
    }

    /// The address clients (the root namespace) use on the bridge.
    pub fn client_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet, 254)
    }

    /// The run's name prefix (`rc<pid><letter>`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Writes `faults` into node `id`'s namespace, replacing what was there.
    ///
    /// # Errors
    ///
    /// When `nft` or `tc` fails.
    pub fn set_faults(&self, id: u64, faults: &NodeFaults) -> Result<(), ChaosError> {
        let ns = self.namespace(id);
        let ips = |set: &BTreeSet<u64>| {
            set.iter()
                .map(|n| self.node_ip(*n).to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut script =
            format!("flush chain inet {TABLE} input\nflush chain inet {TABLE} output\n");
        if !faults.drop_from.is_empty() {
            script += &format!(
                "add rule inet {TABLE} input ip saddr {{ {} }} drop\n",
                ips(&faults.drop_from)
            );
        }
        if !faults.drop_to.is_empty() {
            script += &format!(
                "add rule inet {TABLE} output ip daddr {{ {} }} drop\n",
                ips(&faults.drop_to)
            );
        }
        if faults.loss_pct > 0 {
            let others: BTreeSet<u64> = self.nodes.iter().copied().filter(|n| *n != id).collect();
            if !others.is_empty() {
                // `numgen random mod 100` yields 0..=99: `< 100` is out of
                // nft's range, and 100% is a plain drop.
                let sample = if faults.loss_pct >= 100 {
                    String::new()
                } else {
                    format!("numgen random mod 100 < {} ", faults.loss_pct)
                };
                script += &format!(
                    "add rule inet {TABLE} input ip saddr {{ {} }} {sample}drop\n",
                    ips(&others),
                );
            }
        }
        // Adding before deleting makes the delete valid whether or not the
        // table exists; the whole script is one transaction.
        script += &format!("add table ip {RELAY_TABLE}\ndelete table ip {RELAY_TABLE}\n");
        if !faults.redirect.is_empty() {
            // Stateless rewriting, not `dnat`: QUIC sends both ways between
            // the same two ports, so a conntrack entry made by the peer's
            // first packet would claim this node's packets as replies and
            // exempt them from NAT. A `route` chain re-routes the packet
            // after its destination changed.
            script += &format!(
                "table ip {RELAY_TABLE} {{\n\tchain out {{\n\t\ttype route hook output priority -150; policy accept;\n"
            );
            for r in &faults.redirect {
                script += &format!(
                    "\t\tip daddr {} udp dport {} ip daddr set {} udp dport set {}\n",
                    self.node_ip(r.to),
                    r.port,
                    self.client_ip(),
                    r.via_port
                );
            }
            script += "\t}\n\tchain in {\n\t\ttype filter hook prerouting priority -150; policy accept;\n";
            for r in &faults.redirect {
                script += &format!(
                    "\t\tip saddr {} udp sport {} ip saddr set {} udp sport set {}\n",
                    self.client_ip(),
                    r.via_port,
                    self.node_ip(r.to),
                    r.port
                );
            }
            script += "\t}\n}\n";
        }
        run_cmd_stdin(
            "ip",
            &["netns", "exec", &ns, "nft", "-f", "-"],
            Some(&script),
        )?;
        match faults.rate_kbit {
            Some(kbit) => {
                let rate = format!("{kbit}kbit");
                run_cmd(
                    "ip",
                    &[
                        "netns", "exec", &ns, "tc", "qdisc", "replace", "dev", "eth0", "root",
                        "tbf", "rate", &rate, "burst", "32kbit", "latency", "400ms",
                    ],
                )?;
            }
            None => {
                // No qdisc to delete is fine.
                let _ = run_cmd(
                    "ip",
                    &[
                        "netns", "exec", &ns, "tc", "qdisc", "del", "dev", "eth0", "root",
                    ],
                );
            }
        }
        Ok(())
    }

    /// Removes every fault from every node.
    ///
    /// # Errors
    ///
    /// The first `nft`/`tc` failure (the other nodes are still healed).
    pub fn heal_all(&self) -> Result<(), ChaosError> {
        let mut first = None;
        for &id in &self.nodes {
            if let Err(e) = self.set_faults(id, &NodeFaults::default()) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for id in self.nodes.clone() {
            self.remove_node(id);
        }
        if self.bridge_admitted {
            let _ = run_cmd("iptables", &forward_rule("-D", &self.bridge()));
        }
        if self.bridge_made {
            let _ = run_cmd("ip", &["link", "del", &self.bridge()]);
        }
    }
}

/// The iptables arguments that add (`-I`) or delete (`-D`) the rule
/// accepting forwarded traffic from `bridge` to `bridge`.
fn forward_rule<'a>(op: &'a str, bridge: &'a str) -> Vec<&'a str> {
    // `-w 10`: wait for the xtables lock, but not forever.
    let mut args = vec!["-w", "10", op, "FORWARD"];
    if op == "-I" {
        args.push("1");
    }
    args.extend(["-i", bridge, "-o", bridge, "-j", "ACCEPT"]);
    args
}

/// Lets the run's node-to-node traffic across its bridge through the
/// host's iptables `FORWARD` chain; returns whether it added a rule.
///
/// With `br_netfilter` loaded and `net.bridge.bridge-nf-call-iptables=1`
/// (Docker loads and sets both), frames that one bridge port sends to
/// another pass through iptables' `FORWARD` chain, whose policy Docker
/// sets to `DROP`: every datagram between two node namespaces would be
/// dropped in silence, as if each node were partitioned from the others.
/// A per-bridge setting cannot opt out (the kernel honours the global
/// sysctl as well), and an accept in a table of the harness's own would
/// not override another table's drop, so the run inserts an `ACCEPT` for
/// its own bridge at the head of `FORWARD`, and removes it at teardown
/// ([`cleanup_stale`] removes those of dead runs). Where bridged frames do
/// not pass through iptables (`br_netfilter` not loaded, or the sysctl
/// off), or `iptables` is not installed, nothing could drop the traffic,
/// and nothing is added.
///
/// # Errors
///
/// When bridged frames do pass through iptables but it refuses the rule.
fn admit_bridge(bridge: &str) -> Result<bool, ChaosError> {
    let filtered = std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables")
        .is_ok_and(|v| v.trim() == "1");
    if !filtered || run_cmd("iptables", &["--version"]).is_err() {
        return Ok(false);
    }
    run_cmd("iptables", &forward_rule("-I", bridge)).map_err(|e| {
        ChaosError::Unsupported(format!(
            "cannot let the bridge's traffic through iptables' FORWARD chain: {e}"
        ))
    })?;
    Ok(true)
}

/// The bridges named in `iptables -S FORWARD` output by rules of the form
/// [`forward_rule`] adds.
fn admitted_bridges(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            match w.as_slice() {
                ["-A", "FORWARD", "-i", i, "-o", o, "-j", "ACCEPT"] if i == o => {
                    Some((*i).to_owned())
                }
                _ => None,
            }
        })
        .collect()
}

/// A third octet for 10.77.S.0/24 that no interface uses yet.
fn free_subnet(run: u32) -> Result<u8, ChaosError> {
    let used = run_cmd("ip", &["-o", "-4", "addr", "show"])?;
    let start = (std::process::id().wrapping_add(run) % 200) as u8;
    (0..200u8)
        .map(|i| ((u16::from(start) + u16::from(i)) % 200) as u8 + 1)
        .find(|s| !used.contains(&format!("10.77.{s}.")))
        .ok_or_else(|| ChaosError::Unsupported("every 10.77.S.0/24 subnet is in use".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admitted_bridges_are_read_back_from_iptables_rules() {
        let rules = "-P FORWARD DROP\n\
                     -A FORWARD -i rc4242abr -o rc4242abr -j ACCEPT\n\
                     -A FORWARD -j DOCKER-USER\n\
                     -A FORWARD -i docker0 -o docker0 -j ACCEPT\n\
                     -A FORWARD -i docker0 ! -o docker0 -j ACCEPT\n";
        assert_eq!(admitted_bridges(rules), ["rc4242abr", "docker0"]);
        // Only harness names are ever removed: docker0 has no owner pid.
        assert_eq!(owner_pid("docker0"), None);
        assert_eq!(
            forward_rule("-I", "rc1abr"),
            ["-w", "10", "-I", "FORWARD", "1", "-i", "rc1abr", "-o", "rc1abr", "-j", "ACCEPT"]
        );
    }

    #[test]
    fn owner_pid_parses_harness_names_only() {
        assert_eq!(owner_pid("rc4242a-n1"), Some(4242));
        assert_eq!(owner_pid("rc4242abr"), Some(4242));
        assert_eq!(owner_pid("rc4242ah3"), Some(4242));
        assert_eq!(owner_pid("rcx"), None);
        assert_eq!(owner_pid("eth0"), None);
        assert_eq!(owner_pid("docker0"), None);
    }
}
