//! Raft storage for one node: the log, vote and state machine of every Raft
//! group the node hosts, over one shared RocksDB.
//!
//! - [`types`]: the openraft type configuration; a log entry is a batch of
//!   engine commands stamped by the leader.
//! - [`db`]: the shared database, its column families and key layout.
//! - [`group_commit`]: the one thread that syncs the WAL for every group, so
//!   concurrent appends share an fsync.
//! - [`log_store`]: openraft's log storage for one group.
//! - [`state_machine`]: openraft's state machine for one group: the engine
//!   in memory, checkpoints and snapshots in RocksDB.
//! - [`meta`]: the metadata group's state, the slot map.

pub mod db;
pub mod group_commit;
pub mod log_store;
pub mod meta;
pub mod state_machine;
pub mod types;

#[cfg(test)]
mod tests;

pub use db::{DbError, RaftDb};
pub use group_commit::SyncCounts;
pub use log_store::LogStore;
pub use meta::{GroupPlacement, MetaCommand, SlotMap, SlotRange, META_GROUP};
pub use state_machine::{EngineHandle, SnapshotBuilder, StateMachine};
pub use types::{GroupId, NodeId, Request, Response, TypeConfig};
