#!/usr/bin/env bash
# A sampling profile of the whole guest, ours (fabricd) against the kernel
# target (nvmet), for one fio workload through the Linux host on null
# backends. For each target: fio runs, `perf record -a -g` (cpu-clock) samples
# every CPU over a window in the middle of the run, and the samples become
# a flamegraph (when inferno is installed: perf/profile.sh installs it) and
# a table of guest CPU µs per I/O by thread and by function, ours next to
# nvmet, with the functions where ours spends the most more first.
# perf takes about 20 s to start under TCG; the window begins after that.
#
# usage: ci/guest-run -- perf/guest-profile.sh [tcp|rdma] [QD] [BS] [RW]
#        (default: rdma 32 4k randread)
# Output: target/guest-profile/TRANSPORT-QD-BS-RW/ (perf.data, perf script
# text, SVGs, summary.txt). FABRICD selects the binary [default:
# target/release/fabricd].
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
FABRICD=${FABRICD:-$root/target/release/fabricd}
. "$root/ci/guest/lib.sh"
transport=${1:-rdma} qd=${2:-32} bs=${3:-4k} rw=${4:-randread}
command -v perf >/dev/null || {
    echo "guest-profile: perf is missing; the guest runs the host's programs:" \
        "install linux-perf on the host (perf/profile.sh does, with inferno)" >&2
    exit 1
}
. "$root/perf/guest-targets.sh"
NQN=nqn.2026-11.io.fabric:guest-profile
OUT=$root/target/guest-profile/$transport-$qd-$bs-$rw
mkdir -p "$OUT"
FREQ=499 WINDOW=10
PATH=$PATH:$HOME/.cargo/bin

# sample LABEL: fio on DEV, perf over WINDOW seconds of it.
sample() {
    local label=$1
    fio --name=p --filename="$DEV" --rw="$rw" --bs="$bs" --iodepth="$qd" --direct=1 \
        --ioengine=libaio --time_based --runtime=$((WINDOW + 40)) --output-format=json \
        >"$OUT/$label-fio.json" &
    local fio_pid=$!
    sleep 2
    perf record -a -g -e cpu-clock -F $FREQ -o "$OUT/$label.data" -- sleep $WINDOW 2>&1 | tail -1
    wait $fio_pid
    perf script -i "$OUT/$label.data" >"$OUT/$label.script" 2>/dev/null
    if command -v inferno-flamegraph >/dev/null; then
        inferno-collapse-perf <"$OUT/$label.script" |
            inferno-flamegraph --title "guest, $label, $transport $bs $rw QD$qd (fio)" >"$OUT/$label.svg"
    fi
}

echo "guest-profile: $transport $bs $rw QD$qd, null backends, fio through the Linux host, ${WINDOW} s window"
serve_ours guest-profile; sample ours; unserve_ours
serve_nvmet; sample nvmet; unserve_nvmet

python3 - "$OUT" $FREQ $WINDOW <<'PY' | tee "$OUT/summary.txt"
import json, re, sys
from collections import Counter

out, freq, window = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])

def load(label):
    """(IOPS, µs per I/O by thread family, by function) of one run."""
    job = json.load(open(f"{out}/{label}-fio.json"))["jobs"][0]
    iops = job["read"]["iops"] + job["write"]["iops"]
    per_io = 1e6 / freq / (iops * window)
    threads, funcs, comm, leaf = Counter(), Counter(), None, False
    for line in open(f"{out}/{label}.script", errors="replace"):
        if not line.strip():
            comm = None
        elif not line[0].isspace():
            comm, leaf = re.sub(r"/\d.*$", "", line.split()[0]), True
        elif leaf:
            leaf = False
            if comm == "swapper":
                continue
            parts = line.split(None, 2)
            func = re.sub(r"\+0x[0-9a-f]+$", "", parts[1]) if len(parts) > 1 else "?"
            where = "k" if "kernel" in (parts[2] if len(parts) > 2 else "") else "u"
            threads[comm] += per_io
            funcs[(where, func)] += per_io
    return iops, threads, funcs

(ia, ta, fa), (ib, tb, fb) = load("ours"), load("nvmet")
print(f"IOPS: ours {ia:.0f}, nvmet {ib:.0f}; guest CPU µs per I/O (idle left out): "
      f"ours {sum(ta.values()):.0f}, nvmet {sum(tb.values()):.0f}")
print(f"\n{'thread':<24}{'ours':>8}{'nvmet':>8}")
for t in sorted(set(ta) | set(tb), key=lambda t: -(ta[t] + tb[t]))[:10]:
    print(f"{t:<24}{ta[t]:8.1f}{tb[t]:8.1f}")
print(f"\n{'function (k: kernel, u: user)':<60}{'ours':>8}{'nvmet':>8}")
for f in sorted(set(fa) | set(fb), key=lambda f: fb[f] - fa[f])[:30]:
    print(f"{f[0]} {f[1][:57]:<58}{fa[f]:8.1f}{fb[f]:8.1f}")
PY
