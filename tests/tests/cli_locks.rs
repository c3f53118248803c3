//! `corralctl lock`, `corralctl elect` and `corralctl locks` end to end against a real
//! server: the command runs with the fencing token in its environment and its exit code
//! is passed on, `--try` and `--timeout` give up while another process holds the lock,
//! two concurrent `corralctl lock` runs never overlap, a lock lost while the command
//! runs (its lease starved through a blackholed proxy) stops the command and exits 75,
//! several names take every lock at once (all or nothing, one token),
//! `elect` runs a command as leader, and `locks --json` lists holders and waiters.
//!
//! Every wait is bounded: on a process's exit or output, on a watch, or (for a process
//! appearing in /proc, which has no event) a bounded poll; nothing sleeps to
//! synchronise.

use corral_client::recipes::Election;
use corral_client::{Client, ClientConfig, ErrorCode, LockOptions};
use corral_tests::proxy::{Mode, Proxy};
use corral_tests::{corralctl_bin, eventually, TestServer};
use serde_json::Value;
use std::net::SocketAddr;
use std::process::{Output, Stdio};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio::time::{timeout, Instant};

/// Longest a corralctl command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound of every other wait.
const WAIT: Duration = Duration::from_secs(10);
/// corralctl's exit code for a lock lost while the command ran.
const EXIT_LOCK_LOST: i32 = 75;

async fn connect(addr: &str) -> Client {
    Client::connect(ClientConfig::new([addr]))
        .await
        .expect("connect")
}

async fn bounded<F: std::future::Future>(what: &str, f: F) -> F::Output {
    match timeout(WAIT, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// Waits (with child watches, bounded) until the lock `lock` has `len` queue nodes.
async fn queue_length_reaches(client: &Client, lock: &str, len: usize, what: &str) {
    bounded(what, async {
        loop {
            let (children, _, watcher) = client.get_children_watch(lock).await.expect("children");
            if children.len() == len {
                return;
            }
            let _ = watcher.await;
        }
    })
    .await;
}

/// corralctl against `server` (`-s server args...`), killed if dropped while running.
fn ctl(server: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(corralctl_bin());
    cmd.args(["-s", server])
        .args(args)
        .env_remove("CORRAL_SERVER")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Runs corralctl to the end, bounded.
async fn run(server: &str, args: &[&str]) -> Output {
    match timeout(COMMAND_TIMEOUT, ctl(server, args).output()).await {
        Ok(output) => output.expect("run corralctl"),
        Err(_) => panic!("corralctl {args:?} did not finish within {COMMAND_TIMEOUT:?}"),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Waits until `lock` has a granted entry, through a child watch (bounded); returns
/// its token.
async fn held_token(client: &Client, lock: &str) -> u64 {
    bounded("the lock to be held", async {
        loop {
            let watcher = match client.get_children_watch(lock).await {
                Ok((_, _, watcher)) => watcher,
                Err(e) if e.is(ErrorCode::NoNode) => {
                    let (stat, watcher) = client.exists_watch(lock).await.expect("exists");
                    if stat.is_some() {
                        continue;
                    }
                    watcher
                }
                Err(e) => panic!("get_children {lock}: {e}"),
            };
            let locks = client.locks(lock).await.expect("locks");
            let holder = locks
                .iter()
                .filter(|l| l.lock == lock)
                .flat_map(|l| l.queue.iter())
                .find(|e| e.granted);
            if let Some(entry) = holder {
                return entry.token;
            }
            let _ = watcher.await;
        }
    })
    .await
}

/// Waits (bounded, with watches) until nobody is in `lock`'s queue.
async fn until_free(client: &Client, lock: &str) {
    bounded("the lock to be free", async {
        loop {
            match client.get_children_watch(lock).await {
                Ok((children, _, watcher)) => {
                    if children.is_empty() {
                        return;
                    }
                    let _ = watcher.await;
                }
                Err(e) if e.is(ErrorCode::NoNode) => return,
                Err(e) => panic!("get_children {lock}: {e}"),
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_runs_the_command_with_the_token_and_passes_its_exit_code_on() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    let client = connect(&addr).await;
    client
        .create(
            "/guarded",
            b"0".to_vec(),
            corral_client::CreateMode::Persistent,
        )
        .await
        .expect("create");

    // The command sees the lock in its environment while it holds it.
    let mut child = ctl(
        &addr,
        &[
            "lock",
            "/cli/a",
            "--",
            "sh",
            "-c",
            "echo \"$CORRAL_LOCK_TOKEN $CORRAL_LOCK_NAME $CORRAL_LOCK_NODE $CORRAL_SERVER\"; read line",
        ],
    )
    .stdin(Stdio::piped())
    .stderr(Stdio::inherit())
    .spawn()
    .expect("spawn");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let line = bounded("the command's output", lines.next_line())
        .await
        .expect("read")
        .expect("a line");
    let fields: Vec<&str> = line.split(' ').collect();
    assert_eq!(fields.len(), 4, "{line:?}");
    let token: u64 = fields[0].parse().expect("a numeric token");
    assert_eq!(fields[1], "/cli/a");
    assert!(fields[2].starts_with("/cli/a/x-"), "{line:?}");
    assert_eq!(fields[3], addr);
    assert_eq!(held_token(&client, "/cli/a").await, token);
    // The token fences writes while the command runs.
    client
        .transaction()
        .check_lock("/cli/a", token)
        .set_data("/guarded", b"1".to_vec(), None)
        .commit()
        .await
        .expect("a write fenced with the command's token");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"done\n").await.expect("write");
    drop(stdin);
    let status = bounded("corralctl to exit", child.wait())
        .await
        .expect("wait");
    assert_eq!(status.code(), Some(0));
    // Released when the command exited: the token fences no more.
    until_free(&client, "/cli/a").await;
    let err = client
        .transaction()
        .check_lock("/cli/a", token)
        .set_data("/guarded", b"2".to_vec(), None)
        .commit()
        .await
        .expect_err("released");
    assert!(err.is(ErrorCode::LockNotHeld), "{err}");

    // The command's exit code is passed on, a signal as 128 + N.
    let out = run(&addr, &["lock", "/cli/a", "--", "sh", "-c", "exit 7"]).await;
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    let out = run(
        &addr,
        &["lock", "/cli/a", "--", "sh", "-c", "kill -TERM $$"],
    )
    .await;
    assert_eq!(out.status.code(), Some(128 + 15), "{out:?}");
    // Other kinds, a TTL, a lock-delay.
    let out = run(
        &addr,
        &[
            "lock",
            "/cli/rw",
            "--kind",
            "read",
            "--ttl",
            "2s",
            "--lock-delay",
            "500ms",
            "--",
            "sh",
            "-c",
            "echo $CORRAL_LOCK_NODE",
        ],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    assert!(text(&out.stdout).starts_with("/cli/rw/r-"), "{out:?}");
    // A command that does not exist.
    let out = run(&addr, &["lock", "/cli/a", "--", "/nonexistent/command"]).await;
    assert_eq!(out.status.code(), Some(127), "{out:?}");
    assert!(text(&out.stderr).contains("cannot run"), "{out:?}");
    until_free(&client, "/cli/a").await;
    // Usage errors.
    for args in [
        &["lock", "/cli/a"][..],
        &["lock", "/cli/a", "--try", "--timeout", "1s", "--", "true"],
        &["lock", "/cli/a", "--ttl", "ten", "--", "true"],
        &["lock", "/cli/a", "--kind", "shared", "--", "true"],
    ] {
        let out = run(&addr, args).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_and_timeout_give_up_while_another_process_holds_the_lock() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    let client = connect(&addr).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let marker = dir.path().join("ran");
    let marker = marker.to_str().expect("utf-8 path");
    let guard = client
        .lock("/cli/busy", LockOptions::default())
        .acquire()
        .await
        .expect("hold the lock");

    let out = run(
        &addr,
        &["lock", "--try", "/cli/busy", "--", "touch", marker],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("/cli/busy is held"), "{stderr}");
    assert!(
        stderr.contains(&format!("{:#x}", client.session_id())),
        "names the holder: {stderr}"
    );
    let started = Instant::now();
    let out = run(
        &addr,
        &[
            "lock",
            "--timeout",
            "300ms",
            "/cli/busy",
            "--",
            "touch",
            marker,
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(text(&out.stderr).contains("timed out"), "{out:?}");
    assert!(
        !std::path::Path::new(marker).exists(),
        "the command never ran"
    );
    // Neither left anything in the queue.
    let locks = client.locks("/cli/busy").await.expect("locks");
    assert_eq!(locks[0].queue.len(), 1, "{locks:?}");

    guard.release().await.expect("release");
    let out = run(
        &addr,
        &["lock", "--try", "/cli/busy", "--", "touch", marker],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    assert!(std::path::Path::new(marker).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_lock_commands_do_not_overlap() {
    const WORKERS: usize = 3;
    const ROUNDS: usize = 3;
    let server = TestServer::start(&[]);
    let addr = server.addr();
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("log");
    let log = log.to_str().expect("utf-8 path").to_string();
    // Each critical section appends a start marker, works a little, appends an end
    // marker: with mutual exclusion the markers pair up.
    let script = "echo \"start $1\" >> \"$2\"; sleep 0.05; echo \"end $1\" >> \"$2\"";
    let mut workers = Vec::new();
    for worker in 0..WORKERS {
        let (addr, log) = (addr.clone(), log.clone());
        workers.push(tokio::spawn(async move {
            for round in 0..ROUNDS {
                let id = format!("{worker}.{round}");
                let out = run(
                    &addr,
                    &[
                        "lock",
                        "/cli/mutex",
                        "--",
                        "sh",
                        "-c",
                        script,
                        "sh",
                        &id,
                        &log,
                    ],
                )
                .await;
                assert!(out.status.success(), "{out:?}");
            }
        }));
    }
    for worker in workers {
        timeout(3 * COMMAND_TIMEOUT, worker)
            .await
            .expect("workers finish")
            .expect("worker");
    }
    let written = std::fs::read_to_string(&log).expect("read the log");
    let lines: Vec<&str> = written.lines().collect();
    assert_eq!(lines.len(), 2 * WORKERS * ROUNDS, "{written}");
    for pair in lines.chunks(2) {
        let start = pair[0].strip_prefix("start ");
        let end = pair[1].strip_prefix("end ");
        assert!(
            start.is_some() && start == end,
            "interleaved critical sections:\n{written}"
        );
    }
}

/// The pids of the processes whose parent is `parent` (from /proc).
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    // pid (comm) state ppid ...: comm may hold spaces and parentheses.
                    let after = &stat[stat.rfind(')')? + 1..];
                    after.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_lost_while_the_command_runs_stops_it_and_exits_75() {
    let server = TestServer::start(&[]);
    let target: SocketAddr = server.addr().parse().expect("server address");
    let proxy = Proxy::start(target).await.expect("proxy");
    let via = proxy.addr().to_string();
    let client = connect(&server.addr()).await;

    let child = ctl(
        &via,
        &["lock", "--ttl", "1s", "/cli/lost", "--", "sleep", "30"],
    )
    .stdout(Stdio::null())
    .spawn()
    .expect("spawn");
    let ctl_pid = child.id().expect("corralctl pid");
    // The lock is granted once corralctl runs the command (no event: poll /proc).
    let sleep_pid = eventually("corralctl to start sleep", WAIT, || {
        let found = children_of(ctl_pid).first().copied();
        async move { found }
    })
    .await;
    let token = held_token(&client, "/cli/lost").await;

    // corralctl's lease cannot be renewed any more.
    proxy.set_mode(Mode::Blackhole);
    let cut_at = Instant::now();
    let out = match timeout(COMMAND_TIMEOUT, child.wait_with_output()).await {
        Ok(out) => out.expect("wait"),
        Err(_) => panic!("corralctl did not stop the command"),
    };
    let took = cut_at.elapsed();
    let stderr = text(&out.stderr);
    println!("corralctl exited {took:?} after the cut: {stderr}");
    assert_eq!(out.status.code(), Some(EXIT_LOCK_LOST), "{stderr}");
    assert!(stderr.contains("corralctl: lock lost"), "{stderr}");
    assert!(
        took < Duration::from_secs(10),
        "stopped well before sleep's 30 s: {took:?}"
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{sleep_pid}")).exists(),
        "sleep ({sleep_pid}) was stopped and reaped"
    );
    // The server expires the lease; the lock is free for others, with a newer token.
    let guard = client
        .lock("/cli/lost", LockOptions::default())
        .acquire_timeout(WAIT)
        .await
        .expect("acquire")
        .expect("free after the lease expired");
    assert!(guard.token() > token);
}

/// `corralctl lock` with several names takes every lock at once: `--try` while one is
/// held leaves nothing behind on the others; granted, the command sees one token and a
/// line per lock and node, and the token fences writes under each lock; lost (the lease
/// starved), the command is stopped with 75 and every lock is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_takes_several_locks_at_once() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    let client = connect(&addr).await;
    client
        .create(
            "/guarded",
            b"0".to_vec(),
            corral_client::CreateMode::Persistent,
        )
        .await
        .expect("create");
    let dir = tempfile::tempdir().expect("temp dir");
    let marker = dir.path().join("ran");
    let marker = marker.to_str().expect("utf-8 path");

    // One of them held: --try gives up, and leaves no node in the free one's queue.
    let guard = client
        .lock("/cli/m2", LockOptions::default())
        .acquire()
        .await
        .expect("hold /cli/m2");
    let out = run(
        &addr,
        &["lock", "--try", "/cli/m1", "/cli/m2", "--", "touch", marker],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("lock /cli/m2 is held (by session"),
        "{stderr}"
    );
    assert!(!stderr.contains("/cli/m1 is held"), "{stderr}");
    assert!(
        !std::path::Path::new(marker).exists(),
        "the command did not run"
    );
    until_free(&client, "/cli/m1").await;
    assert!(guard.release().await.expect("release"));

    // Both granted: one token, a line per lock and per node, in the order given.
    let mut child = ctl(
        &addr,
        &[
            "lock",
            "/cli/m2",
            "/cli/m1",
            "--",
            "sh",
            "-c",
            "echo \"$CORRAL_LOCK_TOKEN\"; echo \"$CORRAL_LOCK_NAME\"; echo \"$CORRAL_LOCK_NODE\"; read line",
        ],
    )
    .stdin(Stdio::piped())
    .stderr(Stdio::inherit())
    .spawn()
    .expect("spawn");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut read = Vec::new();
    for _ in 0..5 {
        let line = bounded("the command's output", lines.next_line())
            .await
            .expect("read")
            .expect("a line");
        read.push(line);
    }
    let token: u64 = read[0].parse().expect("a numeric token");
    assert_eq!(read[1..3], ["/cli/m2", "/cli/m1"], "{read:?}");
    assert!(read[3].starts_with("/cli/m2/x-"), "{read:?}");
    assert!(read[4].starts_with("/cli/m1/x-"), "{read:?}");
    for lock in ["/cli/m1", "/cli/m2"] {
        assert_eq!(held_token(&client, lock).await, token, "{lock}");
    }
    client
        .transaction()
        .check_lock("/cli/m1", token)
        .check_lock("/cli/m2", token)
        .set_data("/guarded", b"1".to_vec(), None)
        .commit()
        .await
        .expect("a write fenced by both locks with the command's token");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"done\n").await.expect("write");
    drop(stdin);
    let status = bounded("corralctl to exit", child.wait())
        .await
        .expect("wait");
    assert_eq!(status.code(), Some(0));
    until_free(&client, "/cli/m1").await;
    until_free(&client, "/cli/m2").await;

    // Lost (the lease starved through a blackholed proxy): the command is stopped,
    // corralctl exits 75, and once the lease expires both locks are free.
    let target: SocketAddr = addr.parse().expect("server address");
    let proxy = Proxy::start(target).await.expect("proxy");
    let via = proxy.addr().to_string();
    let child = ctl(
        &via,
        &[
            "lock", "--ttl", "1s", "/cli/m1", "/cli/m2", "--", "sleep", "30",
        ],
    )
    .stdout(Stdio::null())
    .spawn()
    .expect("spawn");
    let ctl_pid = child.id().expect("corralctl pid");
    eventually("corralctl to start sleep", WAIT, || {
        let found = children_of(ctl_pid).first().copied();
        async move { found }
    })
    .await;
    let token = held_token(&client, "/cli/m2").await;
    proxy.set_mode(Mode::Blackhole);
    let out = match timeout(COMMAND_TIMEOUT, child.wait_with_output()).await {
        Ok(out) => out.expect("wait"),
        Err(_) => panic!("corralctl did not stop the command"),
    };
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(EXIT_LOCK_LOST), "{stderr}");
    assert!(
        stderr.contains("corralctl: lock lost (/cli/m1, /cli/m2:"),
        "{stderr}"
    );
    let guard = client
        .lock_many(["/cli/m1", "/cli/m2"], LockOptions::default())
        .acquire_timeout(WAIT)
        .await
        .expect("acquire")
        .expect("both free after the lease expired");
    assert!(guard.token("/cli/m1").is_some_and(|t| t > token));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elect_runs_the_command_while_leader() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    let client = connect(&addr).await;
    let election = Election::new(&client, "/cli/elect", "");

    let mut child = ctl(
        &addr,
        &[
            "elect",
            "/cli/elect",
            "--data",
            "host-a",
            "--",
            "sh",
            "-c",
            "echo \"$CORRAL_LEADER_TOKEN $CORRAL_ELECTION_NAME\"; read line; exit 3",
        ],
    )
    .stdin(Stdio::piped())
    .stderr(Stdio::inherit())
    .spawn()
    .expect("spawn");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let line = bounded("the leader's output", lines.next_line())
        .await
        .expect("read")
        .expect("a line");
    let (token, name) = line.split_once(' ').expect("two fields");
    let token: u64 = token.parse().expect("a numeric token");
    assert_eq!(name, "/cli/elect");
    let leader = election.leader().await.expect("leader").expect("a leader");
    assert_eq!(
        (leader.token, leader.data.as_slice()),
        (token, &b"host-a"[..])
    );

    // A second candidate is not elected while the first leads.
    let out = run(
        &addr,
        &["elect", "--timeout", "300ms", "/cli/elect", "--", "true"],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(text(&out.stderr).contains("not elected"), "{out:?}");

    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"done\n").await.expect("write");
    drop(stdin);
    let status = bounded("corralctl to exit", child.wait())
        .await
        .expect("wait");
    assert_eq!(status.code(), Some(3), "the leader's exit code");
    until_free(&client, "/cli/elect").await;
    assert_eq!(election.leader().await.expect("leader"), None, "resigned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_lists_holders_and_waiters() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    let a = connect(&addr).await;
    let b = connect(&addr).await;
    let options = LockOptions::default().with_lock_delay(Duration::from_millis(1500));
    let held = a
        .lock("/cli/listed/one", options.clone())
        .acquire()
        .await
        .expect("acquire");
    let waiting = tokio::spawn({
        let lock = b.lock("/cli/listed/one", options);
        async move { lock.acquire().await }
    });
    queue_length_reaches(&a, "/cli/listed/one", 2, "b to queue").await;
    let sem = a
        .lock(
            "/cli/listed/sem",
            LockOptions::default().with_kind(corral_client::LockKind::Semaphore { permits: 2 }),
        )
        .acquire()
        .await
        .expect("permit");

    let out = run(&addr, &["--json", "locks", "/cli/listed"]).await;
    assert!(out.status.success(), "{out:?}");
    let listing: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(listing["path"], "/cli/listed");
    let locks = listing["locks"].as_array().expect("locks");
    assert_eq!(locks.len(), 2, "{listing}");
    let one = &locks[0];
    assert_eq!(one["lock"], "/cli/listed/one");
    assert_eq!(one["kind"], "exclusive");
    assert_eq!(one["lock_delay_ms"], 1500);
    assert_eq!(one["queue_length"], 2);
    let holders = one["holders"].as_array().expect("holders");
    assert_eq!(holders.len(), 1, "{one}");
    assert_eq!(holders[0]["node"], held.node());
    assert_eq!(holders[0]["token"], held.token());
    assert_eq!(holders[0]["session"], a.session_id());
    let waiters = one["waiters"].as_array().expect("waiters");
    assert_eq!(waiters.len(), 1, "{one}");
    assert_eq!(waiters[0]["session"], b.session_id());
    assert!(waiters[0]["token"].as_u64() > Some(held.token()));
    assert_eq!(
        waiters[0]["waits_for"][0],
        a.session_id(),
        "who waits for whom"
    );
    let s = &locks[1];
    assert_eq!(s["lock"], "/cli/listed/sem");
    assert_eq!(s["kind"], "semaphore(2)");
    assert_eq!(s["holders"][0]["token"], sem.token());

    let out = run(&addr, &["locks", "/cli/listed"]).await;
    assert!(out.status.success(), "{out:?}");
    let table = text(&out.stdout);
    assert!(table.starts_with("LOCK"), "{table}");
    assert!(
        table.contains("/cli/listed/one") && table.contains("1500ms"),
        "{table}"
    );
    assert!(
        table.contains(&format!("held     {}", held.node())),
        "{table}"
    );
    assert!(table.contains("waiting"), "{table}");
    assert!(
        table.contains(&format!("waits for {:#x}", a.session_id())),
        "{table}"
    );
    assert!(table.contains(&format!("token {}", sem.token())), "{table}");

    // Nothing there: an empty listing.
    let out = run(&addr, &["--json", "locks", "/nothing"]).await;
    let listing: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(listing["locks"], serde_json::json!([]));
    held.release().await.expect("release");
    let next = bounded("b's grant", waiting)
        .await
        .expect("task")
        .expect("b");
    assert!(next.token() > held.token());
}

/// A multi-lock waiting first in a queue holds nothing and waits for no session there:
/// `corralctl locks` names the other locks it waits on (found with `GetLockGroup`,
/// even when they are outside the listed path).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_names_the_other_locks_a_waiting_multi_lock_waits_on() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    let a = connect(&addr).await;
    let b = connect(&addr).await;
    let held = a
        .lock("/elsewhere/b", LockOptions::default())
        .acquire()
        .await
        .expect("acquire");
    let group = tokio::spawn({
        let set = b.lock_many(["/cli/group/a", "/elsewhere/b"], LockOptions::default());
        async move { set.acquire().await }
    });
    queue_length_reaches(&a, "/elsewhere/b", 2, "the multi-lock to queue").await;

    let out = run(&addr, &["--json", "locks", "/cli/group"]).await;
    assert!(out.status.success(), "{out:?}");
    let listing: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let waiter = &listing["locks"][0]["waiters"][0];
    assert_eq!(waiter["session"], b.session_id(), "{listing}");
    assert_eq!(waiter["waits_for"], serde_json::json!([]), "{listing}");
    assert_eq!(
        waiter["multi_lock_waits_on"],
        serde_json::json!(["/elsewhere/b"]),
        "{listing}"
    );
    let table = text(&run(&addr, &["locks", "/cli/group"]).await.stdout);
    assert!(
        table.contains("multi-lock, waits on /elsewhere/b"),
        "{table}"
    );
    // The holder of the other lock waits on nothing.
    let out = run(&addr, &["--json", "locks", "/elsewhere"]).await;
    let listing: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let lock = &listing["locks"][0];
    assert!(
        lock["holders"][0].get("multi_lock_waits_on").is_none(),
        "{listing}"
    );
    assert_eq!(
        lock["waiters"][0]["waits_for"],
        serde_json::json!([a.session_id()])
    );

    assert!(held.release().await.expect("release"));
    let set = bounded("the multi-lock's grant", group)
        .await
        .expect("task")
        .expect("granted");
    assert!(set.release().await.expect("release"));
}

/// More locks than one frame describes: `GetLocks` is refused with `LimitExceeded`, and
/// `corralctl locks` lists them all, page by page (`GetLocksPage`), as does
/// `Client::locks_pages`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_lists_more_locks_than_a_frame_holds() {
    let server = TestServer::start(&["--max-data-bytes", "1000", "--max-frame-bytes", "8192"]);
    let addr = server.addr();
    let a = connect(&addr).await;
    let names: Vec<String> = (0..300).map(|i| format!("/many/lock-{i:03}")).collect();
    let guards = futures::future::try_join_all(names.iter().map(|n| {
        let lock = a.lock(n, LockOptions::default());
        async move { lock.acquire().await }
    }))
    .await
    .expect("acquire them all");
    let refused = a.locks("/many").await.expect_err("too large for a frame");
    assert_eq!(refused.code(), Some(ErrorCode::LimitExceeded), "{refused}");

    let mut pages = a.locks_pages("/many", 1000);
    let (mut listed, mut count) = (Vec::new(), 0);
    while let Some(page) = pages.next_page().await.expect("a page") {
        assert!(!page.locks.is_empty());
        count += 1;
        listed.extend(page.locks.into_iter().map(|l| l.lock));
    }
    assert_eq!(listed, names);
    assert!(count > 1, "{count} page(s)");

    let out = run(&addr, &["--json", "locks", "/many"]).await;
    assert!(out.status.success(), "{out:?}");
    let listing: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let locks = listing["locks"].as_array().expect("locks");
    let tokens: Vec<u64> = guards.iter().map(|g| g.token()).collect();
    let listed: Vec<(String, u64)> = locks
        .iter()
        .map(|l| {
            let name = l["lock"].as_str().expect("a name").to_string();
            (name, l["holders"][0]["token"].as_u64().expect("a token"))
        })
        .collect();
    let expected: Vec<(String, u64)> = names.iter().cloned().zip(tokens).collect();
    assert_eq!(listed, expected);
}

/// SIGQUIT (a terminal's Ctrl-\, which reaches corralctl's process group only) is passed
/// on to the command like INT, TERM and HUP, and the lock is released once the command
/// ended: corralctl used to die of it, leaving the command running without the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigquit_is_passed_on_to_the_command_before_the_lock_goes() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    let client = connect(&addr).await;
    let (child, ctl_pid, sleep_pid) = locked_sleep(&addr, "/cli/quit").await;
    send("QUIT", ctl_pid).await;
    let out = match timeout(COMMAND_TIMEOUT, child.wait_with_output()).await {
        Ok(out) => out.expect("wait"),
        Err(_) => panic!("corralctl did not end after SIGQUIT"),
    };
    // sleep died of SIGQUIT: 128 + 3, passed on as corralctl's own exit code.
    assert_eq!(out.status.code(), Some(131), "{}", text(&out.stderr));
    assert!(
        !std::path::Path::new(&format!("/proc/{sleep_pid}")).exists(),
        "sleep ({sleep_pid}) ended with corralctl"
    );
    until_free(&client, "/cli/quit").await;
}

/// The state letter of a process (`/proc/PID/stat`: `T` when stopped).
fn state_of(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

/// `corralctl lock LOCK -- sleep 30`, once sleep runs: the child, its pid and sleep's.
async fn locked_sleep(addr: &str, lock: &str) -> (tokio::process::Child, u32, u32) {
    let child = ctl(addr, &["lock", lock, "--", "sleep", "30"])
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    let ctl_pid = child.id().expect("corralctl pid");
    let sleep_pid = eventually("corralctl to start sleep", WAIT, || {
        let found = children_of(ctl_pid).first().copied();
        async move { found }
    })
    .await;
    (child, ctl_pid, sleep_pid)
}

async fn send(signal: &str, pid: u32) {
    let status = Command::new("kill")
        .args(["-s", signal, "--", &pid.to_string()])
        .status()
        .await
        .expect("kill");
    assert!(status.success(), "kill -s {signal} {pid}");
}

/// Ctrl-Z (SIGTSTP, which reaches corralctl's process group only) stops the command as
/// well as corralctl, and continuing corralctl continues the command. corralctl used to
/// stop alone: its keepalives stopped, and the command ran on while the lock expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_z_stops_the_command_with_corralctl() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    let client = connect(&addr).await;
    let (child, ctl_pid, sleep_pid) = locked_sleep(&addr, "/cli/tstp").await;
    send("TSTP", ctl_pid).await;
    eventually("both to stop", WAIT, || {
        let stopped = state_of(ctl_pid) == Some('T') && state_of(sleep_pid) == Some('T');
        async move { stopped.then_some(()) }
    })
    .await;
    send("CONT", ctl_pid).await;
    eventually("sleep to run again", WAIT, || {
        let running = matches!(state_of(sleep_pid), Some(s) if s != 'T');
        async move { running.then_some(()) }
    })
    .await;
    // Still supervised: SIGTERM to corralctl reaches sleep, and the lock is given back.
    send("TERM", ctl_pid).await;
    let out = match timeout(COMMAND_TIMEOUT, child.wait_with_output()).await {
        Ok(out) => out.expect("wait"),
        Err(_) => panic!("corralctl did not end after SIGTERM"),
    };
    assert_eq!(out.status.code(), Some(143), "{}", text(&out.stderr));
    assert!(
        !std::path::Path::new(&format!("/proc/{sleep_pid}")).exists(),
        "sleep ({sleep_pid}) ended with corralctl"
    );
    until_free(&client, "/cli/tstp").await;
}
