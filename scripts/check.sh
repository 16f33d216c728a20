#!/usr/bin/env bash
# The static checks CI runs before the tests: formatting, lints with warnings as errors, and
# the documentation with broken links or markup as errors. Needs the build tools
# (scripts/setup.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked
