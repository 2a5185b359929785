//! `raft-node health` (the image's HEALTHCHECK) against real nodes, over
//! HTTP and HTTPS with client certificates; and a node whose id comes from
//! its host name and whose paths carry `{id}` (a StatefulSet pod).

mod common;

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// Runs `raft-node health ARGS` with only the `env` variables of the node
/// (the test's own environment is cleared of `RAFT_*`).
fn health(args: &[&str], env: &[(&str, String)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_raft-node"));
    cmd.arg("health").args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("RAFT_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    cmd.output().expect("run raft-node health")
}

/// `health ARGS` until it exits 0 (30 s at most).
fn wait_healthy(args: &[&str], env: &[(&str, String)]) -> Output {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = health(args, env);
        if out.status.success() || Instant::now() > deadline {
            return out;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn listen_of(p: &Proc) -> String {
    p.http
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .to_string()
}

#[test]
fn health_exits_zero_on_a_live_node_and_one_with_a_reason_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let procs = cluster(dir.path(), 1);
    let env = [("RAFT_CLIENT_LISTEN", listen_of(&procs[0]))];
    let out = wait_healthy(&["--ready"], &env);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"ready\":true"));
    let out = health(&[], &env);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
    let out = health(&["--endpoint", &procs[0].http], &[]);
    assert!(out.status.success(), "{}", stderr(&out));

    // Nobody listens: exit status 1, one line naming the URL.
    let closed = free_tcp();
    let out = health(
        &["--timeout-ms", "500"],
        &[("RAFT_CLIENT_LISTEN", format!("0.0.0.0:{}", closed.port()))],
    );
    assert_fails_naming(&out, &format!("http://127.0.0.1:{}/healthz", closed.port()));
    let err = stderr(&out);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    // A route that answers something else than 200: the status is named.
    let out = health(&["--endpoint", &format!("{}/nowhere", procs[0].http)], &[]);
    assert_fails_naming(&out, "404");
    // A bad variable of the node is a failed check, not a usage error.
    let out = health(&[], &[("RAFT_CLIENT_LISTEN", "8080".into())]);
    assert_fails_naming(&out, "RAFT_CLIENT_LISTEN");
}

#[test]
fn health_speaks_https_with_the_node_certificate_when_the_api_requires_one() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let extra = [
        "--client-tls".to_string(),
        format!("--client-ca={}", certs.join("ca.pem").display()),
    ];
    // The certificate names 127.0.0.1, the address the probe asks.
    let names = ["localhost".to_string(), "127.0.0.1".to_string()];
    let procs = cluster_with(dir.path(), 1, &extra, &names, "https");
    let mut env = vec![
        ("RAFT_CLIENT_LISTEN", listen_of(&procs[0])),
        ("RAFT_CLIENT_TLS", "true".to_string()),
        ("RAFT_TLS_CA", certs.join("ca.pem").display().to_string()),
        (
            "RAFT_TLS_CERT",
            certs.join("node-{id}.pem").display().to_string(),
        ),
        (
            "RAFT_TLS_KEY",
            certs.join("node-{id}.key").display().to_string(),
        ),
        ("RAFT_ID", "1".to_string()),
    ];
    let out = wait_healthy(&["--ready"], &env);
    assert!(out.status.success(), "{}", stderr(&out));
    // Without a client certificate (as the kubelet's httpGet probes) the
    // node refuses the handshake, on /healthz and /readyz too; the reason
    // says what the node asks for and where the probe takes it from.
    let no_cert: Vec<_> = env
        .iter()
        .filter(|(k, _)| !k.starts_with("RAFT_TLS_CERT") && !k.starts_with("RAFT_TLS_KEY"))
        .cloned()
        .collect();
    for ready in [&[][..], &["--ready"][..]] {
        let out = health(ready, &no_cert);
        eprintln!("without a client certificate: {}", stderr(&out));
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("requires a client certificate")
                && stderr(&out).contains("RAFT_TLS_CERT"),
            "{}",
            stderr(&out)
        );
    }
    // `{id}` in the paths without a node id: named.
    env.retain(|(k, _)| *k != "RAFT_ID");
    let out = health(&[], &env);
    assert_fails_naming(&out, "RAFT_ID");
}

/// A stand-in for an https node that requires client certificates: it
/// refuses a client without one as a node does under TLS 1.3, after the
/// client's side of the handshake, but the client never reads the alert:
/// the stand-in does not send it and closes the connection (its writing
/// side, then the whole once the client closed it) after a pause that
/// grows from one connection to the next (0 to 1 ms, by 20 µs, then again
/// from 0), so that the close reaches the client at different points of
/// its request. Node 1's certificate from `certs`; serves until the test
/// ends.
fn refusing_without_the_alert(certs: &Path) -> SocketAddr {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let pem = |name: &str| std::fs::read(certs.join(name)).unwrap();
    let chain = |name: &str| -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(&pem(name))
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in chain("ca.pem") {
        roots.add(c).unwrap();
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let key = PrivateKeyDer::from_pem_slice(&pem("node-1.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain("node-1.pem"), key)
        .unwrap();
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for (n, sock) in listener.incoming().flatten().enumerate() {
            let config = config.clone();
            // A thread a connection: a client may open another one while
            // its first is still open.
            std::thread::spawn(move || refuse(sock, config, n));
        }
    });
    addr
}

/// [`refusing_without_the_alert`]'s connection number `n`.
fn refuse(mut sock: std::net::TcpStream, config: Arc<rustls::ServerConfig>, n: usize) {
    use std::io::Read;

    let mut tls = rustls::ServerConnection::new(config).unwrap();
    // The handshake, until the client's certificate (none) is refused.
    loop {
        while tls.wants_write() {
            if tls.write_tls(&mut sock).is_err() {
                return;
            }
        }
        if !matches!(tls.read_tls(&mut sock), Ok(r) if r > 0) {
            return;
        }
        if tls.process_new_packets().is_err() {
            break;
        }
    }
    // The alert unsent: the pause, then the end of the stream (not a reset:
    // what the client sent is read until it closes the connection).
    let pause = u64::try_from(n % 50).unwrap() * 20;
    std::thread::sleep(Duration::from_micros(pause));
    let _ = sock.shutdown(std::net::Shutdown::Write);
    let mut sink = [0u8; 4096];
    while matches!(sock.read(&mut sink), Ok(r) if r > 0) {}
}

/// Finding (health.rs's https test failed once in CI): under TLS 1.3 a
/// node refuses a probe without a client certificate after the probe's
/// side of the handshake; when the probe does not read the alert, its
/// connection just fails ("connection was not ready", or closed before
/// the answer), and the reason did not name the client certificate then.
/// It does, whatever way the connection fails. Probes are repeated (200
/// at the most) until one failed with "connection was not ready" (the
/// close reached the client between its handshake and its request): how
/// the connection failed, each time, is printed.
#[test]
fn a_probe_without_a_certificate_names_it_when_the_connection_just_fails() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let names = ["127.0.0.1".to_string()];
    raft_net_quic::certs::write_dev_certs(&certs, &[1], &names).unwrap();
    let addr = refusing_without_the_alert(&certs);
    let env = [("RAFT_TLS_CA", certs.join("ca.pem").display().to_string())];
    let endpoint = format!("https://{addr}");
    let mut causes = std::collections::BTreeMap::<String, u32>::new();
    for _ in 0..200 {
        let out = health(&["--endpoint", &endpoint, "--timeout-ms", "10000"], &env);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("requires a client certificate") && err.contains("RAFT_TLS_CERT"),
            "the reason does not name the client certificate: {err}"
        );
        let cause = err.split(" (").next().unwrap_or_default();
        let cause = cause.rsplit("/healthz: ").next().unwrap_or_default();
        *causes.entry(cause.to_owned()).or_default() += 1;
        if cause == "connection was not ready" {
            break;
        }
    }
    eprintln!("how the connections failed: {causes:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_named_raft_1_is_node_2_and_finds_its_files_by_id() {
    if !has_root_for("a host name of its own: unshare --uts") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    raft_net_quic::certs::write_dev_certs(&certs, &[2], &["localhost".to_string()]).unwrap();
    let (peer, client) = (free_udp(), free_tcp());
    let env = [
        ("RAFT_ID_FROM_HOSTNAME", "true".into()),
        ("RAFT_DATA_DIR", dir.path().join("data-{id}")),
        ("RAFT_CLIENT_LISTEN", client.to_string().into()),
        ("RAFT_PEER_LISTEN", peer.to_string().into()),
        ("RAFT_INITIAL_CLUSTER", format!("2={peer}/{client}").into()),
        ("RAFT_TLS_CA", certs.join("ca.pem")),
        ("RAFT_TLS_CERT", certs.join("node-{id}.pem")),
        ("RAFT_TLS_KEY", certs.join("node-{id}.key")),
    ];
    let mut node = Proc {
        id: 2,
        args: vec!["run".to_string()],
        child: None,
        http: format!("http://{client}"),
        log: dir.path().join("node.log"),
        env: env.map(|(k, v)| (k.to_string(), v)).to_vec(),
    };
    start_in_namespace(&mut node, &["--uts"], "hostname raft-1", &[]);
    let out = wait_healthy(&["--ready"], &[("RAFT_CLIENT_LISTEN", client.to_string())]);
    let status: Option<serde_json::Value> =
        match reqwest::get(format!("http://{client}/v1/cluster")).await {
            Ok(answer) => answer.json().await.ok(),
            Err(_) => None,
        };
    node.kill9();
    let text = node.log_text();
    assert!(out.status.success(), "{}\nnode log:\n{text}", stderr(&out));
    let status = status.expect("the node's status");
    assert_eq!(status["id"], 2, "{status}");
    assert!(dir.path().join("data-2").is_dir(), "node log:\n{text}");
    assert!(!dir.path().join("data-{id}").exists());
}

/// `run` flags for a node whose id comes from its host name (the TLS files
/// are never read: the id is refused first).
const ID_FROM_HOSTNAME: [&str; 4] = [
    "--id-from-hostname",
    "--tls-ca=a",
    "--tls-cert=b",
    "--tls-key=c",
];

#[test]
fn a_host_name_without_a_number_is_named_when_the_node_starts() {
    let out = Command::new(env!("CARGO_BIN_EXE_raft-node"))
        .args(["run", "--id=1"])
        .args(ID_FROM_HOSTNAME)
        .output()
        .unwrap();
    assert_fails_naming(&out, "exclude each other");
    if !has_root_for("a host name of its own: unshare --uts") {
        return;
    }
    let out = namespace_command(&["--uts"], "hostname web", &[])
        .arg("run")
        .args(ID_FROM_HOSTNAME)
        .output()
        .unwrap();
    assert_fails_naming(&out, "\"web\"");
}
