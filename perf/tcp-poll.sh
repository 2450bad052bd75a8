#!/usr/bin/env bash
# fio 4k randread QD1 through the Linux host against `fabricd target` (null
# namespace, TCP on the guest's loopback) for each --tcp-poll-us value given,
# in one guest boot, in the order given: IOPS, p50/p99 latency, fabricd CPU
# and the guest's busy CPU per I/O, context switches of fabricd.
#
# usage: ci/guest-run --no-rdma -- perf/tcp-poll.sh [POLL_US...]   (default: 0 300 0 300)
# FABRICD selects the binary [default: target/release/fabricd].
set -uo pipefail
FABRICD=${FABRICD:-$(cd "$(dirname "$0")/.." && pwd)/target/release/fabricd}
. "$(dirname "$0")/../ci/guest/lib.sh"
NQN=nqn.2026-11.io.fabric:poll
modprobe nvme-tcp || exit 1
busy() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }
(($#)) || set -- 0 300 0 300
for us in "$@"; do
    start_fabricd "poll-$us" --listen tcp://127.0.0.1:4420 --nqn $NQN --namespace null:1G \
        --tcp-poll-us "$us" || exit 1
    nvme connect -t tcp -a 127.0.0.1 -s 4420 -n $NQN --hostnqn="$HOSTNQN" >/dev/null || exit 1
    wait_for "namespace" 30 count_namespaces $NQN 1
    dev=$(namespaces_of $NQN | head -1)
    c0=$(awk '{print $14+$15}' "/proc/$FABRICD_PID/stat"); m0=$(busy)
    rm -f /tmp/poll-stat.txt
    if command -v perf >/dev/null; then
        perf stat -e context-switches -p "$FABRICD_PID" -o /tmp/poll-stat.txt -- sleep 6 &
    else
        sleep 6 &
    fi
    stat_pid=$!
    fio --name=qd1 --filename="$dev" --rw=randread --bs=4k --iodepth=1 --direct=1 \
        --ioengine=libaio --time_based --runtime=6 --output-format=json >/tmp/poll-fio.json
    wait $stat_pid
    c1=$(awk '{print $14+$15}' "/proc/$FABRICD_PID/stat"); m1=$(busy)
    cs=$(awk '/context-switches/{gsub(",","",$1); print $1}' /tmp/poll-stat.txt 2>/dev/null)
    python3 - "$us" "$((c1 - c0))" "$((m1 - m0))" "${cs:--}" <<'PY'
import json, sys
us, fd, machine, cs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
r = json.load(open("/tmp/poll-fio.json"))["jobs"][0]["read"]
p, n = r["clat_ns"]["percentile"], r["total_ios"]
print(f"--tcp-poll-us {us:>5}: {r['iops']:6.0f} IOPS, p50 {p['50.000000']/1000:4.0f} us, "
      f"p99 {p['99.000000']/1000:5.0f} us, fabricd CPU {fd*1e4/n:4.0f} us/I/O, "
      f"guest CPU {machine*1e4/n:4.0f} us/I/O, fabricd context switches {cs}")
PY
    nvme disconnect -n $NQN >/dev/null
    kill "$FABRICD_PID"; wait "$FABRICD_PID" 2>/dev/null
done
