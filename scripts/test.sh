#!/usr/bin/env bash
# The whole test suite: installs what the tests need, then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# The cross-crate tests run the real binaries: build them first.
cargo build --workspace --bins --locked
cargo test --workspace --locked "$@"
