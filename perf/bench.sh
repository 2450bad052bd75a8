#!/usr/bin/env bash
# The side-by-side benchmark, one command: our NVMe-oF target (fabricd)
# against the Linux kernel target (nvmet), over tcp and rdma (soft-RoCE), with
# fio through the Linux host and with fabric-perf, in an emulated QEMU guest
# (ci/guest-run). Prints the table, writes JSON and a PNG chart to the output
# directory and appends the table to perf/RESULTS.md. Exits non-zero when a
# row has no numbers (named on stderr), after writing all of that.
#
# usage: perf/bench.sh [--short] [--native | --split | --pair] [--no-append] [--out DIR] [RUN OPTIONS...]
#   --short      the CI smoke run (1 repetition of 2 s per sample)
#   --native     the same matrix over TCP on this machine's loopback, ours
#                only (fabricd + fabric-perf), no guest
#   --split      both targets alone in the guest, fabric-perf on this machine
#                over TCP (ports forwarded into the guest): the guest's CPU
#                is then the targets' work only, as on a storage node
#   --pair       both targets alone in one guest, fio and fabric-perf in a
#                second guest on the same virtual Ethernet, over tcp and rdma
#                (soft-RoCE in both): the split mode's topology for the
#                whole matrix
#   --no-append  do not append to perf/RESULTS.md
#   --guest-cpus N  vCPUs of the guest (of the targets' guest) [default: 2]
#   --client-cpus N  --pair: vCPUs of the clients' guest [default: 2]
#   --fabricd-args "ARGS"  --split, --pair: more `fabricd target` options
#                (one string, e.g. "--rdma-poll-us 0"), for A/B runs
#   --bin DIR    use the fabricd, fabric-perf and fabric-bench built in DIR
#                (CI's profile) instead of building them in release
#   --out DIR    output directory [default: perf/out/MODE-DATE]
#   RUN OPTIONS  passed to `fabric-bench run` (see `fabric-bench run --help`:
#                --reps, --seconds, --transports, --backends, --clients)
set -euo pipefail
cd "$(dirname "$0")/.."
mode=guest append=1 out="" bin="" cpus=2 client_cpus=2 fabricd_args="" run_args=()
# set_mode MODE: one of --native, --split, --pair (they exclude each other).
set_mode() {
    [[ $mode == guest || $mode == "$1" ]] || { echo "bench: --$mode and --$1 exclude each other: give one" >&2; exit 2; }
    mode=$1
}
# need_value FLAG VALUE...: FLAG must be followed by a value.
need_value() { [[ $# -ge 2 && -n $2 ]] || { echo "bench: $1 needs a value" >&2; exit 2; }; }
while (($#)); do
    case $1 in
        --native|--split|--pair) set_mode "${1#--}"; shift ;;
        --short) run_args+=(--short); shift ;;
        --no-append) append=0; shift ;;
        --out) need_value "$@"; out=$2; shift 2 ;;
        --bin)
            need_value "$@"
            bin=$(cd "$2" 2>/dev/null && pwd) || { echo "bench: --bin: no directory '$2'" >&2; exit 2; }
            shift 2 ;;
        --guest-cpus)
            [[ ${2:-} =~ ^([1-9]|1[0-6])$ ]] || { echo "bench: --guest-cpus takes 1 to 16, not '${2:-}'" >&2; exit 2; }
            cpus=$2; shift 2 ;;
        --fabricd-args) [[ $# -ge 2 ]] || need_value "$1"; fabricd_args=$2; shift 2 ;;
        --client-cpus)
            [[ ${2:-} =~ ^([1-9]|1[0-6])$ ]] || { echo "bench: --client-cpus takes 1 to 16, not '${2:-}'" >&2; exit 2; }
            client_cpus=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) run_args+=("$1"); shift ;;
    esac
done
command_line="perf/bench.sh${run_args[*]:+ ${run_args[*]}}"
[[ $mode != guest ]] && command_line+=" --$mode"
[[ $cpus != 2 ]] && command_line+=" --guest-cpus $cpus"
[[ $client_cpus != 2 ]] && command_line+=" --client-cpus $client_cpus"
[[ -n $fabricd_args ]] && command_line+=" --fabricd-args '$fabricd_args'"

if [[ $mode == native ]]; then ci/setup.sh --no-guest; else ci/setup.sh; fi
[[ -f $HOME/.cargo/env ]] && . "$HOME/.cargo/env"
target=${CARGO_TARGET_DIR:-$PWD/target}
# The commit the binaries are built from (the tree may change during a run).
commit=$(git describe --always --dirty 2>/dev/null || echo unknown)
if [[ -z $bin ]]; then
    cargo build --release --locked -p fabric --bin fabricd -p perf --bins
    bin=$target/release
fi

out=${out:-perf/out/$mode-$(date -u +%Y%m%d-%H%M%S)}
# Bad run options are found here, before a guest boots.
"$bin/fabric-bench" run --mode "$mode" --out "$out" --check-args "${run_args[@]}" || exit 2
mkdir -p "$out"

# Split and pair modes: start the targets' guest (ci/guest-run options, --,
# the serve command) in the background and wait until it serves.
serve_in_guest() {
    ci/guest-run --mem 4G --cpus "$cpus" --timeout 7200 "$@" >"$out/guest.log" 2>&1 &
    guest=$!
    trap 'kill $guest 2>/dev/null' EXIT
    until grep -qs "serve: ready" "$out/guest.log"; do
        kill -0 "$guest" 2>/dev/null || { echo "bench: the guest failed:" >&2; cat "$out/guest.log" >&2; exit 1; }
        sleep 1
    done
}
# The run has told the agent to quit: wait for the targets' guest to end.
end_guest() {
    wait "$guest" || echo "bench: the guest exited with status $? (log: $out/guest.log)" >&2
    trap - EXIT
}
if [[ $mode == guest ]]; then
    # 4 GiB: both RAM backends (1 GiB each) are written in full before
    # measuring (fabric-bench's fill), on top of the guest's own needs.
    ci/guest-run --mem 4G --cpus "$cpus" --timeout 7200 -- "$bin/fabric-bench" run --mode guest --out "$out" "${run_args[@]}"
elif [[ $mode == split ]]; then
    # Three free ports here, forwarded to the guest's kernel target (4420),
    # ours (4421) and fabric-bench's agent (7000); see fabric-bench's agent.rs.
    in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
    for port in 14420 24420 34420 44420 ""; do
        [[ -n $port ]] || { echo "bench: no three free ports for the guest" >&2; exit 1; }
        in_use "$port" || in_use $((port + 1)) || in_use $((port + 2)) || break
    done
    serve_in_guest --no-rdma --forward "$port:4420" --forward "$((port + 1)):4421" \
        --forward "$((port + 2)):7000" -- "$bin/fabric-bench" serve --out "$out/guest" \
        --fabricd-args "$fabricd_args"
    "$bin/fabric-bench" run --mode split --guest-port "$port" --out "$out" "${run_args[@]}"
    end_guest
elif [[ $mode == pair ]]; then
    # The targets' guest is 10.88.0.1, the clients' 10.88.0.2, linked
    # through a Unix socket named after this run (ci/guest-run --link).
    link=bench-$$
    serve_in_guest --link "$link:1" -- "$bin/fabric-bench" serve --ip 10.88.0.1 \
        --transports tcp,rdma --out "$out/guest" --fabricd-args "$fabricd_args"
    ci/guest-run --mem 2G --cpus "$client_cpus" --timeout 7200 --link "$link:2" \
        -- "$bin/fabric-bench" run --mode pair --out "$out" "${run_args[@]}"
    end_guest
else
    "$bin/fabric-bench" run --mode native --out "$out" "${run_args[@]}"
fi
# --check: the table, JSON and chart are written either way, but a row
# without numbers makes this command fail (naming the row).
report=(--check --command "$command_line" --commit "$commit")
((append)) && report+=(--results perf/RESULTS.md)
rc=0
"$bin/fabric-bench" report "$out" "${report[@]}" || rc=$?
if [[ -s $out/chart.png ]]; then
    echo "bench: samples, summary.json, table.md and chart.png in $out"
else
    echo "bench: samples, summary.json and table.md in $out (no chart)"
fi
exit "$rc"
