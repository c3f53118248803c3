//! The recipes against the scripted fake server (see `common/`): what they send, and how
//! their timeouts behave when the server is slow or gone.
//!
//! Every wait is bounded; nothing sleeps to synchronise.

mod common;

use common::{bounded, recv_while, FakeServer};
use corral_client::recipes::Barrier;
use corral_protocol::{Op, OpResult};
use std::time::Duration;

/// A timeout too large to add to the clock (`Duration::MAX`) means no deadline.
#[tokio::test]
async fn barrier_wait_timeout_of_duration_max_waits_without_a_deadline() {
    let server = FakeServer::start().await;
    let (client, mut conn) = server.connect(10_000).await;
    let barrier = Barrier::new(&client, "/b");
    let mut wait =
        tokio::spawn(async move { barrier.wait_on_barrier_timeout(Duration::MAX).await });
    let exists = recv_while(&mut conn, &mut wait).await;
    assert!(matches!(exists.op, Op::Exists { .. }), "{:?}", exists.op);
    conn.reply(exists.xid, 2, Ok(OpResult::Exists(None))).await;
    let through = bounded("wait_on_barrier_timeout", wait)
        .await
        .expect("join")
        .expect("wait");
    assert!(through);
}
