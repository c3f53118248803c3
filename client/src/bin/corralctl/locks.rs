//! `corralctl locks`: the locks at and below a path, with holders and waiters.

use crate::duration::show_duration;
use crate::emit;
use corral_client::{Client, Error, ErrorCode, LockKind, LockState};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;

/// The other locks of each waiting multi-lock node listed (by node path).
type Groups = HashMap<String, Vec<String>>;

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

/// The sessions the waiting entry `i` of `lock` waits for, as the server's deadlock
/// detection counts them: every other session ahead of it for an exclusive, write or
/// semaphore request, the sessions of the writes ahead for a read; none for an entry
/// that may hold the lock by its place (a multi-lock waiting for its other locks).
pub fn waits_for(lock: &LockState, i: usize) -> Vec<u64> {
    let Some(entry) = lock.queue.get(i) else {
        return Vec::new();
    };
    let ahead = &lock.queue[..i];
    let eligible = match entry.kind {
        LockKind::Semaphore { permits } => i < permits as usize,
        LockKind::Read => ahead.iter().all(|e| e.kind != LockKind::Write),
        LockKind::Exclusive | LockKind::Write => i == 0,
    };
    if entry.granted || eligible {
        return Vec::new();
    }
    let mut sessions: Vec<u64> = ahead
        .iter()
        .filter(|e| entry.kind != LockKind::Read || e.kind == LockKind::Write)
        .map(|e| e.session)
        .filter(|s| *s != entry.session)
        .collect();
    sessions.sort_unstable();
    sessions.dedup();
    sessions
}

/// The waiting entries that could hold their lock by their place but do not, while no
/// lock-delay runs: nodes of a multi-lock waiting for its other locks.
fn held_back(lock: &LockState) -> impl Iterator<Item = &str> {
    (0..lock.queue.len())
        .filter(move |&i| {
            !lock.queue[i].granted && lock.delayed_until_ms <= 0 && waits_for(lock, i).is_empty()
        })
        .map(move |i| lock.queue[i].node.as_str())
}

/// The other locks of every multi-lock node held back in `locks` (`GetLockGroup`, one
/// request per such node). A server older than that request, or a node gone meanwhile,
/// leaves the node out.
async fn groups_of(client: &Client, locks: &[LockState]) -> Result<Groups, Error> {
    let mut groups = Groups::new();
    for lock in locks {
        for node in held_back(lock) {
            let others = match client.lock_group(node).await {
                Ok(states) => states
                    .into_iter()
                    .map(|s| s.lock)
                    .filter(|l| *l != lock.lock)
                    .collect(),
                Err(e) if e.is(ErrorCode::Unimplemented) => return Ok(groups),
                Err(e) if e.is(ErrorCode::NoNode) => continue,
                Err(e) => return Err(e),
            };
            groups.insert(node.to_string(), others);
        }
    }
    Ok(groups)
}

fn entry_json(lock: &LockState, i: usize, groups: &Groups) -> Value {
    let entry = &lock.queue[i];
    let mut v = json!({
        "node": entry.node,
        "kind": kind_name(entry.kind),
        "session": entry.session,
        "lease": entry.lease,
        "token": entry.token,
    });
    if !entry.granted {
        v["waits_for"] = json!(waits_for(lock, i));
    }
    if let Some(others) = groups.get(&entry.node) {
        v["multi_lock_waits_on"] = json!(others);
    }
    v
}

fn lock_json(lock: &LockState, groups: &Groups) -> Value {
    let (holders, waiters): (Vec<usize>, Vec<usize>) =
        (0..lock.queue.len()).partition(|&i| lock.queue[i].granted);
    let entries = |of: Vec<usize>| -> Vec<Value> {
        of.into_iter()
            .map(|i| entry_json(lock, i, groups))
            .collect()
    };
    json!({
        "lock": lock.lock,
        "kind": family_name(lock),
        "lock_delay_ms": lock.lock_delay_ms,
        "delayed_until_ms": lock.delayed_until_ms,
        "queue_length": lock.queue.len(),
        "holders": entries(holders),
        "waiters": entries(waiters),
    })
}

fn entry_line(lock: &LockState, i: usize, groups: &Groups) -> String {
    let entry = &lock.queue[i];
    let waits = waits_for(lock, i);
    let mut waits = if waits.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = waits.iter().map(|s| format!("{s:#x}")).collect();
        format!("  waits for {}", list.join(", "))
    };
    if let Some(others) = groups.get(&entry.node) {
        waits.push_str(&format!("  multi-lock, waits on {}", others.join(", ")));
    }
    let role = if entry.granted { "held" } else { "waiting" };
    let lease = if entry.lease != entry.session {
        format!("  lease {:#x}", entry.lease)
    } else {
        String::new()
    };
    format!(
        "  {role:<8} {}  {}  session {:#x}{lease}  token {}{waits}",
        entry.node,
        kind_name(entry.kind),
        entry.session,
        entry.token
    )
}

/// Locks asked for per page (each page also fits in a frame).
const LOCKS_PER_PAGE: u32 = 1000;

pub async fn list(client: &Client, path: &str, json: bool) -> Result<(), Error> {
    // Page by page: more locks than one frame describes are listed too.
    let mut locks = Vec::new();
    let mut pages = client.locks_pages(path, LOCKS_PER_PAGE);
    while let Some(page) = pages.next_page().await? {
        locks.extend(page.locks);
    }
    locks.sort_by(|a, b| a.lock.cmp(&b.lock));
    let groups = groups_of(client, &locks).await?;
    if json {
        let locks: Vec<Value> = locks.iter().map(|l| lock_json(l, &groups)).collect();
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
        for i in 0..lock.queue.len() {
            emit(entry_line(lock, i, &groups))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_client::LockEntry;

    fn entry(session: u64, kind: LockKind, granted: bool) -> LockEntry {
        LockEntry {
            node: format!("/l/n-{session}"),
            kind,
            session,
            lease: session,
            token: session,
            granted,
        }
    }

    #[test]
    fn who_waits_for_whom() {
        let lock = |queue| LockState {
            lock: "/l".into(),
            lock_delay_ms: 0,
            delayed_until_ms: 0,
            queue,
        };
        let (r, w, x) = (LockKind::Read, LockKind::Write, LockKind::Exclusive);
        let rw = lock(vec![
            entry(1, r, true),
            entry(2, r, true),
            entry(3, w, false),
            entry(4, r, false),
            entry(3, w, false),
        ]);
        assert!(waits_for(&rw, 0).is_empty());
        assert_eq!(waits_for(&rw, 2), vec![1, 2]);
        assert_eq!(
            waits_for(&rw, 3),
            vec![3],
            "a read waits for the writes ahead"
        );
        assert_eq!(waits_for(&rw, 4), vec![1, 2, 4], "never for itself");
        // A multi-lock's node first in the queue, not granted: it waits elsewhere.
        let ex = lock(vec![entry(5, x, false), entry(6, x, false)]);
        assert!(waits_for(&ex, 0).is_empty());
        assert_eq!(waits_for(&ex, 1), vec![5]);
        let sem = LockKind::Semaphore { permits: 2 };
        let s = lock(vec![
            entry(1, sem, true),
            entry(2, sem, true),
            entry(3, sem, false),
        ]);
        assert_eq!(waits_for(&s, 2), vec![1, 2]);
    }
}
