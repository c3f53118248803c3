//! `corralctl locks`: the locks at and below a path, with holders and waiters.

use crate::duration::show_duration;
use crate::emit;
use corral_client::{Client, Error, LockEntry, LockKind, LockState};
use serde_json::{json, Value};
use std::time::Duration;

/// How a request kind is shown.
pub fn kind_name(kind: LockKind) -> String {
    match kind {
        LockKind::Exclusive => "exclusive".into(),
        LockKind::Read => "read".into(),
        LockKind::Write => "write".into(),
        LockKind::Semaphore { permits } => format!("semaphore({permits})"),
    }
}

/// The lock's family, from its queue (`-` for an empty queue: the server does not say).
fn family_name(lock: &LockState) -> String {
    match lock.queue.first().map(|e| e.kind) {
        None => "-".into(),
        Some(LockKind::Read | LockKind::Write) => "read-write".into(),
        Some(kind) => kind_name(kind),
    }
}

fn entry_json(entry: &LockEntry) -> Value {
    json!({
        "node": entry.node,
        "kind": kind_name(entry.kind),
        "session": entry.session,
        "lease": entry.lease,
        "token": entry.token,
    })
}

fn lock_json(lock: &LockState) -> Value {
    let (holders, waiters): (Vec<&LockEntry>, Vec<&LockEntry>) =
        lock.queue.iter().partition(|e| e.granted);
    json!({
        "lock": lock.lock,
        "kind": family_name(lock),
        "lock_delay_ms": lock.lock_delay_ms,
        "delayed_until_ms": lock.delayed_until_ms,
        "queue_length": lock.queue.len(),
        "holders": holders.into_iter().map(entry_json).collect::<Vec<_>>(),
        "waiters": waiters.into_iter().map(entry_json).collect::<Vec<_>>(),
    })
}

fn entry_line(entry: &LockEntry) -> String {
    let role = if entry.granted { "held" } else { "waiting" };
    let lease = if entry.lease != entry.session {
        format!("  lease {:#x}", entry.lease)
    } else {
        String::new()
    };
    format!(
        "  {role:<8} {}  {}  session {:#x}{lease}  token {}",
        entry.node,
        kind_name(entry.kind),
        entry.session,
        entry.token
    )
}

pub async fn list(client: &Client, path: &str, json: bool) -> Result<(), Error> {
    let mut locks = client.locks(path).await?;
    locks.sort_by(|a, b| a.lock.cmp(&b.lock));
    if json {
        let locks: Vec<Value> = locks.iter().map(lock_json).collect();
        return emit(json!({ "path": path, "locks": locks }));
    }
    if locks.is_empty() {
        return Ok(());
    }
    let width = locks.iter().map(|l| l.lock.len()).max().unwrap_or(0).max(4);
    emit(format_args!(
        "{:<width$}  {:<14} {:>5} {:>7} {:>7}  LOCK-DELAY",
        "LOCK", "KIND", "QUEUE", "HOLDERS", "WAITERS"
    ))?;
    for lock in &locks {
        let holders = lock.queue.iter().filter(|e| e.granted).count();
        let mut delay = show_duration(Duration::from_millis(lock.lock_delay_ms));
        if lock.delayed_until_ms > 0 {
            delay.push_str(&format!(" (running until {} ms)", lock.delayed_until_ms));
        }
        emit(format_args!(
            "{:<width$}  {:<14} {:>5} {:>7} {:>7}  {delay}",
            lock.lock,
            family_name(lock),
            lock.queue.len(),
            holders,
            lock.queue.len() - holders,
        ))?;
        for entry in &lock.queue {
            emit(entry_line(entry))?;
        }
    }
    Ok(())
}
