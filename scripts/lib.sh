# Shell functions shared by scripts/demo.sh and the benchmark scripts: a storaged on a data
# dir, a user, a mount. Source it after `cd` to the repository root; set $bin first.

# vault_start_daemon DIR [serve args...]: starts storaged on DIR/data (admin key on first use).
vault_start_daemon() {
    local dir=$1
    shift
    mkdir -p "$dir"
    chmod 700 "$dir"
    export XDG_CONFIG_HOME=$dir/config
    if [[ ! -s $dir/passphrase ]]; then
        head -c 18 /dev/urandom | base64 > "$dir/passphrase"
        chmod 600 "$dir/passphrase"
    fi
    if [[ ! -f $XDG_CONFIG_HOME/vault/admin.vkey ]]; then
        "$bin/vault-admin" init --passphrase-file "$dir/passphrase" --data-dir "$dir/data"
    fi
    if [[ -s $dir/storaged.pid ]] && kill -0 "$(cat "$dir/storaged.pid")" 2>/dev/null; then
        echo "storaged already running (pid $(cat "$dir/storaged.pid"))"
        return
    fi
    setsid "$bin/storaged" serve --data-dir "$dir/data" "$@" > "$dir/storaged.out" 2> "$dir/storaged.log" < /dev/null &
    echo $! > "$dir/storaged.pid"
    local i
    for i in $(seq 300); do
        grep -qs "storaged ready" "$dir/storaged.out" && break
        sleep 0.1
    done
    if ! grep -qs "storaged ready" "$dir/storaged.out"; then
        echo "storaged did not start within 30 s; its log ($dir/storaged.log):" >&2
        tail -n 20 "$dir/storaged.log" >&2
        return 1
    fi
    cat "$dir/storaged.out"
}

# vault_user DIR NAME: a key file, registration, approval, login for NAME.
vault_user() {
    local dir=$1 name=$2
    local pass=(--passphrase-file "$dir/passphrase")
    local server=unix:$dir/data/storaged.sock
    export XDG_CONFIG_HOME=$dir/config
    if [[ ! -f $XDG_CONFIG_HOME/vault/user.vkey ]]; then
        "$bin/vaultfs" key init "${pass[@]}"
    fi
    local fingerprint admin
    fingerprint=$("$bin/vaultfs" key show | awk '/^fingerprint/ {$1=""; print substr($0, 2)}')
    # The administrator hands this out of band; here both sides are on this machine.
    admin=$("$bin/vault-admin" show | awk '/^fingerprint/ {$1=""; print substr($0, 2)}')
    "$bin/vaultfs" register --server "$server" --name "$name" --admin-fingerprint "$admin" \
        "${pass[@]}" > /dev/null
    if "$bin/vault-admin" pending --server "$server" "${pass[@]}" | grep -q "^$name"; then
        "$bin/vault-admin" approve "$name" --fingerprint "$fingerprint" --server "$server" "${pass[@]}"
    fi
    "$bin/vaultfs" login "${pass[@]}"
}

# vault_mount DIR MOUNTPOINT [mount args...]
vault_mount() {
    local dir=$1 mnt=$2
    shift 2
    export XDG_CONFIG_HOME=$dir/config
    mkdir -p "$mnt"
    if grep -qs " $mnt fuse" /proc/mounts; then
        echo "already mounted on $mnt"
        return
    fi
    "$bin/vaultfs" mount "$mnt" --passphrase-file "$dir/passphrase" "$@"
}

# vault_stop DIR MOUNTPOINT: unmounts and stops the daemon.
vault_stop() {
    local dir=$1 mnt=$2
    export XDG_CONFIG_HOME=$dir/config
    if grep -qs " $mnt fuse" /proc/mounts; then
        "$bin/vaultfs" unmount "$mnt"
    fi
    if [[ -s $dir/storaged.pid ]] && kill -0 "$(cat "$dir/storaged.pid")" 2>/dev/null; then
        kill -TERM "$(cat "$dir/storaged.pid")"
        echo "stopped storaged (pid $(cat "$dir/storaged.pid"))"
    fi
    rm -f "$dir/storaged.pid"
}
