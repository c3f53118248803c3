//! Checkers: each reads a whole history and says valid, invalid or unknown, with
//! counts and the first problems found.

pub mod lock;
pub mod register;
pub mod sequential;
pub mod session;
pub mod watch;

use serde::Serialize;
use std::collections::BTreeMap;

/// A checker's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Validity {
    Valid,
    Invalid,
    /// The checker could not decide (a search ran out of time).
    Unknown,
}

/// One checker's result.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub valid: Validity,
    /// Counts (operations, overlaps, rejections, ...).
    pub stats: BTreeMap<String, u64>,
    /// The first problems found (at most [`MAX_PROBLEMS`]), each with the history
    /// indexes involved.
    pub problems: Vec<String>,
    /// Remarks that are not problems.
    pub notes: Vec<String>,
    /// Known corral bugs this history shows (see jepsen/README.md, "Findings"); they
    /// make the check invalid only in strict mode.
    pub known_bugs: Vec<String>,
}

/// Problems listed per check.
pub const MAX_PROBLEMS: usize = 20;

impl Check {
    pub fn new(name: &str) -> Check {
        Check {
            name: name.to_string(),
            valid: Validity::Valid,
            stats: BTreeMap::new(),
            problems: Vec::new(),
            notes: Vec::new(),
            known_bugs: Vec::new(),
        }
    }

    /// Records a violation.
    pub fn fail(&mut self, problem: String) {
        self.valid = Validity::Invalid;
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(problem);
        }
        *self.stats.entry("problems".into()).or_default() += 1;
    }

    /// Records a known bug: a violation when `strict`, a listed finding otherwise.
    pub fn known_bug(&mut self, strict: bool, text: String) {
        if strict {
            self.fail(format!("known bug: {text}"));
        } else {
            if self.known_bugs.len() < MAX_PROBLEMS {
                self.known_bugs.push(text);
            }
            *self.stats.entry("known-bug findings".into()).or_default() += 1;
        }
    }

    pub fn count(&mut self, stat: &str, n: u64) {
        *self.stats.entry(stat.to_string()).or_default() += n;
    }

    #[cfg(test)]
    pub fn stat(&self, stat: &str) -> u64 {
        self.stats.get(stat).copied().unwrap_or(0)
    }
}
