#!/usr/bin/env bash
# Run every fuzz target of fabric/fuzz for SECONDS each (default 60).
# cargo-fuzz needs nightly features; RUSTC_BOOTSTRAP lets the stable
# toolchain provide them (no other toolchain can be fetched here).
set -euo pipefail
cd "$(dirname "$0")/../fabric"
secs=${1:-60}
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
export RUSTC_BOOTSTRAP=1
for t in $(cargo fuzz list); do
    echo "fuzz: $t for ${secs}s"
    log=fuzz/$t.log
    if ! cargo fuzz run "$t" -- -max_total_time="$secs" -rss_limit_mb=4096 >"$log" 2>&1; then
        tail -n 40 "$log"
        echo "fuzz: $t failed (reproducer in fabric/fuzz/artifacts/$t)"
        exit 1
    fi
    grep -E '^Done' "$log" || true
done
