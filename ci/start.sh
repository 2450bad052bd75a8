#!/usr/bin/env bash
# The embedded default: set up the machine, build, and run an all-in-one
# node on loopback with nothing to configure:
#   * a one-replica metadata group (`fabricd meta`, 127.0.0.1:7400, rocksdb
#     in DATA/meta), so that `fabric-ctl` works;
#   * `fabricd target` on tcp://127.0.0.1:4420 with discovery, serving one
#     namespace mirrored (raid1) over two file-backed disks,
#     DATA/disk0.img and DATA/disk1.img (4 GiB each, sparse, O_DIRECT),
#     created on the first start and reassembled on the next ones; it
#     registers with the metadata group as a disk node named after the
#     host (`fabric-ctl dn list`).
# DATA is $FABRIC_DATA_DIR [default: ~/.local/share/fabric]. Extra arguments
# go to `fabricd target` (see `fabricd target --help`); a --namespace or
# --config among them replaces the mirrored namespace, a --meta or --config
# the registration, a --listen or --config the listen address.
set -euo pipefail
cd "$(dirname "$0")/.."
ci/setup.sh --no-guest
[[ -f $HOME/.cargo/env ]] && . "$HOME/.cargo/env"
cargo build --release -p fabric --bin fabricd -p ctl --bin fabric-ctl
bin=$PWD/target/release
data=${FABRIC_DATA_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/fabric}
mkdir -p "$data"

# In a session of its own, so that a terminal's Ctrl-C reaches the target
# only: the group stops after it (the EXIT trap), and hears it stop.
setsid "$bin/fabricd" meta --data-dir "$data/meta" >"$data/meta.log" 2>&1 &
meta=$!
trap 'kill $meta 2>/dev/null; wait $meta 2>/dev/null' EXIT
for _ in $(seq 300); do
    grep -q "meta replica serving" "$data/meta.log" && break
    kill -0 $meta 2>/dev/null || { cat "$data/meta.log" >&2; echo "start: fabricd meta failed" >&2; exit 1; }
    sleep 0.1
done
grep -q "meta replica serving" "$data/meta.log" || { echo "start: fabricd meta did not come up (see $data/meta.log)" >&2; exit 1; }
# The cluster object, once: the target registers with it below. This
# replica, whatever FABRIC_META_ENDPOINT or FABRIC_TLS_* say.
ctl() { env -u FABRIC_TLS_CERT -u FABRIC_TLS_KEY -u FABRIC_TLS_CA "$bin/fabric-ctl" --endpoint 127.0.0.1:7400 "$@"; }
rc=0; err=$(ctl cluster get 2>&1 >/dev/null) || rc=$?
case $rc in
    0) ;;
    3) ctl cluster create local >/dev/null ;; # not found (fabric-ctl --help: exit codes)
    *) echo "start: fabric-ctl cluster get: $err" >&2; exit 1 ;;
esac
echo "start: metadata group on 127.0.0.1:7400 (log: $data/meta.log); try: $bin/fabric-ctl dn list"

# A Linux host on this machine over loopback meets a kernel bug before 6.10
# when huge pages are always on (README, "Attach a Linux host").
read -r kmaj kmin _ < <(uname -r | tr '.-' '  ')
thp=$(cat /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null || true)
if (( kmaj < 6 || (kmaj == 6 && kmin < 10) )) && [[ $thp == *"[always]"* ]]; then
    echo "start: note: a Linux host on this machine may need huge pages off first:" \
        "echo never > /sys/kernel/mm/transparent_hugepage/enabled (README, \"Attach a Linux host\")"
fi

namespace=(--namespace "raid1:$data/disk0.img,$data/disk1.img:4G")
agent=(--meta 127.0.0.1:7400)
for a in "$@"; do
    [[ $a == --namespace* || $a == --config* || $a == -c ]] && namespace=()
    [[ $a == --meta || $a == --meta=* || $a == --config* || $a == -c ]] && agent=()
done
# No --listen: fabricd target's default is tcp://127.0.0.1:4420, and a
# --listen or --config among the arguments then chooses alone.
"$bin/fabricd" target --discovery "${namespace[@]}" "${agent[@]}" "$@" &
target=$!
# Background jobs of a script ignore the terminal's Ctrl-C: pass it on. On a
# hangup (the terminal closed) wait for the target's clean stop as well, and
# only then stop the group (the EXIT trap).
trap 'kill -TERM $target 2>/dev/null' INT TERM HUP
set +e
wait $target; rc=$?
if kill -0 $target 2>/dev/null; then wait $target; rc=$?; fi
exit $rc
