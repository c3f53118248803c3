//! A test-only clock fault hook for the Jepsen-style harness (`jepsen/`).
//!
//! libfaketime hangs tokio programs, so the harness cannot skew a node's clock from the
//! outside. Instead, when (and only when) the environment variable
//! `CORRAL_TEST_CLOCK_FILE` names a file, the server's clock (`server.rs`) passes every
//! reading through [`adjust`], which applies what that file says:
//!
//! ```text
//! <wall offset in ms> <rate>        e.g. "-30000 1.0" or "0 2.5"
//! ```
//!
//! - The **offset** moves the wall clock only (like `date -s`: the monotonic clock does
//!   not jump). Entries carry the proposer's wall clock, so lock-delay and entry times
//!   see it.
//! - The **rate** makes both clocks run fast or slow from the moment it is read (like a
//!   bad oscillator or NTP slewing); the monotonic clock stays monotonic. When the rate
//!   is set back to 1 the wall clock steps back to true time (plus the offset); the
//!   monotonic clock keeps the lead it gained.
//!
//! The file is re-read at most every 100 ms; a missing or malformed file means no skew.
//! Without the variable (every production deployment) [`adjust`] returns its input.

use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// The environment variable that enables the hook.
pub const CLOCK_FILE_ENV: &str = "CORRAL_TEST_CLOCK_FILE";

#[derive(Debug)]
struct Skew {
    file: std::path::PathBuf,
    state: Mutex<SkewState>,
}

#[derive(Debug)]
struct SkewState {
    last_read: Option<Instant>,
    offset_ms: i64,
    rate: f64,
    /// Real and skewed monotonic readings when the rate last changed.
    real_anchor_ms: u64,
    skewed_anchor_ms: u64,
    last_mono_ms: u64,
}

fn skew() -> Option<&'static Skew> {
    static SKEW: OnceLock<Option<Skew>> = OnceLock::new();
    SKEW.get_or_init(|| {
        let file = std::env::var_os(CLOCK_FILE_ENV)?;
        tracing::warn!(file = ?file, "TEST CLOCK HOOK ENABLED: the node's clock follows this file");
        Some(Skew {
            file: file.into(),
            state: Mutex::new(SkewState {
                last_read: None,
                offset_ms: 0,
                rate: 1.0,
                real_anchor_ms: 0,
                skewed_anchor_ms: 0,
                last_mono_ms: 0,
            }),
        })
    })
    .as_ref()
}

fn parse(text: &str) -> Option<(i64, f64)> {
    let mut parts = text.split_whitespace();
    let offset = parts.next()?.parse().ok()?;
    let rate: f64 = parts.next()?.parse().ok()?;
    (rate.is_finite() && rate > 0.0 && rate <= 100.0).then_some((offset, rate))
}

/// Applies the configured skew to a reading (`mono_ms` since start-up, `wall_ms` since
/// the epoch). The identity unless `CORRAL_TEST_CLOCK_FILE` is set.
pub fn adjust(mono_ms: u64, wall_ms: i64) -> (u64, i64) {
    let Some(skew) = skew() else {
        return (mono_ms, wall_ms);
    };
    let mut s = skew.state.lock().unwrap_or_else(|p| p.into_inner());
    let stale = s.last_read.is_none_or(|t| t.elapsed().as_millis() >= 100);
    if stale {
        s.last_read = Some(Instant::now());
        let (offset, rate) = std::fs::read_to_string(&skew.file)
            .ok()
            .and_then(|t| parse(&t))
            .unwrap_or((0, 1.0));
        s.offset_ms = offset;
        if rate != s.rate {
            let now = s.skewed_anchor_ms
                + ((mono_ms.saturating_sub(s.real_anchor_ms)) as f64 * s.rate) as u64;
            s.skewed_anchor_ms = now;
            s.real_anchor_ms = mono_ms;
            s.rate = rate;
        }
    }
    let skewed =
        s.skewed_anchor_ms + ((mono_ms.saturating_sub(s.real_anchor_ms)) as f64 * s.rate) as u64;
    let mono = skewed.max(s.last_mono_ms);
    s.last_mono_ms = mono;
    // While the rate is skewed the wall clock drifts with the monotonic one; when the
    // rate is back to 1 it is stepped back to the offset alone (as NTP would), while
    // the monotonic clock keeps its lead (it must never go back).
    let drift = if s.rate == 1.0 {
        0
    } else {
        mono as i64 - mono_ms as i64
    };
    (mono, wall_ms + s.offset_ms + drift)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn parses_offset_and_rate() {
        assert_eq!(parse("-30000 1.0\n"), Some((-30000, 1.0)));
        assert_eq!(parse("0 2.5"), Some((0, 2.5)));
        assert_eq!(parse("0 0"), None);
        assert_eq!(parse("x 1"), None);
        assert_eq!(parse(""), None);
    }
}
