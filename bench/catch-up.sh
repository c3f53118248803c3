#!/usr/bin/env bash
# Measures how long a follower far behind stops while it catches up through the leader's
# snapshot: on a 3-node loopback cluster, create N1 znodes, stop a follower, create N2
# more through the other two (the leader compacts past the stopped follower), start it
# again, and add up the stalls its core logs ("busy with one input") until it installed
# the snapshot, and how long it took from its start to the install (and the decode, off
# the core, within that).
#
#   bench/catch-up.sh [N1 [N2]]      # defaults 500000 and 250000 (64-byte values)
#
# CORRAL_BIN picks the server binary (default target/release/corral, built if missing),
# as for bench/cluster.sh. Prints the leader changes the two other nodes saw meanwhile
# (a follower's stop alone should cause none), then the zxid installed, the number of
# stalls, their sum and the longest, in ms, then the time from the node's first log line
# to the install and the decode's share of it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
n1=${1:-500000}
n2=${2:-250000}
export BENCH_DATA=${BENCH_DATA:-$root/bench/data}
[[ -n ${CORRAL_BIN:-} ]] || cargo build -q --release --bin corral
cargo build -q --release --bin corral-load
load=$root/target/release/corral-load
dir=$BENCH_DATA/corral

trap 'bench/cluster.sh stop corral >/dev/null 2>&1' EXIT
bench/cluster.sh stop corral >/dev/null 2>&1 || true
rm -rf "$dir"
bench/cluster.sh start corral >/dev/null

create() { # SERVERS REQUESTS
    timeout 600 "$load" --server "$1" --clients 64 --in-flight 4 --op create \
        --requests "$2" --cleanup-s 0 --warmup-s 0 | grep -E 'ops/s|errors' >&2
}
create 127.0.0.1:24281,127.0.0.1:24282,127.0.0.1:24283 "$n1"

leader=
for n in 1 2 3; do
    curl -s "127.0.0.1:2429$n/status" | grep -q '"role":"leader"' && leader=$n
done
[[ -n $leader ]] || { echo "no leader" >&2; exit 1; }
follower=1
[[ $leader == 1 ]] && follower=2
# Leader changes from here on, counted in the log of the node that keeps leading or
# takes over.
marks=()
for n in 1 2 3; do marks+=("$(($(wc -l <"$dir/node$n.log") + 1))"); done
kill -TERM "$(cat "$dir/node$follower.pid")"
for _ in $(seq 1 100); do
    kill -0 "$(cat "$dir/node$follower.pid")" 2>/dev/null || break
    sleep 0.1
done
others=$(for n in 1 2 3; do [[ $n != "$follower" ]] && printf '127.0.0.1:2428%s,' "$n"; done)
create "${others%,}" "$n2"

log=$dir/node$follower.log
from=$(($(wc -l <"$log") + 1))
bench/cluster.sh start corral >/dev/null
installed=
for _ in $(seq 1 240); do
    tail -n +"$from" "$log" | grep -q 'installing a snapshot' && installed=yes && break
    sleep 0.5
done
[[ -n $installed ]] || { echo "node $follower installed no snapshot in 120 s" >&2; exit 1; }
# Stalls are logged when the input that caused them ends: give the last one time.
sleep 3
changes=0
for n in 1 2 3; do
    [[ $n == "$follower" ]] && continue
    c=$(tail -n +"${marks[$((n - 1))]}" "$dir/node$n.log" | grep -c '"leader changed"' || true)
    ((c > changes)) && changes=$c
done
echo "leader changes seen by a surviving node after the follower stopped: $changes"
tail -n +"$from" "$log" | python3 -c '
import json, sys
from datetime import datetime
stalls, to, decode_ms, start, installed = [], None, None, None, None
for line in sys.stdin:
    try:
        record = json.loads(line)
    except ValueError:
        continue
    fields = record.get("fields", {})
    message = fields.get("message", "")
    at = datetime.fromisoformat(record.get("timestamp", "").replace("Z", "+00:00"))
    start = start or at
    if "busy with one input" in message:
        stalls.append(fields["ms"])
    if "decoded a snapshot from the leader" in message:
        decode_ms = fields.get("ms")
    if "installing a snapshot" in message:
        to, installed = fields.get("to"), at
print(f"installed zxid {to}: {len(stalls)} core stalls of 50 ms or more, "
      f"{sum(stalls)} ms in all, longest {max(stalls, default=0)} ms")
if installed and start:
    print(f"start to install {(installed - start).total_seconds() * 1000:.0f} ms, "
          f"of which the decode (off the core) {decode_ms} ms")
'
