#!/usr/bin/env bash
# Guest tier: the short mode of the side-by-side benchmark (fabric-bench,
# what perf/bench.sh --short runs): every row of the matrix (tcp and rdma,
# null and mem backends, four workloads, fio and fabric-perf, our target and
# the kernel's) must produce numbers, or say that its transport is not built
# in. It asserts no timing. Run inside ci/guest-run.
. "$(dirname "$0")/lib.sh"
BIN=$(dirname "$FABRICD")
out=$LOGDIR/bench-short

check "fabric-bench run --short" "$BIN/fabric-bench" run --mode guest --short --out "$out" \
    --fabricd "$FABRICD" --fabric-perf "$BIN/fabric-perf"
check "every row has numbers (report, JSON, chart)" "$BIN/fabric-bench" report "$out" --check
[[ -s $out/table.md ]] && cat "$out/table.md"
finish
