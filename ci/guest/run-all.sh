#!/usr/bin/env bash
# Every guest-tier test, in one guest boot. Run inside ci/guest-run.
cd "$(dirname "$0")"
failed=()
for t in linux-host-tcp.sh linux-host-rdma.sh bench-short.sh; do
    echo "## $t"
    if ! bash "./$t"; then failed+=("$t"); fi
done
((${#failed[@]} == 0)) || { echo "guest tier: failed: ${failed[*]}"; exit 1; }
echo "guest tier: all passed"
