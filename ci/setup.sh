#!/usr/bin/env bash
# Set up a fresh Debian (bookworm) machine for building, running and testing
# the project: system packages for the build (RDMA verbs, rocksdb, protoc,
# clang for bindgen; gnuplot for the benchmark charts), the guest tier (QEMU,
# Debian's stock kernel, rdma-core tools, nvme-cli, fio) and the Rust
# toolchain's components.
#
# Idempotent: a second run installs nothing and takes about a second.
# usage: ci/setup.sh [--no-guest]
set -euo pipefail

GUEST=1
[[ ${1:-} == --no-guest ]] && GUEST=0

as_root() { if [[ $(id -u) == 0 ]]; then "$@"; else sudo -E "$@"; fi; }

build_pkgs=(libclang-dev libibverbs-dev librdmacm-dev protobuf-compiler librocksdb-dev
            pkg-config rdma-core ibverbs-providers gnuplot-nox)
guest_pkgs=(busybox-static cpio kmod iproute2 ibverbs-utils rdmacm-utils nvme-cli fio
            util-linux bc)

missing=()
for p in "${build_pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [[ $GUEST == 1 ]]; then
    for p in "${guest_pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    ls /lib/modules/*/kernel/drivers/infiniband/sw/rxe/rdma_rxe.ko >/dev/null 2>&1 \
        || missing+=(linux-image-amd64)
fi
need_qemu=0
[[ $GUEST == 1 ]] && ! command -v qemu-system-x86_64 >/dev/null && need_qemu=1

export DEBIAN_FRONTEND=noninteractive
# the guest kernel is booted by QEMU only: no host initramfs is needed
export INITRD=No
apt_opts=(-y -q -o Dpkg::Use-Pty=0 --no-install-recommends)

if [[ ${#missing[@]} -gt 0 || $need_qemu == 1 ]]; then
    if [[ -z $(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mmin -1440 2>/dev/null | head -1) ]]; then
        as_root apt-get update -q
    fi
fi
if [[ ${#missing[@]} -gt 0 ]]; then
    echo "setup: installing ${missing[*]}"
    as_root apt-get install "${apt_opts[@]}" "${missing[@]}"
fi
if [[ $need_qemu == 1 ]]; then
    # Some images carry qemu-utils from bookworm-backports, which Breaks the
    # release's qemu-system-common: take qemu-system from backports then.
    qv=$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)
    if [[ $qv == *bpo* ]]; then
        codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
        if ! grep -rqs "$codename-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
            printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: %s-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
                "$codename" | as_root tee "/etc/apt/sources.list.d/$codename-backports.sources" >/dev/null
            as_root apt-get update -q
        fi
        as_root apt-get install "${apt_opts[@]}" -t "$codename-backports" qemu-system-x86
    else
        as_root apt-get install "${apt_opts[@]}" qemu-system-x86
    fi
fi

if ! command -v cargo >/dev/null; then
    echo "setup: installing the Rust toolchain (rustup)"
    as_root apt-get install "${apt_opts[@]}" curl ca-certificates build-essential
    curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt clippy 2>/dev/null || true
echo "setup: ready"
