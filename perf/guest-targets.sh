# Sourced by the guest measurement scripts (after ci/guest/lib.sh): serve a
# null namespace from ours (fabricd, our `null:` backend) or from the kernel
# target (nvmet, null_blk) over `transport` (tcp or rdma, set by the caller,
# who also sets NQN before serving), connect the Linux host to it, and tear
# it all down again. Sets `addr`, the address served on.

case $transport in
    tcp) addr=127.0.0.1 ;;
    rdma) addr=${RDMA_IP:?no soft-RoCE device in the guest} ;;
    *) echo "$(basename "$0"): transport must be tcp or rdma, not '$transport'" >&2; exit 2 ;;
esac
modprobe -a "nvme-$transport" nvmet "nvmet-$transport" || exit 1
[[ -e /dev/nullb0 ]] || modprobe null_blk nr_devices=1 gb=1 || exit 1

# connect_host PORT: connect the Linux host to NQN at PORT; sets DEV to the
# namespace's block device.
connect_host() {
    nvme connect -t "$transport" -a "$addr" -s "$1" -n "$NQN" --hostnqn="$HOSTNQN" >/dev/null || exit 1
    wait_for "namespace" 30 count_namespaces "$NQN" 1
    DEV=$(namespaces_of "$NQN" | head -1)
}

# serve_ours NAME: fabricd with a null namespace on port 4420, host connected.
serve_ours() {
    start_fabricd "$1" --listen "$transport://$addr:4420" --nqn "$NQN" --namespace null:1G || exit 1
    connect_host 4420
}

unserve_ours() {
    nvme disconnect -n "$NQN" >/dev/null
    kill "$FABRICD_PID"; wait "$FABRICD_PID" 2>/dev/null
}

# serve_nvmet: the kernel target on null_blk on port 4421, host connected.
serve_nvmet() {
    local c=/sys/kernel/config/nvmet
    mkdir -p "$c/subsystems/$NQN/namespaces/1" "$c/ports/1"
    echo 1 >"$c/subsystems/$NQN/attr_allow_any_host"
    echo -n /dev/nullb0 >"$c/subsystems/$NQN/namespaces/1/device_path"
    echo 1 >"$c/subsystems/$NQN/namespaces/1/enable"
    echo "$addr" >"$c/ports/1/addr_traddr"; echo "$transport" >"$c/ports/1/addr_trtype"
    echo 4421 >"$c/ports/1/addr_trsvcid"; echo ipv4 >"$c/ports/1/addr_adrfam"
    ln -s "$c/subsystems/$NQN" "$c/ports/1/subsystems/$NQN"
    connect_host 4421
}

unserve_nvmet() {
    local c=/sys/kernel/config/nvmet
    nvme disconnect -n "$NQN" >/dev/null
    rm "$c/ports/1/subsystems/$NQN"; echo 0 >"$c/subsystems/$NQN/namespaces/1/enable"
    rmdir "$c/subsystems/$NQN/namespaces/1" "$c/subsystems/$NQN" "$c/ports/1"
}
