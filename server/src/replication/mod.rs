//! Replication over OmniPaxos: durable Paxos storage on the write-ahead log, and the
//! peer transport.

pub mod storage;
pub mod transport;
