//! A client process: runs one workload's operations against the cluster until its
//! deadline and prints every invocation and completion as a JSON line on stdout.
//!
//! Each client is its own process (`corral-jepsen worker --spec JSON`, started by the
//! orchestrator in the clients' namespace), so the nemesis can SIGSTOP one client
//! holding a lock, or SIGKILL one holding ephemerals, without touching the others.
//! Errors are classified as in Jepsen: an error that proves the operation did not take
//! effect is `fail`; a timeout or lost connection is `info` (indeterminate).

use crate::history::{mono_ns, Event, Kind};
use corral_client::{
    AddWatchMode, Client, ClientConfig, CreateMode, Error, ErrorCode, LockGuard, LockKind,
    LockLoss, MultiLockGuard, MultiResult, Stat,
};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// How long each register key is used, in milliseconds.
const KEY_WINDOW_MS: u64 = 5_000;
/// Pause after an indeterminate register operation, in milliseconds.
const INFO_BACKOFF_MS: u64 = 500;
/// The locks of the `multilock` workload, under its root; their names are the `key` of
/// its events.
pub const MULTI_LOCKS: [&str; 3] = ["a", "b", "c"];
/// The `shared` workload's read-write lock, under its root (the `key` of its events).
pub const SHARED_RW: &str = "rw";
/// The `shared` workload's semaphore, under its root (the `key` of its events).
pub const SHARED_SEMAPHORE: &str = "sem";
/// The permits of [`SHARED_SEMAPHORE`].
pub const SHARED_PERMITS: u32 = 2;

/// What a worker does (passed as JSON on its command line).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerSpec {
    pub workload: String,
    pub process: u64,
    pub servers: Vec<String>,
    pub seed: u64,
    /// `CLOCK_MONOTONIC` ns at which the run started (history times are relative).
    pub t0_ns: u64,
    /// `CLOCK_MONOTONIC` ns at which to stop starting operations.
    pub until_ns: u64,
    /// Session and lock TTL.
    pub ttl_ms: u64,
    pub request_timeout_ms: u64,
    /// The fenced resource's socket (workload `lock`).
    pub resource: Option<PathBuf>,
    /// Registers per client group (workload `register`).
    pub keys: u64,
    /// Root of the workload's znodes.
    pub root: String,
}

/// Prints events, one JSON line each, flushed at once (the orchestrator reads them as
/// they come, and a SIGKILL must not lose buffered lines).
#[derive(Debug, Clone)]
struct Out {
    spec: Arc<WorkerSpec>,
    /// Serialises output lines; holds whether the last completion was `info`.
    lock: Arc<Mutex<bool>>,
    /// Operations started by this process, across its sessions (values are unique).
    counter: Arc<std::sync::atomic::AtomicU64>,
}

impl Out {
    fn now(&self) -> u64 {
        mono_ns().saturating_sub(self.spec.t0_ns)
    }

    fn event(&self, kind: Kind, f: &str) -> Event {
        Event::new(self.now(), self.spec.process, &self.spec.workload, kind, f)
    }

    fn emit(&self, mut e: Event) {
        e.time = self.now();
        let mut last_info = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        if matches!(e.kind, Kind::Ok | Kind::Fail | Kind::Info) {
            *last_info = e.kind == Kind::Info;
        }
        if let Ok(line) = serde_json::to_string(&e) {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    }

    fn last_was_info(&self) -> bool {
        *self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A value no other operation of the run writes.
    fn unique_value(&self) -> u64 {
        let n = self
            .counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        self.spec.process * 1_000_000 + n
    }

    /// After an indeterminate operation, waits a little: during an outage every call
    /// fails at once, and indeterminate operations stay open until the end of the
    /// history (they make the checkers' searches expensive).
    async fn backoff_if_info(&self) {
        if self.last_was_info() {
            tokio::time::sleep(Duration::from_millis(INFO_BACKOFF_MS)).await;
        }
    }

    fn past_deadline(&self) -> bool {
        mono_ns() >= self.spec.until_ns
    }
}

/// Whether an error proves the write did not happen.
fn definite(e: &Error) -> bool {
    matches!(
        e.code(),
        Some(
            ErrorCode::BadVersion
                | ErrorCode::NoNode
                | ErrorCode::NodeExists
                | ErrorCode::NotEmpty
                | ErrorCode::BadArguments
                | ErrorCode::InvalidPath
                | ErrorCode::DataTooLarge
                | ErrorCode::LimitExceeded
                | ErrorCode::SessionExpired
                | ErrorCode::LockNotHeld
                | ErrorCode::NoLease
        )
    )
}

fn completion(out: &Out, f: &str, e: &Error) -> Event {
    let kind = if definite(e) { Kind::Fail } else { Kind::Info };
    let mut ev = out.event(kind, f);
    ev.error = Some(e.to_string());
    ev
}

async fn connect(out: &Out) -> Option<Client> {
    let spec = &out.spec;
    let config = ClientConfig::new(spec.servers.iter().map(String::as_str))
        .with_session_ttl(Duration::from_millis(spec.ttl_ms))
        .with_request_timeout(Duration::from_millis(spec.request_timeout_ms))
        .with_connect_timeout(Duration::from_millis(spec.request_timeout_ms));
    let mut attempts = 0u32;
    while !out.past_deadline() && attempts < 1_000 {
        attempts += 1;
        match Client::connect(config.clone()).await {
            Ok(c) => return Some(c),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    None
}

/// Runs the worker: returns when the deadline passed.
pub async fn run(spec: WorkerSpec) {
    let out = Out {
        spec: Arc::new(spec),
        lock: Arc::new(Mutex::new(false)),
        counter: Arc::new(std::sync::atomic::AtomicU64::new(0)),
    };
    let mut rng = StdRng::seed_from_u64(out.spec.seed);
    let mut sessions = 0u32;
    // A new client (session) whenever the old one's session ended; bounded by the
    // deadline and by a count.
    while !out.past_deadline() && sessions < 10_000 {
        sessions += 1;
        let Some(client) = connect(&out).await else {
            break;
        };
        let session_over = match out.spec.workload.as_str() {
            "lock" | "unfenced" => lock_loop(&out, &client, &mut rng).await,
            "multilock" => keyed_lock_loop(&out, &client, &mut rng, Request::multilock).await,
            "shared" => keyed_lock_loop(&out, &client, &mut rng, Request::shared).await,
            "register" => register_loop(&out, &client, &mut rng).await,
            "sequential" => sequential_loop(&out, &client, &mut rng).await,
            "watch" => watch_loop(&out, &client, &mut rng).await,
            "session" => session_loop(&out, &client, &mut rng).await,
            other => {
                eprintln!("worker: unknown workload {other}");
                return;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), client.close()).await;
        if !session_over {
            // The workload could not start (e.g. its watch could not be set during an
            // outage): try again with a new client shortly.
            tokio::time::sleep(Duration::from_millis(INFO_BACKOFF_MS)).await;
        }
    }
}

/// The fenced resource, over its Unix socket: one JSON line each way.
struct Resource {
    stream: BufReader<tokio::net::UnixStream>,
}

impl Resource {
    async fn open(path: &std::path::Path) -> Option<Resource> {
        let s = tokio::net::UnixStream::connect(path).await.ok()?;
        Some(Resource {
            stream: BufReader::new(s),
        })
    }

    /// `Some(value)` if the resource accepted the token.
    async fn call(&mut self, process: u64, op: &str, token: u64, value: u64) -> Option<u64> {
        let req = serde_json::json!({"process": process, "op": op, "token": token, "value": value});
        let mut line = req.to_string();
        line.push('\n');
        self.stream
            .get_mut()
            .write_all(line.as_bytes())
            .await
            .ok()?;
        let mut answer = String::new();
        self.stream.read_line(&mut answer).await.ok()?;
        let v: serde_json::Value = serde_json::from_str(&answer).ok()?;
        if v.get("ok")?.as_bool()? {
            v.get("value")?.as_u64()
        } else {
            None
        }
    }
}

/// Returns whether the session ended (so a new client should be made).
async fn lock_loop(out: &Out, client: &Client, rng: &mut StdRng) -> bool {
    let fenced = out.spec.workload == "lock";
    let mut resource = match (&out.spec.resource, fenced) {
        (Some(p), true) => Resource::open(p).await,
        _ => None,
    };
    let lock_name = format!("{}/lock", out.spec.root);
    let ttl = Duration::from_millis(out.spec.ttl_ms);
    let mut ops = 0u64;
    while !out.past_deadline() && ops < 1_000_000 {
        ops += 1;
        out.emit(out.event(Kind::Invoke, "acquire"));
        let options = corral_client::LockOptions::default().with_ttl(ttl);
        let guard = match client
            .lock(&lock_name, options)
            .acquire_timeout(Duration::from_millis(out.spec.request_timeout_ms))
            .await
        {
            Ok(Some(g)) => {
                let mut e = out.event(Kind::Ok, "acquire");
                e.token = Some(g.token());
                out.emit(e);
                g
            }
            Ok(None) => {
                let mut e = out.event(Kind::Fail, "acquire");
                e.error = Some("timed out waiting".into());
                out.emit(e);
                continue;
            }
            Err(err) => {
                // The client never holds after an error (it releases a late grant).
                let mut e = out.event(Kind::Fail, "acquire");
                e.error = Some(err.to_string());
                out.emit(e);
                if matches!(err, Error::SessionExpired | Error::Closed) {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(INFO_BACKOFF_MS)).await;
                continue;
            }
        };
        let token = guard.token();
        let watcher = {
            let out = out.clone();
            let lost = guard.lost();
            tokio::spawn(async move {
                let why = lost.await;
                if why != LockLoss::Released {
                    let mut e = out.event(Kind::Event, "lost");
                    e.token = Some(token);
                    e.error = Some(why.to_string());
                    out.emit(e);
                }
            })
        };
        let hold = Duration::from_millis(rng.gen_range(0..200));
        if let Some(res) = resource.as_mut() {
            // Check before the read, as a careful client does; the gap before the write
            // is where a pause makes a stale holder, and where fencing must save us.
            if guard.is_held() {
                if let Some(v) = res.call(out.spec.process, "read", token, 0).await {
                    tokio::time::sleep(hold).await;
                    let _ = res.call(out.spec.process, "write", token, v + 1).await;
                }
            }
        } else {
            tokio::time::sleep(hold).await;
        }
        let mut e = out.event(Kind::Invoke, "release");
        e.token = Some(token);
        out.emit(e);
        match guard.release().await {
            Ok(released) => {
                let mut e = out.event(if released { Kind::Ok } else { Kind::Fail }, "release");
                e.token = Some(token);
                if !released {
                    e.error = Some("was not held any more".into());
                }
                out.emit(e);
            }
            Err(err) => {
                let mut e = completion(out, "release", &err);
                e.token = Some(token);
                out.emit(e);
            }
        }
        drop(guard);
        watcher.abort();
        if resource.is_none() && fenced {
            resource = match &out.spec.resource {
                Some(p) => Resource::open(p).await,
                None => None,
            };
        }
        if client.state().is_terminal() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..50))).await;
        out.backoff_if_info().await;
    }
    false
}

/// One lock request of the `multilock` and `shared` workloads: the locks it takes (by
/// name under the workload's root, the `key` of their events), each with the kind it is
/// asked for (recorded as `lock_kind`; `None`: exclusive, not recorded): one with
/// `Client::lock`, or several at once with `LockMany`.
struct Request {
    locks: Vec<(&'static str, Option<(LockKind, &'static str)>)>,
}

impl Request {
    /// `multilock`: one, two or all three of [`MULTI_LOCKS`], in a random order.
    fn multilock(rng: &mut StdRng) -> Request {
        let count = match rng.gen_range(0..10) {
            0..=1 => 1,
            2..=7 => 2,
            _ => 3,
        };
        let mut keys = MULTI_LOCKS.to_vec();
        keys.shuffle(rng);
        keys.truncate(count);
        Request {
            locks: keys.into_iter().map(|k| (k, None)).collect(),
        }
    }

    /// `shared`: [`SHARED_RW`] for reading or writing, a permit of
    /// [`SHARED_SEMAPHORE`], or (two in ten) both at once with `LockMany`, in a random
    /// order.
    fn shared(rng: &mut StdRng) -> Request {
        const READ: (LockKind, &str) = (LockKind::Read, "read");
        const WRITE: (LockKind, &str) = (LockKind::Write, "write");
        const PERMIT: (LockKind, &str) = (
            LockKind::Semaphore {
                permits: SHARED_PERMITS,
            },
            "semaphore",
        );
        let mut locks = match rng.gen_range(0..10) {
            0..=2 => vec![(SHARED_RW, Some(READ))],
            3..=4 => vec![(SHARED_RW, Some(WRITE))],
            5..=7 => vec![(SHARED_SEMAPHORE, Some(PERMIT))],
            _ => {
                let rw = if rng.gen_bool(0.5) { READ } else { WRITE };
                vec![(SHARED_RW, Some(rw)), (SHARED_SEMAPHORE, Some(PERMIT))]
            }
        };
        locks.shuffle(rng);
        Request { locks }
    }

    /// The event of lock `key` of the request: `e` with its `key`, the recorded kind
    /// and, if held, its token.
    fn event_of(
        out: &Out,
        e: &Event,
        (key, kind): (&str, Option<(LockKind, &str)>),
        hold: Option<&Hold>,
    ) -> Event {
        let mut e = e.clone();
        e.key = Some(key.to_string());
        e.lock_kind = kind.map(|(_, name)| name.to_string());
        if let Some(hold) = hold {
            e.token = hold.token(&path(out, key));
        }
        e
    }

    /// Writes `e` once per lock (see [`Request::event_of`]).
    fn emit(&self, out: &Out, e: &Event, hold: Option<&Hold>) {
        for lock in &self.locks {
            out.emit(Self::event_of(out, e, *lock, hold));
        }
    }

    async fn acquire(&self, out: &Out, client: &Client) -> corral_client::Result<Option<Hold>> {
        let ttl = Duration::from_millis(out.spec.ttl_ms);
        let timeout = Duration::from_millis(out.spec.request_timeout_ms);
        let options = corral_client::LockOptions::default().with_ttl(ttl);
        match self.locks.as_slice() {
            [(one, kind)] => {
                let options = match kind {
                    Some((kind, _)) => options.with_kind(*kind),
                    None => options,
                };
                let lock = client.lock(&path(out, one), options);
                Ok(lock.acquire_timeout(timeout).await?.map(Hold::One))
            }
            many => {
                let mut locks = client.lock_many(many.iter().map(|(k, _)| path(out, k)), options);
                for (key, kind) in many {
                    if let Some((kind, _)) = kind {
                        locks = locks.with_kind(&path(out, key), *kind);
                    }
                }
                Ok(locks.acquire_timeout(timeout).await?.map(Hold::Many))
            }
        }
    }
}

/// A lock's path: `key` under the workload's root.
fn path(out: &Out, key: &str) -> String {
    format!("{}/{key}", out.spec.root)
}

/// A [`Request`]'s hold: one lock (`Client::lock`) or a group (`Client::lock_many`).
enum Hold {
    One(LockGuard),
    Many(MultiLockGuard),
}

impl Hold {
    fn token(&self, lock: &str) -> Option<u64> {
        match self {
            Hold::One(g) => Some(g.token()),
            Hold::Many(g) => g.token(lock),
        }
    }

    fn lost(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = LockLoss> + Send>> {
        match self {
            Hold::One(g) => Box::pin(g.lost()),
            Hold::Many(g) => Box::pin(g.lost()),
        }
    }

    async fn release(&self) -> corral_client::Result<bool> {
        match self {
            Hold::One(g) => g.release().await,
            Hold::Many(g) => g.release().await,
        }
    }
}

/// Workloads `multilock` and `shared`: each operation takes the locks of a request drawn
/// by `draw` ([`Request::multilock`], [`Request::shared`]), holds them up to 200 ms and
/// releases them. Every event is written once per lock of the request, with the lock's
/// name as its `key` (and `shared`'s kind as `lock_kind`), so that each lock's history
/// can be checked on its own (the checker splits them). Returns whether the session
/// ended.
async fn keyed_lock_loop(
    out: &Out,
    client: &Client,
    rng: &mut StdRng,
    draw: fn(&mut StdRng) -> Request,
) -> bool {
    let mut ops = 0u64;
    while !out.past_deadline() && ops < 1_000_000 {
        ops += 1;
        let request = draw(rng);
        request.emit(out, &out.event(Kind::Invoke, "acquire"), None);
        let hold = match request.acquire(out, client).await {
            Ok(Some(hold)) => {
                request.emit(out, &out.event(Kind::Ok, "acquire"), Some(&hold));
                hold
            }
            Ok(None) => {
                let mut e = out.event(Kind::Fail, "acquire");
                e.error = Some("timed out waiting".into());
                request.emit(out, &e, None);
                continue;
            }
            Err(err) => {
                // The client never holds after an error (it releases a late grant).
                let mut e = out.event(Kind::Fail, "acquire");
                e.error = Some(err.to_string());
                request.emit(out, &e, None);
                if matches!(err, Error::SessionExpired | Error::Closed) {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(INFO_BACKOFF_MS)).await;
                continue;
            }
        };
        // The events of a loss, ready before the hold moves into the watcher.
        let lost = out.event(Kind::Event, "lost");
        let lost_events: Vec<Event> = request
            .locks
            .iter()
            .map(|lock| Request::event_of(out, &lost, *lock, Some(&hold)))
            .collect();
        let watcher = {
            let (out, lost) = (out.clone(), hold.lost());
            tokio::spawn(async move {
                let why = lost.await;
                if why != LockLoss::Released {
                    for mut e in lost_events {
                        e.error = Some(why.to_string());
                        out.emit(e);
                    }
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..200))).await;
        request.emit(out, &out.event(Kind::Invoke, "release"), Some(&hold));
        let done = match hold.release().await {
            Ok(released) => {
                let mut e = out.event(if released { Kind::Ok } else { Kind::Fail }, "release");
                if !released {
                    e.error = Some("was not held any more".into());
                }
                e
            }
            Err(err) => completion(out, "release", &err),
        };
        request.emit(out, &done, Some(&hold));
        drop(hold);
        watcher.abort();
        if client.state().is_terminal() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..50))).await;
        out.backoff_if_info().await;
    }
    false
}

fn parse_value(data: &[u8]) -> u64 {
    std::str::from_utf8(data)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// The stat a committed transaction's `SetData` left.
fn set_version(r: corral_client::Result<Vec<MultiResult>>) -> corral_client::Result<Stat> {
    r?.into_iter()
        .find_map(|r| match r {
            MultiResult::SetData { stat } => Some(stat),
            _ => None,
        })
        .ok_or_else(|| Error::Protocol("a committed transaction without its set_data".into()))
}

async fn register_loop(out: &Out, client: &Client, rng: &mut StdRng) -> bool {
    let mut n = 0u64;
    let mut versions: std::collections::HashMap<String, u32> = std::collections::HashMap::new();
    let mut created: std::collections::HashSet<String> = std::collections::HashSet::new();
    while !out.past_deadline() && n < 1_000_000 {
        n += 1;
        // Keys are independent registers that live for one window of time each, so that
        // each key's history stays small enough for the linearizability search.
        let window = out.now() / (KEY_WINDOW_MS * 1_000_000);
        let k = rng.gen_range(0..out.spec.keys.max(1));
        let key = format!("w{window}-k{k}");
        let path = format!("{}/{key}", out.spec.root);
        if !created.contains(&key) {
            // Every register starts as "0" at version 0. A create that fails or times
            // out does not matter: operations on a missing node fail with NoNode and
            // are left out of the check, and a late create cannot replace a node.
            match client.create(&path, "0", CreateMode::Persistent).await {
                Ok(_) => {
                    created.insert(key.clone());
                }
                Err(e) if e.is(ErrorCode::NodeExists) => {
                    created.insert(key.clone());
                }
                Err(_) => {}
            }
        }
        let k = key.clone();
        let value = out.unique_value();
        let which = rng.gen_range(0..3);
        let mut inv = out.event(Kind::Invoke, ["read", "write", "cas"][which]);
        inv.key = Some(key.clone());
        match which {
            0 => {
                out.emit(inv);
                // A read from a node's applied state may be stale; after a sync it is
                // not (the barrier orders it after every acknowledged write).
                let r = match client.sync(&path).await {
                    Ok(()) => client.get_data(&path).await,
                    Err(e) => Err(e),
                };
                let mut e = match r {
                    Ok((data, stat)) => {
                        versions.insert(k, stat.version);
                        let mut e = out.event(Kind::Ok, "read");
                        e.value = Some(parse_value(&data));
                        e.version = Some(stat.version);
                        e
                    }
                    Err(err) => {
                        let mut e = out.event(Kind::Fail, "read");
                        e.error = Some(err.to_string());
                        e
                    }
                };
                e.key = Some(key);
                out.emit(e);
            }
            1 => {
                inv.value = Some(value);
                out.emit(inv);
                let mut e = match client.set_data(&path, value.to_string(), None).await {
                    Ok(stat) => {
                        versions.insert(k, stat.version);
                        let mut e = out.event(Kind::Ok, "write");
                        e.version = Some(stat.version);
                        e
                    }
                    Err(err) => completion(out, "write", &err),
                };
                e.key = Some(key);
                out.emit(e);
            }
            _ => {
                let expect = match versions.get(&k) {
                    Some(v) if rng.gen_bool(0.8) => *v,
                    _ => rng.gen_range(0..4),
                };
                inv.value = Some(value);
                inv.version = Some(expect);
                out.emit(inv);
                // A conditional set, or a transaction that checks the version and then
                // sets, or sets and then checks the version the set made (a failed
                // check must undo the set): all three take effect exactly when the
                // version is `expect`.
                let data = value.to_string();
                let r = match rng.gen_range(0..3) {
                    0 => client.set_data(&path, data, Some(expect)).await,
                    1 => {
                        let t = client.transaction().check(&path, expect);
                        set_version(t.set_data(&path, data, None).commit().await)
                    }
                    _ => {
                        let t = client.transaction().set_data(&path, data, None);
                        set_version(t.check(&path, expect + 1).commit().await)
                    }
                };
                let mut e = match r {
                    Ok(stat) => {
                        versions.insert(k, stat.version);
                        out.event(Kind::Ok, "cas")
                    }
                    Err(err) => completion(out, "cas", &err),
                };
                e.key = Some(key);
                out.emit(e);
            }
        }
        if client.state().is_terminal() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..20))).await;
        out.backoff_if_info().await;
    }
    false
}

async fn sequential_loop(out: &Out, client: &Client, rng: &mut StdRng) -> bool {
    let mut n = 0u64;
    let prefix = format!("{}/item-", out.spec.root);
    while !out.past_deadline() && n < 1_000_000 {
        n += 1;
        let value = out.unique_value();
        let mut inv = out.event(Kind::Invoke, "create");
        inv.value = Some(value);
        out.emit(inv);
        let e = match client
            .create(&prefix, value.to_string(), CreateMode::PersistentSequential)
            .await
        {
            Ok(path) => {
                let mut e = out.event(Kind::Ok, "create");
                e.path = Some(path);
                e
            }
            Err(err) => completion(out, "create", &err),
        };
        out.emit(e);
        if client.state().is_terminal() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..30))).await;
        out.backoff_if_info().await;
    }
    false
}

async fn watch_loop(out: &Out, client: &Client, rng: &mut StdRng) -> bool {
    let root = out.spec.root.clone();
    let mut stream = match client
        .add_watch(&root, AddWatchMode::PersistentRecursive)
        .await
    {
        Ok(s) => s,
        Err(_) => return client.state().is_terminal(),
    };
    let mut e = out.event(Kind::Event, "watching");
    e.zxid = Some(client.last_zxid());
    out.emit(e);
    // Connection changes, with the zxid the client had seen: persistent watches are
    // re-registered after a reconnect without replaying what changed meanwhile (the
    // stream then says which zxids fired nothing: `resumed` events).
    let mut states = client.state_events();
    let mut states_open = true;
    // The connection at the start (the node matters to the checker's snapshot-install
    // rule); read after subscribing, so no change is lost in between.
    let mut e = out.event(Kind::Event, "state");
    e.zxid = Some(client.last_zxid());
    e.error = Some(client.state().to_string());
    out.emit(e);
    let handle_state = |st: Option<corral_client::ConnectionState>| {
        let Some(st) = st else {
            // The client is finished; the stream must not be polled again.
            return false;
        };
        let mut e = out.event(Kind::Event, "state");
        e.zxid = Some(client.last_zxid());
        // "connected to ADDR", "disconnected", "connecting", "session expired", ...
        e.error = Some(st.to_string());
        out.emit(e);
        true
    };
    let handle_event = |item: Option<Result<corral_client::WatchEvent, Error>>| match item {
        Some(Ok(ev)) => {
            let mut e = out.event(Kind::Event, "event");
            e.path = Some(ev.path);
            e.zxid = Some(ev.zxid);
            out.emit(e);
            true
        }
        // The watch is back after a reconnect: what changed in (since, until] may have
        // fired nothing (the checker's "told" gaps).
        Some(Err(Error::WatchResumed {
            since_zxid,
            until_zxid,
        })) => {
            let mut e = out.event(Kind::Event, "resumed");
            e.value = Some(since_zxid);
            e.zxid = Some(until_zxid);
            out.emit(e);
            true
        }
        Some(Err(err)) => {
            let mut e = out.event(Kind::Event, "lagged");
            e.error = Some(err.to_string());
            out.emit(e);
            !matches!(err, Error::WatchRemoved | Error::SessionExpired)
        }
        None => {
            let mut e = out.event(Kind::Event, "lagged");
            e.error = Some("the watch stream ended".into());
            out.emit(e);
            false
        }
    };
    let mut n = 0u64;
    let mut watching = true;
    while !out.past_deadline() && n < 1_000_000 {
        n += 1;
        let value = out.unique_value();
        let key = format!("k{}", rng.gen_range(0..3));
        let path = format!("{root}/{key}");
        let mut inv = out.event(Kind::Invoke, "write");
        inv.key = Some(key.clone());
        inv.value = Some(value);
        out.emit(inv);
        let write = client.set_data(&path, value.to_string(), None);
        tokio::pin!(write);
        let result = loop {
            tokio::select! {
                r = &mut write => break r,
                item = stream.recv(), if watching => watching = handle_event(item),
                st = states.recv(), if states_open => states_open = handle_state(st),
            }
        };
        let mut e = match result {
            Ok(stat) => {
                let mut e = out.event(Kind::Ok, "write");
                e.zxid = Some(stat.mzxid);
                e
            }
            Err(err) => completion(out, "write", &err),
        };
        e.key = Some(key);
        out.emit(e);
        if client.state().is_terminal() {
            return true;
        }
        let pause = tokio::time::sleep(Duration::from_millis(rng.gen_range(0..30)));
        tokio::pin!(pause);
        loop {
            tokio::select! {
                () = &mut pause => break,
                item = stream.recv(), if watching => watching = handle_event(item),
                st = states.recv(), if states_open => states_open = handle_state(st),
            }
        }
        if out.last_was_info() {
            let pause = tokio::time::sleep(Duration::from_millis(INFO_BACKOFF_MS));
            tokio::pin!(pause);
            loop {
                tokio::select! {
                    () = &mut pause => break,
                    item = stream.recv(), if watching => watching = handle_event(item),
                    st = states.recv(), if states_open => states_open = handle_state(st),
                }
            }
        }
    }
    // The end: every event up to the zxid a sync returns was queued before the sync's
    // answer (events before later responses), so drain what is buffered and stop.
    if watching && client.sync(&root).await.is_ok() {
        let end = client.last_zxid();
        let mut drained = 0;
        while drained < 100_000 {
            drained += 1;
            match tokio::time::timeout(Duration::from_millis(300), stream.recv()).await {
                Ok(item) => {
                    if !handle_event(item) {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        let mut e = out.event(Kind::Event, "watch-end");
        e.zxid = Some(end);
        out.emit(e);
    }
    false
}

async fn session_loop(out: &Out, client: &Client, rng: &mut StdRng) -> bool {
    let path = format!(
        "{}/p{}-s{}",
        out.spec.root,
        out.spec.process,
        client.session_id()
    );
    match client
        .create(&path, Vec::new(), CreateMode::Ephemeral)
        .await
    {
        Ok(_) => {
            let mut e = out.event(Kind::Event, "ephemeral");
            e.path = Some(path.clone());
            e.session = Some(client.session_id());
            out.emit(e);
        }
        Err(_) => return client.state().is_terminal(),
    }
    let mut n = 0u64;
    while !out.past_deadline() && n < 1_000_000 {
        n += 1;
        let mut inv = out.event(Kind::Invoke, "exists");
        inv.path = Some(path.clone());
        out.emit(inv);
        let e = match client.exists(&path).await {
            Ok(Some(_)) => out.event(Kind::Ok, "exists"),
            Ok(None) => {
                let mut e = out.event(Kind::Fail, "exists");
                e.error = Some("own ephemeral is gone".into());
                e
            }
            Err(err) => {
                let mut e = out.event(Kind::Fail, "exists");
                e.error = Some(err.to_string());
                e
            }
        };
        out.emit(e);
        if client.state().is_terminal() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(100..300))).await;
    }
    false
}
