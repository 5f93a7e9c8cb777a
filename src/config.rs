//! The server's configuration: one struct, validated once at start-up.
//!
//! Sources, highest precedence first: command-line flags, `LEASEHOLD_*`
//! environment variables (clap reads both, see [`ServeArgs`]), a TOML file
//! named by `--config`, then defaults. The file's keys are the field names of
//! [`Config`]; an unknown key is an error.
//!
//! A node listens on two gRPC ports. The client port (`grpc_addr`) serves
//! the public API, health and reflection; the peer port (`peer_addr`)
//! serves the node-to-node API (Raft, elections, slot map proposals, clock
//! readings) and the calls members forward to a group's leader, and
//! nothing else. `peer_addr` defaults to `grpc_addr`'s IP at
//! the next port up: `0.0.0.0:7070` listens for peers on `0.0.0.0:7071`.
//!
//! Members are a list of `"<node id>=<host>:<port>"` strings, in the file as
//! in the flag: the client address, which clients are told and requests are
//! forwarded to. A member's peer address, which the other members dial, is
//! the same host at the next port up, by the same rule as `peer_addr`, or
//! is given after a slash: `"<node id>=<host>:<port>/<host>:<port>"`.
//!
//! ```toml
//! node_id = 2
//! grpc_addr = "0.0.0.0:7070"
//! peer_addr = "0.0.0.0:7071"
//! http_addr = "0.0.0.0:7080"
//! data_dir = "/var/lib/leasehold"
//! members = ["1=10.0.0.1:7070", "2=10.0.0.2:7070", "3=10.0.0.3:7070/10.1.0.3:9000"]
//! slots = 1024
//! groups = 3
//! ```
//!
//! When `advertise_addr` (the client address) is not given it is this
//! node's client address in `members`, or else `grpc_addr`; when `members`
//! is not given the cluster is this node alone, at `advertise_addr` for
//! clients and at `advertise_addr`'s host and `peer_addr`'s port for peers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::limits::{
    DEDUP_WINDOW_MS_MAX, IDEMPOTENCY_RECORDS_PER_GROUP_DEFAULT, IDEMPOTENCY_RECORDS_PER_GROUP_MAX,
    KEYS_PER_SCOPE_DEFAULT, KEYS_PER_SCOPE_MAX, LEASES_PER_SCOPE_DEFAULT, LEASES_PER_SCOPE_MAX,
    WAITERS_MAX, WAITERS_PER_SCOPE_DEFAULT,
};
pub use crate::raft::NodeId;

/// Bounds [`Config::validate`] enforces, inclusive.
pub const SLOTS_RANGE: RangeInclusive<u32> = 1..=crate::slot::SLOT_COUNT_MAX;
/// 0 stands for one data group per member.
pub const GROUPS_RANGE: RangeInclusive<u32> = 0..=1024;
pub const REPLICATION_FACTOR_RANGE: RangeInclusive<u32> = 1..=7;
pub const ELECTION_TIMEOUT_MS_RANGE: RangeInclusive<u64> = 50..=60_000;
pub const HEARTBEAT_INTERVAL_MS_RANGE: RangeInclusive<u64> = 10..=10_000;
pub const SNAPSHOT_INTERVAL_ENTRIES_RANGE: RangeInclusive<u64> = 10..=10_000_000;
pub const DEDUP_WINDOW_MS_RANGE: RangeInclusive<u64> = 1..=DEDUP_WINDOW_MS_MAX;
pub const MAX_LEASES_PER_SCOPE_RANGE: RangeInclusive<u64> = 1..=LEASES_PER_SCOPE_MAX;
pub const MAX_KEYS_PER_SCOPE_RANGE: RangeInclusive<u64> = 1..=KEYS_PER_SCOPE_MAX;
/// A scope's waiters are a share of the node's.
pub const MAX_WAITERS_PER_SCOPE_RANGE: RangeInclusive<u32> = 1..=WAITERS_MAX as u32;
pub const MAX_IDEMPOTENCY_RECORDS_PER_GROUP_RANGE: RangeInclusive<u64> =
    1..=IDEMPOTENCY_RECORDS_PER_GROUP_MAX;
pub const MAX_CLOCK_OFFSET_MS_RANGE: RangeInclusive<u64> = 1..=60_000;
pub const MAX_BATCH_COMMANDS_RANGE: RangeInclusive<u32> = 1..=65_536;
pub const SHUTDOWN_GRACE_MS_RANGE: RangeInclusive<u64> = 0..=600_000;
pub const MAX_IN_FLIGHT_CALLS_RANGE: RangeInclusive<u32> = 1..=1_000_000;

/// An election timeout shorter than this many heartbeats lets one delayed
/// heartbeat start an election.
const HEARTBEATS_PER_ELECTION_TIMEOUT_MIN: u64 = 3;

/// One node of the initial cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub node_id: NodeId,
    /// `host:port` of its client port: what clients dial, are told in slot
    /// maps and leader hints, and what other nodes forward calls to.
    pub addr: String,
    /// `host:port` of its peer port, which only the other members dial.
    pub peer_addr: String,
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}/{}", self.node_id, self.addr, self.peer_addr)
    }
}

/// Everything a node needs to start. Build it with [`Config::resolve`] or
/// start from [`Config::default`]; either way, [`Config::validate`] it.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// This node's id, >= 1.
    pub node_id: NodeId,
    /// Where the client gRPC port (public API, health, reflection) listens.
    pub grpc_addr: SocketAddr,
    /// Where the peer gRPC port (the node-to-node API and forwarded calls)
    /// listens.
    pub peer_addr: SocketAddr,
    /// `host:port` that clients dial to reach this node.
    pub advertise_addr: String,
    /// Where Prometheus `/metrics` and `/ready` are served.
    pub http_addr: SocketAddr,
    /// The node's RocksDB and anything else it persists.
    pub data_dir: PathBuf,
    /// The initial cluster, sorted by node id, this node among them.
    pub members: Vec<Member>,
    /// Hash slots the scope hash maps onto; fixed when the cluster is
    /// created.
    pub slots: u32,
    /// Data groups the slots are spread over when the cluster is created;
    /// 0 = one per member. See [`Config::effective_groups`].
    pub groups: u32,
    /// Replicas per group wanted; see
    /// [`Config::effective_replication_factor`].
    pub replication_factor: u32,
    /// Least election timeout; the greatest is twice this.
    pub election_timeout_ms: u64,
    pub heartbeat_interval_ms: u64,
    /// Log entries since the last snapshot that trigger a new one.
    pub snapshot_interval_entries: u64,
    /// How long an idempotency record outlives what it recorded.
    pub dedup_window_ms: u64,
    /// Live leases one scope may hold; an acquire past it is refused with
    /// RESOURCE_EXHAUSTED (`QUOTA_EXCEEDED`). This and the next two travel
    /// in the log entries this node proposes as leader (see
    /// [`crate::engine::Quotas`]), so replicas never disagree on them.
    pub max_leases_per_scope: u64,
    /// Constraint keys with state one scope may have; likewise.
    pub max_keys_per_scope: u64,
    /// Idempotency records one group keeps; past it new keyed calls are
    /// refused (`QUOTA_EXCEEDED`) until older records leave the window.
    pub max_idempotency_records_per_group: u64,
    /// Acquires of one scope parked at once on this node (waiters park on
    /// the leader); one more is refused (`QUOTA_EXCEEDED`).
    pub max_waiters_per_scope: u32,
    /// Most client commands batched into one Raft entry.
    pub max_batch_commands: u32,
    /// How long shutdown waits for in-flight work.
    pub shutdown_grace_ms: u64,
    /// How far a node's wall clock may be from the others' before it stops
    /// leading (see [`crate::server::clock`]): a lease may end up to twice
    /// this much early on a correct clock.
    pub max_clock_offset_ms: u64,
    /// Client calls one node serves at once (forwarded ones included,
    /// parked waiting acquires not); one more is refused at once with
    /// RESOURCE_EXHAUSTED (`OVERLOADED`) instead of queueing.
    pub max_in_flight_calls: u32,
    /// The client port's TLS certificate chain and key (PEM); without
    /// them the client port speaks plaintext. See [`crate::tls`].
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// When set, clients must also show a certificate signed by this CA.
    pub tls_client_ca_file: Option<PathBuf>,
    /// The peer port's certificate, key and CA (PEM): with them, members
    /// talk mutual TLS, and a caller whose certificate the CA did not sign
    /// for a member's host is refused at the handshake.
    pub peer_tls_cert_file: Option<PathBuf>,
    pub peer_tls_key_file: Option<PathBuf>,
    pub peer_tls_ca_file: Option<PathBuf>,
    /// Tokens and their rights (see [`crate::auth`]); without it, any
    /// caller may make any call.
    pub auth_tokens_file: Option<PathBuf>,
    /// Run open (no TLS or no tokens) on addresses other than loopback.
    pub insecure: bool,
    /// For chaos tests only: a file that skews this node's clock (see
    /// [`crate::server::clock`]). Never set in production.
    pub unsafe_test_clock: Option<PathBuf>,
    /// For fault-injection tests only: a file naming storage operations
    /// that fail (see [`crate::raft::test_seam`]); the node then also
    /// records each WAL sync in its data directory. Never set in
    /// production: the faults are real to the node, which stops on them.
    pub unsafe_test_storage_faults: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        let grpc_addr = SocketAddr::from(([127, 0, 0, 1], 7070));
        let peer_addr = SocketAddr::from(([127, 0, 0, 1], 7071));
        let node_id = 1;
        Config {
            node_id,
            grpc_addr,
            peer_addr,
            advertise_addr: grpc_addr.to_string(),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 7080)),
            data_dir: PathBuf::from("./leasehold-data"),
            members: vec![Member {
                node_id,
                addr: grpc_addr.to_string(),
                peer_addr: peer_addr.to_string(),
            }],
            slots: crate::slot::SLOT_COUNT_DEFAULT,
            groups: 0,
            replication_factor: 3,
            election_timeout_ms: 300,
            heartbeat_interval_ms: 100,
            snapshot_interval_entries: 10_000,
            dedup_window_ms: crate::limits::DEDUP_WINDOW_MS_DEFAULT,
            max_leases_per_scope: LEASES_PER_SCOPE_DEFAULT,
            max_keys_per_scope: KEYS_PER_SCOPE_DEFAULT,
            max_idempotency_records_per_group: IDEMPOTENCY_RECORDS_PER_GROUP_DEFAULT,
            max_waiters_per_scope: WAITERS_PER_SCOPE_DEFAULT,
            max_batch_commands: 512,
            shutdown_grace_ms: 10_000,
            max_clock_offset_ms: 250,
            max_in_flight_calls: 16_384,
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_ca_file: None,
            peer_tls_cert_file: None,
            peer_tls_key_file: None,
            peer_tls_ca_file: None,
            auth_tokens_file: None,
            insecure: false,
            unsafe_test_clock: None,
            unsafe_test_storage_faults: None,
        }
    }
}

/// A configuration that cannot be used; the message names the field as
/// spelled in the TOML file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("members: `{item}`: {reason}")]
    Member { item: String, reason: String },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
}

impl ConfigError {
    fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            field,
            reason: reason.into(),
        }
    }
}

impl Config {
    /// Layers flags and environment (already merged by clap) over the file
    /// `args.config` names, over defaults, and validates the result.
    pub fn resolve(args: ServeArgs) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => FileConfig::read(path)?,
            None => FileConfig::default(),
        };
        Config::layer(args, file)
    }

    /// Data groups a new cluster gets: `groups`, or one per member (each
    /// the preferred leader of one) when it is 0.
    pub fn effective_groups(&self) -> u32 {
        match self.groups {
            0 => u32::try_from(self.members.len()).unwrap_or(u32::MAX),
            n => n,
        }
    }

    /// Replicas each group actually gets: no more than there are nodes.
    pub fn effective_replication_factor(&self) -> u32 {
        let members = u32::try_from(self.members.len()).unwrap_or(u32::MAX);
        self.replication_factor.min(members)
    }

    pub fn member(&self, id: NodeId) -> Option<&Member> {
        self.members.iter().find(|member| member.node_id == id)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node_id == 0 {
            return Err(ConfigError::invalid("node_id", "must be >= 1, got 0"));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::invalid("data_dir", "must not be empty"));
        }
        check_host_port(&self.advertise_addr)
            .map_err(|reason| ConfigError::invalid("advertise_addr", reason))?;
        self.validate_listeners()?;
        self.validate_security()?;
        self.validate_members()?;
        self.validate_numbers()
    }

    /// The peer port serves peers alone.
    fn validate_listeners(&self) -> Result<(), ConfigError> {
        let clash = if self.peer_addr == self.grpc_addr {
            Some("grpc_addr")
        } else if self.peer_addr == self.http_addr {
            Some("http_addr")
        } else {
            None
        };
        match clash {
            Some(other) => Err(ConfigError::invalid(
                "peer_addr",
                format!(
                    "`{}` is also {other}: the peer port must be a port of its own",
                    self.peer_addr
                ),
            )),
            None => Ok(()),
        }
    }

    /// Files that go together are given together, and a node reachable
    /// from other hosts is protected unless told `insecure`.
    fn validate_security(&self) -> Result<(), ConfigError> {
        let pairs = [
            (
                "tls_cert_file",
                &self.tls_cert_file,
                "tls_key_file",
                &self.tls_key_file,
            ),
            (
                "tls_key_file",
                &self.tls_key_file,
                "tls_cert_file",
                &self.tls_cert_file,
            ),
            (
                "tls_client_ca_file",
                &self.tls_client_ca_file,
                "tls_cert_file",
                &self.tls_cert_file,
            ),
            (
                "peer_tls_cert_file",
                &self.peer_tls_cert_file,
                "peer_tls_key_file",
                &self.peer_tls_key_file,
            ),
            (
                "peer_tls_key_file",
                &self.peer_tls_key_file,
                "peer_tls_ca_file",
                &self.peer_tls_ca_file,
            ),
            (
                "peer_tls_ca_file",
                &self.peer_tls_ca_file,
                "peer_tls_cert_file",
                &self.peer_tls_cert_file,
            ),
        ];
        for (field, value, needs, other) in pairs {
            if value.is_some() && other.is_none() {
                return Err(ConfigError::invalid(
                    field,
                    format!("is set, so {needs} must be too"),
                ));
            }
        }
        if self.insecure {
            return Ok(());
        }
        let open = |what: &str| {
            format!(
                "is not a loopback address, so anyone who reaches it could {what}; \
                 configure {{}} or pass --insecure (insecure = true) to run open"
            )
        };
        if !self.grpc_addr.ip().is_loopback() {
            let missing: Vec<&str> = [
                (
                    "tls_cert_file and tls_key_file",
                    self.tls_cert_file.is_none(),
                ),
                ("auth_tokens_file", self.auth_tokens_file.is_none()),
            ]
            .into_iter()
            .filter_map(|(what, missing)| missing.then_some(what))
            .collect();
            if !missing.is_empty() {
                return Err(ConfigError::invalid(
                    "grpc_addr",
                    format!("`{}` ", self.grpc_addr)
                        + &open("read and change every key, in plaintext")
                            .replace("{}", &missing.join(" and ")),
                ));
            }
        }
        if !self.peer_addr.ip().is_loopback() && self.peer_tls_cert_file.is_none() {
            return Err(ConfigError::invalid(
                "peer_addr",
                format!("`{}` ", self.peer_addr)
                    + &open("join the cluster's Raft groups and force elections").replace(
                        "{}",
                        "peer_tls_cert_file, peer_tls_key_file and peer_tls_ca_file (mutual TLS)",
                    ),
            ));
        }
        Ok(())
    }

    fn validate_members(&self) -> Result<(), ConfigError> {
        if self.members.is_empty() {
            return Err(ConfigError::invalid(
                "members",
                "must list at least this node",
            ));
        }
        for member in &self.members {
            check_member(member).map_err(|reason| ConfigError::Member {
                item: member.to_string(),
                reason,
            })?;
        }
        check_distinct_addrs(&self.members)?;
        for pair in self.members.windows(2) {
            if pair[0].node_id == pair[1].node_id {
                return Err(duplicate_member(pair[0].node_id));
            }
            if pair[0].node_id > pair[1].node_id {
                return Err(ConfigError::invalid("members", "must be sorted by node id"));
            }
        }
        let Some(this) = self.member(self.node_id) else {
            return Err(ConfigError::invalid(
                "node_id",
                format!("{} is not among members", self.node_id),
            ));
        };
        if self.members.len() > 1 && this.addr != self.advertise_addr {
            return Err(ConfigError::invalid(
                "advertise_addr",
                format!(
                    "`{}` differs from this node's client address in members, `{}`; \
                     clients would be sent to the other",
                    self.advertise_addr, this.addr
                ),
            ));
        }
        Ok(())
    }

    fn validate_numbers(&self) -> Result<(), ConfigError> {
        check("slots", self.slots, SLOTS_RANGE)?;
        check("groups", self.groups, GROUPS_RANGE)?;
        if self.effective_groups() > self.slots {
            return Err(ConfigError::invalid(
                "groups",
                format!(
                    "must be at most slots = {}: every group owns a slot, got {}",
                    self.slots,
                    self.effective_groups()
                ),
            ));
        }
        check(
            "replication_factor",
            self.replication_factor,
            REPLICATION_FACTOR_RANGE,
        )?;
        check(
            "election_timeout_ms",
            self.election_timeout_ms,
            ELECTION_TIMEOUT_MS_RANGE,
        )?;
        check(
            "heartbeat_interval_ms",
            self.heartbeat_interval_ms,
            HEARTBEAT_INTERVAL_MS_RANGE,
        )?;
        let election_timeout_ms_min =
            HEARTBEATS_PER_ELECTION_TIMEOUT_MIN * self.heartbeat_interval_ms;
        if self.election_timeout_ms < election_timeout_ms_min {
            return Err(ConfigError::invalid(
                "election_timeout_ms",
                format!(
                    "must be at least {HEARTBEATS_PER_ELECTION_TIMEOUT_MIN} * \
                     heartbeat_interval_ms = {election_timeout_ms_min}, got {}",
                    self.election_timeout_ms
                ),
            ));
        }
        check(
            "snapshot_interval_entries",
            self.snapshot_interval_entries,
            SNAPSHOT_INTERVAL_ENTRIES_RANGE,
        )?;
        check(
            "dedup_window_ms",
            self.dedup_window_ms,
            DEDUP_WINDOW_MS_RANGE,
        )?;
        self.validate_quotas()?;
        check(
            "max_batch_commands",
            self.max_batch_commands,
            MAX_BATCH_COMMANDS_RANGE,
        )?;
        check(
            "shutdown_grace_ms",
            self.shutdown_grace_ms,
            SHUTDOWN_GRACE_MS_RANGE,
        )?;
        check(
            "max_clock_offset_ms",
            self.max_clock_offset_ms,
            MAX_CLOCK_OFFSET_MS_RANGE,
        )?;
        check(
            "max_in_flight_calls",
            self.max_in_flight_calls,
            MAX_IN_FLIGHT_CALLS_RANGE,
        )
    }

    fn validate_quotas(&self) -> Result<(), ConfigError> {
        check(
            "max_leases_per_scope",
            self.max_leases_per_scope,
            MAX_LEASES_PER_SCOPE_RANGE,
        )?;
        check(
            "max_keys_per_scope",
            self.max_keys_per_scope,
            MAX_KEYS_PER_SCOPE_RANGE,
        )?;
        check(
            "max_idempotency_records_per_group",
            self.max_idempotency_records_per_group,
            MAX_IDEMPOTENCY_RECORDS_PER_GROUP_RANGE,
        )?;
        check(
            "max_waiters_per_scope",
            self.max_waiters_per_scope,
            MAX_WAITERS_PER_SCOPE_RANGE,
        )
    }

    /// The quotas and dedup window this node stamps into the entries it
    /// proposes.
    pub fn quotas(&self) -> crate::engine::Quotas {
        crate::engine::Quotas {
            max_leases_per_scope: self.max_leases_per_scope,
            max_keys_per_scope: self.max_keys_per_scope,
            max_idempotency_records_per_group: self.max_idempotency_records_per_group,
            dedup_window_ms: self.dedup_window_ms,
        }
    }

    /// Flags over file over defaults, then validation. Pure: clap has
    /// already folded the environment into `args`.
    fn layer(args: ServeArgs, file: FileConfig) -> Result<Config, ConfigError> {
        let defaults = Config::default();
        macro_rules! pick {
            ($field:ident) => {
                args.$field.or(file.$field).unwrap_or(defaults.$field)
            };
        }
        let node_id = pick!(node_id);
        let grpc_addr = pick!(grpc_addr);
        let peer_addr = match args.peer_addr.or(file.peer_addr) {
            Some(addr) => addr,
            None => next_port(grpc_addr).ok_or_else(|| {
                ConfigError::invalid(
                    "peer_addr",
                    format!(
                        "not given, and the default, grpc_addr's port + 1, is past \
                         65535 (grpc_addr is `{grpc_addr}`); give it"
                    ),
                )
            })?,
        };
        let members = match (args.members, file.members) {
            (Some(list), _) => Some(parse_members(&list)?),
            (None, Some(items)) => Some(parse_member_items(items.iter().map(String::as_str))?),
            (None, None) => None,
        };
        let advertise_addr = args
            .advertise_addr
            .or(file.advertise_addr)
            .or_else(|| {
                let this = members.as_ref()?.iter().find(|m| m.node_id == node_id)?;
                Some(this.addr.clone())
            })
            .unwrap_or_else(|| grpc_addr.to_string());
        let members = match members {
            Some(members) => members,
            None => vec![lone_member(node_id, &advertise_addr, peer_addr)],
        };
        let config = Config {
            node_id,
            grpc_addr,
            peer_addr,
            advertise_addr,
            http_addr: pick!(http_addr),
            data_dir: pick!(data_dir),
            members,
            slots: pick!(slots),
            groups: pick!(groups),
            replication_factor: pick!(replication_factor),
            election_timeout_ms: pick!(election_timeout_ms),
            heartbeat_interval_ms: pick!(heartbeat_interval_ms),
            snapshot_interval_entries: pick!(snapshot_interval_entries),
            dedup_window_ms: pick!(dedup_window_ms),
            max_leases_per_scope: pick!(max_leases_per_scope),
            max_keys_per_scope: pick!(max_keys_per_scope),
            max_idempotency_records_per_group: pick!(max_idempotency_records_per_group),
            max_waiters_per_scope: pick!(max_waiters_per_scope),
            max_batch_commands: pick!(max_batch_commands),
            shutdown_grace_ms: pick!(shutdown_grace_ms),
            max_clock_offset_ms: pick!(max_clock_offset_ms),
            max_in_flight_calls: pick!(max_in_flight_calls),
            tls_cert_file: args.tls_cert_file.or(file.tls_cert_file),
            tls_key_file: args.tls_key_file.or(file.tls_key_file),
            tls_client_ca_file: args.tls_client_ca_file.or(file.tls_client_ca_file),
            peer_tls_cert_file: args.peer_tls_cert_file.or(file.peer_tls_cert_file),
            peer_tls_key_file: args.peer_tls_key_file.or(file.peer_tls_key_file),
            peer_tls_ca_file: args.peer_tls_ca_file.or(file.peer_tls_ca_file),
            auth_tokens_file: args.auth_tokens_file.or(file.auth_tokens_file),
            insecure: args.insecure || file.insecure.unwrap_or(false),
            unsafe_test_clock: args.unsafe_test_clock.or(file.unsafe_test_clock),
            unsafe_test_storage_faults: args
                .unsafe_test_storage_faults
                .or(file.unsafe_test_storage_faults),
        };
        config.validate()?;
        Ok(config)
    }
}

/// `leasehold serve` flags. Each may also come from its `LEASEHOLD_*`
/// environment variable; a flag left out falls back to the file, then the
/// default.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML file of settings; its keys are the flag names with `_` for `-`
    #[arg(long, env = "LEASEHOLD_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// This node's id, >= 1 [default: 1]
    #[arg(long, env = "LEASEHOLD_NODE_ID", value_name = "ID")]
    pub node_id: Option<NodeId>,
    /// Client gRPC listen address: public API, health, reflection [default: 127.0.0.1:7070]
    #[arg(long, env = "LEASEHOLD_GRPC_ADDR", value_name = "ADDR")]
    pub grpc_addr: Option<SocketAddr>,
    /// Peer gRPC listen address: the node-to-node API and calls forwarded to leaders; reachable by members alone [default: --grpc-addr's IP, port + 1]
    #[arg(long, env = "LEASEHOLD_PEER_ADDR", value_name = "ADDR")]
    pub peer_addr: Option<SocketAddr>,
    /// host:port clients dial [default: this node's client address in --members, else --grpc-addr]
    #[arg(long, env = "LEASEHOLD_ADVERTISE_ADDR", value_name = "HOST:PORT")]
    pub advertise_addr: Option<String>,
    /// HTTP listen address for /metrics and /ready [default: 127.0.0.1:7080]
    #[arg(long, env = "LEASEHOLD_HTTP_ADDR", value_name = "ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// Directory for this node's data [default: ./leasehold-data]
    #[arg(long, env = "LEASEHOLD_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Initial cluster, e.g. 1=10.0.0.1:7070,2=10.0.0.2:7070: client addresses, each member's peer address at port + 1, or given as ID=HOST:PORT/PEER_HOST:PORT [default: this node alone]
    #[arg(
        long,
        env = "LEASEHOLD_MEMBERS",
        value_name = "ID=HOST:PORT[/HOST:PORT],..."
    )]
    pub members: Option<String>,
    /// Hash slots, 1..=65536, fixed when the cluster is created [default: 1024]
    #[arg(long, env = "LEASEHOLD_SLOTS", value_name = "N")]
    pub slots: Option<u32>,
    /// Data groups (Raft groups) the slots are spread over at creation, 0..=1024 and <= slots; 0 = one per member [default: 0]
    #[arg(long, env = "LEASEHOLD_GROUPS", value_name = "N")]
    pub groups: Option<u32>,
    /// Replicas per group, 1..=7, capped by the member count [default: 3]
    #[arg(long, env = "LEASEHOLD_REPLICATION_FACTOR", value_name = "N")]
    pub replication_factor: Option<u32>,
    /// Least Raft election timeout (the greatest is 2x), 50..=60000 and >= 3 heartbeats [default: 300]
    #[arg(long, env = "LEASEHOLD_ELECTION_TIMEOUT_MS", value_name = "MS")]
    pub election_timeout_ms: Option<u64>,
    /// Raft heartbeat interval, 10..=10000 [default: 100]
    #[arg(long, env = "LEASEHOLD_HEARTBEAT_INTERVAL_MS", value_name = "MS")]
    pub heartbeat_interval_ms: Option<u64>,
    /// Log entries since the last snapshot that trigger a new one, 10..=10000000 [default: 10000]
    #[arg(long, env = "LEASEHOLD_SNAPSHOT_INTERVAL_ENTRIES", value_name = "N")]
    pub snapshot_interval_entries: Option<u64>,
    /// How long an idempotency record outlives what it recorded, 1..=604800000 [default: 600000]
    #[arg(long, env = "LEASEHOLD_DEDUP_WINDOW_MS", value_name = "MS")]
    pub dedup_window_ms: Option<u64>,
    /// Live leases one scope may hold; one more acquire is refused (RESOURCE_EXHAUSTED, QUOTA_EXCEEDED), 1..=1000000000 [default: 1000000]
    #[arg(long, env = "LEASEHOLD_MAX_LEASES_PER_SCOPE", value_name = "N")]
    pub max_leases_per_scope: Option<u64>,
    /// Constraint keys with state one scope may have; an acquire adding more is refused (QUOTA_EXCEEDED), 1..=1000000000 [default: 1000000]
    #[arg(long, env = "LEASEHOLD_MAX_KEYS_PER_SCOPE", value_name = "N")]
    pub max_keys_per_scope: Option<u64>,
    /// Idempotency records one group keeps; past it new calls are refused (QUOTA_EXCEEDED) until older ones leave the dedup window, 1..=1000000000 [default: 10000000]
    #[arg(
        long,
        env = "LEASEHOLD_MAX_IDEMPOTENCY_RECORDS_PER_GROUP",
        value_name = "N"
    )]
    pub max_idempotency_records_per_group: Option<u64>,
    /// Acquires of one scope waiting at once on this node; one more is refused (QUOTA_EXCEEDED), 1..=10000 [default: 2500]
    #[arg(long, env = "LEASEHOLD_MAX_WAITERS_PER_SCOPE", value_name = "N")]
    pub max_waiters_per_scope: Option<u32>,
    /// Most client commands per Raft entry, 1..=65536 [default: 512]
    #[arg(long, env = "LEASEHOLD_MAX_BATCH_COMMANDS", value_name = "N")]
    pub max_batch_commands: Option<u32>,
    /// How long SIGTERM waits for in-flight work, 0..=600000 [default: 10000]
    #[arg(long, env = "LEASEHOLD_SHUTDOWN_GRACE_MS", value_name = "MS")]
    pub shutdown_grace_ms: Option<u64>,
    /// How far this node's clock may be from the others' before it stops leading; leases may end up to 2x this early, 1..=60000 [default: 250]
    #[arg(long, env = "LEASEHOLD_MAX_CLOCK_OFFSET_MS", value_name = "MS")]
    pub max_clock_offset_ms: Option<u64>,
    /// Client calls served at once; one more is refused at once (RESOURCE_EXHAUSTED, OVERLOADED), 1..=1000000 [default: 16384]
    #[arg(long, env = "LEASEHOLD_MAX_IN_FLIGHT_CALLS", value_name = "N")]
    pub max_in_flight_calls: Option<u32>,
    /// The client port's certificate chain (PEM); with --tls-key-file, clients must use TLS
    #[arg(long, env = "LEASEHOLD_TLS_CERT_FILE", value_name = "PATH")]
    pub tls_cert_file: Option<PathBuf>,
    /// The client port certificate's private key (PEM)
    #[arg(long, env = "LEASEHOLD_TLS_KEY_FILE", value_name = "PATH")]
    pub tls_key_file: Option<PathBuf>,
    /// Clients must show a certificate this CA signed (PEM)
    #[arg(long, env = "LEASEHOLD_TLS_CLIENT_CA_FILE", value_name = "PATH")]
    pub tls_client_ca_file: Option<PathBuf>,
    /// The peer port's certificate chain (PEM); with its key and CA, members talk mutual TLS
    #[arg(long, env = "LEASEHOLD_PEER_TLS_CERT_FILE", value_name = "PATH")]
    pub peer_tls_cert_file: Option<PathBuf>,
    /// The peer port certificate's private key (PEM)
    #[arg(long, env = "LEASEHOLD_PEER_TLS_KEY_FILE", value_name = "PATH")]
    pub peer_tls_key_file: Option<PathBuf>,
    /// The CA that signs every member's peer certificate (PEM)
    #[arg(long, env = "LEASEHOLD_PEER_TLS_CA_FILE", value_name = "PATH")]
    pub peer_tls_ca_file: Option<PathBuf>,
    /// Tokens file (TOML: roles, and tokens' SHA-256 with their roles); with it, every call needs a token with the right
    #[arg(long, env = "LEASEHOLD_AUTH_TOKENS_FILE", value_name = "PATH")]
    pub auth_tokens_file: Option<PathBuf>,
    /// Run without TLS or tokens on an address other than loopback: anyone who reaches the ports may do anything
    #[arg(long, env = "LEASEHOLD_INSECURE")]
    pub insecure: bool,
    /// FOR CHAOS TESTING ONLY: follow a clock file (offset_ms=N rate=R) that skews this node's clock
    #[arg(long, env = "LEASEHOLD_UNSAFE_TEST_CLOCK", value_name = "PATH")]
    pub unsafe_test_clock: Option<PathBuf>,
    /// FOR FAULT-INJECTION TESTING ONLY: follow a file (fsync=eio write=enospc read=eio once) whose storage faults this node meets, and record each WAL sync in the data dir
    #[arg(
        long,
        env = "LEASEHOLD_UNSAFE_TEST_STORAGE_FAULTS",
        value_name = "PATH"
    )]
    pub unsafe_test_storage_faults: Option<PathBuf>,
}

/// The TOML file: every [`Config`] field, each optional.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct FileConfig {
    node_id: Option<NodeId>,
    grpc_addr: Option<SocketAddr>,
    peer_addr: Option<SocketAddr>,
    advertise_addr: Option<String>,
    http_addr: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    members: Option<Vec<String>>,
    slots: Option<u32>,
    groups: Option<u32>,
    replication_factor: Option<u32>,
    election_timeout_ms: Option<u64>,
    heartbeat_interval_ms: Option<u64>,
    snapshot_interval_entries: Option<u64>,
    dedup_window_ms: Option<u64>,
    max_leases_per_scope: Option<u64>,
    max_keys_per_scope: Option<u64>,
    max_idempotency_records_per_group: Option<u64>,
    max_waiters_per_scope: Option<u32>,
    max_batch_commands: Option<u32>,
    shutdown_grace_ms: Option<u64>,
    max_clock_offset_ms: Option<u64>,
    max_in_flight_calls: Option<u32>,
    tls_cert_file: Option<PathBuf>,
    tls_key_file: Option<PathBuf>,
    tls_client_ca_file: Option<PathBuf>,
    peer_tls_cert_file: Option<PathBuf>,
    peer_tls_key_file: Option<PathBuf>,
    peer_tls_ca_file: Option<PathBuf>,
    auth_tokens_file: Option<PathBuf>,
    insecure: Option<bool>,
    unsafe_test_clock: Option<PathBuf>,
    unsafe_test_storage_faults: Option<PathBuf>,
}

impl FileConfig {
    fn read(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }
}

/// Parses `"1=host:port,2=host:port/host:port"` into members sorted by
/// node id: client addresses, and peer addresses where given after a slash
/// (else the client host at the next port up). Whitespace around items is
/// ignored, and so are empty items.
pub fn parse_members(s: &str) -> Result<Vec<Member>, ConfigError> {
    parse_member_items(s.split(','))
}

fn parse_member_items<'a>(
    items: impl Iterator<Item = &'a str>,
) -> Result<Vec<Member>, ConfigError> {
    let mut members = items
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(parse_member)
        .collect::<Result<Vec<_>, _>>()?;
    if members.is_empty() {
        return Err(ConfigError::invalid(
            "members",
            "must list at least one node",
        ));
    }
    members.sort_by_key(|member| member.node_id);
    if let Some(pair) = members.windows(2).find(|p| p[0].node_id == p[1].node_id) {
        return Err(duplicate_member(pair[0].node_id));
    }
    Ok(members)
}

fn parse_member(item: &str) -> Result<Member, ConfigError> {
    let bad = |reason: String| ConfigError::Member {
        item: item.to_owned(),
        reason,
    };
    let (id, addrs) = item
        .split_once('=')
        .ok_or_else(|| bad("expected <node id>=<host>:<port>[/<host>:<port>]".into()))?;
    let node_id = id
        .trim()
        .parse()
        .map_err(|_| bad("node id must be an integer >= 1".into()))?;
    let (addr, peer_addr) = match addrs.split_once('/') {
        Some((addr, peer_addr)) => (addr.trim(), peer_addr.trim().to_owned()),
        None => {
            let addr = addrs.trim();
            check_host_port(addr).map_err(|reason| bad(reason.into()))?;
            let peer_addr = next_port_of(addr).ok_or_else(|| {
                bad(
                    "the peer address, the client port + 1 unless given, is past 65535; \
                     give it as <node id>=<host>:<port>/<host>:<port>"
                        .into(),
                )
            })?;
            (addr, peer_addr)
        }
    };
    let member = Member {
        node_id,
        addr: addr.to_owned(),
        peer_addr,
    };
    check_member(&member).map_err(bad)?;
    Ok(member)
}

fn check_member(member: &Member) -> Result<(), String> {
    if member.node_id == 0 {
        return Err("node id must be an integer >= 1".into());
    }
    check_host_port(&member.addr)?;
    check_host_port(&member.peer_addr).map_err(|reason| format!("peer {reason}"))?;
    if member.addr == member.peer_addr {
        return Err("the peer address must differ from the client address".into());
    }
    Ok(())
}

/// No two members share an address, client or peer: the default peer
/// address (the next port up) of members listed at consecutive ports of
/// one host would be another member's client address.
fn check_distinct_addrs(members: &[Member]) -> Result<(), ConfigError> {
    let mut seen: HashMap<&str, (NodeId, &str)> = HashMap::new();
    for member in members {
        for (addr, role) in [(&member.addr, "client"), (&member.peer_addr, "peer")] {
            if let Some((other, other_role)) = seen.insert(addr, (member.node_id, role)) {
                return Err(ConfigError::Member {
                    item: member.to_string(),
                    reason: format!(
                        "its {role} address `{addr}` is also node {other}'s {other_role} address"
                    ),
                });
            }
        }
    }
    Ok(())
}

/// This node as the whole cluster: for clients at `advertise_addr`, for
/// peers at its host and `peer_addr`'s port.
fn lone_member(node_id: NodeId, advertise_addr: &str, peer_addr: SocketAddr) -> Member {
    let host = advertise_addr.rsplit_once(':').map_or("", |(host, _)| host);
    Member {
        node_id,
        addr: advertise_addr.to_owned(),
        peer_addr: format!("{host}:{}", peer_addr.port()),
    }
}

/// `addr` at the next port up: where a peer port is when not given.
fn next_port(addr: SocketAddr) -> Option<SocketAddr> {
    let port = addr.port().checked_add(1)?;
    Some(SocketAddr::new(addr.ip(), port))
}

/// [`next_port`] of a `host:port` already checked by [`check_host_port`].
fn next_port_of(addr: &str) -> Option<String> {
    let (host, port) = addr.rsplit_once(':')?;
    let port = port.parse::<u16>().ok()?.checked_add(1)?;
    Some(format!("{host}:{port}"))
}

/// A dialable address's shape; whether the host resolves is learnt when
/// dialling.
fn check_host_port(addr: &str) -> Result<(), &'static str> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or("address must be <host>:<port>")?;
    if host.is_empty() {
        return Err("address has an empty host");
    }
    port.parse::<u16>()
        .map_err(|_| "address port must be an integer in 0..=65535")?;
    Ok(())
}

fn duplicate_member(id: NodeId) -> ConfigError {
    ConfigError::invalid("members", format!("node id {id} appears more than once"))
}

fn check<T: Copy + Into<u64>>(
    field: &'static str,
    value: T,
    range: RangeInclusive<T>,
) -> Result<(), ConfigError> {
    let (value, min, max) = (value.into(), (*range.start()).into(), (*range.end()).into());
    if (min..=max).contains(&value) {
        return Ok(());
    }
    Err(ConfigError::invalid(
        field,
        format!("must be in {min}..={max}, got {value}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Client ports 7070-7072, peer ports 7170-7172.
    const THREE_MEMBERS: &str = "1=127.0.0.1:7070/127.0.0.1:7170,\
        2=127.0.0.1:7071/127.0.0.1:7171,3=127.0.0.1:7072/127.0.0.1:7172";

    fn three_members() -> Vec<Member> {
        parse_members(THREE_MEMBERS).unwrap()
    }

    fn member(node_id: NodeId, addr: &str, peer_addr: &str) -> Member {
        Member {
            node_id,
            addr: addr.into(),
            peer_addr: peer_addr.into(),
        }
    }

    fn file(text: &str) -> FileConfig {
        toml::from_str(text).unwrap()
    }

    fn error_of(config: &Config) -> String {
        config.validate().unwrap_err().to_string()
    }

    /// The commented example under deploy/ states every default truly.
    #[test]
    fn deploy_example_is_the_defaults() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/leasehold.toml"
        ));
        let file = FileConfig::read(path).expect("deploy/leasehold.toml parses");
        let config = Config::layer(ServeArgs::default(), file).expect("and validates");
        assert_eq!(config, Config::default());
    }

    #[test]
    fn defaults_validate() {
        let config = Config::default();
        config.validate().unwrap();
        assert_eq!(config.effective_replication_factor(), 1);
        assert_eq!(
            Config::layer(ServeArgs::default(), FileConfig::default()).unwrap(),
            config
        );
    }

    #[test]
    fn each_bound_is_rejected_naming_its_field() {
        type Set = fn(&mut Config, u64);
        let cases: [(&str, u64, u64, Set); 15] = [
            ("slots", 0, 65_537, |c, v| c.slots = v as u32),
            ("groups", 1025, 1025, |c, v| c.groups = v as u32),
            ("replication_factor", 0, 8, |c, v| {
                c.replication_factor = v as u32
            }),
            ("election_timeout_ms", 49, 60_001, |c, v| {
                c.election_timeout_ms = v;
                c.heartbeat_interval_ms = 10;
            }),
            ("heartbeat_interval_ms", 9, 10_001, |c, v| {
                c.heartbeat_interval_ms = v;
                c.election_timeout_ms = 60_000;
            }),
            ("snapshot_interval_entries", 9, 10_000_001, |c, v| {
                c.snapshot_interval_entries = v
            }),
            ("dedup_window_ms", 0, DEDUP_WINDOW_MS_MAX + 1, |c, v| {
                c.dedup_window_ms = v
            }),
            (
                "max_leases_per_scope",
                0,
                LEASES_PER_SCOPE_MAX + 1,
                |c, v| c.max_leases_per_scope = v,
            ),
            ("max_keys_per_scope", 0, KEYS_PER_SCOPE_MAX + 1, |c, v| {
                c.max_keys_per_scope = v
            }),
            (
                "max_idempotency_records_per_group",
                0,
                IDEMPOTENCY_RECORDS_PER_GROUP_MAX + 1,
                |c, v| c.max_idempotency_records_per_group = v,
            ),
            (
                "max_waiters_per_scope",
                0,
                WAITERS_MAX as u64 + 1,
                |c, v| c.max_waiters_per_scope = v as u32,
            ),
            ("max_batch_commands", 0, 65_537, |c, v| {
                c.max_batch_commands = v as u32
            }),
            ("shutdown_grace_ms", 600_001, 600_001, |c, v| {
                c.shutdown_grace_ms = v
            }),
            ("max_clock_offset_ms", 0, 60_001, |c, v| {
                c.max_clock_offset_ms = v
            }),
            ("max_in_flight_calls", 0, 1_000_001, |c, v| {
                c.max_in_flight_calls = v as u32
            }),
        ];
        for (field, low, high, set) in cases {
            for bad in [low, high] {
                let mut config = Config::default();
                set(&mut config, bad);
                let message = error_of(&config);
                assert!(
                    message.starts_with(&format!("{field}: must be in ")),
                    "{field}={bad}: {message}"
                );
                assert!(message.ends_with(&format!("got {bad}")), "{message}");
            }
        }
        let config = Config {
            slots: 0,
            ..Config::default()
        };
        assert_eq!(error_of(&config), "slots: must be in 1..=65536, got 0");
    }

    #[test]
    fn groups_default_to_one_per_member_and_never_outnumber_slots() {
        let mut config = Config {
            node_id: 2,
            members: three_members(),
            advertise_addr: "127.0.0.1:7071".into(),
            ..Config::default()
        };
        assert_eq!(config.effective_groups(), 3);
        config.validate().unwrap();
        config.slots = 2;
        assert_eq!(
            error_of(&config),
            "groups: must be at most slots = 2: every group owns a slot, got 3"
        );
        config.groups = 1;
        config.validate().unwrap();
        assert_eq!(config.effective_groups(), 1);
        assert_eq!(
            Config::default().effective_groups(),
            1,
            "one node, one group"
        );
    }

    #[test]
    fn election_timeout_must_cover_three_heartbeats() {
        let mut config = Config {
            heartbeat_interval_ms: 200,
            election_timeout_ms: 599,
            ..Config::default()
        };
        assert_eq!(
            error_of(&config),
            "election_timeout_ms: must be at least 3 * heartbeat_interval_ms = 600, got 599"
        );
        config.election_timeout_ms = 600;
        config.validate().unwrap();
    }

    #[test]
    fn node_id_zero_and_empty_data_dir_are_rejected() {
        let config = Config {
            node_id: 0,
            ..Config::default()
        };
        assert!(error_of(&config).starts_with("node_id: must be >= 1"));
        let config = Config {
            data_dir: PathBuf::new(),
            ..Config::default()
        };
        assert!(error_of(&config).starts_with("data_dir:"));
    }

    #[test]
    fn members_parse() {
        let members = parse_members(" 3=c:7072, 1=127.0.0.1:7070,2=[::1]:7071,").unwrap();
        let ids: Vec<_> = members.iter().map(|m| m.node_id).collect();
        assert_eq!(ids, [1, 2, 3]);
        assert_eq!(members[1].addr, "[::1]:7071");
        assert_eq!(members[2].addr, "c:7072");
    }

    #[test]
    fn bad_members_are_named() {
        let cases = [
            ("1=a:1,1=b:2", "members: node id 1 appears more than once"),
            (
                "1=a:1,2b:2",
                "members: `2b:2`: expected <node id>=<host>:<port>[/<host>:<port>]",
            ),
            ("x=a:1", "members: `x=a:1`: node id must be an integer >= 1"),
            ("0=a:1", "members: `0=a:1`: node id must be an integer >= 1"),
            ("1=a", "members: `1=a`: address must be <host>:<port>"),
            ("1=:7070", "members: `1=:7070`: address has an empty host"),
            (
                "1=a:http",
                "members: `1=a:http`: address port must be an integer in 0..=65535",
            ),
            (" , ", "members: must list at least one node"),
        ];
        for (input, expected) in cases {
            let error = parse_members(input).unwrap_err().to_string();
            assert_eq!(error, expected, "input {input:?}");
        }
    }

    #[test]
    fn node_must_be_among_members() {
        let config = Config {
            node_id: 4,
            members: three_members(),
            ..Config::default()
        };
        assert_eq!(error_of(&config), "node_id: 4 is not among members");
    }

    #[test]
    fn members_must_be_unique_and_sorted() {
        let mut config = Config {
            members: three_members(),
            ..Config::default()
        };
        config.members.swap(1, 2);
        assert_eq!(error_of(&config), "members: must be sorted by node id");
        config.members[1].node_id = 2;
        assert_eq!(
            error_of(&config),
            "members: node id 2 appears more than once"
        );
    }

    #[test]
    fn advertise_addr_must_match_this_member_in_a_cluster() {
        let mut config = Config {
            members: three_members(),
            advertise_addr: "10.0.0.1:7070".into(),
            ..Config::default()
        };
        let message = error_of(&config);
        assert!(
            message.starts_with("advertise_addr: `10.0.0.1:7070` differs"),
            "{message}"
        );
        config.advertise_addr = "127.0.0.1:7070".into();
        config.validate().unwrap();
        assert_eq!(config.effective_replication_factor(), 3);
        assert_eq!(config.member(2).unwrap().addr, "127.0.0.1:7071");
        assert!(config.member(4).is_none());
    }

    #[test]
    fn flags_override_file_over_defaults() {
        let args = ServeArgs {
            groups: Some(8),
            node_id: Some(2),
            ..ServeArgs::default()
        };
        let file = file(
            r#"
            groups = 32
            heartbeat_interval_ms = 50
            node_id = 3
            members = [
                "1=127.0.0.1:7070/127.0.0.1:7170",
                "2=127.0.0.1:7071/127.0.0.1:7171",
                "3=127.0.0.1:7072/127.0.0.1:7172",
            ]
            "#,
        );
        let config = Config::layer(args, file).unwrap();
        assert_eq!(config.groups, 8);
        assert_eq!(config.node_id, 2);
        assert_eq!(config.heartbeat_interval_ms, 50);
        assert_eq!(config.election_timeout_ms, 300);
        assert_eq!(config.members, three_members());
        assert_eq!(config.advertise_addr, "127.0.0.1:7071");
        assert_eq!(config.grpc_addr, Config::default().grpc_addr);
    }

    #[test]
    fn flag_members_replace_file_members() {
        let args = ServeArgs {
            members: Some("1=a:1".into()),
            ..ServeArgs::default()
        };
        let config = Config::layer(args, file(r#"members = ["1=b:1", "2=c:1"]"#)).unwrap();
        assert_eq!(config.members.len(), 1);
        assert_eq!(config.advertise_addr, "a:1");
    }

    #[test]
    fn lone_node_defaults_to_itself_at_its_grpc_addr() {
        let args = ServeArgs {
            node_id: Some(5),
            grpc_addr: Some("127.0.0.1:9000".parse().unwrap()),
            ..ServeArgs::default()
        };
        let config = Config::layer(args, FileConfig::default()).unwrap();
        assert_eq!(config.advertise_addr, "127.0.0.1:9000");
        assert_eq!(config.peer_addr, "127.0.0.1:9001".parse().unwrap());
        assert_eq!(
            config.members,
            [member(5, "127.0.0.1:9000", "127.0.0.1:9001")]
        );
    }

    #[test]
    fn peer_addr_defaults_to_the_next_port_of_grpc_addr() {
        let args = ServeArgs {
            grpc_addr: Some("0.0.0.0:7070".parse().unwrap()),
            insecure: true,
            ..ServeArgs::default()
        };
        let config = Config::layer(args, FileConfig::default()).unwrap();
        assert_eq!(config.peer_addr, "0.0.0.0:7071".parse().unwrap());
        assert_eq!(
            Config::default().peer_addr,
            "127.0.0.1:7071".parse().unwrap()
        );

        let config = Config::layer(
            ServeArgs::default(),
            file("peer_addr = \"0.0.0.0:9000\"\ninsecure = true"),
        );
        assert_eq!(config.unwrap().peer_addr, "0.0.0.0:9000".parse().unwrap());
        let args = ServeArgs {
            peer_addr: Some("127.0.0.1:9100".parse().unwrap()),
            ..ServeArgs::default()
        };
        let config = Config::layer(args, file(r#"peer_addr = "0.0.0.0:9000""#)).unwrap();
        assert_eq!(config.peer_addr, "127.0.0.1:9100".parse().unwrap());
    }

    #[test]
    fn off_loopback_a_node_refuses_to_run_open_unless_told_insecure() {
        let public = |f: &dyn Fn(&mut Config)| {
            let mut c = Config {
                grpc_addr: "0.0.0.0:7070".parse().unwrap(),
                peer_addr: "127.0.0.1:7071".parse().unwrap(),
                ..Config::default()
            };
            f(&mut c);
            c
        };
        let message = error_of(&public(&|_| {}));
        assert!(
            message.starts_with("grpc_addr: `0.0.0.0:7070` is not a loopback address")
                && message
                    .contains("configure tls_cert_file and tls_key_file and auth_tokens_file")
                && message.contains("--insecure"),
            "{message}"
        );
        let tls = |c: &mut Config| {
            c.tls_cert_file = Some("cert.pem".into());
            c.tls_key_file = Some("key.pem".into());
        };
        let message = error_of(&public(&tls));
        assert!(
            message.contains("configure auth_tokens_file or"),
            "{message}"
        );
        let secured = public(&|c| {
            tls(c);
            c.auth_tokens_file = Some("tokens.toml".into());
        });
        assert!(secured.validate().is_ok());
        assert!(public(&|c| c.insecure = true).validate().is_ok());

        let open_peers = Config {
            peer_addr: "0.0.0.0:7071".parse().unwrap(),
            ..Config::default()
        };
        let message = error_of(&open_peers);
        assert!(
            message.starts_with("peer_addr: `0.0.0.0:7071` is not a loopback address")
                && message.contains("peer_tls_cert_file, peer_tls_key_file and peer_tls_ca_file"),
            "{message}"
        );
        let peer_tls = Config {
            peer_tls_cert_file: Some("p.pem".into()),
            peer_tls_key_file: Some("p-key.pem".into()),
            peer_tls_ca_file: Some("ca.pem".into()),
            ..open_peers
        };
        assert!(peer_tls.validate().is_ok());
    }

    #[test]
    fn tls_files_that_go_together_are_given_together() {
        for (set, field, needs) in [
            (0, "tls_cert_file", "tls_key_file"),
            (1, "tls_key_file", "tls_cert_file"),
            (2, "tls_client_ca_file", "tls_cert_file"),
            (3, "peer_tls_cert_file", "peer_tls_key_file"),
            (5, "peer_tls_ca_file", "peer_tls_cert_file"),
        ] {
            let mut c = Config::default();
            let path = Some(PathBuf::from("x.pem"));
            match set {
                0 => c.tls_cert_file = path,
                1 => c.tls_key_file = path,
                2 => c.tls_client_ca_file = path,
                3 => c.peer_tls_cert_file = path,
                _ => c.peer_tls_ca_file = path,
            }
            assert_eq!(
                error_of(&c),
                format!("{field}: is set, so {needs} must be too")
            );
        }
    }

    #[test]
    fn lone_node_is_at_its_advertised_host_for_peers_too() {
        let args = ServeArgs {
            grpc_addr: Some("0.0.0.0:7070".parse().unwrap()),
            peer_addr: Some("0.0.0.0:9000".parse().unwrap()),
            advertise_addr: Some("lh.example:7070".into()),
            insecure: true,
            ..ServeArgs::default()
        };
        let config = Config::layer(args, FileConfig::default()).unwrap();
        assert_eq!(
            config.members,
            [member(1, "lh.example:7070", "lh.example:9000")]
        );
    }

    #[test]
    fn peer_addr_needs_a_port_of_its_own() {
        let args = ServeArgs {
            grpc_addr: Some("127.0.0.1:65535".parse().unwrap()),
            ..ServeArgs::default()
        };
        let message = Config::layer(args, FileConfig::default())
            .unwrap_err()
            .to_string();
        assert!(
            message.starts_with("peer_addr: not given, and the default"),
            "{message}"
        );
        assert!(message.contains("past 65535"), "{message}");

        let mut config = Config {
            peer_addr: Config::default().grpc_addr,
            ..Config::default()
        };
        assert_eq!(
            error_of(&config),
            "peer_addr: `127.0.0.1:7070` is also grpc_addr: the peer port must be a port of its own"
        );
        config.peer_addr = config.http_addr;
        assert!(
            error_of(&config).starts_with("peer_addr: `127.0.0.1:7080` is also http_addr"),
            "{}",
            error_of(&config)
        );
    }

    #[test]
    fn member_peer_addresses_default_to_the_next_port_or_follow_a_slash() {
        let members =
            parse_members("1=10.0.0.1:7070, 2 = 10.0.0.2:7070 / 10.1.0.2:9000 ,3=[::1]:7072")
                .unwrap();
        assert_eq!(
            members,
            [
                member(1, "10.0.0.1:7070", "10.0.0.1:7071"),
                member(2, "10.0.0.2:7070", "10.1.0.2:9000"),
                member(3, "[::1]:7072", "[::1]:7073"),
            ]
        );
        assert_eq!(members[1].to_string(), "2=10.0.0.2:7070/10.1.0.2:9000");
    }

    #[test]
    fn bad_member_peer_addresses_are_named() {
        let cases = [
            (
                "1=a:1/",
                "members: `1=a:1/`: peer address must be <host>:<port>",
            ),
            (
                "1=a:1/b",
                "members: `1=a:1/b`: peer address must be <host>:<port>",
            ),
            (
                "1=a:1/:2",
                "members: `1=a:1/:2`: peer address has an empty host",
            ),
            (
                "1=a:1/b:x",
                "members: `1=a:1/b:x`: peer address port must be an integer in 0..=65535",
            ),
            ("1=/b:2", "members: `1=/b:2`: address must be <host>:<port>"),
            (
                "1=a:1/a:1",
                "members: `1=a:1/a:1`: the peer address must differ from the client address",
            ),
            (
                "1=a:65535",
                "members: `1=a:65535`: the peer address, the client port + 1 unless given, \
                 is past 65535; give it as <node id>=<host>:<port>/<host>:<port>",
            ),
        ];
        for (input, expected) in cases {
            let error = parse_members(input).unwrap_err().to_string();
            assert_eq!(error, expected, "input {input:?}");
        }
    }

    #[test]
    fn members_share_no_address() {
        let config = Config {
            members: parse_members("1=h:7070,2=h:7071").unwrap(),
            ..Config::default()
        };
        assert_eq!(
            error_of(&config),
            "members: `2=h:7071/h:7072`: its client address `h:7071` is also node 1's peer address"
        );
        let config = Config {
            members: parse_members("1=h:7070/p:1,2=i:7070/p:1").unwrap(),
            ..Config::default()
        };
        assert_eq!(
            error_of(&config),
            "members: `2=i:7070/p:1`: its peer address `p:1` is also node 1's peer address"
        );
        let config = Config {
            members: parse_members("1=h:7070/h:9000,2=h:7071/h:9001").unwrap(),
            advertise_addr: "h:7070".into(),
            ..Config::default()
        };
        config.validate().unwrap();
    }

    #[test]
    fn file_errors_name_the_key() {
        let error = toml::from_str::<FileConfig>("slot = 3").unwrap_err();
        assert!(error.to_string().contains("slot"), "{error}");
        let error = toml::from_str::<FileConfig>("grpc_addr = \"nowhere\"").unwrap_err();
        assert!(error.to_string().contains("grpc_addr"), "{error}");
        let config = Config::layer(ServeArgs::default(), file("slots = 0"));
        assert_eq!(
            config.unwrap_err().to_string(),
            "slots: must be in 1..=65536, got 0"
        );
    }

    #[test]
    fn resolve_reads_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leasehold.toml");
        std::fs::write(&path, "slots = 64\ndata_dir = \"/srv/lh\"\n").unwrap();
        let args = ServeArgs {
            config: Some(path.clone()),
            ..ServeArgs::default()
        };
        let config = Config::resolve(args).unwrap();
        assert_eq!(config.slots, 64);
        assert_eq!(config.data_dir, Path::new("/srv/lh"));

        std::fs::write(&path, "bogus = 1\n").unwrap();
        let args = ServeArgs {
            config: Some(path.clone()),
            ..ServeArgs::default()
        };
        let message = Config::resolve(args).unwrap_err().to_string();
        assert!(
            message.contains("leasehold.toml") && message.contains("bogus"),
            "{message}"
        );

        let args = ServeArgs {
            config: Some(dir.path().join("missing.toml")),
            ..ServeArgs::default()
        };
        let message = Config::resolve(args).unwrap_err().to_string();
        assert!(message.starts_with("cannot read "), "{message}");
    }

    #[test]
    fn flags_are_well_formed() {
        use clap::CommandFactory;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeArgs,
        }
        Cli::command().debug_assert();
    }
}
