#!/usr/bin/env bash
# Where the time goes, natively: runs fabricd (release build) and fabric-perf
# on this machine's loopback over TCP, samples both with `perf record`
# (cpu-clock, DWARF call graphs, so Rust frames without frame pointers are
# unwound), and writes for each process a flamegraph (SVG, by inferno) and the
# top of `perf report` (text) to the output directory. For the guest, ours
# against the kernel target, see perf/guest-profile.sh.
#
# usage: perf/profile.sh [--qd N] [--bs SIZE] [--workload W] [--seconds S]
#                        [--namespace SPEC] [--out DIR]
#   --qd N            outstanding I/Os [default: 32]
#   --bs SIZE         block size [default: 4K]
#   --workload W      read, write, randread, randwrite, randrw [default: randread]
#   --seconds S       sampled seconds (after 1 s of ramp) [default: 5]
#   --namespace SPEC  fabricd's namespace [default: null:1G]
#   --out DIR         output directory [default: perf/out/profile-DATE]
set -euo pipefail
cd "$(dirname "$0")/.."
qd=32 bs=4K workload=randread seconds=5 namespace=null:1G out=""
while (($#)); do
    [[ ! $1 =~ ^--(qd|bs|workload|seconds|namespace|out)$ || $# -ge 2 ]] || { echo "profile.sh: $1 needs a value" >&2; exit 2; }
    case $1 in
        --qd) qd=$2; shift 2 ;;
        --bs) bs=$2; shift 2 ;;
        --workload) workload=$2; shift 2 ;;
        --seconds) seconds=$2; shift 2 ;;
        --namespace) namespace=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "profile.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
[[ $qd =~ ^[1-9][0-9]*$ ]] || { echo "profile.sh: --qd '$qd' is not a positive number" >&2; exit 2; }
[[ $seconds =~ ^[1-9][0-9]*$ ]] || { echo "profile.sh: --seconds '$seconds' is not a positive number" >&2; exit 2; }

ci/setup.sh --no-guest
[[ -f $HOME/.cargo/env ]] && . "$HOME/.cargo/env"
as_root() { if [[ $(id -u) == 0 ]]; then "$@"; else sudo -E "$@"; fi; }
if ! perf --version >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q --no-install-recommends linux-perf
fi
command -v inferno-flamegraph >/dev/null || cargo install --locked inferno
if [[ $(cat /proc/sys/kernel/perf_event_paranoid) -gt 1 && $(id -u) != 0 ]]; then
    echo "profile.sh: kernel.perf_event_paranoid is above 1; run as root or lower it" >&2
    exit 1
fi

target=${CARGO_TARGET_DIR:-$PWD/target}
cargo build --release --locked -p fabric --bin fabricd -p perf --bin fabric-perf
bin=$target/release
out=${out:-perf/out/profile-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$out"

# A free port: the kernel picks one for a socket that is closed again at once.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo 4530)
"$bin/fabricd" target --worker-threads 1 --listen "tcp://127.0.0.1:$port" \
    --namespace "$namespace" >"$out/fabricd.log" 2>&1 &
fabricd=$!
perf_pids=()
cleanup() {
    kill "${perf_pids[@]}" "$fabricd" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 100); do
    grep -q ready "$out/fabricd.log" && break
    kill -0 "$fabricd" 2>/dev/null || { cat "$out/fabricd.log" >&2; exit 1; }
    sleep 0.1
done
grep -q ready "$out/fabricd.log" || { echo "profile.sh: fabricd not ready" >&2; exit 1; }

"$bin/fabric-perf" -a "tcp://127.0.0.1:$port" -w "$workload" -b "$bs" -q "$qd" \
    --ramp 1s -t "$((seconds + 1))s" --json >"$out/fabric-perf.json" &
client=$!
sleep 1
for p in fabricd:$fabricd fabric-perf:$client; do
    perf record -q -e cpu-clock -F 999 --call-graph dwarf,16384 -o "$out/${p%%:*}.data" \
        -p "${p#*:}" -- sleep "$seconds" >/dev/null 2>&1 &
    perf_pids+=($!)
done
wait "${perf_pids[@]}"
perf_pids=()
wait "$client"

for name in fabricd fabric-perf; do
    perf script -i "$out/$name.data" 2>/dev/null | inferno-collapse-perf >"$out/$name.folded"
    inferno-flamegraph --title "$name: $workload $bs QD$qd, tcp loopback" \
        <"$out/$name.folded" >"$out/$name.svg"
    perf report -i "$out/$name.data" --no-children --sort dso,sym --stdio -g none \
        --percent-limit 0.5 2>/dev/null | grep -v '^#' | sed '/^$/d' >"$out/$name.txt"
    rm -f "$out/$name.data"
done
python3 - "$out/fabric-perf.json" "$workload $bs QD$qd" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
print(f"profile: {sys.argv[2]} over tcp loopback: {j['iops']:.0f} IOPS, p50 "
      f"{j['latency']['p50_us']:.0f} us, fabric-perf {j['cpu']['process_us_per_io']:.2f} us CPU per I/O")
PY
for name in fabricd fabric-perf; do
    echo "--- $name (top of perf report; flamegraph $out/$name.svg)"
    head -15 "$out/$name.txt"
done
