#!/usr/bin/env bash
# Measures the latency tail of a growing state: on a 3-node loopback cluster (fresh data),
# 64 clients with 4 requests in flight each create N znodes (64-byte values) through the
# three nodes, so the leader compacts every `snapshot_every_entries` entries as the state
# grows. Prints the load's throughput and latency percentiles, then per node: its log
# syncs (count, over 25 ms, over 100 ms, from corral_fsync_duration_seconds), the stalls
# its core logged ("busy with one input": total and longest, in ms), the leader changes
# it logged (the first election included), its compaction image files, and the
# compactions it put off or made with a tail for want of its own image.
#
#   bench/large-state.sh [N]      # default 700000
#
# CORRAL_BIN picks the server binary (default target/release/corral, built if missing),
# as for bench/cluster.sh.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
n=${1:-700000}
export BENCH_DATA=${BENCH_DATA:-$root/bench/data}
[[ -n ${CORRAL_BIN:-} ]] || cargo build -q --release --bin corral
cargo build -q --release --bin corral-load
dir=$BENCH_DATA/corral

trap 'bench/cluster.sh stop corral >/dev/null 2>&1' EXIT
bench/cluster.sh stop corral >/dev/null 2>&1 || true
rm -rf "$dir"
bench/cluster.sh start corral >/dev/null
target/release/corral-load --server 127.0.0.1:24281,127.0.0.1:24282,127.0.0.1:24283 \
    --clients 64 --in-flight 4 --op create --requests "$n" --cleanup-s 0 --warmup-s 0 2>&1 |
    grep -E 'ops/s|latency|errors'
for i in 1 2 3; do
    m=$(curl -fsS "127.0.0.1:2429$i/metrics")
    metric() { echo "$m" | awk -v k="$1" '$1 == k {print $2}'; }
    total=$(metric corral_fsync_duration_seconds_count)
    le25=$(metric 'corral_fsync_duration_seconds_bucket{le="0.025"}')
    le100=$(metric 'corral_fsync_duration_seconds_bucket{le="0.1"}')
    log=$dir/node$i.log
    stalls=$({ grep -h 'busy with one input' "$log" || true; } | { grep -o '"ms":[0-9]*' || true; } |
        cut -d: -f2 | awk '{s += $1; if ($1 > m) m = $1} END {printf "total %d ms, longest %d ms", s, m}')
    echo "node $i: log syncs $total, over 25 ms $((total - le25)), over 100 ms $((total - le100));" \
        "core stalls $stalls; leader changes $(grep -c 'leader changed' "$log" || true);" \
        "image files $(find "$dir/node$i/paxos/images" -name 'snap-*.bin' 2>/dev/null | wc -l);" \
        "compactions put off $(metric corral_compactions_deferred_total)," \
        "with a tail $(metric corral_compactions_with_tail_total)"
done
