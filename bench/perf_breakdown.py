#!/usr/bin/env python3
"""Summarises `perf script -F comm,tid,ip,sym` output (DWARF call graphs) of a corral node.

    perf script -i perf.data -F comm,tid,ip,sym | bench/perf_breakdown.py [FUNCTION ...]

Prints the share of samples per thread name, the inclusive share of the corral functions
that matter on the lock path, and, for each FUNCTION given (a substring of a frame name),
which functions it calls directly, by inclusive share of all samples. Inlined frames
count as frames (perf reports them from the line tables), so "direct" children include
inlined helpers.
"""
import collections
import sys

KEY = [
    "corral_server::server::run_core",
    "corral_server::node::Node::handle",
    "corral_server::node::Node::apply_decided",
    "corral_server::machine::StateMachine::apply",
    "corral_server::machine::StateMachine::lock",
    "corral_server::machine::StateMachine::unlock",
    "corral_server::locks::",
    "corral_server::tree::Tree::create",
    "corral_server::tree::Tree::delete",
    "corral_server::tree::Tree::remove_node",
    "corral_server::watches::",
    "corral_server::node::Node::propose",
    "corral_server::node::Node::on_request",
    "corral_server::replication::log::PaxosLog::on_peer",
    "corral_server::replication::log::PaxosLog::flush",
    "corral_server::replication::log::PaxosLog::compact",
    "corral_server::replication::storage::MachineSnapshot::compact",
    "corral_server::replication::storage::MachineSnapshot::into_machine",
    "corral_server::replication::storage::PaxosStorage::write_for_omnipaxos",
    "omnipaxos::sequence_paxos::SequencePaxos<T,B>::handle",
    "omnipaxos::sequence_paxos::SequencePaxos<T,B>::append",
    "corral_server::storage::run_storage_thread",
    "corral_server::wal::Wal::sync",
    "__x64_sys_fdatasync",
    "corral_server::server::accept_loop",
    "corral_server::replication::transport::",
    "corral_protocol::frame::Codec",
    "bincode::",
    "__GI___writev",
    "__x64_sys_recvfrom",
    "__x64_sys_futex",
    "epoll_wait",
    "malloc",
    "_int_malloc",
    "_int_free",
    "cfree",
    "__memmove",
    "finish_task_switch",
]


def samples(lines):
    stack = None
    comm = None
    for line in lines:
        if not line.strip():
            if stack is not None:
                yield comm, stack
            stack = None
            continue
        if not line[0].isspace():
            if stack is not None:
                yield comm, stack
            comm = line.split()[0]
            stack = []
            continue
        parts = line.strip().split(None, 1)
        if len(parts) == 2 and stack is not None:
            stack.append(parts[1])
    if stack is not None:
        yield comm, stack


def main():
    wanted = sys.argv[1:]
    total = 0
    threads = collections.Counter()
    incl = collections.Counter()
    children = {w: collections.Counter() for w in wanted}
    for comm, stack in samples(sys.stdin):
        total += 1
        threads[comm] += 1
        for k in KEY:
            if any(k in f for f in stack):
                incl[k] += 1
        for w in wanted:
            # stack[0] is the leaf; the caller of stack[i] is stack[i + 1].
            for i in range(len(stack) - 1, -1, -1):
                if w in stack[i]:
                    child = stack[i - 1] if i > 0 else "(self)"
                    children[w][child] += 1
                    break
    if total == 0:
        print("no samples")
        return
    pct = lambda n: f"{100.0 * n / total:6.2f}%"
    print(f"{total} samples")
    print("\nby thread:")
    for t, n in threads.most_common():
        print(f"  {pct(n)}  {t}")
    print("\ninclusive share of key functions:")
    for k in KEY:
        if incl[k]:
            print(f"  {pct(incl[k])}  {k}")
    for w in wanted:
        print(f"\ndirect callees of {w} (inclusive):")
        for c, n in children[w].most_common(15):
            print(f"  {pct(n)}  {c[:150]}")


if __name__ == "__main__":
    main()
