#!/usr/bin/env bash
# The Jepsen-style step of CI (.ci/run): a short mixed run of every workload under every
# nemesis against a real 3-node cluster in network namespaces (must pass, --strict: the
# two fixed bugs of README "Findings" count as violations), then a short
# run against servers with a deliberately injected bug (must be flagged).
# Needs root (CI runs as root); installs iptables with apt-get if it is missing.
# CORRAL_JEPSEN_SEED=n replays a seed; CORRAL_JEPSEN_TIME=s changes the fault phase.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $(id -u) != 0 ]]; then
    echo "jepsen/ci.sh needs root (network namespaces, iptables); CI runs as root" >&2
    exit 1
fi
command -v ip >/dev/null || { echo "iproute2 is missing: apt-get install -y iproute2" >&2; exit 1; }
if ! command -v iptables >/dev/null; then
    echo "== installing iptables"
    apt-get install -y -q iptables >/dev/null || { apt-get update -q && apt-get install -y -q iptables; }
fi

out=target/jepsen-runs
# Binaries live in cargo's target directory (CARGO_TARGET_DIR if set).
bin=${CARGO_TARGET_DIR:-target}/debug
seed=${CORRAL_JEPSEN_SEED:-$(( (RANDOM << 15) | RANDOM ))}
time=${CORRAL_JEPSEN_TIME:-100}

echo "== building corral with the test-only fault switches (--features sim)"
cargo build -q -p corral-server --features sim --bin corral
cp "$bin/corral" "$bin/corral-faults"
echo "== building corral and corral-jepsen"
cargo build -q -p corral-server -p corral-jepsen --bins

# Compaction points every 128 KiB of entries (about one a second here) instead of every
# 100,000 entries (none in a run this short): nodes that fell behind catch up through
# snapshots under the faults.
echo "== mixed run: every workload, every nemesis, ${time}s of faults (seed $seed)"
"$bin/corral-jepsen" --workload all --nemesis all --time "$time" --quiet 12 \
    --clients 3 --seed "$seed" --check-time-limit 10 --out "$out" --install --strict \
    --snapshot-every-bytes 131072

echo "== injected bug (grant_without_predecessor): the checkers must flag it"
"$bin/corral-jepsen" --workload lock,unfenced,multilock,shared --nemesis none --time 12 --quiet 10 \
    --clients 3 --seed "$seed" --out "$out" --install \
    --corral-bin "$bin/corral-faults" --inject-fault grant_without_predecessor \
    --expect-invalid
