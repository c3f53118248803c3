//! Coordination recipes built on the lock API and on watches, in the spirit of
//! Apache Curator's recipes and etcd's `concurrency` package.
//!
//! | Recipe | Built on | Waits on |
//! |---|---|---|
//! | [`ReadWriteLock`] | `LockKind::Read` / `LockKind::Write` | the server's fair queue |
//! | [`Semaphore`] | `LockKind::Semaphore` | the server's FIFO queue |
//! | [`Election`] | an exclusive lock whose queue nodes carry candidate data | lock grants; child and data watches to observe |
//! | [`Barrier`] | one node | an exists watch |
//! | [`DoubleBarrier`] | ephemeral children and a `ready` node | exists watches |
//!
//! Nothing here polls: every wait is on a lock grant or a one-shot watch, and every
//! wait that takes a timeout is bounded by it (a timeout too large for the clock, such
//! as `Duration::MAX`, means none). The lock-based recipes inherit the lock
//! API's guarantees (fencing tokens, loss detection at the safe deadline, cleanup on
//! drop); see the [crate docs](crate#locks).
//!
//! ```no_run
//! use corral_client::recipes::{Election, ReadWriteLock, Semaphore};
//! use corral_client::{Client, ClientConfig};
//!
//! # async fn demo() -> corral_client::Result<()> {
//! let client = Client::connect(ClientConfig::new(["127.0.0.1:2281"])).await?;
//! let table = ReadWriteLock::new(&client, "/locks/table");
//! let read = table.read().acquire().await?;
//! read.release().await?;
//!
//! let slots = Semaphore::new(&client, "/locks/slots", 4);
//! let permit = slots.acquire().await?;
//! permit.release().await?;
//!
//! let leadership = Election::new(&client, "/election/scheduler", "host-1").campaign().await?;
//! leadership.resign().await?;
//! # Ok(()) }
//! ```

mod barrier;
mod double_barrier;
mod election;
mod read_write;
mod semaphore;

pub use barrier::Barrier;
pub use double_barrier::DoubleBarrier;
pub use election::{Election, LeaderInfo, LeaderStream, Leadership};
pub use read_write::ReadWriteLock;
pub use semaphore::{Permit, Semaphore};

use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// The deadline `timeout` from now (`None`: wait for ever, also for a timeout the clock
/// cannot represent, such as `Duration::MAX`).
fn deadline_after(timeout: Option<Duration>) -> Option<Instant> {
    timeout.and_then(crate::lock::deadline_after)
}

/// `future`, given up at `deadline` (`None` if the deadline passed first).
async fn until<F: Future>(deadline: Option<Instant>, future: F) -> Option<F::Output> {
    match deadline {
        Some(at) => tokio::time::timeout_at(at, future).await.ok(),
        None => Some(future.await),
    }
}
