//! The cycle a `Deadlock` error names, carried in its message.
//!
//! A lock request that would close a cycle of sessions waiting for each other fails with
//! [`ErrorCode::Deadlock`]. The message names the cycle, one
//! step a line, in a form both people and programs read:
//!
//! ```text
//! waiting on /a would deadlock: a cycle of 2 sessions
//! session 0x5 waits for session 0x7 on /a
//! session 0x7 waits for session 0x5 on /b
//! ```
//!
//! The first step is the refused request's session; each step's `waits_for` is the next
//! step's `session`, and the last one's is the first's. Paths contain no control
//! characters, so the newline ends a step and the path is the rest of its line.

use crate::error::{ErrorCode, ErrorInfo};

/// One edge of a wait-for cycle: `session` waits on `lock` for `waits_for`, which holds
/// the lock or is queued ahead of `session` on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitStep {
    /// The waiting session.
    pub session: u64,
    /// The lock it waits on.
    pub lock: String,
    /// The session it waits for.
    pub waits_for: u64,
}

/// The `Deadlock` error naming `cycle` (first step: the refused request's).
///
/// ```
/// use corral_protocol::deadlock::{deadlock_error, parse_cycle, WaitStep};
/// let cycle = vec![
///     WaitStep { session: 5, lock: "/a".into(), waits_for: 7 },
///     WaitStep { session: 7, lock: "/b".into(), waits_for: 5 },
/// ];
/// let e = deadlock_error(&cycle);
/// assert_eq!(e.code, corral_protocol::ErrorCode::Deadlock);
/// assert_eq!(parse_cycle(&e.message), Some(cycle));
/// ```
pub fn deadlock_error(cycle: &[WaitStep]) -> ErrorInfo {
    let first = cycle.first().map_or("?", |s| s.lock.as_str());
    let mut message = format!(
        "waiting on {first} would deadlock: a cycle of {} sessions",
        cycle.len()
    );
    for step in cycle {
        message.push_str(&format!(
            "\nsession {:#x} waits for session {:#x} on {}",
            step.session, step.waits_for, step.lock
        ));
    }
    ErrorInfo::new(ErrorCode::Deadlock, message)
}

/// The cycle named by a `Deadlock` error's message, or `None` if the message does not
/// name one (a server that words it otherwise).
pub fn parse_cycle(message: &str) -> Option<Vec<WaitStep>> {
    let mut steps = Vec::new();
    for line in message.lines().skip(1) {
        let rest = line.strip_prefix("session ")?;
        let (session, rest) = rest.split_once(" waits for session ")?;
        let (waits_for, lock) = rest.split_once(" on ")?;
        steps.push(WaitStep {
            session: parse_hex(session)?,
            lock: lock.to_string(),
            waits_for: parse_hex(waits_for)?,
        });
    }
    if steps.is_empty() {
        None
    } else {
        Some(steps)
    }
}

fn parse_hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.strip_prefix("0x")?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_with_spaces_and_the_separator_words_round_trip() {
        let cycle = vec![
            WaitStep {
                session: 0xabc,
                lock: "/a b/ on x".into(),
                waits_for: 1,
            },
            WaitStep {
                session: 1,
                lock: "/waits for session 0x1 on /z".into(),
                waits_for: 0xabc,
            },
        ];
        assert_eq!(parse_cycle(&deadlock_error(&cycle).message), Some(cycle));
    }

    #[test]
    fn other_messages_name_no_cycle() {
        assert_eq!(parse_cycle("waiting would deadlock"), None);
        assert_eq!(
            parse_cycle("x\nsession zz waits for session 0x1 on /a"),
            None
        );
    }
}
