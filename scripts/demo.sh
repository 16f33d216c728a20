#!/usr/bin/env bash
# The main job in one command: installs what is needed, builds, starts storaged on the embedded
# metadata store, creates a demo user, mounts the vault, copies a few files in, and shows the
# plaintext through the mount beside the ciphertext chunk files under the data directory.
#
#   scripts/demo.sh        set up and run (again: reuses what is already there)
#   scripts/demo.sh stop   unmount and stop the daemon
#
# Everything lives under ./demo (or $VAULT_DEMO_DIR). Run as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."
demo=${VAULT_DEMO_DIR:-$PWD/demo}
bin=$PWD/target/release
data=$demo/data
mnt=$demo/mnt
export XDG_CONFIG_HOME=$demo/config   # key files and the client config of the demo
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
source scripts/lib.sh

if [[ ${1:-} == stop ]]; then
    vault_stop "$demo" "$mnt"
    exit 0
fi

say "Installing system packages and building (release)"
scripts/setup.sh
cargo build --release --locked --bins

say "Starting storaged (embedded SQLite metadata; chunk files under $data/chunks)"
vault_start_daemon "$demo"

say "A demo user: key file, registration, approval by the administrator, login"
vault_user "$demo" demo

say "Mounting the vault on $mnt"
vault_mount "$demo" "$mnt"

say "Copying a few files in"
mkdir -p "$mnt/demo"
cp README.md docs/format.md "$mnt/demo/"
head -c 20M /dev/urandom > "$demo/random.bin"
cp "$demo/random.bin" "$mnt/demo/random.bin"
ls -la "$mnt/demo"

say "Plaintext, through the mount"
head -n 5 "$mnt/demo/README.md"
cmp "$demo/random.bin" "$mnt/demo/random.bin" && echo "random.bin reads back identical (20 MiB, 3 chunks)"

say "Ciphertext, as the storage administrator (and any backup tool) sees it"
# (sed reads to the end: head would end find with SIGPIPE, fatal under pipefail)
# Chunk files are <file id>.<index>.<generation> (docs/format.md section 3).
find "$data/chunks" -type f -name '?*.*.*' | sed -n 1,8p
first=$(find "$data/chunks" -type f -name '?*.*.*' -size -100k -print -quit)
echo "the first 96 bytes of $first (a 64-byte envelope, then ciphertext):"
od -A d -t x1 -N 96 "$first"
if grep -rqs "end-to-end encrypted research vault" "$data/chunks"; then
    echo "PLAINTEXT FOUND IN THE CHUNK FILES" >&2
    exit 1
fi
echo "no chunk file contains the README's text."

say "Done"
"$bin/vaultfs" status
cat <<TXT

The vault stays mounted on $mnt. Use it like any directory.
  unmount:           $bin/vaultfs unmount $mnt
  stop the daemon:   kill \$(cat $demo/storaged.pid)
  or both at once:   scripts/demo.sh stop
TXT
