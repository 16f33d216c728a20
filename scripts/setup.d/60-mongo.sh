# storaged's MongoDB backend is tested against SecantusDB, a MongoDB wire-protocol server on
# WiredTiger (a one-node replica set, so transactions work), from PyPI into .venv-mongo at the
# workspace root (gitignored). The tests start and stop their own servers from there.
mongo_venv=.venv-mongo
mongo_server_version=0.7.0b3
# Read pip's answer whole first: `grep -q` in a pipe under pipefail fails when pip is cut off.
installed=$("$mongo_venv/bin/python" -m pip show secantusdb 2>/dev/null || true)
if ! grep -qx "Version: $mongo_server_version" <<< "$installed"; then
    python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv
    echo "setup: installing secantusdb $mongo_server_version into $mongo_venv"
    python3 -m venv "$mongo_venv"
    "$mongo_venv/bin/python" -m pip install --quiet --disable-pip-version-check "secantusdb==$mongo_server_version"
fi
test -x "$mongo_venv/bin/secantusd-py"
