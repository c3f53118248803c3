#!/usr/bin/env bash
# Installs, starts and stops the three 3-node clusters that corral-bench compares, all on
# loopback, each node in its own data directory, fsync on (every service's default).
#
#   bench/cluster.sh install                   apt-get install what is missing (etcd-server,
#                                              zookeeper, protobuf-compiler for etcd-client)
#   bench/cluster.sh start [all|corral|etcd|zk]  start the nodes and wait until they answer
#   bench/cluster.sh stop [all|corral|etcd|zk]   SIGTERM (then SIGKILL after 10 s) every node
#   bench/cluster.sh start-node TARGET I       start node I again (after the bench killed it)
#   bench/cluster.sh clean                     delete the data of stopped clusters
#   bench/cluster.sh status
#
# Ports (node i = 1..3):
#   corral    clients 127.0.0.1:2428i, peers 2438i, admin HTTP 2429i
#             (target/release/corral, or $CORRAL_BIN)
#   etcd      clients 127.0.0.1:2379i, peers 2380i   (Debian's etcd-server, 3.4)
#   zk        clients 127.0.0.1:2181i, quorum 2888i, election 3888i   (Debian's zookeeper, 3.8)
# State in $BENCH_DATA (default bench/data): <target>/node<i>/ (data), node<i>.pid, node<i>.log.
# CORRAL_ARGS adds flags to every corral node (experiments: --fsync false,
# --election-timeout-ms 250); the comparison itself runs with the defaults.
#
# Settings are each service's defaults except: ZooKeeper's per-address connection limit
# is lifted (maxClientCnxns=0: every benchmark client comes from 127.0.0.1), its admin
# HTTP server is off (three nodes would fight over port 8080), and its `srvr` command is
# allowed (the bench asks who leads). corral logs as JSON (the bench reads the leader
# from the log).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
data=${BENCH_DATA:-$root/bench/data}
corral_bin=${CORRAL_BIN:-$root/target/release/corral}
zk_jar=/usr/share/java/zookeeper.jar
all_targets=(corral etcd zk)

die() { echo "cluster.sh: $*" >&2; exit 1; }

# Is something listening on 127.0.0.1:$1?
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

client_port() {
    case $1 in
    corral) echo "2428$2" ;;
    etcd) echo "2379$2" ;;
    zk) echo "2181$2" ;;
    esac
}

# Prints the answer of a ZooKeeper four-letter command (empty if none in 2 s).
zk_cmd() {
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1 && printf '%s' '$2' >&3 && cat <&3" 2>/dev/null || true
}

# Does process $1 run (a zombie left by a SIGKILL does not)?
alive() {
    local state
    state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
    [[ -n $state && $state != Z ]]
}

pid_of() {
    local f="$data/$1/node$2.pid"
    [[ -f $f ]] || return 1
    local pid
    pid=$(cat "$f")
    alive "$pid" || return 1
    echo "$pid"
}

install() {
    local need=()
    command -v etcd >/dev/null || need+=(etcd-server)
    command -v etcdctl >/dev/null || need+=(etcd-client)
    [[ -f $zk_jar ]] || need+=(zookeeper)
    command -v java >/dev/null || need+=(default-jre-headless)
    command -v protoc >/dev/null || need+=(protobuf-compiler)
    if ((${#need[@]} == 0)); then
        echo "cluster.sh: etcd, ZooKeeper and protoc are installed"
        return
    fi
    local sudo=()
    [[ $(id -u) == 0 ]] || sudo=(sudo)
    echo "cluster.sh: installing ${need[*]}"
    "${sudo[@]}" apt-get update -q
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q "${need[@]}"
}

start_node() {
    local t=$1 i=$2
    local dir="$data/$t/node$i" log="$data/$t/node$i.log"
    if pid=$(pid_of "$t" "$i"); then
        echo "$t node $i already runs (pid $pid)"
        return
    fi
    local port
    port=$(client_port "$t" "$i")
    listening "$port" && die "port $port is taken by another process: cannot start $t node $i"
    mkdir -p "$dir"
    case $t in
    corral)
        [[ -x $corral_bin ]] || die "$corral_bin missing: cargo build --release --bin corral"
        "$corral_bin" --node-id "$i" \
            --peers "1=127.0.0.1:24381,2=127.0.0.1:24382,3=127.0.0.1:24383" \
            --listen "127.0.0.1:2428$i" --admin-listen "127.0.0.1:2429$i" \
            --data-dir "$dir" --log-format json \
            ${CORRAL_ARGS:-} >>"$log" 2>&1 &
        ;;
    etcd)
        local cluster="n1=http://127.0.0.1:23801,n2=http://127.0.0.1:23802,n3=http://127.0.0.1:23803"
        etcd --name "n$i" --data-dir "$dir" \
            --listen-client-urls "http://127.0.0.1:2379$i" \
            --advertise-client-urls "http://127.0.0.1:2379$i" \
            --listen-peer-urls "http://127.0.0.1:2380$i" \
            --initial-advertise-peer-urls "http://127.0.0.1:2380$i" \
            --initial-cluster "$cluster" --initial-cluster-token corral-bench \
            --initial-cluster-state new --logger zap --log-outputs stderr \
            >>"$log" 2>&1 &
        ;;
    zk)
        [[ -f $zk_jar ]] || die "$zk_jar missing: bench/cluster.sh install"
        mkdir -p "$dir/data"
        echo "$i" >"$dir/data/myid"
        cat >"$dir/zoo.cfg" <<EOF
tickTime=2000
initLimit=10
syncLimit=5
dataDir=$dir/data
clientPort=2181$i
clientPortAddress=127.0.0.1
maxClientCnxns=0
admin.enableServer=false
4lw.commands.whitelist=srvr,ruok,mntr,stat
server.1=127.0.0.1:28881:38881
server.2=127.0.0.1:28882:38882
server.3=127.0.0.1:28883:38883
EOF
        # Debian's jar names its dependencies; log4j 1.2 through slf4j, warnings and up.
        java -Xms256m -Xmx1g -Dzookeeper.log.dir="$dir" -Dzookeeper.root.logger=WARN,CONSOLE \
            -Dlog4j.configuration=file:/etc/zookeeper/conf/log4j.properties \
            -cp "/etc/zookeeper/conf:$zk_jar:/usr/share/java/slf4j-log4j12.jar:/usr/share/java/log4j-1.2.jar" \
            org.apache.zookeeper.server.quorum.QuorumPeerMain "$dir/zoo.cfg" \
            >>"$log" 2>&1 &
        ;;
    *) die "unknown target $t" ;;
    esac
    echo $! >"$data/$t/node$i.pid"
    echo "$t node $i: pid $!, clients on 127.0.0.1:$port, log $log"
}

# Waits (60 s at most) until node i of t accepts connections (ZooKeeper: serves).
wait_node() {
    local t=$1 i=$2 port
    port=$(client_port "$t" "$i")
    for _ in $(seq 1 600); do
        pid_of "$t" "$i" >/dev/null || die "$t node $i exited; see $data/$t/node$i.log"
        if listening "$port"; then
            if [[ $t != zk ]] || zk_cmd "$port" srvr | grep -q '^Mode: \(leader\|follower\)'; then
                return 0
            fi
        fi
        sleep 0.1
    done
    die "$t node $i not ready within 60 s; see $data/$t/node$i.log"
}

stop_target() {
    local t=$1 f pid
    for f in "$data/$t"/node*.pid; do
        [[ -f $f ]] || continue
        pid=$(cat "$f")
        if alive "$pid"; then
            kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 1 100); do
                alive "$pid" || break
                sleep 0.1
            done
            kill -KILL "$pid" 2>/dev/null || true
        fi
        rm -f "$f"
    done
}

targets_of() {
    case ${1:-all} in
    all) echo "${all_targets[@]}" ;;
    corral | etcd | zk) echo "$1" ;;
    *) die "unknown target $1 (corral, etcd, zk or all)" ;;
    esac
}

cmd=${1:-status}
case $cmd in
install) install ;;
start)
    for t in $(targets_of "${2:-all}"); do
        for i in 1 2 3; do start_node "$t" "$i"; done
    done
    for t in $(targets_of "${2:-all}"); do
        for i in 1 2 3; do wait_node "$t" "$i"; done
        echo "$t: 3 nodes up"
    done
    ;;
start-node)
    [[ $# == 3 ]] || die "usage: $0 start-node TARGET I"
    start_node "$2" "$3"
    wait_node "$2" "$3"
    ;;
stop)
    for t in $(targets_of "${2:-all}"); do stop_target "$t"; done
    echo "cluster.sh: stopped ${2:-all}"
    ;;
clean)
    for t in "${all_targets[@]}"; do
        for i in 1 2 3; do
            pid_of "$t" "$i" >/dev/null && die "$t node $i still runs: stop first"
        done
        rm -rf "${data:?}/$t"
    done
    ;;
status)
    for t in "${all_targets[@]}"; do
        for i in 1 2 3; do
            if pid=$(pid_of "$t" "$i"); then
                echo "$t node $i: running (pid $pid), clients on 127.0.0.1:$(client_port "$t" "$i")"
            else
                echo "$t node $i: stopped"
            fi
        done
    done
    ;;
*)
    sed -n '2,13p' "$0" >&2
    exit 2
    ;;
esac
