//! The three targets behind one interface: a connection (its own session or lease), lock
//! acquire and release by name, plain writes and reads, session/lease creation.
//!
//! - **corral**: its own client; a lock is held under the client's session
//!   (`LockOptions::default()`), one request to acquire and one to release.
//! - **etcd**: the `etcd-client` crate and etcd's Lock RPC over a lease, the way
//!   `etcdctl lock` works: one lease per connection (10 s TTL, kept alive every 3 s),
//!   `Lock(name, lease)` then `Unlock(key)`.
//! - **ZooKeeper**: the `zookeeper-client` crate and the standard recipe: an
//!   ephemeral-sequential child of the lock's directory, the children listed, and, while
//!   the node is not the lowest, an `exists` watch on its predecessor; release deletes it.

use crate::BoxError;
use clap::ValueEnum;
use corral_client::{ClientConfig, CreateMode, ErrorCode, LockGuard, LockOptions};
use serde::Serialize;
use std::fmt;
use std::time::Duration;
use tokio::task::JoinHandle;

/// Session TTL, lease TTL and ZooKeeper session timeout of every connection.
pub const SESSION_TTL: Duration = Duration::from_secs(10);

/// A service under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// corral, with corral-client.
    Corral,
    /// etcd 3.x, with etcd-client.
    Etcd,
    /// ZooKeeper 3.8, with zookeeper-client.
    Zk,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Corral => "corral",
            Kind::Etcd => "etcd",
            Kind::Zk => "zookeeper",
        })
    }
}

impl Kind {
    /// The short name the scripts use.
    pub fn script_name(self) -> &'static str {
        match self {
            Kind::Corral => "corral",
            Kind::Etcd => "etcd",
            Kind::Zk => "zk",
        }
    }
}

/// A target: its kind and the client addresses of its nodes (`host:port`, node 1 first).
#[derive(Debug, Clone)]
pub struct Target {
    pub kind: Kind,
    pub endpoints: Vec<String>,
}

/// Where lock `i` lives.
pub fn lock_name(kind: Kind, i: usize) -> String {
    match kind {
        Kind::Etcd => format!("bench/locks/l{i}"),
        Kind::Corral | Kind::Zk => format!("/bench/locks/l{i}"),
    }
}

/// Lock names the failover workload uses (each attempt a fresh one, cycling).
pub const FAILOVER_NAMES: usize = 2_000;

/// Failover lock `i` (modulo [`FAILOVER_NAMES`]).
pub fn failover_lock_name(kind: Kind, i: usize) -> String {
    let i = i % FAILOVER_NAMES;
    match kind {
        Kind::Etcd => format!("bench/failover/f{i}"),
        Kind::Corral | Kind::Zk => format!("/bench/failover/f{i}"),
    }
}

/// Where plain key `i` lives.
pub fn key_name(kind: Kind, i: usize) -> String {
    match kind {
        Kind::Etcd => format!("bench/kv/k{i}"),
        Kind::Corral | Kind::Zk => format!("/bench/kv/k{i}"),
    }
}

/// One open connection with its own session (corral, ZooKeeper) or lease (etcd).
pub enum Conn {
    Corral(corral_client::Client),
    Etcd(Box<EtcdConn>),
    Zk(zookeeper_client::Client),
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Conn::Corral(_) => "Conn::Corral",
            Conn::Etcd(_) => "Conn::Etcd",
            Conn::Zk(_) => "Conn::Zk",
        })
    }
}

/// An etcd connection and the lease its locks are held under.
pub struct EtcdConn {
    client: etcd_client::Client,
    lease: i64,
    keepalive: JoinHandle<()>,
}

/// A held lock.
#[derive(Debug)]
pub enum Held {
    Corral(LockGuard),
    /// The key etcd's Lock RPC returned.
    Etcd(Vec<u8>),
    /// The path of our queue node.
    Zk(String),
}

fn http(endpoint: &str) -> String {
    format!("http://{endpoint}")
}

impl Target {
    /// Opens a connection to these endpoints (a subset of the target's, in order).
    pub async fn connect_to(&self, endpoints: &[String]) -> Result<Conn, BoxError> {
        match self.kind {
            Kind::Corral => {
                let config = ClientConfig::new(endpoints.iter().cloned())
                    .with_session_ttl(SESSION_TTL)
                    .with_connect_timeout(Duration::from_secs(3))
                    .with_request_timeout(Duration::from_secs(20));
                Ok(Conn::Corral(corral_client::Client::connect(config).await?))
            }
            Kind::Etcd => {
                let urls: Vec<String> = endpoints.iter().map(|e| http(e)).collect();
                let options = etcd_client::ConnectOptions::new()
                    .with_connect_timeout(Duration::from_secs(3))
                    .with_timeout(Duration::from_secs(20));
                let mut client = etcd_client::Client::connect(&urls, Some(options)).await?;
                let lease = client
                    .lease_grant(SESSION_TTL.as_secs() as i64, None)
                    .await?
                    .id();
                let keepalive = tokio::spawn(etcd_keepalive(client.clone(), lease));
                Ok(Conn::Etcd(Box::new(EtcdConn {
                    client,
                    lease,
                    keepalive,
                })))
            }
            Kind::Zk => {
                let client = zookeeper_client::Client::connector()
                    .with_session_timeout(SESSION_TTL)
                    .with_connection_timeout(Duration::from_secs(3))
                    .connect(&endpoints.join(","))
                    .await?;
                Ok(Conn::Zk(client))
            }
        }
    }

    /// Connection `c` of a load: pinned to one node, round robin over the nodes, so the
    /// connections of every target spread the same way.
    pub async fn connect_pinned(&self, c: usize) -> Result<Conn, BoxError> {
        let e = self.endpoints[c % self.endpoints.len()].clone();
        self.connect_to(&[e]).await
    }

    /// A connection that may use every node (for failover).
    pub async fn connect_all(&self) -> Result<Conn, BoxError> {
        self.connect_to(&self.endpoints).await
    }
}

/// Keeps an etcd lease alive every 3 s until aborted.
async fn etcd_keepalive(mut client: etcd_client::Client, lease: i64) {
    loop {
        if let Ok((mut keeper, mut stream)) = client.lease_keep_alive(lease).await {
            loop {
                tokio::time::sleep(Duration::from_secs(3)).await;
                if keeper.keep_alive().await.is_err() {
                    break;
                }
                match tokio::time::timeout(Duration::from_secs(3), stream.message()).await {
                    Ok(Ok(Some(_))) => {}
                    _ => break,
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn is_code<T>(r: &corral_client::Result<T>, code: ErrorCode) -> bool {
    matches!(r, Err(e) if e.is(code))
}

impl Conn {
    /// Acquires the lock `name` (from [`lock_name`]), waiting in its queue.
    pub async fn acquire(&self, name: &str) -> Result<Held, BoxError> {
        match self {
            Conn::Corral(client) => {
                let guard = client.lock(name, LockOptions::default()).acquire().await?;
                Ok(Held::Corral(guard))
            }
            Conn::Etcd(e) => {
                let options = etcd_client::LockOptions::new().with_lease(e.lease);
                let mut client = e.client.clone();
                let response = client.lock(name, Some(options)).await?;
                Ok(Held::Etcd(response.key().to_vec()))
            }
            Conn::Zk(client) => zk_acquire(client, name).await.map(Held::Zk),
        }
    }

    /// Releases a lock this connection holds.
    pub async fn release(&self, held: Held) -> Result<(), BoxError> {
        match (self, held) {
            (Conn::Corral(_), Held::Corral(guard)) => {
                guard.release().await?;
                Ok(())
            }
            (Conn::Etcd(e), Held::Etcd(key)) => {
                let mut client = e.client.clone();
                client.unlock(key).await?;
                Ok(())
            }
            (Conn::Zk(client), Held::Zk(path)) => {
                client.delete(&path, None).await?;
                Ok(())
            }
            _ => Err("a lock released through another target".into()),
        }
    }

    /// Overwrites plain key `key` (it exists: see [`Conn::prepare`]).
    pub async fn put(&self, key: &str, value: &[u8]) -> Result<(), BoxError> {
        match self {
            Conn::Corral(client) => {
                client.set_data(key, value.to_vec(), None).await?;
            }
            Conn::Etcd(e) => {
                let mut client = e.client.clone();
                client.put(key, value.to_vec(), None).await?;
            }
            Conn::Zk(client) => {
                client.set_data(key, value, None).await?;
            }
        }
        Ok(())
    }

    /// Reads plain key `key`. etcd reads are serializable (served by the node the client
    /// is connected to), as corral's and ZooKeeper's reads are.
    pub async fn get(&self, key: &str) -> Result<(), BoxError> {
        match self {
            Conn::Corral(client) => {
                client.get_data(key).await?;
            }
            Conn::Etcd(e) => {
                let mut client = e.client.clone();
                let options = etcd_client::GetOptions::new().with_serializable();
                let r = client.get(key, Some(options)).await?;
                if r.kvs().is_empty() {
                    return Err(format!("{key} is missing").into());
                }
            }
            Conn::Zk(client) => {
                client.get_data(key).await?;
            }
        }
        Ok(())
    }

    /// One write that needs a working cluster (a leader and a quorum).
    pub async fn put_probe(&self) -> Result<(), BoxError> {
        match self {
            Conn::Corral(client) => {
                let r = client
                    .create("/bench", Vec::new(), CreateMode::Persistent)
                    .await;
                if !is_code(&r, ErrorCode::NodeExists) {
                    r?;
                }
            }
            Conn::Etcd(e) => {
                let mut client = e.client.clone();
                client.put("bench/probe", "1", None).await?;
            }
            Conn::Zk(client) => {
                let options = zookeeper_client::CreateMode::Persistent
                    .with_acls(zookeeper_client::Acls::anyone_all());
                client.mkdir("/bench", &options).await?;
            }
        }
        Ok(())
    }

    /// Creates the lock directories `0..locks` (ZooKeeper's recipe needs them; corral
    /// creates its own on first use; etcd has no directories) and `keys` plain keys.
    pub async fn prepare(&self, locks: usize, keys: usize, value: &[u8]) -> Result<(), BoxError> {
        let kind = self.kind();
        let mut paths: Vec<String> = Vec::new();
        match self {
            Conn::Corral(client) => {
                for p in ["/bench", "/bench/kv"] {
                    let r = client.create(p, Vec::new(), CreateMode::Persistent).await;
                    if !is_code(&r, ErrorCode::NodeExists) {
                        r?;
                    }
                }
            }
            Conn::Zk(client) => {
                let options = zookeeper_client::CreateMode::Persistent
                    .with_acls(zookeeper_client::Acls::anyone_all());
                client.mkdir("/bench/locks", &options).await?;
                client.mkdir("/bench/kv", &options).await?;
                client.mkdir("/bench/failover", &options).await?;
                paths.extend((0..locks).map(|i| lock_name(kind, i)));
                paths.extend((0..FAILOVER_NAMES).map(|i| failover_lock_name(kind, i)));
            }
            Conn::Etcd(_) => {}
        }
        paths.extend((0..keys).map(|i| key_name(kind, i)));
        // A few hundred creates in flight at once.
        for chunk in paths.chunks(256) {
            let results =
                futures::future::join_all(chunk.iter().map(|p| self.create_if_missing(p, value)))
                    .await;
            for r in results {
                r?;
            }
        }
        Ok(())
    }

    async fn create_if_missing(&self, path: &str, value: &[u8]) -> Result<(), BoxError> {
        match self {
            Conn::Corral(client) => {
                let r = client
                    .create(path, value.to_vec(), CreateMode::Persistent)
                    .await;
                if !is_code(&r, ErrorCode::NodeExists) {
                    r?;
                }
            }
            Conn::Etcd(e) => {
                let mut client = e.client.clone();
                client.put(path, value.to_vec(), None).await?;
            }
            Conn::Zk(client) => {
                let options = zookeeper_client::CreateMode::Persistent
                    .with_acls(zookeeper_client::Acls::anyone_all());
                match client.create(path, value, &options).await {
                    Ok(_) | Err(zookeeper_client::Error::NodeExists) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(())
    }

    fn kind(&self) -> Kind {
        match self {
            Conn::Corral(_) => Kind::Corral,
            Conn::Etcd(_) => Kind::Etcd,
            Conn::Zk(_) => Kind::Zk,
        }
    }

    /// Ends the session (revokes the lease): whatever it still holds is released.
    pub async fn close(self) {
        let bound = Duration::from_secs(5);
        match self {
            Conn::Corral(client) => {
                let _ = tokio::time::timeout(bound, client.close()).await;
            }
            Conn::Etcd(mut e) => {
                e.keepalive.abort();
                let lease = e.lease;
                let _ = tokio::time::timeout(bound, e.client.lease_revoke(lease)).await;
            }
            Conn::Zk(client) => drop(client),
        }
    }

    /// Creates a lease on this connection and returns the time that took; the lease is
    /// revoked in the background. corral: `GrantLease` (no renewals); etcd:
    /// `LeaseGrant`. ZooKeeper has no leases (`Ok(None)`).
    pub async fn lease_cycle(&self) -> Result<Option<Duration>, BoxError> {
        let start = tokio::time::Instant::now();
        match self {
            Conn::Corral(client) => {
                let options = corral_client::LeaseOptions::new(SESSION_TTL)
                    .with_renewal(corral_client::Renewal::Manual);
                let lease = client.grant_lease_with(options).await?;
                let took = start.elapsed();
                tokio::spawn(async move {
                    let _ = lease.revoke().await;
                });
                Ok(Some(took))
            }
            Conn::Etcd(e) => {
                let mut client = e.client.clone();
                let id = client
                    .lease_grant(SESSION_TTL.as_secs() as i64, None)
                    .await?
                    .id();
                let took = start.elapsed();
                tokio::spawn(async move {
                    let _ = client.lease_revoke(id).await;
                });
                Ok(Some(took))
            }
            Conn::Zk(_) => Ok(None),
        }
    }
}

/// The ZooKeeper lock recipe (ZooKeeper's "Recipes and Solutions", Locks): create an
/// ephemeral-sequential node under the lock's directory; list the children; if ours is
/// the lowest, the lock is held; otherwise set an `exists` watch on the next lower one
/// and wait for it to fire, then list again.
async fn zk_acquire(client: &zookeeper_client::Client, dir: &str) -> Result<String, BoxError> {
    let options = zookeeper_client::CreateMode::EphemeralSequential
        .with_acls(zookeeper_client::Acls::anyone_all());
    let prefix = format!("{dir}/lock-");
    let (_, sequence) = client.create(&prefix, &[], &options).await?;
    let mine = format!("lock-{sequence}");
    let path = format!("{prefix}{sequence}");
    loop {
        let mut children = client.list_children(dir).await?;
        children.retain(|c| c.starts_with("lock-"));
        children.sort_unstable();
        let Ok(at) = children.binary_search(&mine) else {
            return Err(format!("{path} vanished while waiting").into());
        };
        if at == 0 {
            return Ok(path);
        }
        let predecessor = format!("{dir}/{}", children[at - 1]);
        let (stat, watcher) = client.check_and_watch_stat(&predecessor).await?;
        if stat.is_some() {
            watcher.changed().await;
        }
    }
}
