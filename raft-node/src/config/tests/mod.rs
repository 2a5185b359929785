//! Settings: precedence, defaults, checks, token files and warnings, by
//! topic; the settings every test starts from.

mod addresses;
mod limits;
mod security;

use super::*;
use std::path::Path;

fn base() -> RunArgs {
    RunArgs {
        id: Some(1),
        tls_ca: Some("ca.pem".into()),
        tls_cert: Some("n.pem".into()),
        tls_key: Some("n.key".into()),
        ..RunArgs::default()
    }
}

fn private_token(dir: &Path, name: &str, token: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// Listening beyond loopback, as a node of a real cluster does.
fn exposed() -> RunArgs {
    RunArgs {
        client_listen: Some("0.0.0.0:8080".parse().unwrap()),
        client_advertise: Some("10.0.0.1:8080".into()),
        peer_advertise: Some("10.0.0.1:7000".parse().unwrap()),
        ..base()
    }
}
