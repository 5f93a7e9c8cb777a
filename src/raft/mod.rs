//! Raft storage for one node: the log, vote and state machine of every Raft
//! group the node hosts, over one shared RocksDB.
//!
//! - [`types`]: the openraft type configuration; a log entry is a batch of
//!   engine commands stamped by the leader.
//! - [`db`]: the shared database, its column families and key layout.
//! - [`group_commit`]: the one thread that syncs the WAL for every group, so
//!   concurrent appends share an fsync.
//! - [`fail_stop`]: the first storage fault stops the node for good.
//! - [`test_seam`]: storage faults on demand and a record of WAL syncs,
//!   for fault-injection and power-loss tests only.
//! - [`log_store`]: openraft's log storage for one group.
//! - [`state_machine`]: openraft's state machine for one group: the engine
//!   in memory, checkpoints and snapshots in RocksDB.
//! - [`meta`]: the metadata group's state, the slot map.

pub mod db;
pub mod fail_stop;
pub mod group_commit;
pub mod log_store;
pub mod meta;
pub mod state_machine;
pub mod test_seam;
pub mod types;

#[cfg(test)]
mod fault_tests;
#[cfg(test)]
mod recovery_tests;
#[cfg(test)]
mod tests;

pub use db::{DbError, DbOptions, RaftDb};
pub use fail_stop::{FaultHandler, StorageFault};
pub use group_commit::SyncCounts;
pub use log_store::LogStore;
pub use meta::{GroupPlacement, MetaCommand, SlotMap, SlotRange, META_GROUP};
pub use state_machine::{EngineHandle, SnapshotBuilder, StateMachine};
pub use types::{GroupId, NodeId, Request, Response, TypeConfig};
