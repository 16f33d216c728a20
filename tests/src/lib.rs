//! Shared helpers for the cross-crate integration tests in `tests/tests/`.

use std::path::PathBuf;

/// The workspace root (the directory holding the top `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits inside the workspace")
        .to_path_buf()
}

/// The golden fixture of format version 1.
pub fn golden_dir() -> PathBuf {
    workspace_root().join("tests/fixtures/golden-v1")
}

/// The path of one of the workspace's binaries, built by `scripts/test.sh` before the tests
/// run (`cargo build --workspace --bins`). Fails with what to do when it is missing.
pub fn binary(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let path = target.join(profile).join(name);
    assert!(
        path.is_file(),
        "binary {} is missing: build it first with `cargo build --workspace --bins` \
         (scripts/test.sh does)",
        path.display()
    );
    path
}

/// Instantiates each named test once per metadata backend, the way the conformance suite
/// does: `sqlite_backend::NAME` and `mongodb_backend::NAME` call `NAME(backend)`, a
/// [`daemon::Backend`]. `async:` makes tokio tests of async functions, `sync:` plain tests.
#[macro_export]
macro_rules! on_every_backend {
    (async: $($test:ident),* $(,)?) => {
        mod sqlite_backend {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                super::$test($crate::daemon::Backend::Sqlite).await
            })*
        }
        mod mongodb_backend {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                super::$test($crate::daemon::Backend::mongo()).await
            })*
        }
    };
    (sync: $($test:ident),* $(,)?) => {
        mod sqlite_backend {
            $(#[test]
            fn $test() {
                super::$test($crate::daemon::Backend::Sqlite)
            })*
        }
        mod mongodb_backend {
            $(#[test]
            fn $test() {
                super::$test($crate::daemon::Backend::mongo())
            })*
        }
    };
}

pub mod daemon;
pub mod mongo;
pub mod mount;
pub mod tools;
pub mod vault;
