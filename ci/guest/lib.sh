# Helpers for the guest-tier test scripts (sourced; run inside ci/guest-run).

set -uo pipefail
export RUST_BACKTRACE=0
PROJECT=${PROJECT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
if [[ -z ${FABRICD:-} ]]; then
    FABRICD=$PROJECT/target/ci/fabricd
    [[ -x $FABRICD ]] || FABRICD=$PROJECT/target/release/fabricd
fi
LOGDIR=${LOGDIR:-$PROJECT/target/guest-logs}
mkdir -p "$LOGDIR"
HOSTNQN=nqn.2014-08.org.nvmexpress:uuid:$(cat /proc/sys/kernel/random/uuid)
failures=0
checks=0

# check DESCRIPTION COMMAND...: run a command, record pass or fail.
check() {
    local what=$1; shift
    checks=$((checks + 1))
    local out rc
    out=$("$@" 2>&1); rc=$?
    if ((rc == 0)); then
        echo "ok   - $what"
    else
        failures=$((failures + 1))
        echo "FAIL - $what (exit $rc)"
        printf '%s\n' "$out" | tail -n 20 | sed 's/^/       /'
    fi
    return $rc
}

# expect_output DESCRIPTION PATTERN COMMAND...: the command succeeds and its
# output matches the extended regular expression PATTERN.
expect_output() {
    local what=$1 pattern=$2; shift 2
    check "$what" bash -c 'out=$("$@" 2>&1) || { echo "$out"; exit 1; }; grep -Eiq -- "$0" <<<"$out" || { echo "output does not match /$0/:"; echo "$out"; exit 1; }' "$pattern" "$@"
}

# wait_for DESCRIPTION SECONDS COMMAND...: poll until the command succeeds.
wait_for() {
    local what=$1 secs=$2; shift 2
    local end=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= end)); then
            failures=$((failures + 1)); checks=$((checks + 1))
            echo "FAIL - timed out after ${secs}s waiting for $what"
            return 1
        fi
        sleep 0.2
    done
}

# start_fabricd NAME ARGS...: start `fabricd target ARGS` in the background
# and wait for its "ready" line; sets FABRICD_PID.
start_fabricd() {
    local name=$1; shift
    local log=$LOGDIR/$name.log
    "$FABRICD" target "$@" >"$log" 2>&1 &
    FABRICD_PID=$!
    if ! wait_for "fabricd $name ready" 60 grep -q ready "$log"; then
        cat "$log"
        return 1
    fi
    echo "     fabricd $name: $(grep ready "$log" | head -1 | sed 's/.*ready/ready/')"
}

# namespaces_of NQN: the block devices of the subsystem's namespaces.
namespaces_of() {
    local s
    for s in /sys/class/nvme-subsystem/nvme-subsys*; do
        [[ $(cat "$s/subsysnqn" 2>/dev/null) == "$1" ]] || continue
        ls -d "$s"/nvme*n* 2>/dev/null | xargs -r -n1 basename | grep -E '^nvme[0-9]+n[0-9]+$' | sed 's|^|/dev/|' | sort -V
    done
}

# controllers_of NQN: the controller character devices of the subsystem.
controllers_of() {
    local c
    for c in /sys/class/nvme/nvme*; do
        [[ $(cat "$c/subsysnqn" 2>/dev/null) == "$1" ]] && echo "/dev/$(basename "$c")"
    done
}

count_namespaces() { [[ $(namespaces_of "$1" | wc -l) -ge $2 ]]; }

# fio_verify NAME DEV BS: random writes by 4 jobs at queue depth 32, each
# over its own region, then every block read back and checked (crc32c).
fio_verify() {
    local name=$1 dev=$2 bs=$3 size=${4:-16M}
    check "fio verify $name (bs=$bs, iodepth 32, 4 jobs)" \
        fio --name="$name" --filename="$dev" --ioengine=libaio --direct=1 --rw=randwrite --bs="$bs" \
            --iodepth=32 --numjobs=4 --size="$size" --offset_increment="$size" --verify=crc32c \
            --do_verify=1 --verify_fatal=1 --verify_state_save=0 --group_reporting --output="$LOGDIR/fio-$name.txt"
}

finish() {
    echo "# $((checks - failures))/$checks checks passed"
    ((failures == 0))
}
export -f namespaces_of controllers_of count_namespaces
