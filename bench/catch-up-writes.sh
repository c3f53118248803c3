#!/usr/bin/env bash
# Whether, and how fast, a follower catches up after missing more large writes than one
# peer message holds: on a 3-node loopback cluster with a small peer frame limit, stop a
# follower, set MIB MiB of 512 KiB values through the other two, start it again, and
# time until its applied zxid reaches the leader's (at most 60 s).
#
#   bench/catch-up-writes.sh [MIB [PEER_FRAME_BYTES]]   # defaults 96 and 33554432 (32 MiB)
#
# with the server's compaction points (every `snapshot_every_bytes`, at most an eighth of
# the frame in a cluster; SNAPSHOT_EVERY_BYTES sets it, 0 turns byte points off).
#
# CORRAL_BIN picks the server binary (default target/release/corral, built if missing),
# as for bench/cluster.sh. Prints the follower's and the leader's applied zxids at the
# start, the time to catch up (or "not caught up"), and how often the leader's log says
# it could not encode a message for a peer (a catch-up message over the frame limit).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
mib=${1:-96}
frame=${2:-33554432}
export BENCH_DATA=${BENCH_DATA:-$root/bench/data}
# SNAPSHOT_EVERY_BYTES=0 runs with compaction by entries only.
every=${SNAPSHOT_EVERY_BYTES:+--snapshot-every-bytes $SNAPSHOT_EVERY_BYTES}
export CORRAL_ARGS="--max-peer-frame-bytes $frame --max-state-bytes $((frame / 2)) $every ${CORRAL_ARGS:-}"
[[ -n ${CORRAL_BIN:-} ]] || cargo build -q --release --bin corral
cargo build -q --release --bin corral-load
load=$root/target/release/corral-load
dir=$BENCH_DATA/corral

trap 'bench/cluster.sh stop corral >/dev/null 2>&1' EXIT
bench/cluster.sh stop corral >/dev/null 2>&1 || true
rm -rf "$dir"
bench/cluster.sh start corral >/dev/null

zxid() { # NODE
    curl -s "127.0.0.1:2429$1/status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["applied_zxid"])'
}
leader=
for _ in $(seq 1 300); do
    for n in 1 2 3; do
        curl -s "127.0.0.1:2429$n/status" | grep -q '"role":"leader"' && leader=$n
    done
    [[ -n $leader ]] && break
    sleep 0.1
done
[[ -n $leader ]] || { echo "no leader within 30 s" >&2; exit 1; }
follower=1
[[ $leader == 1 ]] && follower=2
kill -TERM "$(cat "$dir/node$follower.pid")"
for _ in $(seq 1 100); do
    kill -0 "$(cat "$dir/node$follower.pid")" 2>/dev/null || break
    sleep 0.1
done
others=$(for n in 1 2 3; do [[ $n != "$follower" ]] && printf '127.0.0.1:2428%s,' "$n"; done)
timeout 600 "$load" --server "${others%,}" --clients 2 --op set --value-bytes 524288 \
    --requests $((mib * 2)) --cleanup-s 0 --warmup-s 0 | grep -E 'ops/s|errors' >&2
mark=$(($(wc -l <"$dir/node$leader.log") + 1))
bench/cluster.sh start-node corral "$follower" >/dev/null
started=$(date +%s%N)
echo "follower $follower at zxid $(zxid "$follower"), leader $leader at $(zxid "$leader")"
caught=
for _ in $(seq 1 600); do
    if [[ $(zxid "$follower") -ge $(zxid "$leader") ]]; then
        caught=$((($(date +%s%N) - started) / 1000000))
        break
    fi
    sleep 0.1
done
if [[ -n $caught ]]; then
    echo "caught up in $caught ms (zxid $(zxid "$follower"))"
else
    echo "not caught up in 60 s: follower at $(zxid "$follower"), leader at $(zxid "$leader")"
fi
refused=$(tail -n +"$mark" "$dir/node$leader.log" | grep -c 'cannot encode a message for a peer' || true)
echo "leader: $refused messages for a peer over the frame limit"
