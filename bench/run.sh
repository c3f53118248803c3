#!/usr/bin/env bash
# The whole comparison in one command, on a fresh Debian machine with a Rust toolchain:
# installs etcd and ZooKeeper (and protoc), builds corral and corral-bench, starts 3-node
# clusters of corral, etcd and ZooKeeper on loopback with fresh data directories, runs
# every workload against all three, and stops the clusters again (also on failure).
#
#   bench/run.sh                 # the full matrix (about 25 minutes on 2 cores)
#   bench/run.sh --quick         # a shorter matrix (about 10 minutes)
#   bench/run.sh --workloads uncontended,handoff --runs 5    # any corral-bench flags
#
# Results: bench/results/<UTC time>/{table.txt,results.json,results.md,plots/*.svg},
# copied to bench/results/latest/. The run is bounded by BENCH_TIMEOUT_S (default 3600).
#
# BENCH_HALT_POLL_NS=<ns> sets the guest's halt polling (cpuidle-haltpoll's
# guest_halt_poll_ns, when the machine has it) for the run and restores it on exit: how
# long an idle vCPU polls before it halts, for every service alike (docs/BENCHMARKS.md,
# "What is left", item 1). Unset, the machine's setting is left as it is.
#
# corral is built from the work tree, or with CORRAL_REV=<git revision> (e.g. HEAD, or a
# commit before an optimization) from that revision alone, in target/bench/rev-<sha>/;
# CORRAL_BIN=<path> uses a binary as it is.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export BENCH_DATA=${BENCH_DATA:-$root/bench/data}

bench/cluster.sh install
echo "== building corral and corral-bench (release)"
if [[ -n ${CORRAL_BIN:-} ]]; then
    export CORRAL_VERSION=${CORRAL_VERSION:-"binary $CORRAL_BIN"}
    echo "using corral binary $CORRAL_BIN"
elif [[ -n ${CORRAL_REV:-} ]]; then
    sha=$(git rev-parse --short "$CORRAL_REV")
    src=$root/target/bench/rev-$sha
    if [[ ! -x $src/target/release/corral ]]; then
        rm -rf "$src" && mkdir -p "$src"
        git archive "$sha" | tar -x -C "$src"
        (cd "$src" && cargo build --release --bin corral)
    fi
    export CORRAL_BIN=$src/target/release/corral CORRAL_VERSION="$sha (built from git alone)"
    echo "using corral $sha: $CORRAL_BIN"
else
    cargo build --release --bin corral
fi
(cd bench && cargo build --release)
bench_bin=$root/target/bench/release/corral-bench

halt_poll=/sys/module/haltpoll/parameters/guest_halt_poll_ns
restore_halt_poll=
if [[ -n ${BENCH_HALT_POLL_NS:-} ]]; then
    if [[ ! -w $halt_poll ]]; then
        echo "BENCH_HALT_POLL_NS: $halt_poll is missing or not writable" >&2
        exit 2
    fi
    restore_halt_poll=$(cat "$halt_poll")
    echo "$BENCH_HALT_POLL_NS" >"$halt_poll"
    echo "== guest_halt_poll_ns $BENCH_HALT_POLL_NS for the run (was $restore_halt_poll)"
fi
on_exit() {
    bench/cluster.sh stop all
    if [[ -n $restore_halt_poll ]]; then
        echo "$restore_halt_poll" >"$halt_poll"
    fi
}
trap on_exit EXIT
bench/cluster.sh stop all >/dev/null
bench/cluster.sh clean
echo "== starting the clusters (data in $BENCH_DATA)"
bench/cluster.sh start all

out=bench/results/$(date -u +%Y%m%d-%H%M%S)
mkdir -p "$out"
echo "== running corral-bench (results in $out)"
status=0
timeout --signal=INT --kill-after=30 "${BENCH_TIMEOUT_S:-3600}" \
    "$bench_bin" --bench-data "$BENCH_DATA" --cluster-script bench/cluster.sh --out "$out" "$@" \
    | tee "$out/table.txt" || status=$?
if [[ -f $out/results.json ]]; then
    rm -rf bench/results/latest
    cp -r "$out" bench/results/latest
    echo "== results: $out (and bench/results/latest)"
fi
exit "$status"
