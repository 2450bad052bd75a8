#!/usr/bin/env bash
# Where the guest's CPU time and wake-ups go, ours (fabricd) against the
# kernel target (nvmet), for one fio workload through the Linux host on null
# backends (our null namespace, null_blk). For each target: IOPS; the whole
# guest's user, system and softirq CPU per I/O; per thread, CPU and context
# switches per I/O; and the kernel stacks that wake threads and that raise
# tasklets, counted exactly with tracefs histogram triggers. For a sampling
# profile of the same comparison see perf/guest-profile.sh.
#
# usage: ci/guest-run -- perf/wake-profile.sh [tcp|rdma] [QD] [BS] [RW] [ROUNDS]
#        (default: rdma 32 4k randread 1; ROUNDS alternates ours and nvmet)
# FABRICD selects the binary [default: target/release/fabricd].
set -uo pipefail
FABRICD=${FABRICD:-$(cd "$(dirname "$0")/.." && pwd)/target/release/fabricd}
. "$(dirname "$0")/../ci/guest/lib.sh"
transport=${1:-rdma} qd=${2:-32} bs=${3:-4k} rw=${4:-randread} rounds=${5:-1}
. "$(dirname "$0")/guest-targets.sh"
NQN=nqn.2026-11.io.fabric:wake-profile
T=/sys/kernel/tracing
[[ -d $T/events ]] || mount -t tracefs nodev $T || exit 1
WINDOW=5

# The triggers: who wakes whom (sched_waking runs in the waker, also when
# the woken thread is on the other CPU; key: the woken thread's name and the
# waker's kernel stack) and who schedules tasklets (softirq vector 6).
WAKE_HIST='hist:keys=comm,stacktrace:vals=hitcount:sort=hitcount.descending:size=4096'
TASKLET_HIST='hist:keys=stacktrace:vals=hitcount:sort=hitcount.descending:size=4096 if vec == 6'

threads() { grep -H ctxt_switches /proc/[0-9]*/task/[0-9]*/status; cat /proc/[0-9]*/task/[0-9]*/stat; } 2>/dev/null

# measure LABEL DEVICE: fio on DEVICE, with the counts taken over WINDOW
# seconds in the middle of the run.
measure() {
    local label=$1 dev=$2 dir=/tmp/wake-profile/$1
    mkdir -p "$dir"
    fio --name=p --filename="$dev" --rw="$rw" --bs="$bs" --iodepth="$qd" --direct=1 \
        --ioengine=libaio --time_based --runtime=$((WINDOW + 4)) --output-format=json >"$dir/fio.json" &
    local fio_pid=$!
    sleep 2
    echo "$WAKE_HIST" >$T/events/sched/sched_waking/trigger
    echo "$TASKLET_HIST" >$T/events/irq/softirq_raise/trigger
    threads >"$dir/threads0"; grep '^cpu ' /proc/stat >"$dir/stat0"; date +%s.%N >"$dir/t0"
    sleep $WINDOW
    threads >"$dir/threads1"; grep '^cpu ' /proc/stat >"$dir/stat1"; date +%s.%N >"$dir/t1"
    cp $T/events/sched/sched_waking/hist "$dir/wakeups"
    cp $T/events/irq/softirq_raise/hist "$dir/tasklets"
    echo "!$WAKE_HIST" >$T/events/sched/sched_waking/trigger
    echo "!$TASKLET_HIST" >$T/events/irq/softirq_raise/trigger
    wait $fio_pid
    python3 - "$dir" "$label" <<'PY'
import json, re, sys
from collections import Counter, defaultdict

d, label = sys.argv[1], sys.argv[2]
job = json.load(open(f"{d}/fio.json"))["jobs"][0]
side = job["read"] if job["read"]["total_ios"] else job["write"]
iops = side["iops"]
secs = float(open(f"{d}/t1").read()) - float(open(f"{d}/t0").read())
ios = iops * secs
hz = 100  # USER_HZ

def cpu(path):
    return [int(x) for x in open(path).read().split()[1:]]

c0, c1 = cpu(f"{d}/stat0"), cpu(f"{d}/stat1")
us = lambda i: (c1[i] - c0[i]) / hz * 1e6 / ios
print(f"== {label}: {iops:.0f} IOPS; whole guest per I/O: user {us(0):.0f} µs, "
      f"system {us(2):.0f} µs, softirq {us(6):.0f} µs")

def threads(path):
    t = defaultdict(lambda: [None, 0, 0, 0])  # name, switches, utime, stime
    for line in open(path):
        if line.startswith("/proc/"):
            m = re.match(r"/proc/\d+/task/(\d+)/status:\w+_ctxt_switches:\s+(\d+)", line)
            if m:
                t[m[1]][1] += int(m[2])
            continue
        m = re.match(r"(\d+) \((.*)\) (.*)", line)
        if m:
            f = m[3].split()
            t[m[1]][0] = m[2]
            t[m[1]][2], t[m[1]][3] = int(f[11]), int(f[12])
    return t

def family(name):
    return re.sub(r"/\d.*$", "", name or "?")

a, b = threads(f"{d}/threads0"), threads(f"{d}/threads1")
per = defaultdict(lambda: [0, 0, 0])
for tid, (name, sw, ut, st) in b.items():
    if tid in a and name:
        p = per[family(name)]
        p[0] += sw - a[tid][1]; p[1] += ut - a[tid][2]; p[2] += st - a[tid][3]
print(f"   threads (by name)        switches/IO  user µs/IO  system µs/IO")
for name, (sw, ut, st) in sorted(per.items(), key=lambda kv: -(kv[1][1] + kv[1][2]))[:8]:
    if sw or ut or st:
        print(f"   {name:<24} {sw / ios:11.2f} {ut / hz * 1e6 / ios:11.0f} {st / hz * 1e6 / ios:13.0f}")
print(f"   all threads              {sum(p[0] for p in per.values()) / ios:11.2f}")

def hist(path):
    """(count, key text, frames) per entry of a histogram trigger."""
    out, key, frames = [], "", []
    for line in open(path):
        if line.startswith("{"):
            key = re.sub(r"stacktrace:.*", "", line[1:]).strip(" ,\n")
            frames = []
        elif m := re.match(r"\} hitcount:\s+(\d+)", line):
            out.append((int(m[1]), key, frames))
        elif line.startswith("         "):
            frames.append(re.sub(r"\+0x[0-9a-f]+/0x[0-9a-f]+", "", line.strip()))
    return out

def top(path, title, keyed):
    # Stacks merged on the frames shown (the scheduler's own frames left out).
    skip = {"try_to_wake_up", "__tasklet_schedule_common", "wake_up_process", "wake_up_q"}
    merged = Counter()
    for n, key, frames in hist(path):
        who = family(key.split(":", 1)[-1].strip()) if keyed else ""
        merged[(who, tuple([f for f in frames if f.split()[0] not in skip][:7]))] += n
    print(f"   {title}: {sum(merged.values()) / ios:.2f} per I/O")
    for (who, frames), n in merged.most_common(6):
        print(f"     {n / ios:5.2f}/IO {'wakes ' + who + ' from ' if keyed else ''}" + " <- ".join(frames))

top(f"{d}/wakeups", "wake-ups", True)
top(f"{d}/tasklets", "tasklets scheduled", False)
PY
}

ours() {
    serve_ours wake-profile
    measure "ours-$1" "$DEV"
    unserve_ours
}

kernel() {
    serve_nvmet
    measure "nvmet-$1" "$DEV"
    unserve_nvmet
}

echo "wake-profile: $transport $bs $rw QD$qd, null backends, fio through the Linux host, ${WINDOW} s windows"
for ((r = 1; r <= rounds; r++)); do
    ours "$r"
    kernel "$r"
done
