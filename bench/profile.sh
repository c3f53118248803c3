#!/usr/bin/env bash
# Profiles the corral leader (and one follower) with perf under a lock load, by default
# the issue's target: 64 clients acquiring and releasing over 1,000 lock names, on a
# 3-node loopback cluster.
#
#   bench/profile.sh [SECONDS [CLIENTS [LOCKS]]]
#                                     # perf record for SECONDS (default 20) mid-run of
#                                     # CLIENTS (64) clients over LOCKS (1000) lock names
#
# Uses the software cpu-clock event (virtual machines often have no hardware counters)
# and DWARF call graphs (release builds keep line tables: `debug = 1`). Writes, into
# bench/results/profile/: run.txt (the load's own figures), leader-flat.txt (self time
# by symbol), leader-breakdown.txt (per thread, inclusive time of the corral functions on
# the lock path, and their callees; bench/perf_breakdown.py), leader-callers.txt (the
# full call graph), follower-flat.txt, cpu.txt (CPU seconds per node during the profile). perf.data stays in $BENCH_DATA.
# CORRAL_REV / CORRAL_BIN as for run.sh.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
secs=${1:-20}
clients=${2:-64}
locks=${3:-1000}
export BENCH_DATA=${BENCH_DATA:-$root/bench/data}
out=bench/results/profile
mkdir -p "$out" "$BENCH_DATA"

if ! command -v perf >/dev/null; then
    sudo=()
    [[ $(id -u) == 0 ]] || sudo=(sudo)
    "${sudo[@]}" apt-get update -q
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q linux-perf
fi
if [[ -n ${CORRAL_REV:-} && -z ${CORRAL_BIN:-} ]]; then
    sha=$(git rev-parse --short "$CORRAL_REV")
    src=$root/target/bench/rev-$sha
    if [[ ! -x $src/target/release/corral ]]; then
        rm -rf "$src" && mkdir -p "$src"
        git archive "$sha" | tar -x -C "$src"
        (cd "$src" && cargo build --release --bin corral)
    fi
    export CORRAL_BIN=$src/target/release/corral
elif [[ -z ${CORRAL_BIN:-} ]]; then
    cargo build --release --bin corral
fi
(cd bench && cargo build --release)
bench_bin=$root/target/bench/release/corral-bench

trap 'bench/cluster.sh stop corral' EXIT
bench/cluster.sh stop corral >/dev/null
rm -rf "$BENCH_DATA/corral"
bench/cluster.sh start corral

# The load: long enough to cover the profile, with its own warm-up.
warm=12
timeout $((secs + warm + 120)) "$bench_bin" --targets corral --workloads throughput \
    --clients "$clients" --locks "$locks" --extra '' --runs 1 --warmup-s "$warm" \
    --duration-s $((secs + 6)) --global-warmup-s 4 --out "$out/bench" \
    >"$out/run.txt" 2>&1 &
load=$!

# Start once the measured window is under way; find the leader in the nodes' logs.
for _ in $(seq 1 900); do
    grep -q "^== 1 cells" "$out/run.txt" 2>/dev/null && break
    kill -0 "$load" 2>/dev/null || { cat "$out/run.txt" >&2; exit 1; }
    sleep 0.1
done
sleep $((warm / 2))
leader=
for i in 1 2 3; do
    l=$(grep '"leader changed"' "$BENCH_DATA/corral/node$i.log" | tail -1 | sed -n 's/.*Some(\([0-9]*\)).*/\1/p')
    [[ -n $l ]] && leader=$l
done
[[ -n $leader ]] || { echo "profile.sh: no leader in the logs" >&2; exit 1; }
follower=$((leader % 3 + 1))
lpid=$(cat "$BENCH_DATA/corral/node$leader.pid")
fpid=$(cat "$BENCH_DATA/corral/node$follower.pid")
echo "leader: node $leader (pid $lpid); follower: node $follower (pid $fpid); recording ${secs}s"

cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
declare -A before
for i in 1 2 3; do before[$i]=$(cpu "$(cat "$BENCH_DATA/corral/node$i.pid")"); done
perf record -e cpu-clock -F 499 --call-graph dwarf,16384 -p "$lpid" \
    -o "$BENCH_DATA/perf-leader.data" -- sleep "$secs" 2>"$out/perf-record.log" &
lperf=$!
perf record -e cpu-clock -F 199 -g -p "$fpid" \
    -o "$BENCH_DATA/perf-follower.data" -- sleep "$secs" 2>>"$out/perf-record.log"
wait "$lperf" || true
sleep 1
{
    echo "CPU seconds per node during the ${secs} s profile (utime + stime):"
    for i in 1 2 3; do
        after=$(cpu "$(cat "$BENCH_DATA/corral/node$i.pid")")
        role=follower
        [[ $i == "$leader" ]] && role=leader
        echo "  node $i ($role): $(awk -v a="$after" -v b="${before[$i]}" 'BEGIN{printf "%.2f", (a-b)/100}')"
    done
} >"$out/cpu.txt"
wait "$load" || echo "profile.sh: the load ended with an error; see $out/run.txt" >&2

perf report -i "$BENCH_DATA/perf-leader.data" --no-children --sort symbol --stdio \
    --percent-limit 0.5 -g none 2>/dev/null >"$out/leader-flat.txt"
perf report -i "$BENCH_DATA/perf-leader.data" --children --sort symbol --stdio \
    --percent-limit 2 -g caller,0.5,callee,function,percent 2>/dev/null >"$out/leader-callers.txt"
perf report -i "$BENCH_DATA/perf-follower.data" --no-children --sort symbol --stdio \
    --percent-limit 0.5 -g none 2>/dev/null >"$out/follower-flat.txt"
sed -i 's/[[:space:]]*$//' "$out"/*-flat.txt "$out/leader-callers.txt"
perf script -i "$BENCH_DATA/perf-leader.data" -F comm,tid,ip,sym 2>/dev/null |
    python3 bench/perf_breakdown.py "StateMachine::apply" "Node::apply_decided" \
        "PaxosStorage::write (inlined)" "MachineSnapshot::compact" >"$out/leader-breakdown.txt"
cat "$out/cpu.txt"
grep -E "^\[" "$out/run.txt" || true
echo "== top of the leader's flat profile ($out/leader-flat.txt)"
grep -v '^#' "$out/leader-flat.txt" | grep . | head -30 || true
