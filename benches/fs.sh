#!/usr/bin/env bash
# vaultfs and gocryptfs side by side, in one run, over the same disk: sequential write and read
# of a 1 GiB file (dd, 1 MiB blocks, fsync, caches dropped), create + read + unlink of 5,000
# 4 KiB files, unpacking a real source tree of about 10,000 files, md5sum of every file of it
# with caches dropped, and deleting it; then fio's 4 KiB random read, random write and 70/30
# read/write on a 1 GiB file (psync, 30 s each, caches dropped before each), for vaultfs twice:
# with a cache smaller than the file (the settings of the rows above) and with one that holds
# it. Prints a table with ratios and vaultfs's peak memory. Run as root on Debian 12.
#
#   benches/fs.sh [ROUNDS]    (default 1; with more, each figure is the median)
#
# VAULT_BENCH_FIO_SECONDS shortens the fio runs (default 30); VAULT_BENCH_BIN runs the vaultfs
# and storaged of another build (a directory holding them) for a before/after comparison.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-1}
work=${VAULT_BENCH_DIR:-/var/tmp/vault-bench}
bin=${VAULT_BENCH_BIN:-$PWD/target/release}
fio_seconds=${VAULT_BENCH_FIO_SECONDS:-30}
cache_mib=128
dirty_mib=128
big_cache_mib=2048
big_dirty_mib=2048
source scripts/lib.sh

scripts/setup.sh > /dev/null
if ! command -v gocryptfs > /dev/null || ! command -v fio > /dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gocryptfs fio > /dev/null
fi
if [[ -z ${VAULT_BENCH_BIN:-} ]]; then
    cargo build --quiet --release --locked --bins
fi

cleanup() {
    fusermount3 -u "$work/gocryptfs.mnt" 2> /dev/null || true
    vault_stop "$work/vault" "$work/vault.mnt" > /dev/null 2>&1 || true
}
trap cleanup EXIT
cleanup
rm -rf "$work"
mkdir -p "$work"

# The source tree: real Rust crate sources from the cargo registry, about 10,000 files.
tree=$work/tree.tar
(
    cd "$HOME/.cargo/registry/src"/*/
    count=0
    for crate in */; do
        echo "$crate"
        count=$((count + $(find "$crate" -type f | wc -l)))
        ((count >= 10000)) && break
    done > "$work/crates"
    tar -cf "$tree" -T "$work/crates"
)
tree_files=$(tar -tf "$tree" | grep -vc '/$')

vault_start_daemon "$work/vault" > /dev/null
vault_user "$work/vault" bench > /dev/null
mount_vault() {
    vault_mount "$work/vault" "$work/vault.mnt" --cache-mib "$cache_mib" --dirty-mib "$dirty_mib" > /dev/null
}
mount_vault_big() {
    vault_mount "$work/vault" "$work/vault.mnt" --cache-mib "$big_cache_mib" --dirty-mib "$big_dirty_mib" > /dev/null
}
remount_vault_big() {
    "$bin/vaultfs" unmount "$work/vault.mnt" > /dev/null
    mount_vault_big
}
remount_vault() {
    "$bin/vaultfs" unmount "$work/vault.mnt" > /dev/null
    mount_vault
}
mount_gocryptfs() {
    if [[ ! -d $work/gocryptfs.cipher ]]; then
        mkdir -p "$work/gocryptfs.cipher" "$work/gocryptfs.mnt"
        gocryptfs -q -init -extpass "echo bench-passphrase" "$work/gocryptfs.cipher"
    fi
    gocryptfs -q -extpass "echo bench-passphrase" "$work/gocryptfs.cipher" "$work/gocryptfs.mnt"
}
remount_gocryptfs() {
    fusermount3 -u "$work/gocryptfs.mnt"
    mount_gocryptfs
}
mount_vault
mount_gocryptfs

now() { date +%s.%N; }
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }

# seconds_for COMMAND...: wall time of a command.
seconds_for() {
    local start
    start=$(now)
    "$@"
    python3 -c "print($(now) - $start)"
}

small_files() { # DIR PHASE: 5,000 files of 4 KiB
    python3 - "$1" "$2" <<'PY'
import os, sys
d, phase = sys.argv[1], sys.argv[2]
block = os.urandom(4096)
if phase == "create":
    os.makedirs(d, exist_ok=True)
    for i in range(5000):
        with open(f"{d}/f{i}", "wb") as f:
            f.write(block)
elif phase == "read":
    for i in range(5000):
        with open(f"{d}/f{i}", "rb") as f:
            assert len(f.read()) == 4096
else:
    for i in range(5000):
        os.unlink(f"{d}/f{i}")
    os.rmdir(d)
PY
}

declare -A results
measure() { # NAME MOUNTPOINT REMOUNT
    local name=$1 mnt=$2 remount=$3
    drop_caches
    results[$name.write]=$(seconds_for dd if=/dev/zero of="$mnt/big" bs=1M count=1024 conv=fsync status=none)
    $remount
    drop_caches
    results[$name.read]=$(seconds_for dd if="$mnt/big" of=/dev/null bs=1M status=none)
    rm -f "$mnt/big"
    drop_caches
    results[$name.create]=$(seconds_for small_files "$mnt/small" create)
    $remount
    drop_caches
    results[$name.readsmall]=$(seconds_for small_files "$mnt/small" read)
    results[$name.unlink]=$(seconds_for small_files "$mnt/small" unlink)
    drop_caches
    results[$name.untar]=$(seconds_for tar -xf "$tree" -C "$mnt")
    $remount
    drop_caches
    results[$name.md5]=$(seconds_for sh -c "cd '$mnt' && find . -type f -print0 | xargs -0 md5sum > /dev/null")
    results[$name.rmtree]=$(seconds_for rm -rf "$mnt"/*)
}

# fio_iops MOUNTPOINT RW: the IOPS of one fio run on MOUNTPOINT/fio.dat ("read write").
fio_iops() {
    local mnt=$1 rw=$2
    fio --name=bench --filename="$mnt/fio.dat" --size=1G --bs=4k --ioengine=psync \
        --rw="$rw" --rwmixread=70 --runtime="$fio_seconds" --time_based --output-format=json \
        > "$work/fio.json"
    python3 -c 'import json, sys; j = json.load(open(sys.argv[1]))["jobs"][0]; print(j["read"]["iops"], j["write"]["iops"])' "$work/fio.json"
}

fio_measure() { # NAME MOUNTPOINT REMOUNT: random read, random write, 70/30, caches dropped
    local name=$1 mnt=$2 remount=$3 rw
    cp "$work/fio.src" "$mnt/fio.dat"
    sync
    for rw in randread randwrite randrw; do
        $remount
        drop_caches
        read -r "results[$name.$rw.read]" "results[$name.$rw.write]" < <(fio_iops "$mnt" "$rw")
    done
    rm -f "$mnt/fio.dat"
}

head -c 1G /dev/urandom > "$work/fio.src"

declare -A samples
for round in $(seq "$rounds"); do
    measure vault "$work/vault.mnt" remount_vault
    fio_measure vault "$work/vault.mnt" remount_vault
    # The mount that ran the last fio run (each phase remounts): its peak.
    vault_pid=$(pgrep -f "vaultfs mount $work/vault.mnt" | head -n 1)
    peak_kib=$(awk '/VmHWM/ {print $2}' "/proc/$vault_pid/status" 2> /dev/null || echo 0)
    remount_vault_big
    fio_measure vaultbig "$work/vault.mnt" remount_vault_big
    remount_vault
    measure gocryptfs "$work/gocryptfs.mnt" remount_gocryptfs
    fio_measure gocryptfs "$work/gocryptfs.mnt" remount_gocryptfs
    for key in "${!results[@]}"; do
        samples[$key]+="${results[$key]} "
    done
done

python3 - "$tree_files" "$peak_kib" "$cache_mib" "$dirty_mib" "$big_cache_mib" "$big_dirty_mib" "$(declare -p samples)" <<'PY'
import re, statistics, sys
tree_files, peak_kib, cache_mib, dirty_mib, big_cache_mib, big_dirty_mib = map(int, sys.argv[1:7])
dump = sys.argv[7]
samples = {k: [float(x) for x in v.split()] for k, v in re.findall(r'\[([^\]]+)\]="([^"]*)"', dump)}
t = {k: statistics.median(v) for k, v in samples.items()}
rows = [
    ("sequential write 1 GiB (dd, fsync)", "MB/s", lambda s: 1073.741824 / t[s + ".write"]),
    ("sequential read 1 GiB (caches dropped)", "MB/s", lambda s: 1073.741824 / t[s + ".read"]),
    ("create 5,000 x 4 KiB files", "files/s", lambda s: 5000 / t[s + ".create"]),
    ("read 5,000 x 4 KiB files (caches dropped)", "files/s", lambda s: 5000 / t[s + ".readsmall"]),
    ("unlink 5,000 files", "files/s", lambda s: 5000 / t[s + ".unlink"]),
    (f"unpack a source tree ({tree_files} files)", "files/s", lambda s: tree_files / t[s + ".untar"]),
    ("md5sum of every file of it (caches dropped)", "files/s", lambda s: tree_files / t[s + ".md5"]),
    ("delete that tree", "files/s", lambda s: tree_files / t[s + ".rmtree"]),
]
print(f"| test | unit | vaultfs | gocryptfs | vaultfs / gocryptfs |")
print(f"|---|---|---:|---:|---:|")
for name, unit, rate in rows:
    v, g = rate("vault"), rate("gocryptfs")
    print(f"| {name} | {unit} | {v:,.0f} | {g:,.0f} | {v / g:.2f}x |")
print()
fio = [
    ("fio 4 KiB random read", "randread", "read"),
    ("fio 4 KiB random write", "randwrite", "write"),
    ("fio 70/30: reads", "randrw", "read"),
    ("fio 70/30: writes", "randrw", "write"),
]
print(f"fio on a 1 GiB file, psync, caches dropped before each run (IOPS); vaultfs with a cache "
      f"smaller than the file (--cache-mib {cache_mib} --dirty-mib {dirty_mib}) and one that "
      f"holds it (--cache-mib {big_cache_mib} --dirty-mib {big_dirty_mib}):")
print()
print("| test | vaultfs, small cache | vaultfs, file cached | gocryptfs | small / gocryptfs | cached / gocryptfs |")
print("|---|---:|---:|---:|---:|---:|")
for name, rw, side in fio:
    v, b, g = (t[f"{s}.{rw}.{side}"] for s in ("vault", "vaultbig", "gocryptfs"))
    print(f"| {name} | {v:,.0f} | {b:,.0f} | {g:,.0f} | {v / g:.2f}x | {b / g:.2f}x |")
print()
print(f"vaultfs peak memory (VmHWM): {peak_kib / 1024:.0f} MiB, with --cache-mib {cache_mib} "
      f"--dirty-mib {dirty_mib} (budget {cache_mib + dirty_mib} MiB + 64 MiB = {cache_mib + dirty_mib + 64} MiB)")
PY
