//! The corral node.

pub mod machine;
pub mod snapshot;
pub mod wal;
pub mod watches;
