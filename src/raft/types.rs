//! What the Raft log of a group carries: batches of engine commands in,
//! one result per command out.

use std::io::Cursor;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::meta::MetaCommand;
use crate::engine::{Applied, Command, EngineError, LeaseId, Quota, Quotas};

/// A Raft group on this node: a data group id, or the metadata group's id.
pub type GroupId = u32;

/// The Raft node id of a leasehold node.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The openraft type configuration of every leasehold group.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;

/// One Raft entry's payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// A data group's client commands, of any of its slots, batched by
    /// the leader and applied in order at the leader's stamp, so many
    /// commands share one round of consensus.
    Engine {
        stamp_ms: u64,
        /// The leader's quotas, which every replica applies the commands
        /// within, as it applies them at the leader's time (see [`Quotas`]).
        quotas: Quotas,
        /// Shared, so the log's in-memory tail, replication and apply hand
        /// an entry around without copying its commands.
        commands: Arc<[Command]>,
    },
    /// A change to the slot map (the metadata group only).
    Meta(MetaCommand),
}

/// The outcome of every engine command of a [`Request`], in order. Meta,
/// blank and membership entries answer with no results.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    #[serde(with = "results_wire")]
    pub results: Vec<Result<Applied, EngineError>>,
}

/// `EngineError` has no serde derive (the engine owns it), but openraft
/// requires serializable responses. A remote derive mirrors it field for
/// field; a variant added to the engine fails to compile here rather than
/// vanishing on the wire.
#[derive(Serialize, Deserialize)]
#[serde(remote = "EngineError")]
enum EngineErrorDef {
    InvalidArgument {
        field: String,
        reason: String,
    },
    LeaseNotFound {
        lease_id: LeaseId,
    },
    LeaseLost {
        lease_id: LeaseId,
    },
    MaxLifetimeExceeded {
        lease_id: LeaseId,
        requested_ms: u64,
        deadline_ms: u64,
    },
    IdempotencyKeyReused {
        idempotency_key: String,
    },
    CapacityOutOfRange {
        key: String,
        capacity: u64,
        delta: i64,
        max: u64,
    },
    QuotaExceeded {
        quota: Quota,
        scope: String,
        held: u64,
        adding: u64,
        bound: u64,
    },
}

mod results_wire {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::EngineErrorDef;
    use crate::engine::{Applied, EngineError};

    #[derive(Serialize)]
    enum ResultRef<'a> {
        Ok(&'a Applied),
        Err(#[serde(with = "EngineErrorDef")] &'a EngineError),
    }

    #[derive(Deserialize)]
    enum ResultOwned {
        Ok(Applied),
        Err(#[serde(with = "EngineErrorDef")] EngineError),
    }

    pub fn serialize<S: Serializer>(
        results: &[Result<Applied, EngineError>],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(results.iter().map(|r| match r {
            Ok(applied) => ResultRef::Ok(applied),
            Err(e) => ResultRef::Err(e),
        }))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<Result<Applied, EngineError>>, D::Error> {
        let wire = Vec::<ResultOwned>::deserialize(d)?;
        Ok(wire
            .into_iter()
            .map(|r| match r {
                ResultOwned::Ok(applied) => Ok(applied),
                ResultOwned::Err(e) => Err(e),
            })
            .collect())
    }
}
