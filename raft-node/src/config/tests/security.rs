//! Who may reach the API: an exposed node needs tokens or `--insecure`,
//! the warnings about cleartext tokens and an open data API, and token
//! files (their owner, their mode, and a missing or empty one).

use super::*;

#[test]
fn review_an_exposed_node_whose_data_api_is_open_needs_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let admin = private_token(dir.path(), "admin", "an-admin-token-0123456789");
    let r = RunArgs {
        admin_token_file: Some(admin),
        ..exposed()
    }
    .resolve();
    assert!(
        r.is_err(),
        "0.0.0.0 with only --admin-token-file (every key readable and writable by anyone) \
         started without --insecure"
    );
}

#[test]
fn an_api_exposed_beyond_loopback_without_auth_is_refused_unless_insecure() {
    let err = exposed().resolve().unwrap_err();
    assert!(
        err.0.contains("--insecure") && err.0.contains("--auth-token-file"),
        "{err}"
    );
    // TLS alone authenticates nobody.
    let err = RunArgs {
        client_tls: Some(true),
        ..exposed()
    }
    .resolve()
    .unwrap_err();
    assert!(err.0.contains("--insecure"), "{err}");
    // Said explicitly: it starts, with a loud warning.
    let cfg = RunArgs {
        insecure: Some(true),
        ..exposed()
    }
    .resolve()
    .unwrap();
    let warnings = cfg.security_warnings().join("\n");
    assert!(
        warnings.contains("no bearer token and no TLS"),
        "{warnings}"
    );
    // A token or client certificates are enough.
    let dir = tempfile::tempdir().unwrap();
    let token = private_token(dir.path(), "t", "a-token-of-enough-length");
    let cfg = RunArgs {
        auth_token_file: Some(token),
        ..exposed()
    }
    .resolve()
    .unwrap();
    let warnings = cfg.security_warnings().join("\n");
    assert!(
        warnings.contains("Authorization") && warnings.contains("plain HTTP"),
        "followers forward the token in clear: {warnings}"
    );
    RunArgs {
        client_tls: Some(true),
        client_ca: Some("ca.pem".into()),
        ..exposed()
    }
    .resolve()
    .unwrap();
    // Loopback needs nothing and warns of nothing.
    let cfg = base().resolve().unwrap();
    assert!(!cfg.insecure);
    assert_eq!(cfg.security_warnings(), Vec::<String>::new());
}

#[test]
fn cleartext_tokens_and_an_open_data_api_are_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let admin = private_token(dir.path(), "admin", "an-admin-token-0123456789");
    // Only the admin token: /v1/kv stays open.
    let cfg = RunArgs {
        admin_token_file: Some(admin.clone()),
        ..base()
    }
    .resolve()
    .unwrap();
    let warnings = cfg.security_warnings().join("\n");
    assert!(
        warnings.contains("/v1/kv") && warnings.contains("--auth-token-file"),
        "{warnings}"
    );
    // --join over http:// sends the admin token in clear.
    let cfg = RunArgs {
        admin_token_file: Some(admin),
        join: Some("http://10.0.0.1:8080".into()),
        ..base()
    }
    .resolve()
    .unwrap();
    let warnings = cfg.security_warnings().join("\n");
    assert!(
        warnings.contains("--join") && warnings.contains("in clear"),
        "{warnings}"
    );
}

#[test]
fn token_files_owned_by_another_user_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = private_token(dir.path(), "other", "a-token-of-another-user-0123");
    // Needs root (the tests run as root in CI): give the file away.
    std::os::unix::fs::chown(&path, Some(65534), None)
        .expect("changing the token file's owner (run the tests as root)");
    let err = read_token(&path).unwrap_err();
    assert!(err.0.contains("belongs to user 65534"), "{err}");
}

#[test]
fn token_files_others_can_read_are_refused_and_tokens_never_printed() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = private_token(dir.path(), "user.token", "secret-token-0123456789");
    for loose in [0o644, 0o640, 0o604] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(loose)).unwrap();
        let err = RunArgs {
            auth_token_file: Some(path.clone()),
            ..base()
        }
        .resolve()
        .unwrap_err();
        let mode = format!("{loose:04o}");
        assert!(
            err.0.contains("user.token") && err.0.contains(&mode) && err.0.contains("chmod 600"),
            "{err}"
        );
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
    let cfg = RunArgs {
        auth_token_file: Some(path.clone()),
        admin_token_file: Some(path),
        ..base()
    }
    .resolve()
    .unwrap();
    assert!(cfg.auth_token.is_some() && cfg.admin_token.is_some());
    let shown = format!("{cfg:?} {cfg:#?}");
    assert!(!shown.contains("secret-token"), "{shown}");
    assert!(shown.contains("auth_token"), "{shown}");
}

#[test]
fn token_files_that_are_missing_empty_or_unreadable_are_named_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.token");
    let empty = private_token(dir.path(), "empty.token", "");
    // A directory opens, but cannot be read as a file.
    let unreadable = dir.path().join("dir.token");
    std::fs::create_dir(&unreadable).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&unreadable, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let message = |path: &Path| {
        RunArgs {
            admin_token_file: Some(path.to_path_buf()),
            ..base()
        }
        .resolve()
        .unwrap_err()
        .0
    };
    assert_eq!(
        message(&missing),
        format!(
            "cannot read token file {}: No such file or directory (os error 2)",
            missing.display()
        )
    );
    assert_eq!(
        message(&empty),
        format!(
            "token file {} must hold one token of at least 16 visible ASCII characters",
            empty.display()
        )
    );
    assert_eq!(
        message(&unreadable),
        format!(
            "cannot read token file {}: Is a directory (os error 21)",
            unreadable.display()
        )
    );
}
