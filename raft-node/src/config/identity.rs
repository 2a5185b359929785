//! Which node this is when one setting serves every replica (a
//! Kubernetes StatefulSet, a compose file): the id from the host name
//! (`--id-from-hostname`) and the `{id}` placeholder in paths.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use raft_core::NodeId;

use super::ConfigError;

/// The placeholder replaced by the node id in `--data-dir`, `--tls-cert`
/// and `--tls-key`.
pub const ID_PLACEHOLDER: &str = "{id}";

/// The node id a host name stands for: the decimal number its first label
/// ends with, plus one (`raft-0` → 1, `node-2.example` → 3), so that the
/// pods of a StatefulSet, numbered from 0, get the ids 1, 2, 3….
///
/// # Errors
///
/// [`ConfigError`] naming the host name when its first label ends with no
/// number, or with one too large for an id.
pub fn id_from_hostname(hostname: &str) -> Result<NodeId, ConfigError> {
    let label = hostname.split('.').next().unwrap_or_default();
    let digits = label.bytes().rev().take_while(u8::is_ascii_digit).count();
    let number = &label[label.len() - digits..];
    if number.is_empty() {
        return Err(ConfigError(format!(
            "--id-from-hostname: the host name {hostname:?} does not end with a number \
             (expected e.g. raft-0, whose id is 1)"
        )));
    }
    number
        .parse::<NodeId>()
        .ok()
        .and_then(|n| n.checked_add(1))
        .ok_or_else(|| {
            ConfigError(format!(
                "--id-from-hostname: the number that ends the host name {hostname:?} is too large"
            ))
        })
}

/// This machine's host name (`uname`'s node name).
///
/// # Errors
///
/// [`ConfigError`] when it is not UTF-8.
pub fn hostname() -> Result<String, ConfigError> {
    let uname = rustix::system::uname();
    uname
        .nodename()
        .to_str()
        .map(str::to_owned)
        .map_err(|_| ConfigError("--id-from-hostname: the host name is not UTF-8".into()))
}

/// The node id from `--id` or `--id-from-hostname` (exactly one of them).
///
/// # Errors
///
/// [`ConfigError`] when both or neither are given, or the host name does
/// not name an id.
pub fn resolve_id(
    id: Option<NodeId>,
    from_hostname: bool,
    hostname: impl FnOnce() -> Result<String, ConfigError>,
) -> Result<NodeId, ConfigError> {
    let id = match (id, from_hostname) {
        (Some(_), true) => {
            return Err(ConfigError(
                "--id (RAFT_ID) and --id-from-hostname (RAFT_ID_FROM_HOSTNAME) exclude each other"
                    .into(),
            ))
        }
        (None, true) => id_from_hostname(&hostname()?)?,
        (Some(id), false) => id,
        (None, false) => {
            return Err(ConfigError(
                "--id (RAFT_ID) or --id-from-hostname (RAFT_ID_FROM_HOSTNAME) is required".into(),
            ))
        }
    };
    if id == 0 {
        return Err(ConfigError("--id must be a positive integer".into()));
    }
    Ok(id)
}

/// `path` with every `{id}` replaced by the node id (`/certs/node-{id}.pem`
/// → `/certs/node-3.pem`); other bytes, UTF-8 or not, are kept.
pub fn substitute_id(path: &Path, id: NodeId) -> PathBuf {
    let bytes = path.as_os_str().as_bytes();
    let needle = ID_PLACEHOLDER.as_bytes();
    let id = id.to_string();
    let mut out = Vec::with_capacity(bytes.len());
    let mut rest = bytes;
    while let Some(at) = rest.windows(needle.len()).position(|w| w == needle) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(id.as_bytes());
        rest = &rest[at + needle.len()..];
    }
    out.extend_from_slice(rest);
    PathBuf::from(OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trailing_number_of_the_host_name_plus_one_is_the_id() {
        assert_eq!(id_from_hostname("raft-0").unwrap(), 1);
        assert_eq!(id_from_hostname("node-2").unwrap(), 3);
        assert_eq!(id_from_hostname("raft-node-41").unwrap(), 42);
        assert_eq!(id_from_hostname("db007").unwrap(), 8);
        assert_eq!(id_from_hostname("7").unwrap(), 8);
        // A fully qualified name: its first label counts.
        assert_eq!(id_from_hostname("raft-1.raft.default.svc").unwrap(), 2);
    }

    #[test]
    fn a_host_name_without_a_number_is_named_in_the_error() {
        for name in ["raft", "raft-0a", "", "node-x.example-1"] {
            let err = id_from_hostname(name).unwrap_err();
            assert!(err.0.contains(&format!("{name:?}")), "{err}");
            assert!(err.0.contains("does not end with a number"), "{err}");
        }
        let err = id_from_hostname("raft-18446744073709551615").unwrap_err();
        assert!(err.0.contains("too large"), "{err}");
        let err = id_from_hostname("raft-99999999999999999999999").unwrap_err();
        assert!(err.0.contains("too large"), "{err}");
        assert_eq!(
            id_from_hostname("raft-18446744073709551614").unwrap(),
            u64::MAX
        );
    }

    #[test]
    fn exactly_one_of_id_and_id_from_hostname() {
        let host = || Ok("raft-2".to_string());
        assert_eq!(resolve_id(Some(5), false, host).unwrap(), 5);
        assert_eq!(resolve_id(None, true, host).unwrap(), 3);
        let err = resolve_id(Some(5), true, host).unwrap_err();
        assert!(err.0.contains("exclude each other"), "{err}");
        let err = resolve_id(None, false, host).unwrap_err();
        assert!(err.0.contains("--id-from-hostname"), "{err}");
        let err = resolve_id(Some(0), false, host).unwrap_err();
        assert!(err.0.contains("positive"), "{err}");
        let err = resolve_id(None, true, || Ok("web".to_string())).unwrap_err();
        assert!(err.0.contains("\"web\""), "{err}");
    }

    #[test]
    fn the_host_name_is_read() {
        // Whatever the machine's name is, it is read without error.
        let name = hostname().unwrap();
        assert!(!name.is_empty());
    }

    #[test]
    fn every_placeholder_is_replaced() {
        let s = |p: &str, id| substitute_id(Path::new(p), id);
        assert_eq!(s("/certs/node-{id}.pem", 3), Path::new("/certs/node-3.pem"));
        assert_eq!(s("/data/{id}/x-{id}", 12), Path::new("/data/12/x-12"));
        assert_eq!(s("/data", 1), Path::new("/data"));
        assert_eq!(s("{id", 1), Path::new("{id"));
        assert_eq!(s("{ID}", 1), Path::new("{ID}"));
        // Bytes that are not UTF-8 are kept.
        let raw = PathBuf::from(OsString::from_vec(b"/d\xff-{id}".to_vec()));
        assert_eq!(
            substitute_id(&raw, 4).as_os_str().as_bytes(),
            b"/d\xff-4".as_slice()
        );
    }
}
