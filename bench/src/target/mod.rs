//! The systems under test, each started and stopped by the benchmark, and
//! one connection type that speaks the same lease semantics to all of them.

pub mod etcd;
pub mod leasehold;
pub mod redis;

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::spec::{Request, Rng};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum TargetKind {
    /// A local three-node Leasehold cluster, replication factor 3, fsync on.
    Leasehold,
    /// The same cluster with TLS on the client port, mutual TLS between
    /// nodes and a bearer token on every call.
    LeaseholdTls,
    /// redis-server with AOF, appendfsync everysec.
    RedisEverysec,
    /// redis-server with AOF, appendfsync always.
    RedisAlways,
    /// A local three-member etcd cluster.
    Etcd,
}

pub const TARGETS: [TargetKind; 5] = [
    TargetKind::Leasehold,
    TargetKind::LeaseholdTls,
    TargetKind::RedisEverysec,
    TargetKind::RedisAlways,
    TargetKind::Etcd,
];

impl TargetKind {
    pub fn name(self) -> &'static str {
        match self {
            TargetKind::Leasehold => "leasehold",
            TargetKind::LeaseholdTls => "leasehold-tls",
            TargetKind::RedisEverysec => "redis-everysec",
            TargetKind::RedisAlways => "redis-always",
            TargetKind::Etcd => "etcd",
        }
    }
}

impl fmt::Display for TargetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where the server binaries are.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub leasehold: PathBuf,
    pub redis_server: PathBuf,
    pub etcd: PathBuf,
}

/// A running target.
pub enum Server {
    Leasehold(leasehold::Cluster, Option<::leasehold::client::Client>),
    Redis(redis::Server),
    Etcd(etcd::Cluster),
}

impl Server {
    /// Starts the target and waits until it serves; `layout` is
    /// Leasehold's slots and groups.
    pub fn start(kind: TargetKind, bins: &Binaries, layout: leasehold::Layout) -> Result<Server> {
        Ok(match kind {
            TargetKind::Leasehold => Server::Leasehold(
                leasehold::Cluster::start(&bins.leasehold, leasehold::NODES, layout)?,
                None,
            ),
            TargetKind::LeaseholdTls => Server::Leasehold(
                leasehold::Cluster::start_secure(&bins.leasehold, leasehold::NODES, layout)?,
                None,
            ),
            TargetKind::RedisEverysec => Server::Redis(redis::Server::start(
                &bins.redis_server,
                redis::Fsync::Everysec,
            )?),
            TargetKind::RedisAlways => Server::Redis(redis::Server::start(
                &bins.redis_server,
                redis::Fsync::Always,
            )?),
            TargetKind::Etcd => Server::Etcd(etcd::Cluster::start(&bins.etcd, 3)?),
        })
    }

    /// One caller's connection. Callers share what each client library
    /// shares best: Leasehold's client (one HTTP/2 channel per node), one
    /// multiplexed Redis connection, etcd's channel (each caller with a
    /// session lease of its own).
    pub async fn connect(&mut self) -> Result<Conn> {
        Ok(match self {
            Server::Leasehold(cluster, client) => {
                if client.is_none() {
                    *client = Some(cluster.client().await?);
                }
                Conn::Leasehold(leasehold::Conn {
                    client: client.clone().expect("set above"),
                })
            }
            Server::Redis(server) => Conn::Redis(server.connect().await?),
            Server::Etcd(cluster) => Conn::Etcd(Box::new(cluster.connect().await?)),
        })
    }

    /// The server processes, for CPU accounting.
    pub fn pids(&self) -> Vec<u32> {
        match self {
            Server::Leasehold(c, _) => c.pids(),
            Server::Redis(s) => s.pids(),
            Server::Etcd(c) => c.pids(),
        }
    }

    /// Leasehold: the slots and groups it runs with, 0 groups resolved.
    pub fn layout(&self) -> Option<leasehold::Layout> {
        match self {
            Server::Leasehold(c, _) => Some(c.layout()),
            Server::Redis(_) | Server::Etcd(_) => None,
        }
    }

    /// Leasehold: its nodes' counters so far.
    pub fn raft_counters(&self) -> Option<leasehold::RaftCounters> {
        match self {
            Server::Leasehold(c, _) => c.raft_counters(),
            Server::Redis(_) | Server::Etcd(_) => None,
        }
    }

    pub fn stop(&mut self) {
        match self {
            Server::Leasehold(c, _) => c.stop(),
            Server::Redis(s) => s.stop(),
            Server::Etcd(c) => c.stop(),
        }
    }
}

/// A granted lease, as the caller keeps it to release it.
#[derive(Clone, Debug)]
pub struct Held {
    pub scope: String,
    pub lease_id: u64,
    /// etcd: the holder keys to delete.
    pub holders: Vec<String>,
}

#[derive(Debug)]
pub enum Outcome {
    Granted(Held),
    Denied { retry_after_ms: Option<u64> },
}

/// One caller's handle on a target; clones share the connection.
#[derive(Clone)]
pub enum Conn {
    Leasehold(leasehold::Conn),
    Redis(redis::Conn),
    Etcd(Box<etcd::Conn>),
}

/// Polling backoff of a waiting acquire where the target cannot wait on
/// the server: from 1 ms doubling to 32 ms, with jitter.
const POLL_BACKOFF_MAX_MS: u64 = 32;

impl Conn {
    /// Acquire; a request with a wait waits on the server (Leasehold) or
    /// polls with backoff until the wait runs out (Redis, etcd).
    pub async fn acquire(&self, request: &Request, idempotency_key: &str) -> Result<Outcome> {
        match self {
            Conn::Leasehold(_) => self.acquire_once(request, idempotency_key).await,
            Conn::Redis(_) | Conn::Etcd(_) => self.acquire_polling(request, idempotency_key).await,
        }
    }

    /// One acquire as the target answers it (Leasehold waiting if asked).
    async fn acquire_once(&self, request: &Request, idempotency_key: &str) -> Result<Outcome> {
        match self {
            Conn::Leasehold(c) => c.acquire(request, idempotency_key).await,
            Conn::Redis(c) => c.acquire(request, idempotency_key).await,
            Conn::Etcd(c) => c.acquire(request, idempotency_key).await,
        }
    }

    async fn acquire_polling(&self, request: &Request, idempotency_key: &str) -> Result<Outcome> {
        let until = request
            .wait_ms
            .map(|ms| Instant::now() + Duration::from_millis(ms));
        let mut backoff_ms = 1u64;
        let mut rng = Rng::new(
            idempotency_key
                .bytes()
                .fold(0u64, |h, b| h.rotate_left(5) ^ u64::from(b)),
        );
        loop {
            let outcome = self.acquire_once(request, idempotency_key).await?;
            let Outcome::Denied { retry_after_ms } = outcome else {
                return Ok(outcome);
            };
            let now = Instant::now();
            let Some(until) = until.filter(|&u| u > now) else {
                return Ok(Outcome::Denied { retry_after_ms });
            };
            // Denials are not recorded, so the same key retries freely.
            let jitter = 0.5 + rng.below(1_000) as f64 / 2_000.0;
            let pause = Duration::from_millis(backoff_ms.min(retry_after_ms.unwrap_or(u64::MAX)))
                .mul_f64(jitter)
                .min(until - now);
            tokio::time::sleep(pause).await;
            backoff_ms = (backoff_ms * 2).min(POLL_BACKOFF_MAX_MS);
        }
    }

    /// Release; says whether the lease was still held.
    pub async fn release(&self, held: &Held, idempotency_key: &str) -> Result<bool> {
        match self {
            Conn::Leasehold(c) => c.release(held, idempotency_key).await,
            Conn::Redis(c) => c.release(held, idempotency_key).await,
            Conn::Etcd(c) => c.release(held, idempotency_key).await,
        }
    }

    /// Conflicting transactions retried so far (etcd; 0 elsewhere).
    pub fn conflicts(&self) -> u64 {
        match self {
            Conn::Etcd(c) => c.conflicts.load(Ordering::Relaxed),
            _ => 0,
        }
    }
}
