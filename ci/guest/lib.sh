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

# expect_refusal DESCRIPTION PATTERN COMMAND...: the command fails and its
# output matches PATTERN (the NVMe status a target must answer with).
expect_refusal() {
    local what=$1 pattern=$2; shift 2
    check "$what" bash -c 'out=$("$@" 2>&1) && { echo "succeeded:"; echo "$out"; exit 1; }; grep -Eiq -- "$0" <<<"$out" || { echo "output does not match /$0/:"; echo "$out"; exit 1; }' "$pattern" "$@"
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
    # Stop waiting as soon as it exits: a bad flag or address ends it at once.
    if ! wait_for "fabricd $name ready" 60 bash -c "grep -q ready '$log' || ! kill -0 $FABRICD_PID"; then
        cat "$log"
        return 1
    fi
    if ! grep -q ready "$log"; then
        failures=$((failures + 1)); checks=$((checks + 1))
        echo "FAIL - fabricd $name exited before it was ready"
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

# ctrl_of NQN ADDRESS: the host's controller (nvmeN) of NQN through ADDRESS.
ctrl_of() {
    local c
    for c in $(controllers_of "$1"); do
        grep -q "traddr=$2," "/sys/class/nvme/${c#/dev/}/address" && echo "${c#/dev/}"
    done
}

# path_sectors CTRL read|written: 512-byte sectors moved through that
# controller's path (the statistics of its hidden block device).
path_sectors() {
    local p
    p=$(basename "$(ls -d /sys/class/nvme/"$1"/nvme*c*n1 | head -1)")
    awk -v f="$2" '{print (f == "read") ? $3 : $7}' "/sys/block/$p/stat"
}

ctrl_live() { grep -q live "/sys/class/nvme/$1/state"; }

# within SECONDS COMMAND...: run COMMAND with its output, but give up on it
# after SECONDS with status 124. Unlike timeout(1) this does not wait for
# the command to die: a process in block I/O that the host holds (a path
# error with no other path) ignores signals until its controller goes.
within() {
    local secs=$1 out pid rc; shift
    out=$(mktemp)
    "$@" >"$out" 2>&1 &
    pid=$!
    local end=$((SECONDS + secs))
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= end)); then
            cat "$out"; echo "still running after ${secs}s: $*"; return 124
        fi
        sleep 0.2
    done
    wait "$pid"; rc=$?
    cat "$out"; rm -f "$out"
    return $rc
}

# fio_nopipe ARGS: fio with SIGPIPE ignored (in a subshell; in the
# background, `$!` is that subshell's, whose status is fio's).
fio_nopipe() { (trap '' PIPE; exec fio "$@"); }

# two_node_failover TRANSPORT ADDRESS_A ADDRESS_B NQN DEVICE: two nodes
# (fabricd processes on their own addresses) export one volume: the same
# subsystem NQN, namespace and backing DEVICE, distinct controller IDs. The
# Linux host's native multipath sees one namespace with a path through each
# and spreads I/O over both (round-robin). Node A killed (SIGKILL) in the
# middle of a verified write run must not fail one I/O: its commands fail
# over to node B. Back up, node A is frozen under writes, the host moves
# them and newer ones to B; thawed, A runs none of the stale commands it
# held. Then node A serves all the newer data while B is down.
two_node_failover() {
    local tr=$1 addr_a=$2 addr_b=$3 nqn=$4 device=$5
    local node_args=(--nqn "$nqn" --namespace "file:$device" --serial two-nodes)
    local a_pid b_pid ca cb dev fio_pid rc s before
    start_fabricd "$tr-node-a" --listen "$tr://$addr_a:4422" --cntlid-range 1-999 "${node_args[@]}" || return 1
    a_pid=$FABRICD_PID
    start_fabricd "$tr-node-b" --listen "$tr://$addr_b:4422" --cntlid-range 1000-1999 "${node_args[@]}" || return 1
    b_pid=$FABRICD_PID
    for s in "$addr_a" "$addr_b"; do
        check "$tr nodes: nvme connect to the node at $s" nvme connect -t "$tr" -a "$s" -s 4422 -n "$nqn" \
            --hostnqn="$HOSTNQN" --reconnect-delay=1 --ctrl-loss-tmo=60
    done
    wait_for "$tr nodes: a live controller per node" 30 bash -c \
        'ctrl_live "$(ctrl_of "$0" "$1")" && ctrl_live "$(ctrl_of "$0" "$2")"' "$nqn" "$addr_a" "$addr_b"
    wait_for "$tr nodes: one namespace over both" 30 count_namespaces "$nqn" 1
    dev=$(namespaces_of "$nqn" | head -1) ca=$(ctrl_of "$nqn" "$addr_a") cb=$(ctrl_of "$nqn" "$addr_b")
    for s in /sys/class/nvme-subsystem/nvme-subsys*; do
        [[ $(cat "$s/subsysnqn") == "$nqn" ]] && echo round-robin > "$s/iopolicy"
    done
    local fio_args=(--name="$tr-nodes" --filename="$dev" --ioengine=libaio --direct=1 --rw=randwrite
        --bs=4k --iodepth=16 --size=64M --verify=crc32c --verify_fatal=1 --verify_state_save=0)
    # fio ignores SIGPIPE here: Linux 6.1's nvme-tcp host sends from the
    # submitting process when it can, without MSG_NOSIGNAL, so a write to a
    # node's socket just reset by its kill raises SIGPIPE in fio itself
    # (seen once in CI: fio died of signal 13 right after node A's kill).
    fio_nopipe "${fio_args[@]}" --output="$LOGDIR/fio-$tr-nodes.txt" &
    fio_pid=$!
    wait_for "$tr nodes: node A served writes" 60 bash -c '(( $(path_sectors "$0" written) >= 4096 ))' "$ca"
    check "$tr nodes: fio still writing when node A is killed" kill -0 "$fio_pid"
    kill -9 "$a_pid"; wait "$a_pid" 2>/dev/null
    before=$(path_sectors "$cb" written)
    wait "$fio_pid"; rc=$?
    check "$tr nodes: fio wrote and verified 64M with node A killed mid-run" \
        bash -c "(( $rc == 0 )) || { cat '$LOGDIR/fio-$tr-nodes.txt'; exit 1; }"
    check "$tr nodes: node B took the writes after the kill" test "$(path_sectors "$cb" written)" -gt "$before"
    start_fabricd "$tr-node-a-again" --listen "$tr://$addr_a:4422" --cntlid-range 1-999 "${node_args[@]}" || return 1
    a_pid=$FABRICD_PID
    wait_for "$tr nodes: the host reconnects to node A" 90 ctrl_live "$ca"
    # Node A frozen under writes (SIGSTOP, as a paused VM or a frozen cgroup
    # would): the host's keep alive to it goes unanswered, so the host
    # retries A's commands through B, and newer data (another pattern) then
    # goes through B alone. Thawed, A must not run the stale writes still in
    # its sockets, which would overwrite that newer data: it drops the
    # controller instead, and the host reconnects.
    before=$(path_sectors "$ca" written)
    fio_nopipe "${fio_args[@]}" --do_verify=0 --output="$LOGDIR/fio-$tr-nodes-freeze.txt" &
    fio_pid=$!
    wait_for "$tr nodes: node A served writes again" 60 \
        bash -c '(( $(path_sectors "$0" written) >= $1 + 4096 ))' "$ca" "$before"
    kill -STOP "$a_pid"
    wait "$fio_pid"; rc=$?
    check "$tr nodes: writes went on through node B with node A frozen" \
        bash -c "(( $rc == 0 )) || { cat '$LOGDIR/fio-$tr-nodes-freeze.txt'; exit 1; }"
    check "$tr nodes: newer data through node B while A is frozen" \
        fio "${fio_args[@]}" --randseed=4242 --do_verify=0 --output="$LOGDIR/fio-$tr-nodes-newer.txt"
    kill -CONT "$a_pid"
    wait_for "$tr nodes: the host reconnects to the thawed node A" 90 ctrl_live "$ca"
    check "$tr nodes: thawed node A dropped its controller rather than run stale commands" \
        grep -q "process stalled past the keep-alive timeout" "$LOGDIR/$tr-node-a-again.log"
    kill -9 "$b_pid"; wait "$b_pid" 2>/dev/null
    before=$(path_sectors "$ca" read)
    check "$tr nodes: with node B killed, node A reads back the newer 64M (fio verify)" \
        fio "${fio_args[@]}" --randseed=4242 --verify_only --output="$LOGDIR/fio-$tr-nodes-verify.txt"
    check "$tr nodes: node A served those reads" test "$(path_sectors "$ca" read)" -ge $((before + 131072))
    check "$tr nodes: nvme disconnect" nvme disconnect -n "$nqn"
    kill "$a_pid"; wait "$a_pid" 2>/dev/null
    check "$tr nodes: node A logged no other warning (a host's disconnect is routine)" \
        bash -c '! grep -E "WARN|ERROR" "$0" | grep -v "did not run for half the keep-alive timeout"' \
        "$LOGDIR/$tr-node-a-again.log"
}

finish() {
    echo "# $((checks - failures))/$checks checks passed"
    ((failures == 0))
}
export -f namespaces_of controllers_of count_namespaces ctrl_of path_sectors ctrl_live within
