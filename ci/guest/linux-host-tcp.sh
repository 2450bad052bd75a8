#!/usr/bin/env bash
# Guest tier: the Linux NVMe/TCP host (nvme-cli, the kernel initiator, fio)
# against `fabricd target`. Run inside ci/guest-run.
. "$(dirname "$0")/lib.sh"
NQN=nqn.2026-11.io.fabric:guest-tcp

modprobe nvme-tcp && modprobe brd rd_nr=2 rd_size=131072 || exit 1
# The Linux host and fabricd share this guest's loopback. Debian 12's 6.1
# kernel lacks upstream commit d2d30a376d9c (Linux 6.10, "net: allow
# skb_datagram_iter to be called from any context"): a write whose pages
# the host sends straight from a transparent huge page can leave an skb
# fragment running past the end of that page, and copying it to a user-space
# receiver (fabricd's recvfrom) then trips hardened usercopy, a kernel BUG
# that kills the receiving thread. Across a network the fragments are the
# NIC's own pages and this cannot happen; here fio's buffers stay off huge
# pages (README, "Attach a Linux host").
echo never > /sys/kernel/mm/transparent_hugepage/enabled
TARGET_ARGS=(--listen tcp://127.0.0.1:4420 --listen tcp://10.77.0.1:4420 --nqn "$NQN"
    --namespace mem:256M --namespace file:/dev/ram0 --discovery --serial guest-tcp-1)
start_fabricd tcp "${TARGET_ARGS[@]}" || exit 1

expect_output "nvme discover lists the subsystem on both ports" "traddr: *10\.77\.0\.1" \
    nvme discover -t tcp -a 127.0.0.1 -s 4420 --hostnqn="$HOSTNQN"
expect_output "discovery entry names our NQN" "$NQN" nvme discover -t tcp -a 127.0.0.1 -s 4420 --hostnqn="$HOSTNQN"

check "nvme connect -t tcp" nvme connect -t tcp -a 127.0.0.1 -s 4420 -n "$NQN" --hostnqn="$HOSTNQN"
wait_for "two namespaces" 30 count_namespaces "$NQN" 2
mapfile -t ns < <(namespaces_of "$NQN")
ctrl=$(controllers_of "$NQN" | head -1)
echo "     namespaces: ${ns[*]}; controller: $ctrl"
expect_output "nvme list-subsys shows the tcp path" "tcp traddr=127\.0\.0\.1" nvme list-subsys
expect_output "nvme id-ctrl: subsystem NQN" "subnqn +: $NQN" nvme id-ctrl "$ctrl"
expect_output "nvme id-ctrl: serial" "sn +: guest-tcp-1" nvme id-ctrl "$ctrl"
expect_output "nvme id-ctrl: ANA reporting (cmic bit 3)" "cmic +: 0xb" nvme id-ctrl "$ctrl"
expect_output "nvme id-ns: 256M in 4K blocks" "nsze +: 0x10000" nvme id-ns "${ns[0]}"
expect_output "nvme id-ns: NGUID present" "nguid +: [0-9a-f]{32}" nvme id-ns "${ns[0]}"
expect_output "nvme ana-log: optimized" "optimized" nvme ana-log "$ctrl"
expect_output "nvme smart-log" "data_units_written|Data Units Written" nvme smart-log "$ctrl"
check "nvme error-log" nvme error-log "$ctrl"

# What an administrator runs with nvme-cli besides: answers where we
# implement the command, the right NVMe status where we do not. (A sweep of
# ~100 nvme-cli commands, ours next to the kernel target, chose these; it
# found Interrupt Coalescing answered, which fabrics prohibit.)
expect_output "nvme ns-descs: NGUID and UUID" "uuid +: [0-9a-f-]{36}" nvme ns-descs "${ns[0]}"
expect_output "nvme list-ns: both namespaces" "0x2" nvme list-ns "$ctrl"
expect_output "nvme fw-log: the version in slot 1" "frs1 +: 0x" nvme fw-log "$ctrl"
check "nvme effects-log" nvme effects-log "$ctrl"
check "nvme changed-ns-list-log" nvme changed-ns-list-log "$ctrl"
expect_output "nvme get-feature: number of queues" "Number of Queues" nvme get-feature "$ctrl" -f 7
expect_refusal "nvme get-feature: interrupt coalescing is Invalid Field on fabrics" "Invalid Field" \
    nvme get-feature "$ctrl" -f 8
check "nvme set-feature: volatile write cache off" nvme set-feature "$ctrl" -f 6 -v 0
expect_output "nvme get-feature: volatile write cache off" "Current value: *(0x)?0+( |$)" nvme get-feature "$ctrl" -f 6
check "nvme set-feature: volatile write cache on" nvme set-feature "$ctrl" -f 6 -v 1
head -c 4096 /dev/urandom > /tmp/block4k
expect_refusal "nvme compare: Invalid Command Opcode" "Invalid Command Opcode" \
    nvme compare "${ns[0]}" -s 0 -c 0 -z 4096 -d /tmp/block4k
expect_refusal "nvme format: Invalid Command Opcode" "Invalid Command Opcode" nvme format "${ns[0]}" -f
expect_refusal "nvme read past the end: LBA Out of Range" "LBA Out of Range" \
    nvme read "${ns[0]}" -s 65536 -c 0 -z 4096 -d /dev/null
check "nvme write" nvme write "${ns[0]}" -s 8 -c 0 -z 4096 -d /tmp/block4k
check "nvme read returns what nvme write wrote" \
    bash -c "nvme read '${ns[0]}' -s 8 -c 0 -z 4096 -d /tmp/block4k.back && cmp /tmp/block4k /tmp/block4k.back"
check "nvme write-zeroes" nvme write-zeroes "${ns[0]}" -s 8 -c 0
check "the block reads back as zeroes" \
    bash -c "nvme read '${ns[0]}' -s 8 -c 0 -z 4096 -d /tmp/block4k.back && cmp -n 4096 /tmp/block4k.back /dev/zero"
check "nvme dsm (deallocate)" nvme dsm "${ns[0]}" -d -s 0 -b 8
check "nvme flush" nvme flush "${ns[0]}"
check "nvme reset" nvme reset "$ctrl"
wait_for "the controller live after the reset" 30 ctrl_live "$(basename "$ctrl")"

fio_verify mem-4k "${ns[0]}" 4k
fio_verify mem-128k "${ns[0]}" 128k
fio_verify file-4k "${ns[1]}" 4k 8M
fio_verify file-128k "${ns[1]}" 128k 8M
fio_verify mem-1m "${ns[0]}" 1m 16M

# Malformed traffic while a host does I/O: the I/O still verifies and the
# target keeps running.
malformed() {
    for i in 1 2 3 4 5; do
        { printf 'GET / HTTP/1.0\r\n\r\n'; head -c 300 /dev/urandom; } > /dev/tcp/127.0.0.1/4420 2>/dev/null
        # A valid ICReq followed by a capsule with a bad header length.
        { printf '\x00\x00\x80\x00\x80\x00\x00\x00'; head -c 120 /dev/zero;
          printf '\x04\x00\x20\x00\x48\x00\x00\x00'; head -c 64 /dev/zero; } > /dev/tcp/127.0.0.1/4420 2>/dev/null
    done
}
malformed & garbage=$!
fio_verify mem-4k-under-garbage "${ns[0]}" 4k 8M
wait "$garbage"
check "fabricd survived malformed connections" kill -0 "$FABRICD_PID"

check "blkdiscard" blkdiscard "${ns[0]}"
check "discarded blocks read back as zeroes" cmp -n 16777216 "${ns[0]}" /dev/zero

head -c 1048576 /dev/urandom > /tmp/pattern
check "write a pattern before disconnecting" dd if=/tmp/pattern of="${ns[0]}" bs=64k seek=1600 oflag=direct status=none
check "nvme disconnect" nvme disconnect -n "$NQN"
wait_for "namespaces gone" 30 bash -c "! count_namespaces $NQN 1"

check "reconnect with header and data digests (-g -G)" \
    nvme connect -t tcp -a 10.77.0.1 -s 4420 -n "$NQN" --hostnqn="$HOSTNQN" -g -G
wait_for "namespaces back" 30 count_namespaces "$NQN" 2
mapfile -t ns < <(namespaces_of "$NQN")
check "pattern reads back after reconnect" cmp -n 1048576 /tmp/pattern <(dd if="${ns[0]}" bs=64k skip=1600 count=16 iflag=direct status=none)
fio_verify digests-4k "${ns[0]}" 4k 8M
fio_verify digests-128k "${ns[0]}" 128k 8M
check "nvme disconnect (digests)" nvme disconnect -n "$NQN"
wait_for "namespaces gone after the digests run" 30 bash -c "! count_namespaces $NQN 1"

# Connect options a Linux host may choose: one I/O queue of 16 entries (the
# host holds back the rest of fio's 4 x 32), a write queue and a polled
# queue (fio's io_uring hipri polls for its completions), and a keep-alive
# timeout of 1 s across an idle spell (the controller must stay).
connect_with() {
    check "nvme connect $*" nvme connect -t tcp -a 127.0.0.1 -s 4420 -n "$NQN" --hostnqn="$HOSTNQN" "$@" &&
        wait_for "namespaces ($*)" 30 count_namespaces "$NQN" 2 &&
        mapfile -t ns < <(namespaces_of "$NQN") && ctrl=$(controllers_of "$NQN" | head -1)
}
disconnect_all() {
    check "nvme disconnect ($1)" nvme disconnect -n "$NQN"
    wait_for "namespaces gone ($1)" 30 bash -c "! count_namespaces $NQN 1"
}
ctrl_attr() { cat "/sys/class/nvme/${ctrl#/dev/}/$1"; }
connect_with --nr-io-queues=1 --queue-size=16
check "one I/O queue of 16 entries" test "$(ctrl_attr queue_count) $(ctrl_attr sqsize)" = "2 15"
fio_verify small-queue "${ns[0]}" 4k 8M
disconnect_all "small queue"
connect_with --nr-write-queues=1 --nr-poll-queues=1
expect_output "a polled queue mapped" "mapped [0-9]+/[0-9]+/1 default/read/poll" dmesg
check "fio verify through the polled queue (io_uring, hipri)" \
    fio --name=hipri --filename="${ns[0]}" --ioengine=io_uring --hipri=1 --direct=1 --rw=randwrite --bs=4k \
        --iodepth=16 --size=8M --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_state_save=0 \
        --output="$LOGDIR/fio-hipri.txt"
disconnect_all "polled queue"
connect_with --keep-alive-tmo=1
cntlid=$(ctrl_attr cntlid)
fio_verify kato-1s "${ns[0]}" 4k 4M
sleep 4
fio_verify kato-1s-after-idle "${ns[0]}" 4k 4M
check "KATO 1 s: the same controller after 4 s idle" test "$(ctrl_attr cntlid)" = "$cntlid"
disconnect_all "KATO 1 s"

# Discovery-driven connect: a path through each port (native multipath), and
# SQ flow control disabled as discovery allows (reads then complete with
# the C2HData SUCCESS flag instead of a response capsule).
two_paths() { [[ $(controllers_of "$NQN" | wc -l) -ge 2 ]]; }
check "nvme connect-all over both ports" nvme connect-all -t tcp -a 127.0.0.1 -s 4420 --hostnqn="$HOSTNQN"
wait_for "a controller per port" 30 two_paths
wait_for "namespaces through multipath" 30 count_namespaces "$NQN" 2
mapfile -t ns < <(namespaces_of "$NQN")
expect_output "nvme list-subsys shows both paths live" "traddr=10\.77\.0\.1.*live" nvme list-subsys
fio_verify multipath-4k "${ns[0]}" 4k 8M
fio_verify multipath-128k "${ns[0]}" 128k 8M
check "nvme disconnect (every path)" nvme disconnect -n "$NQN"

# A restart under writes (an upgrade, say): SIGTERM, start again; the host
# reconnects and fio finishes with every block verified (the file
# namespace keeps its data across the restart).
connect_with --reconnect-delay=1 --ctrl-loss-tmo=60
fio --name=restart --filename="${ns[1]}" --ioengine=libaio --direct=1 --rw=randwrite --bs=4k --iodepth=16 \
    --size=24M --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_state_save=0 \
    --output="$LOGDIR/fio-restart.txt" &
fio_pid=$!
# (the multipath device keeps no statistics; its path through the
# controller, nvmeXcYnZ, does)
wait_for "writes under way before the restart" 30 bash -c \
    '(( $(cat /sys/class/nvme/"$0"/nvme*c*n"$1"/stat | awk "{print \$7}") >= 8192 ))' "${ctrl#/dev/}" "${ns[1]##*n}"
kill "$FABRICD_PID"; wait "$FABRICD_PID" 2>/dev/null
start_fabricd tcp-restarted "${TARGET_ARGS[@]}" || exit 1
wait "$fio_pid"; rc=$?
check "fio wrote and verified 24M across a restart of fabricd" \
    bash -c "(( $rc == 0 )) || { cat '$LOGDIR/fio-restart.txt'; exit 1; }"
disconnect_all "after the restart"

kill "$FABRICD_PID"; wait "$FABRICD_PID" 2>/dev/null

# Two nodes exporting one volume; one killed mid-run (lib.sh).
two_node_failover tcp 127.0.0.2 127.0.0.3 "$NQN-nodes" /dev/ram0

# The embedded default's kind of namespace (ci/start.sh): a raid1 over two
# files, here on ext4 on a RAM disk; its data survives a restart, and a clean
# shutdown leaves nothing to resync.
R1NQN=$NQN-raid1
R1SPEC=raid1:/tmp/raid1-fs/disk0.img,/tmp/raid1-fs/disk1.img:48M
mkdir -p /tmp/raid1-fs && mkfs.ext4 -q /dev/ram1 && mount /dev/ram1 /tmp/raid1-fs || exit 1
trap "umount /tmp/raid1-fs 2>/dev/null" EXIT
start_fabricd raid1 --listen tcp://127.0.0.1:4421 --nqn "$R1NQN" --namespace "$R1SPEC" || exit 1
check "raid1: nvme connect" nvme connect -t tcp -a 127.0.0.1 -s 4421 -n "$R1NQN" --hostnqn="$HOSTNQN"
wait_for "raid1 namespace" 30 count_namespaces "$R1NQN" 1
r1=$(namespaces_of "$R1NQN" | head -1)
fio_verify raid1-4k "$r1" 4k 8M
head -c 4M /dev/urandom > /tmp/raid1-pattern
check "raid1: write a pattern" dd if=/tmp/raid1-pattern of="$r1" bs=1M seek=40 oflag=direct status=none
check "raid1: nvme disconnect" nvme disconnect -n "$R1NQN"
kill "$FABRICD_PID"; wait "$FABRICD_PID" 2>/dev/null
start_fabricd raid1-again --listen tcp://127.0.0.1:4421 --nqn "$R1NQN" --namespace "$R1SPEC" || exit 1
expect_output "raid1: reassembled clean after SIGTERM" "members=\[InSync, InSync\] dirty=0" \
    cat "$LOGDIR/raid1-again.log"
check "raid1: nvme connect again" nvme connect -t tcp -a 127.0.0.1 -s 4421 -n "$R1NQN" --hostnqn="$HOSTNQN"
wait_for "raid1 namespace again" 30 count_namespaces "$R1NQN" 1
r1=$(namespaces_of "$R1NQN" | head -1)
check "raid1: the pattern survived the restart" \
    bash -c "dd if='$r1' bs=1M skip=40 count=4 iflag=direct status=none | cmp - /tmp/raid1-pattern"

# The file system under the mirror fills up (its files are sparse): the
# host's writes fail with ENOSPC (Capacity Exceeded), the data stays online,
# and writes work again once there is space.
# Blocks 32-40 MiB were never written (fio took 0-32, the pattern 40-44):
# 16 MiB for the two files, where root has the 1 MiB left and the file
# system's reserve (5%, 6 MiB). An array that went offline instead would
# hold the host's I/O (a path error with no other path): hence `within`.
avail=$(df --output=avail -B1 /tmp/raid1-fs | tail -1)
check "raid1: fill the file system but 1 MiB" fallocate -l $((avail - (1 << 20))) /tmp/raid1-fs/filler
expect_refusal "raid1: a write into the full file system fails with ENOSPC" "No space left on device" \
    within 60 dd if=/dev/urandom of="$r1" bs=1M seek=32 count=8 oflag=direct status=none
check "raid1: the pattern reads back with the file system full" \
    within 60 bash -c "dd if='$r1' bs=1M skip=40 count=4 iflag=direct status=none | cmp - /tmp/raid1-pattern"
expect_output "raid1: fabricd named the full file system" "No space left on device" \
    grep -E 'member dropped.*disk[01].img' "$LOGDIR/raid1-again.log"
check "raid1: space back: remove the filler" rm /tmp/raid1-fs/filler
check "raid1: writes work again with space back" \
    within 60 dd if=/tmp/raid1-pattern of="$r1" bs=1M seek=36 oflag=direct status=none
check "raid1: and read back" \
    within 60 bash -c "dd if='$r1' bs=1M skip=36 count=4 iflag=direct status=none | cmp - /tmp/raid1-pattern"
# The member that left for lack of space rejoins by itself (its first
# re-add 30 s after it left, then 60 s, ...) and resyncs: its last resync
# pass promoted it, and a restart finds both members in sync.
rejoined() {
    awk '/out of space; it is re-added/ { ok = 0 } /resync pass finished promoted=[1-9]/ { ok = 1 }
         END { exit !ok }' "$LOGDIR/raid1-again.log"
}
wait_for "raid1: the member that ran out of space rejoined and resynced" 180 rejoined
check "raid1: nvme disconnect again" nvme disconnect -n "$R1NQN"
kill "$FABRICD_PID"; wait "$FABRICD_PID" 2>/dev/null
start_fabricd raid1-third --listen tcp://127.0.0.1:4421 --nqn "$R1NQN" --namespace "$R1SPEC" || exit 1
expect_output "raid1: both members in sync at the next start" "members=\[InSync, InSync\] dirty=0" \
    cat "$LOGDIR/raid1-third.log"
kill "$FABRICD_PID"; wait "$FABRICD_PID" 2>/dev/null

finish
