#!/usr/bin/env bash
# The embedded default: set up the machine, build, and run a node on
# loopback with nothing to configure. Today that is `fabricd target` serving
# a 1 GiB memory namespace with discovery on tcp://127.0.0.1:4420; extra
# arguments go to `fabricd target` (see `fabricd target --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
ci/setup.sh --no-guest
[[ -f $HOME/.cargo/env ]] && . "$HOME/.cargo/env"
cargo build --release -p fabric --bin fabricd
exec target/release/fabricd target --listen tcp://127.0.0.1:4420 --discovery "$@"
