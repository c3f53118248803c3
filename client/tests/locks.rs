//! The lock API against the scripted fake server (see `common/`): what the client sends
//! and how it treats the answers when acquiring, giving up, renewing and releasing,
//! including when the server is slow, gone, or answers with an error.
//!
//! Every wait is bounded; nothing sleeps to synchronise.

mod common;

use common::{bounded, recv_while, FakeServer};
use corral_client::LockOptions;
use corral_protocol::{LockedNode, Op, OpResult};
use std::time::Duration;

fn locked(node: &str, token: u64) -> OpResult {
    OpResult::Locked {
        node: node.into(),
        token,
    }
}

/// A timeout too large to add to the clock (`Duration::MAX`, a common way to say "no
/// timeout") means no deadline: the acquire waits for its grant instead of panicking.
#[tokio::test]
async fn acquire_timeout_of_duration_max_waits_without_a_deadline() {
    let server = FakeServer::start().await;
    let (client, mut conn) = server.connect(10_000).await;

    let mut acquire = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .lock("/l", LockOptions::default())
                .acquire_timeout(Duration::MAX)
                .await
        }
    });
    let lock = recv_while(&mut conn, &mut acquire).await;
    assert!(matches!(lock.op, Op::Lock(_)), "{:?}", lock.op);
    conn.reply(lock.xid, 2, Ok(locked("/l/x-0000000001", 2)))
        .await;
    let guard = bounded("acquire_timeout", acquire)
        .await
        .expect("join")
        .expect("acquire")
        .expect("granted");
    assert_eq!(guard.token(), 2);

    let mut acquire = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .lock_many(["/a", "/b"], LockOptions::default())
                .acquire_timeout(Duration::MAX)
                .await
        }
    });
    let lock = recv_while(&mut conn, &mut acquire).await;
    assert!(matches!(lock.op, Op::LockMany(_)), "{:?}", lock.op);
    let nodes = ["/a", "/b"]
        .iter()
        .map(|lock| LockedNode {
            lock: lock.to_string(),
            node: format!("{lock}/x-0000000000"),
            token: 3,
        })
        .collect();
    conn.reply(
        lock.xid,
        3,
        Ok(OpResult::MultiLocked {
            granted: true,
            nodes,
        }),
    )
    .await;
    let guard = bounded("lock_many acquire_timeout", acquire)
        .await
        .expect("join")
        .expect("acquire")
        .expect("granted");
    assert_eq!(
        guard.tokens(),
        vec![("/a".to_string(), 3), ("/b".to_string(), 3)]
    );
}
