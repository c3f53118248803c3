//! A versioned register: a znode's data and version, with reads, blind writes and
//! compare-and-sets on the version (ZooKeeper's conditional `setData`, corral's
//! `SetData { version: Some(_) }` or a multi of `Check` and `SetData`). Shared by the
//! simulator and the Jepsen-style harness, which both check histories of znodes with it.
//!
//! The state is `(value, version)`, starting at `(0, 0)`: a node created empty, whose
//! value reads as 0. A write sets the value and bumps the version; a compare-and-set
//! does so only if the version is the one it expects, and otherwise changes nothing
//! (answered `BadVersion`). Because a blind write bumps the version too, its new state
//! is not known to its client in advance: only the model's step knows it.

use crate::{Model, Operation};
use std::collections::HashSet;

/// A znode's data (as a number) and version.
pub type State = (u64, u32);

/// Register operations.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Input {
    /// Read the value and version.
    Read,
    /// Set the value, whatever the version.
    Write(u64),
    /// Set the value to `new` if the version is `expect`.
    Cas {
        /// The version expected.
        expect: u32,
        /// The new value.
        new: u64,
    },
}

/// Register answers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Output {
    /// What a read returned.
    Read(State),
    /// Written; the new version, if the answer carried it.
    Written(Option<u32>),
    /// Whether the compare-and-set took effect (`false`: `BadVersion`).
    Cas(bool),
}

/// The sequential specification of a versioned register.
#[derive(Debug, Clone, Copy, Default)]
pub struct VersionedRegister;

impl Model for VersionedRegister {
    type State = State;
    type Input = Input;
    type Output = Output;

    fn init(&self) -> State {
        (0, 0)
    }

    fn step(&self, s: &State, input: &Input, output: Option<&Output>) -> Option<State> {
        let (value, version) = *s;
        match (input, output) {
            (Input::Read, None) => Some(*s),
            (Input::Read, Some(Output::Read(seen))) => (seen == s).then_some(*s),
            (Input::Write(v), None) => Some((*v, version + 1)),
            (Input::Write(v), Some(Output::Written(new_version))) => new_version
                .is_none_or(|n| n == version + 1)
                .then_some((*v, version + 1)),
            (Input::Cas { expect, new }, None) => Some(if *expect == version {
                (*new, version + 1)
            } else {
                (value, version)
            }),
            (Input::Cas { expect, new }, Some(Output::Cas(true))) => {
                (*expect == version).then_some((*new, version + 1))
            }
            (Input::Cas { expect, .. }, Some(Output::Cas(false))) => {
                (*expect != version).then_some(*s)
            }
            _ => None,
        }
    }

    fn prepare(
        &self,
        history: &[Operation<Input, Output>],
    ) -> Option<Vec<Operation<Input, Output>>> {
        Some(merge_unread(history))
    }
}

/// The value the search gives to indeterminate writes whose value no read returned.
pub const UNREAD: u64 = u64::MAX;

/// One key's operations for the search ([`Model::prepare`]), with every indeterminate
/// write or compare-and-set whose value no read returned writing one value, [`UNREAD`]
/// (a compare-and-set compares versions, not values). A value matters only to a read
/// that returns it, so the history is linearizable exactly when this one is (with the
/// same order), and the search takes equal indeterminate operations as
/// interchangeable: the many writes left open by a fault then cost a count, not every
/// subset of them.
pub fn merge_unread(ops: &[Operation<Input, Output>]) -> Vec<Operation<Input, Output>> {
    let read: HashSet<u64> = ops
        .iter()
        .filter_map(|o| match &o.output {
            Some(Output::Read((v, _))) => Some(*v),
            _ => None,
        })
        .collect();
    if read.contains(&UNREAD) {
        return ops.to_vec();
    }
    ops.iter()
        .map(|o| {
            let mut o = o.clone();
            if o.ret.is_none() && o.output.is_none() {
                match &mut o.input {
                    Input::Write(v) | Input::Cas { new: v, .. } if !read.contains(v) => {
                        *v = UNREAD;
                    }
                    _ => {}
                }
            }
            o
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{check, Limits, Outcome};

    fn op(
        process: u64,
        input: Input,
        output: Option<Output>,
        call: u64,
        ret: u64,
    ) -> Operation<Input, Output> {
        Operation {
            process,
            input,
            output,
            call,
            ret: Some(ret),
        }
    }

    fn outcome(h: &[Operation<Input, Output>]) -> Outcome {
        check(&VersionedRegister, h, Limits::default())
    }

    #[test]
    fn a_compare_and_set_sees_the_version_a_blind_write_left() {
        let h = [
            op(1, Input::Write(5), Some(Output::Written(Some(1))), 0, 1),
            op(
                2,
                Input::Cas { expect: 1, new: 6 },
                Some(Output::Cas(true)),
                2,
                3,
            ),
            op(
                1,
                Input::Cas { expect: 1, new: 7 },
                Some(Output::Cas(false)),
                4,
                5,
            ),
            op(2, Input::Read, Some(Output::Read((6, 2))), 6, 7),
        ];
        assert_eq!(outcome(&h), Outcome::Linearizable);
    }

    #[test]
    fn a_retried_compare_and_set_answered_bad_version_after_it_took_effect_is_caught() {
        // The answer a write-twice bug gives: the first attempt applied (the read sees
        // its value at version 1), and the second, run again instead of answered from
        // the deduplication table, fails on the version the first one moved.
        let h = [
            op(
                1,
                Input::Cas { expect: 0, new: 5 },
                Some(Output::Cas(false)),
                0,
                1,
            ),
            op(2, Input::Read, Some(Output::Read((5, 1))), 2, 3),
        ];
        assert!(outcome(&h).is_violation());
    }

    #[test]
    fn indeterminate_writes_never_read_are_merged() {
        let open = |v| Operation {
            process: 3,
            input: Input::Write(v),
            output: None,
            call: 0,
            ret: None,
        };
        let h = [
            open(8),
            open(9),
            op(1, Input::Read, Some(Output::Read((9, 2))), 5, 6),
        ];
        let merged = merge_unread(&h);
        assert_eq!(merged[0].input, Input::Write(UNREAD));
        assert_eq!(merged[1].input, Input::Write(9));
        assert_eq!(outcome(&h), Outcome::Linearizable);
    }
}
