#!/usr/bin/env bash
# Starts, stops or inspects a corral cluster of 3 (or 5) nodes on loopback.
#
#   scripts/local-cluster.sh start [3|5]   build corral (release) and start the nodes
#   scripts/local-cluster.sh stop          SIGTERM every node, wait for clean exits
#   scripts/local-cluster.sh status        which nodes run, and the addresses to use
#
# Node i listens for clients on 127.0.0.1:228i, for peers on 127.0.0.1:238i and serves its
# admin endpoint (/metrics, /status, ...) on 127.0.0.1:229i; it keeps its
# data in ./corral-cluster/node<i> and logs to ./corral-cluster/node<i>.log.
# Clients: corralctl -s 127.0.0.1:2281,127.0.0.1:2282,127.0.0.1:2283 ...
set -euo pipefail
cd "$(dirname "$0")/.."
dir=corral-cluster
cmd=${1:-status}
n=${2:-3}

case "$cmd" in
start)
    [[ "$n" == 3 || "$n" == 5 ]] || { echo "cluster size must be 3 or 5" >&2; exit 2; }
    cargo build --release --bin corral
    mkdir -p "$dir"
    peers=$(seq -s, -f "%g=127.0.0.1:238%g" 1 "$n")
    for i in $(seq 1 "$n"); do
        if [[ -f "$dir/node$i.pid" ]] && kill -0 "$(cat "$dir/node$i.pid")" 2>/dev/null; then
            echo "node $i already runs (pid $(cat "$dir/node$i.pid"))"
            continue
        fi
        target/release/corral --node-id "$i" --peers "$peers" \
            --listen "127.0.0.1:228$i" --admin-listen "127.0.0.1:229$i" --data-dir "$dir/node$i" \
            >>"$dir/node$i.log" 2>&1 &
        echo $! >"$dir/node$i.pid"
        echo "node $i: pid $!, clients on 127.0.0.1:228$i, log $dir/node$i.log"
    done
    echo "servers: $(seq -s, -f "127.0.0.1:228%g" 1 "$n")"
    ;;
stop)
    for pidfile in "$dir"/node*.pid; do
        [[ -f "$pidfile" ]] || continue
        pid=$(cat "$pidfile")
        if kill -TERM "$pid" 2>/dev/null; then
            for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        fi
        rm -f "$pidfile"
    done
    echo "stopped"
    ;;
status)
    for pidfile in "$dir"/node*.pid; do
        [[ -f "$pidfile" ]] || { echo "no cluster started from here"; exit 0; }
        i=${pidfile##*node}; i=${i%.pid}
        if kill -0 "$(cat "$pidfile")" 2>/dev/null; then state=running; else state=stopped; fi
        echo "node $i: $state, clients on 127.0.0.1:228$i"
    done
    ;;
*)
    echo "usage: $0 start [3|5] | stop | status" >&2
    exit 2
    ;;
esac
