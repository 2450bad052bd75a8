#!/usr/bin/env bash
# Guest tier over soft-RoCE (rxe): the Linux NVMe/RDMA host against
# `fabricd target --listen rdma://...`, our host library against the Linux
# kernel target (nvmet-rdma) and against our target, and a target restart
# that the Linux host survives by reconnecting. Run inside ci/guest-run.
. "$(dirname "$0")/lib.sh"
NQN=nqn.2026-11.io.fabric:guest-rdma
KNQN=nqn.2026-11.io.fabric:kernel-rdma
VERIFY=${VERIFY:-$(dirname "$FABRICD")/examples/nvmf_verify}
[[ -n ${RDMA_IP:-} ]] || { echo "FAIL - no soft-RoCE device in the guest"; exit 1; }

# connect_with_load WHAT COUNT SECONDS: connect the Linux host over rdma,
# wait for COUNT namespaces (into ns) and run fio randrw on the first one in
# the background for SECONDS (its pid in load).
connect_with_load() {
    local what=$1 count=$2 secs=$3
    check "nvme connect -t rdma $what" \
        nvme connect -t rdma -a "$RDMA_IP" -s 4420 -n "$NQN" --hostnqn="$HOSTNQN"
    wait_for "namespaces $what" 30 count_namespaces "$NQN" "$count"
    mapfile -t ns < <(namespaces_of "$NQN")
    fio --name=load --filename="${ns[0]}" --ioengine=libaio --direct=1 --rw=randrw --bs=64k \
        --iodepth=32 --runtime="$secs" --time_based >/dev/null 2>&1 &
    load=$!
}

modprobe nvme-rdma && modprobe brd rd_nr=1 rd_size=131072 || exit 1
check "rxe device present" test -e /sys/class/infiniband/rxe0
start_fabricd rdma --listen "rdma://$RDMA_IP:4420" --listen tcp://127.0.0.1:4430 --nqn "$NQN" \
    --namespace mem:256M --namespace file:/dev/ram0 --discovery || exit 1

expect_output "nvme discover over rdma lists the rdma port" "trtype: *rdma" \
    nvme discover -t rdma -a "$RDMA_IP" -s 4420 --hostnqn="$HOSTNQN"
check "nvme connect -t rdma (reconnect delay 1 s)" \
    nvme connect -t rdma -a "$RDMA_IP" -s 4420 -n "$NQN" --hostnqn="$HOSTNQN" --reconnect-delay=1 --ctrl-loss-tmo=60
wait_for "two namespaces over rdma" 30 count_namespaces "$NQN" 2
mapfile -t ns < <(namespaces_of "$NQN")
ctrl=$(controllers_of "$NQN" | head -1)
expect_output "nvme list-subsys shows the rdma path" "rdma traddr=$RDMA_IP" nvme list-subsys
expect_output "nvme id-ctrl: keyed SGLs advertised" "sgls +: 0x10000[0-9a-f]|sgls +: 0x[0-9a-f]*5\b" nvme id-ctrl "$ctrl"
expect_output "nvme ana-log over rdma" "optimized" nvme ana-log "$ctrl"
expect_output "nvme id-ns over rdma: 256M in 4K blocks" "nsze +: 0x10000" nvme id-ns "${ns[0]}"
expect_output "nvme smart-log over rdma" "data_units_written|Data Units Written" nvme smart-log "$ctrl"
check "nvme error-log over rdma" nvme error-log "$ctrl"
fio_verify rdma-mem-4k "${ns[0]}" 4k
fio_verify rdma-mem-128k "${ns[0]}" 128k
fio_verify rdma-file-4k "${ns[1]}" 4k 8M
fio_verify rdma-file-1m "${ns[1]}" 1m 8M
check "blkdiscard over rdma" blkdiscard "${ns[0]}"
check "discarded blocks read back as zeroes over rdma" cmp -n 16777216 "${ns[0]}" /dev/zero

# Target restart: the file namespace keeps its data, the host reconnects.
# The restarted target's completion queue starts at 64 entries, far fewer
# than its queues need: it must grow, or the rest of this script (fio at
# queue depth 32, a mid-I/O disconnect) overruns it. Its shared receive
# queue starts with 16 receives posted, fewer than the host's queues have
# commands (2 x 128 and the admin queue's): it must post more, or commands
# wait on RNR retries until the host times out and resets the controller.
head -c 1048576 /dev/urandom > /tmp/pattern
check "write a pattern to the file namespace" dd if=/tmp/pattern of="${ns[1]}" bs=64k seek=100 oflag=direct,sync status=none
kill -9 "$FABRICD_PID"; wait "$FABRICD_PID" 2>/dev/null
start_fabricd rdma-restarted --listen "rdma://$RDMA_IP:4420" --nqn "$NQN" \
    --namespace mem:256M --namespace file:/dev/ram0 --rdma-cq-size 64 --rdma-srq-size 16 || exit 1
wait_for "the Linux host reconnects after the target restart" 90 ctrl_live "${ctrl#/dev/}"
dmesg_mark=$(dmesg | wc -l)
check "the completion queue grew from 64 entries for the reconnected queues" \
    grep -q "RDMA completion queue grown" "$LOGDIR/rdma-restarted.log"
check "the shared receive queue grew from 16 receives for the reconnected queues" \
    grep -q "RDMA shared receive queue grown" "$LOGDIR/rdma-restarted.log"
check "pattern reads back after the restart" cmp -n 1048576 /tmp/pattern <(dd if="${ns[1]}" bs=64k skip=100 count=16 iflag=direct status=none)
fio_verify rdma-after-restart "${ns[0]}" 4k 8M
fio_verify rdma-after-restart-128k "${ns[0]}" 128k 8M
check "no controller reset while the receives grew (no I/O timed out)" \
    bash -c '! dmesg | tail -n +"$0" | grep -Ei "timeout|error recovery|reconnecting"' $((dmesg_mark + 1))
check "nvme disconnect (rdma)" nvme disconnect -n "$NQN"

# Our host library against our target over rdma.
check "fabric host -> fabricd over rdma: write/read verify" "$VERIFY" "rdma://$RDMA_IP:4420" "$NQN" 1 48
expect_output "a queue deeper than the target allows is rejected (INVALID_HSQSIZE)" "rejected.*status 0x4" \
    bash -c '! "$0" "$1" "$2" 1 1 4000' "$VERIFY" "rdma://$RDMA_IP:4420" "$NQN"

# A host that goes away in the middle of I/O: the target recovers every
# buffer and keeps serving.
connect_with_load "for the mid-I/O disconnect test" 2 30
sleep 3
check "nvme disconnect in the middle of I/O" nvme disconnect -n "$NQN"
wait "$load" 2>/dev/null
check "fabric host -> fabricd after the cut: write/read verify" "$VERIFY" "rdma://$RDMA_IP:4420" "$NQN" 2 16
all_free() { grep "RDMA queue closed" "$LOGDIR/rdma-restarted.log" | tail -n 1 | grep -Eq "free_slots=([0-9]+) slots=\1( |$)"; }
wait_for "every RDMA data buffer back in the pool once all queues closed" 30 all_free
kill "$FABRICD_PID"; wait "$FABRICD_PID" 2>/dev/null

# Two nodes exporting one volume over rdma, one killed mid-run (lib.sh); the
# second node's address on the same soft-RoCE device.
ip addr add 10.77.0.3/24 dev "$RDMA_NETDEV"
two_node_failover rdma "$RDMA_IP" 10.77.0.3 "$NQN-nodes" /dev/ram0

# Our host library against the Linux kernel target (nvmet-rdma, brd backend).
modprobe -a nvmet nvmet-rdma || exit 1
C=/sys/kernel/config/nvmet
mkdir -p "$C/subsystems/$KNQN/namespaces/1" "$C/ports/7"
echo 1 > "$C/subsystems/$KNQN/attr_allow_any_host"
echo -n /dev/ram0 > "$C/subsystems/$KNQN/namespaces/1/device_path"
echo 1 > "$C/subsystems/$KNQN/namespaces/1/enable"
echo rdma > "$C/ports/7/addr_trtype"; echo ipv4 > "$C/ports/7/addr_adrfam"
echo "$RDMA_IP" > "$C/ports/7/addr_traddr"; echo 4421 > "$C/ports/7/addr_trsvcid"
ln -s "$C/subsystems/$KNQN" "$C/ports/7/subsystems/"
check "fabric host -> kernel nvmet-rdma: write/read verify" "$VERIFY" "rdma://$RDMA_IP:4421" "$KNQN" 1 48
rm -f "$C/ports/7/subsystems/$KNQN"; rmdir "$C/ports/7"
echo 0 > "$C/subsystems/$KNQN/namespaces/1/enable"; rmdir "$C/subsystems/$KNQN/namespaces/1" "$C/subsystems/$KNQN"

# The RDMA device removed under fabricd while a Linux host does I/O over it:
# the rdma port leaves the discovery log, TCP service goes on, fabricd lets
# go of the device so that the removal completes while it runs, and the rdma
# listener serves again once the device is back.
start_fabricd rdma-removal --listen "rdma://$RDMA_IP:4420" --listen tcp://127.0.0.1:4431 \
    --nqn "$NQN" --namespace mem:64M --discovery || exit 1
expect_output "discovery lists the rdma port before the removal" "trtype: *rdma" \
    nvme discover -t tcp -a 127.0.0.1 -s 4431 --hostnqn="$HOSTNQN"
connect_with_load "before the removal" 1 60
sleep 2
rdma link delete "$RDMA_DEV" & removal=$!
removal_done() { ! kill -0 "$removal" 2>/dev/null; }
wait_for "the device removal to complete while fabricd runs" 60 removal_done &&
    check "the device removal completed while fabricd runs" kill -0 "$FABRICD_PID"
wait "$load" 2>/dev/null
check "fabricd logs that it released the device" grep -q "RDMA device released" "$LOGDIR/rdma-removal.log"
check "the discovery log no longer lists the rdma port" bash -c \
    'out=$(nvme discover -t tcp -a 127.0.0.1 -s 4431 --hostnqn="$0") && grep -q "trtype: *tcp" <<<"$out" && ! grep -q "trtype: *rdma" <<<"$out"' "$HOSTNQN"
check "fabricd still serves tcp after the removal: write/read verify" "$VERIFY" tcp://127.0.0.1:4431 "$NQN" 1 16
# A second target started while there is no RDMA device: it serves tcp,
# and its rdma listener waits for a device.
removing_pid=$FABRICD_PID
start_fabricd rdma-late --listen tcp://127.0.0.1:4432 --listen "rdma://$RDMA_IP:4440" \
    --nqn "$NQN-late" --namespace mem:16M --discovery || exit 1
late_pid=$FABRICD_PID FABRICD_PID=$removing_pid
check "a target started without an RDMA device says its rdma listener waits" \
    grep -q "waiting for an RDMA device" "$LOGDIR/rdma-late.log"
check "rxe device added again" rdma link add "$RDMA_DEV" type rxe netdev "$RDMA_NETDEV"
rdma_listed() { nvme discover -t tcp -a 127.0.0.1 -s "$1" --hostnqn="$HOSTNQN" | grep -q "trtype: *rdma"; }
wait_for "the rdma port back in the discovery log" 30 rdma_listed 4431
check "fabric host -> fabricd over the returned device: write/read verify" "$VERIFY" "rdma://$RDMA_IP:4420" "$NQN" 1 16
wait_for "the late target's rdma port in its discovery log once the device exists" 30 rdma_listed 4432
check "fabric host -> the late target over rdma: write/read verify" "$VERIFY" "rdma://$RDMA_IP:4440" "$NQN-late" 1 16
kill "$late_pid"; wait "$late_pid" 2>/dev/null
nvme disconnect -n "$NQN" >/dev/null 2>&1
kill "$FABRICD_PID"; wait "$FABRICD_PID" 2>/dev/null
# Leave a device for whatever runs next, even after a failure above.
if ! removal_done; then
    wait_for "the device removal to complete once fabricd has exited" 60 removal_done
fi
test -e "/sys/class/infiniband/$RDMA_DEV" || rdma link add "$RDMA_DEV" type rxe netdev "$RDMA_NETDEV"
finish
