#!/usr/bin/env bash
# vmctl: time from `vmctl start` to the guest's readiness marker and to its address answering
# a ping from another VM of its project (on the other host), and the host memory (QEMU RSS) of
# the idle VM, over one VM's first start and its restarts on the same host. Runs a two-host
# lab (namespaces, OVS, a private libvirtd per host) with the tiny TCG guest; as root, after
# scripts/setup.sh. Arguments: [--runs N] [--idle SECONDS] [--memory MIB].
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --quiet -p vmctl --test bench -- "$@"
