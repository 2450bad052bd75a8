#!/usr/bin/env bash
# The test command: sets up a fresh Debian machine (packages, guest kernel,
# Rust components), then runs every tier:
#   format and lint, unit and property tests, loopback integration tests
#   (multi-process, TCP), the guest tier (the Linux NVMe-oF host, soft-RoCE
#   and the kernel target, inside an emulated QEMU guest) and a fuzz smoke run.
#
# usage: ci/test.sh [--no-guest] [--no-fuzz]
set -euo pipefail
cd "$(dirname "$0")/.."
guest=1 fuzz=1
for a in "$@"; do
    case $a in
        --no-guest) guest=0 ;;
        --no-fuzz) fuzz=0 ;;
        -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "ci/test.sh: unknown argument $a (see --help)" >&2; exit 2 ;;
    esac
done
start=$SECONDS
stage() { printf '\n==== %s (at %ds)\n' "$*" $((SECONDS - start)); }

stage "set-up"
if ((guest)); then ci/setup.sh; else ci/setup.sh --no-guest; fi
[[ -f $HOME/.cargo/env ]] && . "$HOME/.cargo/env"
export CARGO_TERM_COLOR=never

stage "format"
cargo fmt --all --check

stage "lint"
cargo clippy --workspace --all-targets --locked -- -D warnings

stage "unit, property and loopback integration tests"
cargo test --workspace --profile ci --locked

if ((guest)); then
    stage "guest tier"
    cargo build --workspace --bins --examples --profile ci --locked
    # 4 GiB: the benchmark's short run writes both 1 GiB RAM backends in full.
    FABRICD=$PWD/target/ci/fabricd ci/guest-run --mem 4G --timeout 2400 -- ci/guest/run-all.sh
    stage "benchmark, split mode (short): both targets alone in a guest, fabric-perf here"
    perf/bench.sh --split --short --no-append --bin target/ci --out target/bench-split-short
    stage "benchmark, pair mode (short): targets in one guest, fio and fabric-perf in another, tcp and rdma"
    perf/bench.sh --pair --short --backends null --no-append --bin target/ci --out target/bench-pair-short
fi

if ((fuzz)); then
    stage "fuzz smoke run"
    ci/fuzz.sh 30
fi

stage "all passed in $((SECONDS - start))s"
