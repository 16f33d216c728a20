#!/usr/bin/env bash
# The whole test suite: installs what the tests need, then runs every test of the workspace.
#
#   scripts/test.sh [cargo test args...]   everything (as root: FUSE, OVS, libvirt, MongoDB)
#   scripts/test.sh --quick                the tests that need no root, FUSE, OVS or libvirt
#                                          daemon: unit tests, the format, the dependency
#                                          rules, the crypto, the metadata store conformance
#                                          suite and the client library against a real daemon
#                                          (a couple of minutes on a warm build)
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ ${1:-} == --quick ]]; then
    if [[ ! -x .venv-mongo/bin/secantusd-py ]]; then
        echo "test.sh --quick: the MongoDB-compatible server is missing (.venv-mongo):" \
            "run scripts/setup.sh once" >&2
        exit 1
    fi
    cargo build --workspace --bins --locked
    cargo test --workspace --locked --lib --bins
    cargo test --locked -p crypto --tests
    cargo test --locked -p storaged --test conformance
    cargo test --locked -p vmctl --test test_driver
    cargo test --locked -p netctl --test input
    cargo test --locked -p tests --test format --test architecture --test cli --test client_library
    exit 0
fi

scripts/setup.sh
# The cross-crate tests run the real binaries: build them first.
cargo build --workspace --bins --locked
cargo test --workspace --locked "$@"
