//! Backup and restore round trips: `corralctl snapshot save FILE`, then `corral restore
//! --from FILE` into empty data directories, as docs/OPERATIONS.md describes. The
//! restored service has exactly the state of the backup, hands out fencing tokens above
//! the backup's zxid, and lets the sessions of the image expire.

use corral_client::{Client, CreateMode, LockOptions};
use corral_tests::cluster::{quick_config, TestCluster, CLUSTER_WAIT};
use corral_tests::{corral_bin, corralctl_bin, TestServer};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Runs `corralctl -s SERVERS snapshot save FILE`; returns the zxid it reports.
fn save_backup(servers: &str, file: &Path) -> u64 {
    let out = Command::new(corralctl_bin())
        .args(["-s", servers, "--json", "snapshot", "save"])
        .arg(file)
        .output()
        .expect("run corralctl");
    assert!(
        out.status.success(),
        "snapshot save failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json output");
    assert!(file.exists());
    v["zxid"].as_u64().expect("zxid in the output")
}

fn empty_dir(dir: &Path) {
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            std::fs::remove_dir_all(&path).expect("remove");
        } else {
            std::fs::remove_file(&path).expect("remove");
        }
    }
}

fn restore(file: &Path, data_dir: &Path) -> std::process::Output {
    Command::new(corral_bin())
        .arg("restore")
        .arg("--from")
        .arg(file)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .expect("run corral restore")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_backup_and_restore() {
    let backups = tempfile::tempdir().expect("tempdir");
    let file = backups.path().join("corral.backup");
    let mut server = TestServer::start(&[]);
    let client = Client::connect(quick_config([server.addr()]))
        .await
        .expect("connect");
    client
        .create("/kept", b"before".to_vec(), CreateMode::Persistent)
        .await
        .expect("create");
    let zxid = save_backup(&server.addr(), &file);
    client
        .create("/lost", b"after".to_vec(), CreateMode::Persistent)
        .await
        .expect("create");
    client.close().await.expect("close");
    assert!(server.terminate(), "clean exit");

    // Refused: a data directory that is not empty, and a damaged backup.
    let out = restore(&file, server.data_dir());
    assert!(!out.status.success(), "restore into a used directory");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
    let damaged = backups.path().join("damaged.backup");
    let mut bytes = std::fs::read(&file).expect("read backup");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&damaged, &bytes).expect("write");
    let fresh = tempfile::tempdir().expect("tempdir");
    let out = restore(&damaged, fresh.path());
    assert!(!out.status.success(), "a damaged backup is refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("checksum"));

    empty_dir(server.data_dir());
    let out = restore(&file, server.data_dir());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.restart();
    let client = Client::connect(quick_config([server.addr()]))
        .await
        .expect("connect after restore");
    let (data, _) = client.get_data("/kept").await.expect("kept");
    assert_eq!(data, b"before");
    assert!(client.exists("/lost").await.expect("exists").is_none());
    client
        .create("/new", Vec::new(), CreateMode::Persistent)
        .await
        .expect("create after restore");
    let stat = client
        .exists("/new")
        .await
        .expect("exists")
        .expect("created");
    assert!(stat.czxid > zxid, "{} <= {zxid}", stat.czxid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_backup_and_restore() {
    let backups = tempfile::tempdir().expect("tempdir");
    let file = backups.path().join("cluster.backup");
    let mut cluster = TestCluster::start(3, &[]).await;
    let leader = cluster.leader().await;
    let servers = cluster
        .ids()
        .map(|id| cluster.direct_client_addr(id))
        .collect::<Vec<_>>()
        .join(",");
    let client = cluster.connect(leader).await;
    client
        .create("/kept", b"before".to_vec(), CreateMode::Persistent)
        .await
        .expect("create");
    let guard = client
        .lock(
            "/locks/held",
            LockOptions::default().with_ttl(Duration::from_secs(2)),
        )
        .acquire()
        .await
        .expect("acquire");
    let old_token = guard.token();
    let zxid = save_backup(&servers, &file);
    assert!(zxid >= old_token);
    client
        .create("/lost", b"after".to_vec(), CreateMode::Persistent)
        .await
        .expect("create");
    client.close().await.expect("close");

    cluster.restore_all(&file).await;
    let leader = cluster.leader().await;
    for id in cluster.ids() {
        let c = cluster.connect(id).await;
        c.sync("/").await.expect("sync");
        let (data, _) = c.get_data("/kept").await.expect("kept");
        assert_eq!(data, b"before", "node {id}");
        assert!(
            c.exists("/lost").await.expect("exists").is_none(),
            "node {id}"
        );
        c.close().await.expect("close");
    }
    // The lock held in the image belongs to a session nobody resumes: it expires and
    // the lock is granted again, with a token above everything in the backup.
    let client = cluster.connect(leader).await;
    let guard = client
        .lock("/locks/held", LockOptions::default())
        .acquire_timeout(CLUSTER_WAIT)
        .await
        .expect("acquire after restore")
        .expect("the image's holder expired");
    assert!(guard.token() > zxid, "{} <= {zxid}", guard.token());
    let locks = client.locks("/locks/held").await.expect("locks");
    assert_eq!(locks.len(), 1);
    assert_eq!(locks[0].queue.len(), 1, "{locks:?}");
}

/// A data directory holds one mode's data. Started in the other mode (a backup restored
/// for the other one, or `--peers` forgotten at a restart), the node refuses to start,
/// saying why, instead of finding no state of its own and starting empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_a_data_directory_of_the_other_mode() {
    let mut server = TestServer::start(&[]);
    let client = Client::connect(quick_config([server.addr()]))
        .await
        .expect("connect");
    client
        .create("/precious", Vec::new(), CreateMode::Persistent)
        .await
        .expect("create");
    client.close().await.expect("close");
    assert!(server.terminate(), "clean exit");
    let start_as_member = |dir: &Path| {
        let mut cmd = tokio::process::Command::new(corral_bin());
        cmd.args(["--node-id", "1"])
            .args([
                "--peers",
                "1=127.0.0.1:1,2=127.0.0.1:2,3=127.0.0.1:3",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(dir)
            .kill_on_drop(true);
        cmd
    };
    let out = tokio::time::timeout(CLUSTER_WAIT, start_as_member(server.data_dir()).output())
        .await
        .expect("the node refuses at once")
        .expect("run corral");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started: {stderr}");
    assert!(stderr.contains("single node's data"), "{stderr}");
    // As a single node again, its data is all there.
    server.restart();
    let client = Client::connect(quick_config([server.addr()]))
        .await
        .expect("connect");
    assert!(client.exists("/precious").await.expect("exists").is_some());
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// Starts a single node on `dir`, which it must refuse at once; returns its stderr.
async fn start_refused(dir: &Path) -> String {
    let mut cmd = tokio::process::Command::new(corral_bin());
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "off",
        "--data-dir",
    ])
    .arg(dir)
    .kill_on_drop(true);
    let out = tokio::time::timeout(CLUSTER_WAIT, cmd.output())
        .await
        .expect("the node refuses at once")
        .expect("run corral");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "started: {stderr}");
    stderr
}

/// A single-node restore that stops half-way (here: the snapshot written, the log not
/// yet created) leaves a directory that start refuses and that running the restore
/// again finishes. The second restore used to refuse it as not empty, like start, so
/// only a manual clean-up helped. A directory a node has written to is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_single_node_restore_is_finished_by_restoring_again() {
    let backups = tempfile::tempdir().expect("tempdir");
    let file = backups.path().join("corral.backup");
    let mut server = TestServer::start(&[]);
    let client = Client::connect(quick_config([server.addr()]))
        .await
        .expect("connect");
    client
        .create("/kept", b"before".to_vec(), CreateMode::Persistent)
        .await
        .expect("create");
    let zxid = save_backup(&server.addr(), &file);
    client.close().await.expect("close");
    assert!(server.terminate(), "clean exit");

    // The pieces of a complete restore; the interrupted one got its snapshot only.
    let complete = tempfile::tempdir().expect("tempdir");
    let out = restore(&file, complete.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    empty_dir(server.data_dir());
    copy_dir(
        &complete.path().join("snapshots"),
        &server.data_dir().join("snapshots"),
    );
    let stderr = start_refused(server.data_dir()).await;
    assert!(
        stderr.contains(&format!("snapshot is at {zxid}")),
        "{stderr}"
    );
    // Twice: what a refused start leaves behind is still the restore's own work.
    start_refused(server.data_dir()).await;

    let out = restore(&file, server.data_dir());
    assert!(
        out.status.success(),
        "restoring again over an unfinished restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.restart();
    let client = Client::connect(quick_config([server.addr()]))
        .await
        .expect("connect after restore");
    let (data, _) = client.get_data("/kept").await.expect("kept");
    assert_eq!(data, b"before");
    client
        .create("/new", Vec::new(), CreateMode::Persistent)
        .await
        .expect("create after restore");
    client.close().await.expect("close");
    assert!(server.terminate(), "clean exit");

    // The node wrote to it: no longer a restore's own work.
    let out = restore(&file, server.data_dir());
    assert!(!out.status.success(), "restore over a node's writes");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
    server.restart();
    let client = Client::connect(quick_config([server.addr()]))
        .await
        .expect("connect");
    assert!(client.exists("/new").await.expect("exists").is_some());
}
