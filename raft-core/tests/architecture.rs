//! Guards of the crate's architecture (docs/architecture.md, "Crates and layers"):
//! the engine module stays sans-IO, and raft-core depends on no storage or
//! network backend. These read the sources, so a change that breaks the
//! rule fails here with the offending file and line.

use std::fs;
use std::path::Path;

const FORBIDDEN_IN_ENGINE: &[&str] = &[
    "tokio",
    "std::time",
    "Instant::now",
    "SystemTime",
    "std::thread",
    "std::fs",
    "std::net",
    "thread_rng",
    "OsRng",
    "async fn",
    ".await",
];

/// Every `.rs` file under `dir`, in subdirectories too.
fn sources(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).expect("readable source directory") {
        let path = entry.expect("readable dir entry").path();
        if path.is_dir() {
            files.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

#[test]
fn the_engine_uses_no_runtime_clock_io_or_unseeded_randomness() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/engine");
    let mut checked = 0;
    for path in sources(&dir) {
        let text = fs::read_to_string(&path).expect("readable source file");
        checked += 1;
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for word in FORBIDDEN_IN_ENGINE {
                assert!(
                    !code.contains(word),
                    "{}:{}: the sans-IO engine must not use `{word}`: {line}",
                    path.display(),
                    n + 1
                );
            }
        }
    }
    assert!(
        checked >= 5,
        "expected the engine's modules, found {checked} files"
    );
}

#[test]
fn raft_core_depends_on_no_storage_or_network_backend() {
    let manifest = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .expect("Cargo.toml");
    for backend in ["rocksdb", "quinn", "rustls", "hyper", "axum"] {
        assert!(
            !manifest.contains(backend),
            "raft-core must not depend on {backend}"
        );
    }
}
