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

stop() {
    if grep -qs " $mnt fuse" /proc/mounts; then
        "$bin/vaultfs" unmount "$mnt"
    fi
    if [[ -s $demo/storaged.pid ]] && kill -0 "$(cat "$demo/storaged.pid")" 2>/dev/null; then
        kill -TERM "$(cat "$demo/storaged.pid")"
        echo "stopped storaged (pid $(cat "$demo/storaged.pid"))"
    fi
    rm -f "$demo/storaged.pid"
}

if [[ ${1:-} == stop ]]; then
    stop
    exit 0
fi

say "Installing system packages and building (release)"
scripts/setup.sh
cargo build --release --locked --bins

mkdir -p "$demo" "$mnt"
chmod 700 "$demo"
# A demo passphrase in a file, so that the script runs unattended. Real users type theirs.
if [[ ! -s $demo/passphrase ]]; then
    head -c 18 /dev/urandom | base64 > "$demo/passphrase"
    chmod 600 "$demo/passphrase"
fi
pass=(--passphrase-file "$demo/passphrase")

say "The site administrator's key (held by the administrator, never by the daemon)"
if [[ ! -f $XDG_CONFIG_HOME/vault/admin.vkey ]]; then
    "$bin/storaged" admin init "${pass[@]}" --data-dir "$data"
else
    "$bin/storaged" admin show
fi

say "Starting storaged (embedded SQLite metadata, chunks under $data/chunks)"
if [[ -s $demo/storaged.pid ]] && kill -0 "$(cat "$demo/storaged.pid")" 2>/dev/null; then
    echo "already running (pid $(cat "$demo/storaged.pid"))"
else
    setsid "$bin/storaged" serve --data-dir "$data" > "$demo/storaged.out" 2> "$demo/storaged.log" < /dev/null &
    echo $! > "$demo/storaged.pid"
    for _ in $(seq 100); do
        grep -qs "storaged ready" "$demo/storaged.out" && break
        sleep 0.1
    done
    cat "$demo/storaged.out"
fi
server=unix:$data/storaged.sock

say "A demo user: key file, registration, approval by the administrator, login"
if [[ ! -f $XDG_CONFIG_HOME/vault/user.vkey ]]; then
    "$bin/vaultfs" key init "${pass[@]}"
fi
fingerprint=$("$bin/vaultfs" key show | awk '/^fingerprint/ {$1=""; print substr($0, 2)}')
"$bin/vaultfs" register --server "$server" --name demo "${pass[@]}" > /dev/null
if "$bin/storaged" admin pending --server "$server" "${pass[@]}" | grep -q '^demo'; then
    "$bin/storaged" admin approve demo --fingerprint "$fingerprint" --server "$server" "${pass[@]}"
fi
"$bin/vaultfs" login "${pass[@]}"

say "Mounting the vault on $mnt"
if grep -qs " $mnt fuse" /proc/mounts; then
    echo "already mounted"
else
    "$bin/vaultfs" mount "$mnt" "${pass[@]}"
fi

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
find "$data/chunks" -type f | head -n 8
first=$(find "$data/chunks" -type f -size -100k | head -n 1)
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
