#!/usr/bin/env bash
# vmctl: time from `vmctl start` to the guest's readiness marker and to its address answering
# a ping from another VM of its project (on the other host), and the host memory (QEMU RSS) of
# the idle VM, over one VM's first start and its restarts on the same host (the tiny guest).
# Then the same VM story for the vault guest: time from `vmctl start` to the vault mounted in
# the guest over TLS (storaged as the network's service on the other host), split by the
# guest's clock into boot and mount. Runs two-host labs (namespaces, OVS, a private libvirtd per
# host) under TCG; as root, after scripts/setup.sh and `cargo build --workspace --bins`.
# Arguments: [--runs N] [--idle SECONDS] [--memory MIB] (the vault guest takes --runs only).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --quiet -p vmctl --test bench -- "$@"
echo
cargo test --quiet -p vmctl --test vault_bench -- "$@"
