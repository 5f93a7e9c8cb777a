//! Leasehold: self-hosted, replicated flow control.
//!
//! Callers acquire time-limited capacity leases against constraints
//! (concurrency, throttle, rate limit, semaphore) grouped in a scope, extend
//! them while they work and release them when done. Every mutating call is
//! atomic and idempotent.
//!
//! Module map:
//! - [`limits`]: every bound on input, in one place.
//! - [`engine`]: the pure, deterministic constraint engine — commands stamped
//!   with the proposer's time in, outcomes out — behind a narrow storage
//!   trait ([`engine::Store`]), with an in-memory store for tests.
//! - [`slot`]: the documented hash that maps a scope to its hash slot, and
//!   the lease id layout (slot, counter).
//! - [`proto`]: the public gRPC contract (`leasehold.v1`), generated from
//!   `proto/leasehold/v1/leasehold.proto`.
//! - [`convert`]: proto messages to engine commands and back, and engine
//!   errors to gRPC statuses with a stable code in their details.
//! - [`raft`]: Raft storage for one node — every group's log, vote and state
//!   machine (the engine) over one shared RocksDB, with group commit.
//! - [`server`]: a node of the replicated service: Raft groups, each
//!   owning many slots, plus the metadata group, the gRPC API with forwarding, the
//!   peer transport, metrics and graceful shutdown.
//! - [`client`]: the Rust client: slot-map routing, retries across
//!   leader changes with the same idempotency key, lease handles with
//!   keep-alive and release on drop.
//! - [`wire`]: what client and server share beside the proto: metadata
//!   keys, the routing codes (NOT_LEADER, WRONG_EPOCH) and error details.
//! - [`mux`]: many calls over one bidirectional gRPC stream, answered by
//!   call id (the Raft transport and the client's session).
//! - [`config`]: the server's configuration from flags, environment and a
//!   TOML file, validated.
//! - [`tls`]: TLS for both ports and for callers, certificates re-read
//!   when their files change.
//! - [`auth`]: bearer tokens and their rights per scope prefix.

pub mod auth;
pub mod client;
pub mod config;
pub mod convert;
pub mod engine;
pub mod limits;
pub mod mux;
pub mod proto;
pub mod raft;
pub mod server;
pub mod slot;
pub mod tls;
pub mod wire;
