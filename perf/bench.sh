#!/usr/bin/env bash
# The side-by-side benchmark, one command: our NVMe-oF target (fabricd)
# against the Linux kernel target (nvmet), over tcp and rdma (soft-RoCE), with
# fio through the Linux host and with fabric-perf, in an emulated QEMU guest
# (ci/guest-run). Prints the table, writes JSON and a PNG chart to the output
# directory and appends the table to perf/RESULTS.md. Exits non-zero when a
# row has no numbers (named on stderr), after writing all of that.
#
# usage: perf/bench.sh [--short] [--native] [--no-append] [--out DIR] [RUN OPTIONS...]
#   --short      the CI smoke run (1 repetition of 2 s per sample)
#   --native     the same matrix over TCP on this machine's loopback, ours
#                only (fabricd + fabric-perf), no guest
#   --no-append  do not append to perf/RESULTS.md
#   --out DIR    output directory [default: perf/out/MODE-DATE]
#   RUN OPTIONS  passed to `fabric-bench run` (see `fabric-bench run --help`:
#                --reps, --seconds, --transports, --backends, --clients)
set -euo pipefail
cd "$(dirname "$0")/.."
mode=guest append=1 out="" run_args=()
while (($#)); do
    case $1 in
        --native) mode=native; shift ;;
        --short) run_args+=(--short); shift ;;
        --no-append) append=0; shift ;;
        --out) out=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) run_args+=("$1"); shift ;;
    esac
done
command_line="perf/bench.sh${run_args[*]:+ ${run_args[*]}}"
[[ $mode == native ]] && command_line+=" --native"

if [[ $mode == guest ]]; then ci/setup.sh; else ci/setup.sh --no-guest; fi
[[ -f $HOME/.cargo/env ]] && . "$HOME/.cargo/env"
target=${CARGO_TARGET_DIR:-$PWD/target}
# The commit the binaries are built from (the tree may change during a run).
commit=$(git describe --always --dirty 2>/dev/null || echo unknown)
cargo build --release --locked -p fabric --bin fabricd -p perf --bins
bin=$target/release

out=${out:-perf/out/$mode-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$out"
if [[ $mode == guest ]]; then
    # 4 GiB: both RAM backends (1 GiB each) are written in full before
    # measuring (fabric-bench's fill), on top of the guest's own needs.
    ci/guest-run --mem 4G --timeout 7200 -- "$bin/fabric-bench" run --mode guest --out "$out" "${run_args[@]}"
else
    "$bin/fabric-bench" run --mode native --out "$out" "${run_args[@]}"
fi
# --check: the table, JSON and chart are written either way, but a row
# without numbers makes this command fail (naming the row).
report=(--check --command "$command_line" --commit "$commit")
((append)) && report+=(--results perf/RESULTS.md)
rc=0
"$bin/fabric-bench" report "$out" "${report[@]}" || rc=$?
echo "bench: samples, summary.json, table.md and chart.png in $out"
exit "$rc"
