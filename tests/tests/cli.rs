//! `corralctl` end to end against a real server: every command with human and `--json`
//! output, watches, and exit codes (1 for a failed command, 2 for a usage error).

use corral_client::{Client, ClientConfig, CreateMode, Stat};
use corral_tests::{corralctl_bin, TestServer};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Longest a corralctl command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug)]
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Asserts success and returns stdout.
    fn ok(self) -> String {
        assert!(self.status.success(), "corralctl failed: {self:?}");
        self.stdout
    }

    /// Asserts success and parses stdout as one JSON document.
    fn json(self) -> Value {
        let out = self.ok();
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out:?}"))
    }
}

/// What a corralctl run with bytes in and out did.
#[derive(Debug)]
struct RunBytes {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: String,
}

impl RunBytes {
    /// Asserts success and returns stdout.
    fn ok(self) -> Vec<u8> {
        assert!(
            self.status.success(),
            "corralctl failed ({}): {}",
            self.status,
            self.stderr
        );
        self.stdout
    }

    /// Asserts exit code 1 (a failed command) with `code` named on stderr and nothing
    /// on stdout.
    fn fails_with(&self, code: &str) {
        assert_eq!(
            self.status.code(),
            Some(1),
            "{}: {}",
            self.status,
            self.stderr
        );
        assert!(self.stderr.contains(code), "{code}: {}", self.stderr);
        assert!(
            self.stdout.is_empty(),
            "{} bytes on stdout",
            self.stdout.len()
        );
    }
}

/// Runs corralctl with `args` (no implicit server), bounded in time.
fn run_raw(args: &[&str], env: &[(&str, &str)]) -> Run {
    let r = run_io(args, env, None);
    Run {
        status: r.status,
        stdout: String::from_utf8_lossy(&r.stdout).into_owned(),
        stderr: r.stderr,
    }
}

/// Runs corralctl with `args` (no implicit server), bounded in time, with `input` on
/// its stdin (else /dev/null); stdout as bytes.
fn run_io(args: &[&str], env: &[(&str, &str)], input: Option<&[u8]>) -> RunBytes {
    let mut cmd = Command::new(corralctl_bin());
    cmd.args(args)
        .env_remove("CORRAL_SERVER")
        .env_remove("CORRAL_MAX_FRAME_BYTES")
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn corralctl");
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        let input = input.to_vec();
        // Closed when written (corralctl sees its end); a corralctl that exits without
        // reading it all just fails the write.
        std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
    }
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stdout.read_to_end(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("corralctl {args:?} did not finish within {COMMAND_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    RunBytes {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

/// Runs corralctl against `server`.
fn ctl(server: &TestServer, args: &[&str]) -> Run {
    let addr = server.addr();
    let mut all = vec!["-s", addr.as_str()];
    all.extend_from_slice(args);
    run_raw(&all, &[])
}

/// Runs corralctl against `server` with `input` on its stdin; stdout as bytes.
fn ctl_io(server: &TestServer, args: &[&str], input: &[u8]) -> RunBytes {
    let addr = server.addr();
    let mut all = vec!["-s", addr.as_str()];
    all.extend_from_slice(args);
    run_io(&all, &[], Some(input))
}

/// A node's data as `corralctl get --raw` writes it.
fn get_raw(server: &TestServer, path: &str) -> Vec<u8> {
    ctl_io(server, &["get", "--raw", path], b"").ok()
}

/// `len` bytes in which every byte value occurs (for `len` >= 256), not in a short
/// cycle; `seed` makes different values of the same length.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(131) ^ (i >> 9)) as u8 ^ seed)
        .collect()
}

fn path_str(path: &std::path::Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

fn stat_from(v: &Value) -> Stat {
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("not a stat ({e}): {v}"))
}

/// `key = value` lines of the human stat output.
fn stat_lines(out: &str) -> std::collections::BTreeMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once(" = "))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn rust_client(rt: &tokio::runtime::Runtime, server: &TestServer) -> Client {
    rt.block_on(Client::connect(ClientConfig::new([server.addr()])))
        .expect("connect")
}

#[test]
fn the_readme_session_in_human_output() {
    let server = TestServer::start(&[]);
    assert_eq!(ctl(&server, &["create", "/app", "hello"]).ok(), "/app\n");
    assert_eq!(ctl(&server, &["get", "/app"]).ok(), "hello\n");
    let set = stat_lines(&ctl(&server, &["set", "/app", "hello again"]).ok());
    assert_eq!(set.get("version").map(String::as_str), Some("1"), "{set:?}");
    assert_eq!(set.get("data_length").map(String::as_str), Some("11"));
    assert_eq!(ctl(&server, &["get", "/app"]).ok(), "hello again\n");
    assert_eq!(
        ctl(
            &server,
            &["create", "-p", "/app/config/db", "postgres://db:5432"]
        )
        .ok(),
        "/app/config/db\n"
    );
    assert_eq!(ctl(&server, &["ls", "/app"]).ok(), "config\n");
    let long = ctl(&server, &["ls", "-l", "/app/config"]).ok();
    let line = long.lines().next().expect("one row");
    assert_eq!(long.lines().count(), 1, "{long}");
    assert!(line.ends_with(" db") && line.starts_with("v0"), "{line:?}");
    assert!(line.contains("18B"), "data length shown: {line:?}");

    let stat = stat_lines(&ctl(&server, &["stat", "/app"]).ok());
    for key in [
        "czxid",
        "mzxid",
        "pzxid",
        "ctime_ms",
        "mtime_ms",
        "version",
        "cversion",
        "ephemeral_owner",
        "data_length",
        "num_children",
    ] {
        assert!(stat.contains_key(key), "{key} missing: {stat:?}");
    }
    assert_eq!(stat["version"], "1");
    assert_eq!(stat["num_children"], "1");
    assert_eq!(stat["cversion"], "1");
    assert_eq!(stat["ephemeral_owner"], "0x0");
    let czxid: u64 = stat["czxid"].parse().expect("number");
    let mzxid: u64 = stat["mzxid"].parse().expect("number");
    assert!(mzxid > czxid);

    // Sequential names, ephemerals that die with corralctl's session, containers.
    let seq = ctl(&server, &["create", "--sequential", "/app/job-", "x"]).ok();
    assert_eq!(seq, "/app/job-0000000000\n");
    let seq = ctl(&server, &["create", "--sequential", "/app/job-"]).ok();
    assert_eq!(seq, "/app/job-0000000001\n");
    assert_eq!(
        ctl(&server, &["create", "--ephemeral", "/app/tmp"]).ok(),
        "/app/tmp\n"
    );
    assert_eq!(
        ctl(&server, &["stat", "/app/tmp"]).code(),
        Some(1),
        "the ephemeral died with its session"
    );
    let eseq = ctl(
        &server,
        &["create", "--ephemeral", "--sequential", "/app/e-"],
    )
    .ok();
    assert_eq!(eseq, "/app/e-0000000002\n", "one counter per parent");
    ctl(&server, &["create", "--container", "/box"]).ok();
    ctl(&server, &["create", "/box/item"]).ok();
    assert_eq!(ctl(&server, &["rm", "/box/item"]).ok(), "");
    assert_eq!(
        ctl(&server, &["stat", "/box"]).code(),
        Some(1),
        "the container went with its last child"
    );

    // Conditional set and remove.
    assert_eq!(
        ctl(&server, &["set", "--version", "0", "/app", "stale"]).code(),
        Some(1)
    );
    ctl(&server, &["set", "--version", "1", "/app", "v2"]).ok();
    assert_eq!(ctl(&server, &["get", "/app"]).ok(), "v2\n");
    let ls = ctl(&server, &["ls", "/app"]).ok();
    assert_eq!(ls, "config\njob-0000000000\njob-0000000001\n", "sorted");
    assert_eq!(ctl(&server, &["rm", "-r", "/app"]).ok(), "");
    assert_eq!(ctl(&server, &["stat", "/app"]).code(), Some(1));
    assert_eq!(ctl(&server, &["ls", "/"]).ok(), "");
    // rm -r of a leaf is a plain rm; an empty data argument is fine.
    ctl(&server, &["create", "/leaf", ""]).ok();
    assert_eq!(ctl(&server, &["get", "/leaf"]).ok(), "\n");
    ctl(&server, &["rm", "-r", "/leaf"]).ok();
    assert_eq!(ctl(&server, &["ls", "/"]).ok(), "");
}

#[test]
fn json_output_matches_the_client_view() {
    let server = TestServer::start(&[]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = rust_client(&rt, &server);

    let created = ctl(&server, &["--json", "create", "/j", "data"]).json();
    assert_eq!(created["path"], "/j");
    let created_stat = stat_from(&created["stat"]);
    assert_eq!(created_stat.data_length, 4);
    assert_eq!(created_stat.version, 0);
    assert!(created_stat.czxid > 0);

    // The flag may come after the subcommand too (it is global).
    let got = ctl(&server, &["get", "/j", "--json"]).json();
    assert_eq!(got["path"], "/j");
    assert_eq!(got["data"], "data");
    assert_eq!(got["encoding"], "utf8");
    assert_eq!(stat_from(&got["stat"]), created_stat);

    let set = ctl(&server, &["--json", "set", "/j", "more data"]).json();
    assert_eq!(set["path"], "/j");
    let set_stat = stat_from(&set["stat"]);
    assert_eq!((set_stat.version, set_stat.data_length), (1, 9));
    let (data, stat) = rt.block_on(client.get_data("/j")).expect("get");
    assert_eq!((data.as_slice(), stat), (&b"more data"[..], set_stat));

    let stat = ctl(&server, &["--json", "stat", "/j"]).json();
    assert_eq!(stat["path"], "/j");
    assert_eq!(stat_from(&stat["stat"]), set_stat);

    ctl(&server, &["create", "/j/b", "1"]).ok();
    ctl(&server, &["create", "/j/a", "22"]).ok();
    let ls = ctl(&server, &["--json", "ls", "/j"]).json();
    assert_eq!(ls["path"], "/j");
    assert_eq!(ls["children"], serde_json::json!(["a", "b"]));
    let long = ctl(&server, &["--json", "ls", "-l", "/j"]).json();
    let rows = long["children"].as_array().expect("rows");
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["name"], "a");
    assert_eq!(stat_from(&rows[0]["stat"]).data_length, 2);
    assert_eq!(rows[1]["name"], "b");
    let b = rt
        .block_on(client.exists("/j/b"))
        .expect("exists")
        .expect("b");
    assert_eq!(stat_from(&rows[1]["stat"]), b);

    // Data that is not UTF-8 is shown as hex.
    rt.block_on(client.create("/bin", vec![0xff, 0x00, 0x10], CreateMode::Persistent))
        .expect("create");
    let got = ctl(&server, &["--json", "get", "/bin"]).json();
    assert_eq!(got["encoding"], "hex");
    assert_eq!(got["data"], "ff0010");
    assert_eq!(ctl(&server, &["get", "/bin"]).ok(), "ff0010\n");

    // An ephemeral created by corralctl belongs to its (now closed) session.
    let eph = ctl(&server, &["--json", "create", "--ephemeral", "/j/e"]).json();
    assert_ne!(stat_from(&eph["stat"]).ephemeral_owner, 0);
    assert!(rt
        .block_on(client.exists("/j/e"))
        .expect("exists")
        .is_none());

    let rm = ctl(&server, &["--json", "rm", "-r", "/j"]).json();
    assert_eq!(rm, serde_json::json!({ "deleted": "/j" }));
    assert!(rt.block_on(client.exists("/j")).expect("exists").is_none());
    let root = ctl(&server, &["--json", "ls", "/"]).json();
    assert_eq!(root["children"], serde_json::json!(["bin"]));
}

#[test]
fn failures_exit_1_and_usage_errors_exit_2() {
    let server = TestServer::start(&[]);
    ctl(&server, &["create", "/dup", "x"]).ok();
    ctl(&server, &["create", "/dup/child"]).ok();

    let failures: &[(&[&str], &str)] = &[
        (&["get", "/missing"], "NoNode"),
        (&["stat", "/missing"], "NoNode"),
        (&["ls", "/missing"], "NoNode"),
        (&["set", "/missing", "x"], "NoNode"),
        (&["rm", "/missing"], "NoNode"),
        (&["--json", "get", "/missing"], "NoNode"),
        (&["create", "/dup"], "NodeExists"),
        (&["create", "/missing/x"], "NoNode"),
        (&["rm", "/dup"], "NotEmpty"),
        (&["rm", "--version", "5", "/dup/child"], "BadVersion"),
        (&["set", "--version", "3", "/dup", "y"], "BadVersion"),
        (&["get", "nope"], "InvalidPath"),
        (&["create", "/a//b"], "InvalidPath"),
    ];
    for (args, message) in failures {
        let r = ctl(&server, args);
        assert_eq!(r.code(), Some(1), "{args:?}: {r:?}");
        assert!(r.stderr.contains(message), "{args:?}: {r:?}");
        assert!(r.stdout.is_empty(), "{args:?}: nothing on stdout: {r:?}");
    }
    // The data is untouched by the failed commands.
    assert_eq!(ctl(&server, &["get", "/dup"]).ok(), "x\n");

    let usage: &[&[&str]] = &[
        &[],
        &["frobnicate"],
        &["get"],
        &["set", "/dup"],
        &["create", "/a", "--ephemeral", "--container"],
        &["rm", "--version", "not-a-number", "/dup"],
        &["ls", "-x", "/"],
        &["watch", "/dup", "--count", "-1"],
    ];
    for args in usage {
        let r = ctl(&server, args);
        assert_eq!(r.code(), Some(2), "{args:?}: {r:?}");
        assert!(!r.stderr.is_empty(), "{args:?}: explains itself");
    }
    // --help and --version are not errors.
    assert!(run_raw(&["--help"], &[]).ok().contains("Usage"));
    assert!(run_raw(&["--version"], &[]).ok().contains("corralctl"));

    // No server there: exit 1 with the reason.
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let nowhere = format!("127.0.0.1:{closed_port}");
    let r = run_raw(&["-s", &nowhere, "get", "/dup"], &[]);
    assert_eq!(r.code(), Some(1), "{r:?}");
    assert!(!r.stderr.is_empty());

    // CORRAL_SERVER picks the server when -s is absent; -s wins over it.
    let addr = server.addr();
    let r = run_raw(&["get", "/dup"], &[("CORRAL_SERVER", &addr)]);
    assert_eq!(r.ok(), "x\n");
    let r = run_raw(
        &["-s", &addr, "get", "/dup"],
        &[("CORRAL_SERVER", &nowhere)],
    );
    assert_eq!(r.ok(), "x\n");
    // A list of servers, one of them down.
    let list = format!("{nowhere},{addr}");
    let r = run_raw(&["-s", &list, "get", "/dup"], &[]);
    // (The client tries each address once, starting at a random one.)
    assert_eq!(r.ok(), "x\n");
}

/// A recursive delete that cannot delete the node itself deletes nothing: `rm -r /` (the
/// root cannot be deleted) and `rm -r --version V` with a version the node is not at used
/// to delete every descendant first and then exit 1, so a command reported as failed had
/// emptied the tree.
#[test]
fn rm_r_that_must_fail_deletes_nothing() {
    let server = TestServer::start(&[]);
    ctl(&server, &["create", "-p", "/d/c1/leaf", "x"]).ok();
    ctl(&server, &["create", "/d/c2", "y"]).ok();
    let tree = |server: &TestServer| {
        let root = ctl(server, &["--json", "ls", "/"]).json()["children"].clone();
        let d = ctl(server, &["--json", "ls", "/d"]).json()["children"].clone();
        let c1 = ctl(server, &["--json", "ls", "/d/c1"]).json()["children"].clone();
        (root, d, c1)
    };
    let before = tree(&server);
    assert_eq!(before.1, serde_json::json!(["c1", "c2"]), "{before:?}");

    let r = ctl(&server, &["rm", "-r", "--version", "7", "/d"]);
    assert_eq!(r.code(), Some(1), "{r:?}");
    assert!(r.stderr.contains("BadVersion"), "{r:?}");
    assert_eq!(
        tree(&server),
        before,
        "a stale --version deleted descendants"
    );

    let r = ctl(&server, &["rm", "-r", "/"]);
    assert_eq!(r.code(), Some(1), "{r:?}");
    assert!(r.stderr.contains("BadArguments"), "{r:?}");
    assert_eq!(tree(&server), before, "rm -r / deleted the tree");

    // At the right version it deletes the whole subtree.
    ctl(&server, &["rm", "-r", "--version", "0", "/d"]).ok();
    let r = ctl(&server, &["stat", "/d"]);
    assert!(r.stderr.contains("NoNode"), "{r:?}");
}

/// Starts `corralctl watch`, then runs `poke(i)` for i = 0, 1, ... until the watch has
/// printed `count` lines and exited (a change made before the watch was registered is
/// simply not reported, so the test does not need to know when that happened).
fn watch_until(
    server: &TestServer,
    args: &[&str],
    count: usize,
    poke: impl Fn(usize),
) -> Vec<String> {
    let addr = server.addr();
    let mut child = Command::new(corralctl_bin())
        .args(["-s", addr.as_str()])
        .args(args)
        .env_remove("CORRAL_SERVER")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn corralctl watch");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let mut lines = Vec::new();
    let mut i = 0;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("watch {args:?} did not end; printed {lines:?}");
        }
        if lines.len() < count {
            poke(i);
            i += 1;
        }
        while let Ok(line) = rx.recv_timeout(Duration::from_millis(20)) {
            lines.push(line);
        }
    };
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(1)) {
        lines.push(line);
    }
    assert!(
        status.success(),
        "watch exits 0 after --count events: {status}"
    );
    assert_eq!(lines.len(), count, "{lines:?}");
    lines
}

#[test]
fn watch_prints_events_until_the_count() {
    let server = TestServer::start(&[]);
    ctl(&server, &["create", "/w", "0"]).ok();

    let lines = watch_until(
        &server,
        &["--json", "watch", "/w", "--count", "3"],
        3,
        |i| {
            ctl(&server, &["set", "/w", &format!("v{i}")]).ok();
        },
    );
    let mut last = 0;
    for line in &lines {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(v["kind"], "NodeDataChanged", "{v}");
        assert_eq!(v["path"], "/w");
        let zxid = v["zxid"].as_u64().expect("zxid");
        assert!(zxid > last, "increasing zxids: {lines:?}");
        last = zxid;
    }

    // Human output; a node that does not exist yet.
    let lines = watch_until(&server, &["watch", "/h", "--count", "2"], 2, |i| {
        if i == 0 {
            ctl(&server, &["create", "/h"]).ok();
        } else {
            ctl(&server, &["set", "/h", &i.to_string()]).ok();
        }
    });
    for line in &lines {
        let mut parts = line.split(' ');
        let kind = parts.next().expect("kind");
        assert!(
            kind == "NodeCreated" || kind == "NodeDataChanged",
            "{line:?}"
        );
        assert_eq!(parts.next(), Some("/h"), "{line:?}");
        let zxid = parts.next().and_then(|z| z.strip_prefix("zxid="));
        assert!(zxid.is_some_and(|z| z.parse::<u64>().is_ok()), "{line:?}");
    }

    // Recursive: events of descendants, not of the children list.
    ctl(&server, &["create", "/r"]).ok();
    let lines = watch_until(
        &server,
        &["--json", "watch", "--recursive", "/r", "--count", "2"],
        2,
        |i| {
            ctl(&server, &["create", "-p", &format!("/r/{i}/leaf")]).ok();
        },
    );
    for line in &lines {
        let v: Value = serde_json::from_str(line).expect("json");
        assert_eq!(v["kind"], "NodeCreated", "{v}");
        assert!(
            v["path"].as_str().is_some_and(|p| p.starts_with("/r/")),
            "{v}"
        );
    }
}

/// `corralctl watch` goes on across a reconnect and says on stderr that the changes made
/// while it was away fired no event (its persistent watch is registered again without a
/// replay, as ZooKeeper's is).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_goes_on_across_a_reconnect_and_says_what_fired_no_event() {
    use corral_tests::proxy::{Mode, Proxy};
    let server = TestServer::start(&[]);
    ctl(&server, &["create", "/rw", "0"]).ok();
    let target = server.addr().parse().expect("server address");
    let proxy = Proxy::start(target).await.expect("proxy");
    let mut child = Command::new(corralctl_bin())
        .args([
            "-s",
            &proxy.addr().to_string(),
            "watch",
            "/rw",
            "--count",
            "2",
        ])
        .env_remove("CORRAL_SERVER")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn corralctl watch");
    let lines_of = |pipe: Box<dyn Read + Send>| {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        rx
    };
    let stdout = lines_of(Box::new(child.stdout.take().expect("stdout")));
    let stderr = lines_of(Box::new(child.stderr.take().expect("stderr")));
    // Poke until the watch reports a change (one made before it was registered is not).
    let poke_until_a_line = |what: &str| {
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let mut i = 0;
        loop {
            ctl(&server, &["set", "/rw", &format!("{what} {i}")]).ok();
            i += 1;
            if let Ok(line) = stdout.recv_timeout(Duration::from_millis(100)) {
                return line;
            }
            assert!(Instant::now() < deadline, "no event for {what}");
        }
    };
    let first = poke_until_a_line("before");
    assert!(first.starts_with("NodeDataChanged /rw"), "{first}");
    // The connection is cut, a change is made meanwhile, and the watch comes back.
    proxy.set_mode(Mode::Cut);
    ctl(&server, &["set", "/rw", "while away"]).ok();
    proxy.set_mode(Mode::Pass);
    let mut said = Vec::new();
    while !said
        .last()
        .is_some_and(|l: &String| l.contains("reconnected; changes after zxid"))
    {
        let line = stderr.recv_timeout(COMMAND_TIMEOUT);
        said.push(line.unwrap_or_else(|_| panic!("no word of the reconnect: {said:?}")));
    }
    let second = poke_until_a_line("after");
    assert!(second.starts_with("NodeDataChanged /rw"), "{second}");
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("watch did not end after 2 events");
        }
        // The exit has no event to wait on: look again shortly.
        let _ = stdout.recv_timeout(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}

/// A `corralctl watch` whose first line has been read, and whose further output is read
/// only once `go` is sent: its reader stops reading, as `watch | less` paused does.
struct PausedReader {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
    go: mpsc::Sender<()>,
}

impl PausedReader {
    /// Starts `corralctl watch PATH` and runs `poke` until it printed its first line.
    fn start(server: &TestServer, path: &str, poke: impl Fn()) -> PausedReader {
        let mut child = Command::new(corralctl_bin())
            .args(["-s", server.addr().as_str(), "watch", path])
            .env_remove("CORRAL_SERVER")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn corralctl watch");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        let (go, gate) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            let mut out = BufReader::new(stdout).lines();
            match out.next() {
                Some(Ok(first)) => {
                    let _ = tx.send(first);
                }
                _ => return,
            }
            if gate.recv().is_err() {
                return;
            }
            for line in out.map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        loop {
            assert!(Instant::now() < deadline, "the watch printed nothing");
            poke();
            if lines.recv_timeout(Duration::from_millis(100)).is_ok() {
                break;
            }
        }
        PausedReader { child, lines, go }
    }

    /// Sends SIGINT (Ctrl-C) and waits (bounded) for the exit; the exit status and stderr.
    fn interrupt(mut self) -> (ExitStatus, String) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-s", "INT", &pid])
            .status()
            .expect("kill");
        assert!(sent.success());
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("corralctl watch did not end on Ctrl-C within {COMMAND_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut stderr = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut stderr);
        }
        (status, stderr)
    }
}

/// `corralctl watch` outlives a reader that stops reading for longer than its session's
/// TTL (`watch | less`, paused): corralctl wrote its output on its only thread, so once
/// the pipe was full nothing else ran, keepalives included; the session expired, the
/// events beyond the pipe were lost and the watch died ("session expired"). Now the
/// events wait and come out when the reader reads again, the watch goes on, and Ctrl-C
/// ends it even while the pipe is full (it used to be ignored then).
#[test]
fn watch_outlives_a_reader_that_stops_reading() {
    // Sessions of at most 2 s: the pause below outlasts one.
    let server = TestServer::start(&["--max-session-ttl-ms", "2000"]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = rust_client(&rt, &server);
    // Lines of about 1 KB: 200 events are more than a pipe holds (64 KiB).
    let path = format!("/{}", "w".repeat(1000));
    ctl(&server, &["create", &path]).ok();
    let set = |value: &str| {
        rt.block_on(client.set_data(&path, value.as_bytes().to_vec(), None))
            .expect("set");
    };
    const EVENTS: usize = 200;
    const PAUSE: Duration = Duration::from_secs(5);

    let watch = PausedReader::start(&server, &path, || set("first"));
    for i in 0..EVENTS {
        set(&i.to_string());
    }
    std::thread::sleep(PAUSE);
    watch.go.send(()).expect("the reader thread");
    let mut got = 0;
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    // Every event made during the pause (and maybe a late one of the first pokes).
    while got < EVENTS {
        assert!(
            Instant::now() < deadline,
            "{got} of {EVENTS} events after the pause"
        );
        if let Ok(line) = watch.lines.recv_timeout(Duration::from_millis(100)) {
            assert!(line.starts_with("NodeDataChanged /w"), "{line:?}");
            got += 1;
        }
    }
    // Late events of the first pokes, if any.
    while watch.lines.recv_timeout(Duration::from_millis(500)).is_ok() {}
    // The watch goes on.
    set("after");
    let line = watch
        .lines
        .recv_timeout(COMMAND_TIMEOUT)
        .expect("an event after the pause");
    assert!(line.starts_with("NodeDataChanged /w"), "{line:?}");
    let (status, stderr) = watch.interrupt();
    assert!(status.success(), "{status}: {stderr}");
    assert!(!stderr.contains("expired"), "{stderr}");

    // Ctrl-C while the pipe is full ends the watch.
    let watch = PausedReader::start(&server, &path, || set("first"));
    for i in 0..EVENTS {
        set(&i.to_string());
    }
    let (status, stderr) = watch.interrupt();
    assert!(status.success(), "{status}: {stderr}");
}

/// `ls` of a directory of several pages whose reader stops reading for longer than the
/// session's TTL (`ls | less`, paused) lists everything once it reads again: corralctl
/// wrote on its only thread, so with the pipe full its keepalives stopped too, and the
/// listing failed at its next page with "session expired".
#[test]
fn ls_outlives_a_reader_that_stops_reading() {
    // Sessions of at most 2 s: the pause below outlasts one.
    let server = TestServer::start(&["--max-session-ttl-ms", "2000"]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = rust_client(&rt, &server);
    // About 100 KB a page (1,000 names), more than a pipe holds (64 KiB).
    let names: Vec<String> = (0..2500)
        .map(|i| format!("{}-{i:05}", "n".repeat(100)))
        .collect();
    rt.block_on(async {
        client
            .create("/dir", Vec::new(), CreateMode::Persistent)
            .await
            .expect("create /dir");
        let creates = names.iter().map(|name| {
            let path = format!("/dir/{name}");
            let client = &client;
            async move {
                client
                    .create(&path, Vec::new(), CreateMode::Persistent)
                    .await
            }
        });
        for created in futures::future::join_all(creates).await {
            created.expect("create a child");
        }
    });
    let mut child = Command::new(corralctl_bin())
        .args(["-s", server.addr().as_str(), "ls", "/dir"])
        .env_remove("CORRAL_SERVER")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn corralctl ls");
    std::thread::sleep(Duration::from_secs(5));
    let mut stdout = child.stdout.take().expect("stdout");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("corralctl ls did not finish within {COMMAND_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    let listed = out.join().expect("stdout reader");
    assert!(status.success(), "{status}: {stderr}");
    assert!(
        listed.lines().eq(names.iter().map(String::as_str)),
        "ls lists every child in order ({} lines): {stderr}",
        listed.lines().count()
    );
}

/// `ls`, `ls -l` and `rm -r` of a directory whose listing is larger than a frame (3,000
/// children of 16-byte names, about 72 KiB, under a 16 KiB frame limit) go page by page.
#[test]
fn ls_and_rm_r_handle_a_directory_larger_than_a_frame() {
    let server = TestServer::start(&["--max-data-bytes", "1000", "--max-frame-bytes", "16384"]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = rust_client(&rt, &server);
    let names: Vec<String> = (0..3000).map(|i| format!("child-{i:010}")).collect();
    rt.block_on(async {
        client
            .create("/big", Vec::new(), CreateMode::Persistent)
            .await
            .expect("create /big");
        let creates = names.iter().map(|name| {
            let path = format!("/big/{name}");
            let client = &client;
            async move {
                client
                    .create(&path, Vec::new(), CreateMode::Persistent)
                    .await
            }
        });
        for created in futures::future::join_all(creates).await {
            created.expect("create a child");
        }
        // Grandchildren, so that rm -r empties some children before deleting them.
        for leaf in [
            "/big/child-0000000007/a",
            "/big/child-0000000007/a/b",
            "/big/child-0000002999/c",
        ] {
            client
                .create(leaf, Vec::new(), CreateMode::Persistent)
                .await
                .expect("create a grandchild");
        }
    });
    let long = ctl(&server, &["ls", "-l", "/big"]).ok();
    assert_eq!(long.lines().count(), names.len(), "one row per child");
    let row = long.lines().nth(7).expect("row 7");
    assert!(
        row.ends_with(" child-0000000007") && row.contains(" 1 "),
        "{row:?}"
    );
    let listed = ctl(&server, &["ls", "/big"]).ok();
    assert!(
        listed.lines().eq(names.iter().map(String::as_str)),
        "ls lists every child in order"
    );
    let json = ctl(&server, &["--json", "ls", "/big"]).json();
    assert_eq!(json["children"].as_array().map(Vec::len), Some(names.len()));
    ctl(&server, &["rm", "-r", "/big"]).ok();
    let exists = rt.block_on(client.exists("/big")).expect("exists");
    assert_eq!(exists, None, "rm -r deleted the directory");
}

/// `corralctl status` prints its table in every case and exits 0 only when every server
/// of -s answered and is ready: 1 when none answered, 3 when some did not (it used to
/// exit 0 even when no server answered).
#[test]
fn status_fails_unless_every_server_answers() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let nowhere = format!("127.0.0.1:{closed_port}");

    let r = run_raw(&["-s", &addr, "status"], &[]);
    assert_eq!(r.code(), Some(0), "{r:?}");
    assert!(r.stdout.contains(" standalone "), "{r:?}");
    assert!(r.stderr.is_empty(), "{r:?}");

    let r = run_raw(&["-s", &nowhere, "status"], &[]);
    assert_eq!(r.code(), Some(1), "{r:?}");
    assert!(
        r.stdout.contains("unavailable"),
        "the table still shows: {r:?}"
    );
    assert!(r.stderr.contains("no server answered"), "{r:?}");
    let r = run_raw(&["-s", &nowhere, "--json", "status"], &[]);
    assert_eq!(r.code(), Some(1), "{r:?}");
    let rows: Value = serde_json::from_str(&r.stdout).expect("JSON rows");
    assert_eq!(rows[0]["status"], Value::Null, "{rows}");

    let list = format!("{addr},{nowhere}");
    let r = run_raw(&["-s", &list, "status"], &[]);
    assert_eq!(r.code(), Some(3), "{r:?}");
    assert!(
        r.stdout.contains(" standalone ") && r.stdout.contains("unavailable"),
        "{r:?}"
    );
    assert!(
        r.stderr
            .contains(&format!("1 of 2 servers did not answer ({nowhere})")),
        "{r:?}"
    );
}

/// A server whose node core does not answer looks, from outside, like one that accepts
/// connections and never grants a session: `corralctl status` shows it as unavailable
/// within its per-server deadline, names it on stderr and exits 3 (it is not counted
/// as ready).
#[test]
fn status_reports_a_server_that_never_answers() {
    let server = TestServer::start(&[]);
    let addr = server.addr();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_addr = silent.local_addr().expect("addr").to_string();
    // Accepts and holds connections, reads nothing, answers nothing.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        while let Ok((conn, _)) = silent.accept() {
            held.push(conn);
        }
    });
    let list = format!("{addr},{silent_addr}");
    let started = Instant::now();
    let r = run_raw(&["-s", &list, "status"], &[]);
    assert!(started.elapsed() < Duration::from_secs(10), "{r:?}");
    assert_eq!(r.code(), Some(3), "{r:?}");
    let row = r
        .stdout
        .lines()
        .find(|l| l.starts_with(&silent_addr))
        .unwrap_or_else(|| panic!("a row for {silent_addr}: {r:?}"));
    assert!(row.contains("unavailable"), "{r:?}");
    assert!(
        r.stderr
            .contains(&format!("1 of 2 servers did not answer ({silent_addr})")),
        "{r:?}"
    );
    let r = run_raw(&["-s", &list, "--json", "status"], &[]);
    assert_eq!(r.code(), Some(3), "{r:?}");
    let rows: Value = serde_json::from_str(&r.stdout).expect("JSON rows");
    assert_eq!(rows[1]["status"], Value::Null, "{rows}");
    assert!(rows[1]["error"].is_string(), "{rows}");
}

/// A fake admin endpoint on loopback for one request: it reads the request, writes
/// `answer`, then keeps the connection open without sending more until the client
/// closes it (bounded by a read timeout). Returns its address.
fn fake_admin(answer: Vec<u8>) -> String {
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        let Ok((mut conn, _)) = listener.accept() else {
            return;
        };
        let _ = conn.set_read_timeout(Some(COMMAND_TIMEOUT));
        let mut request = Vec::new();
        let mut buf = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 64 * 1024 {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        let _ = conn.write_all(&answer);
        // Until the client goes away.
        let _ = conn.read(&mut buf);
    });
    addr
}

/// An HTTP answer with a complete body.
fn http_answer(status: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A 200 that promises a 1000-byte backup, sends its first 40 bytes, then nothing.
fn stalled_backup_answer() -> Vec<u8> {
    let mut answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: 1000\r\n\r\nCORRALBK".to_vec();
    answer.extend_from_slice(&[0u8; 32]);
    answer
}

/// `snapshot save` gives up on an answer that stops sending (it used to wait forever),
/// with an error that says so, and leaves no file behind: the previous backup at the
/// destination stays as it was, and no FILE.tmp.
#[test]
fn snapshot_save_gives_up_on_a_stalled_answer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("corral.backup");
    std::fs::write(&file, b"the previous backup").expect("write");
    let stalled = fake_admin(stalled_backup_answer());
    let started = Instant::now();
    let r = run_raw(
        &[
            "snapshot",
            "save",
            "--admin",
            &stalled,
            "--stall-timeout",
            "1s",
            file.to_str().expect("utf-8 path"),
        ],
        &[],
    );
    assert_eq!(r.code(), Some(1), "{r:?}");
    assert!(
        r.stderr.contains(&stalled) && r.stderr.contains("stalled (no data for 1s)"),
        "{r:?}"
    );
    assert!(started.elapsed() < COMMAND_TIMEOUT, "{r:?}");
    assert_eq!(
        std::fs::read(&file).expect("read"),
        b"the previous backup",
        "the destination is untouched"
    );
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, ["corral.backup"], "no partial file is left");
}

/// `snapshot save` tries the next server when one is busy (429), unavailable (503),
/// unreachable or stalls (it used to fail on the first), and reports each on stderr.
#[test]
fn snapshot_save_falls_back_to_the_next_server() {
    let server = TestServer::start(&[]);
    ctl(&server, &["create", "/saved", "yes"]).ok();
    let busy = fake_admin(http_answer(
        "429 Too Many Requests",
        "a backup is being taken; try again\n",
    ));
    let unavailable = fake_admin(http_answer(
        "503 Service Unavailable",
        "the node core did not answer in time\n",
    ));
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").to_string()
    };
    let stalled = fake_admin(stalled_backup_answer());
    let real = server.admin_addr();
    let list = [busy.as_str(), &unavailable, &closed, &stalled, &real].join(",");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("corral.backup");
    let v = {
        let r = run_raw(
            &[
                "--json",
                "snapshot",
                "save",
                "--admin",
                &list,
                "--stall-timeout",
                "1s",
                file.to_str().expect("utf-8 path"),
            ],
            &[],
        );
        for (addr, why) in [
            (&busy, "answered 429"),
            (&unavailable, "answered 503"),
            (&closed, "cannot reach it"),
            (&stalled, "the body stalled"),
        ] {
            assert!(
                r.stderr.contains(&format!("{addr}: {why}")) && r.stderr.contains("next server"),
                "{addr} {why}: {r:?}"
            );
        }
        r.json()
    };
    assert_eq!(v["admin"], Value::String(real.clone()), "{v}");
    let saved = std::fs::read(&file).expect("the backup");
    assert!(saved.starts_with(b"CORRALBK"));
    assert_eq!(v["bytes"].as_u64(), Some(saved.len() as u64), "{v}");
    assert!(!dir.path().join("corral.backup.tmp").exists());

    // When every server fails, the error lists them all.
    let r = run_raw(
        &[
            "snapshot",
            "save",
            "--admin",
            &closed,
            file.to_str().expect("utf-8 path"),
        ],
        &[],
    );
    assert_eq!(r.code(), Some(1), "{r:?}");
    assert!(
        r.stderr.contains("no server sent a backup") && r.stderr.contains(&closed),
        "{r:?}"
    );
}

/// Data read from stdin (`-f -`) or from a file (`-f FILE`, `--file`, `--data-file`) is
/// written byte for byte, past what one command-line argument may hold (about 128 KiB
/// on Linux) and whatever the bytes; `get --raw` writes it back unchanged. Before, data
/// could only be an argument: no value over 128 KiB (the server takes 1 MiB) and no
/// binary data could be written, and `get` showed binary data only as hex.
#[test]
fn data_from_stdin_and_files_round_trips_byte_for_byte() {
    let server = TestServer::start(&[]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = rust_client(&rt, &server);
    let dir = tempfile::tempdir().expect("tempdir");
    let big = 600 << 10;

    // 600 KiB from stdin.
    let value = pattern(big, 1);
    let out = ctl_io(&server, &["create", "/stdin", "-f", "-"], &value).ok();
    assert_eq!(out, b"/stdin\n");
    assert!(
        get_raw(&server, "/stdin") == value,
        "get --raw gives it back"
    );
    let (data, stat) = rt.block_on(client.get_data("/stdin")).expect("get");
    assert!(data == value, "the server holds it byte for byte");
    assert_eq!(stat.data_length as usize, big);

    // 600 KiB from a file, with each spelling of the option.
    let file = dir.path().join("value");
    for (i, option) in ["-f", "--file", "--data-file"].into_iter().enumerate() {
        let value = pattern(big, 2 + i as u8);
        std::fs::write(&file, &value).expect("write");
        let set = stat_lines(&ctl(&server, &["set", "/stdin", option, path_str(&file)]).ok());
        assert_eq!(set["version"], (i + 1).to_string(), "{set:?}");
        assert_eq!(set["data_length"], big.to_string());
        assert!(get_raw(&server, "/stdin") == value, "{option}");
    }
    let value = pattern(big, 9);
    std::fs::write(&file, &value).expect("write");
    ctl(
        &server,
        &["create", "--data-file", path_str(&file), "/file"],
    )
    .ok();
    assert!(get_raw(&server, "/file") == value);
    let value = pattern(big, 10);
    ctl_io(
        &server,
        &["set", "--version", "0", "/file", "-f", "-"],
        &value,
    )
    .ok();
    assert!(get_raw(&server, "/file") == value);

    // Every byte value, unchanged by get --raw; --json and plain get show it as hex.
    let all: Vec<u8> = (0..=255u8).collect();
    ctl_io(&server, &["create", "/bin", "-f", "-"], &all).ok();
    assert_eq!(get_raw(&server, "/bin"), all);
    let hex: String = all.iter().map(|b| format!("{b:02x}")).collect();
    let got = ctl(&server, &["--json", "get", "/bin"]).json();
    assert_eq!(
        (&got["encoding"], &got["data"]),
        (&"hex".into(), &hex.clone().into())
    );
    assert_eq!(ctl(&server, &["get", "/bin"]).ok(), format!("{hex}\n"));

    // get --raw adds no newline to text; empty stdin is empty data.
    ctl(&server, &["create", "/text", "hello"]).ok();
    assert_eq!(get_raw(&server, "/text"), b"hello");
    ctl_io(&server, &["set", "/text", "-f", "-"], b"").ok();
    assert_eq!(get_raw(&server, "/text"), b"");
    // `-` as the data argument is still the data "-".
    ctl(&server, &["create", "/dash", "-"]).ok();
    assert_eq!(get_raw(&server, "/dash"), b"-");

    // lock and elect take --data-file for their queue node's data; CMD prints what its
    // queue node holds (as corralctl's stdout).
    let ctl_bin = corralctl_bin();
    let ctl_bin = path_str(&ctl_bin);
    std::fs::write(&file, &all).expect("write");
    let held = ctl_io(
        &server,
        &[
            "lock",
            "/locks/bin",
            "--data-file",
            path_str(&file),
            "--",
            "sh",
            "-c",
            "exec \"$0\" get --raw \"$CORRAL_LOCK_NODE\"",
            ctl_bin,
        ],
        b"",
    )
    .ok();
    assert_eq!(held, all, "the queue node holds the file's bytes");
    let value = pattern(big, 11);
    let led = ctl_io(
        &server,
        &[
            "elect",
            "/elections/bin",
            "--data-file",
            "-",
            "--",
            "sh",
            "-c",
            "exec \"$0\" get --raw \"$CORRAL_LEADER_NODE\"",
            ctl_bin,
        ],
        &value,
    )
    .ok();
    assert!(led == value, "the candidate node holds stdin's bytes");

    // Data given twice, or not at all, is a usage error.
    let file = path_str(&file);
    let usage: &[&[&str]] = &[
        &["create", "/u", "x", "-f", file],
        &["set", "/u"],
        &["set", "/u", "x", "--file", "-"],
        &["get", "--raw", "--json", "/bin"],
        &["--json", "get", "--raw", "/bin"],
        &[
            "lock",
            "/l",
            "--data",
            "x",
            "--data-file",
            file,
            "--",
            "true",
        ],
        &[
            "elect",
            "/e",
            "--data",
            "x",
            "--data-file",
            "-",
            "--",
            "true",
        ],
    ];
    for args in usage {
        let r = ctl(&server, args);
        assert_eq!(r.code(), Some(2), "{args:?}: {r:?}");
        assert!(!r.stderr.is_empty(), "{args:?}: explains itself");
    }
    // A file that cannot be read fails the command (exit 1, naming it) before anything
    // is written.
    let missing = dir.path().join("missing");
    let r = ctl_io(&server, &["create", "/u", "-f", path_str(&missing)], b"");
    r.fails_with(path_str(&missing));
    assert_eq!(rt.block_on(client.exists("/u")).expect("exists"), None);
    ctl_io(&server, &["set", "/text", "-f", path_str(dir.path())], b"")
        .fails_with(path_str(dir.path()));
    assert_eq!(get_raw(&server, "/text"), b"");
}

/// Data over the server's max_data_bytes (1 MiB by default), from stdin or a file, is
/// refused with the server's DataTooLarge and exit 1, and nothing is written; data over
/// what one request can carry (max_frame_bytes) is refused by corralctl before it is
/// sent, saying why.
#[test]
fn data_over_the_limit_is_refused_and_nothing_is_written() {
    let server = TestServer::start(&[]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = rust_client(&rt, &server);
    let dir = tempfile::tempdir().expect("tempdir");
    let limit = 1 << 20;
    let exists = |path: &str| rt.block_on(client.exists(path)).expect("exists");

    // Exactly the limit is taken.
    let at_limit = pattern(limit, 3);
    ctl_io(&server, &["create", "/max", "-f", "-"], &at_limit).ok();
    assert!(get_raw(&server, "/max") == at_limit);

    // One byte more is not: from stdin, from a file, with -p, for a set, for a lock.
    let over = pattern(limit + 1, 4);
    let file = dir.path().join("over");
    std::fs::write(&file, &over).expect("write");
    let file = path_str(&file);
    ctl_io(&server, &["create", "/over", "-f", "-"], &over).fails_with("DataTooLarge");
    ctl_io(&server, &["create", "/over", "-f", file], b"").fails_with("DataTooLarge");
    assert_eq!(exists("/over"), None);
    ctl_io(&server, &["create", "-p", "/p/q/over", "-f", file], b"").fails_with("DataTooLarge");
    assert_eq!(exists("/p"), None, "no parent was created either");
    ctl_io(&server, &["set", "/max", "-f", "-"], &over).fails_with("DataTooLarge");
    ctl_io(&server, &["set", "/max", "--file", file], b"").fails_with("DataTooLarge");
    let stat = exists("/max").expect("/max");
    assert_eq!((stat.version, stat.data_length as usize), (0, limit));
    assert!(
        get_raw(&server, "/max") == at_limit,
        "the data is unchanged"
    );
    let r = ctl_io(
        &server,
        &[
            "lock",
            "/locks/big",
            "--data-file",
            file,
            "--",
            "echo",
            "ran",
        ],
        b"",
    );
    r.fails_with("DataTooLarge");

    // Far more (2 MiB) does not fit in a request: corralctl refuses it without sending
    // it, and says so in terms of the data.
    let far = pattern(2 << 20, 5);
    let r = ctl_io(&server, &["create", "/far", "-f", "-"], &far);
    r.fails_with("FrameTooLarge");
    assert!(r.stderr.contains("max_data_bytes"), "{}", r.stderr);
    // Just past the frame limit with the request's header: the client refuses it.
    let close = pattern(corral_protocol::DEFAULT_MAX_FRAME_BYTES - 10, 6);
    let r = ctl_io(&server, &["set", "/max", "-f", "-"], &close);
    r.fails_with("FrameTooLarge");
    assert!(
        r.stderr.contains("does not fit in one request"),
        "{}",
        r.stderr
    );
    assert_eq!(exists("/far"), None);
    assert_eq!(exists("/max").map(|s| s.version), Some(0));
}

/// `--max-frame-bytes` (or `CORRAL_MAX_FRAME_BYTES`) raises corralctl's own frame limit:
/// against a server that allows larger frames and data, corralctl reads and writes a
/// node larger than its default limit (1 MiB + 64 KiB) only with it. There was no way
/// to raise it, so such a node could not be read or written with corralctl at all.
#[test]
fn max_frame_bytes_lets_corralctl_read_and_write_larger_nodes() {
    let server = TestServer::start(&[
        "--max-data-bytes",
        "3145728",
        "--max-frame-bytes",
        "4194304",
    ]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = rust_client(&rt, &server);
    let addr = server.addr();
    let value = pattern(2 << 20, 7);

    // Without the option corralctl cannot send it: nothing is created.
    let r = ctl_io(&server, &["create", "/big", "-f", "-"], &value);
    r.fails_with("FrameTooLarge");
    assert!(r.stderr.contains("--max-frame-bytes"), "{}", r.stderr);
    assert_eq!(rt.block_on(client.exists("/big")).expect("exists"), None);
    // With it, it can.
    let out = ctl_io(
        &server,
        &["--max-frame-bytes", "4194304", "create", "/big", "-f", "-"],
        &value,
    )
    .ok();
    assert_eq!(out, b"/big\n");

    // Without the option the node cannot be read (the response is over the limit);
    // its stat can.
    for args in [
        &["get", "--raw", "/big"][..],
        &["get", "/big"],
        &["--json", "get", "/big"],
    ] {
        let r = ctl_io(&server, args, b"");
        r.fails_with("FrameTooLarge");
        assert!(r.stderr.contains("--max-frame-bytes"), "{}", r.stderr);
    }
    let stat = stat_lines(&ctl(&server, &["stat", "/big"]).ok());
    assert_eq!(stat["data_length"], value.len().to_string());
    // With it, before or after the subcommand, or from the environment, it can.
    let get = |args: &[&str], env: &[(&str, &str)]| {
        let mut all = vec!["-s", addr.as_str()];
        all.extend_from_slice(args);
        run_io(&all, env, Some(b""))
    };
    let read = get(
        &["--max-frame-bytes", "4194304", "get", "--raw", "/big"],
        &[],
    )
    .ok();
    assert!(read == value, "read back byte for byte");
    let read = get(
        &["get", "--raw", "/big", "--max-frame-bytes", "4194304"],
        &[],
    )
    .ok();
    assert!(read == value);
    let big_env = [("CORRAL_MAX_FRAME_BYTES", "4194304")];
    assert!(get(&["get", "--raw", "/big"], &big_env).ok() == value);
    let json = get(&["--json", "get", "/big"], &big_env).ok();
    let json: Value = serde_json::from_slice(&json).expect("JSON");
    assert_eq!(
        json["data"].as_str().map(str::len),
        Some(2 * value.len()),
        "hex"
    );
    // The option wins over the environment.
    get(
        &["--max-frame-bytes", "1114112", "get", "--raw", "/big"],
        &big_env,
    )
    .fails_with("FrameTooLarge");

    // Up to the server's max_data_bytes (3 MiB), and no more.
    let at_limit = pattern(3 << 20, 8);
    let written = ctl_io(
        &server,
        &["--max-frame-bytes", "4194304", "set", "/big", "-f", "-"],
        &at_limit,
    )
    .ok();
    let set = stat_lines(&String::from_utf8_lossy(&written));
    assert_eq!(set["data_length"], at_limit.len().to_string(), "{set:?}");
    let over = pattern((3 << 20) + 1, 9);
    ctl_io(
        &server,
        &["--max-frame-bytes", "4194304", "set", "/big", "-f", "-"],
        &over,
    )
    .fails_with("DataTooLarge");
    assert!(get(&["get", "--raw", "/big"], &big_env).ok() == at_limit);

    // Out of range or not a number: usage errors.
    for bad in ["100", "67108865", "1MiB", "-1"] {
        let r = ctl(&server, &["--max-frame-bytes", bad, "get", "/big"]);
        assert_eq!(r.code(), Some(2), "{bad}: {r:?}");
        let r = run_raw(
            &["-s", &addr, "get", "/big"],
            &[("CORRAL_MAX_FRAME_BYTES", bad)],
        );
        assert_eq!(r.code(), Some(2), "{bad}: {r:?}");
    }
}
