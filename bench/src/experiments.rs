//! Leasehold-only figures: unavailability after kill -9 of a partition
//! leader, and memory and disk per key and per lease.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use leasehold::partition::partition_of;
use tokio::sync::mpsc;

use crate::procs;
use crate::result::{Failover, Footprint};
use crate::spec::{Constraint, Request};
use crate::target::leasehold::{Cluster, Conn};
use crate::target::{Held, Outcome};

/// A new probe acquire starts this often during a failover trial.
const PROBE_INTERVAL: Duration = Duration::from_millis(5);
/// Longest wait for the first grant after a kill.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(20);
/// Scopes of the probed partition the probes spread over.
const PROBE_SCOPES: usize = 16;
/// Callers that make the idle keys and live leases.
const FOOTPRINT_CALLERS: u64 = 64;

fn lease_request(scope: String, ttl_ms: u64) -> Request {
    Request {
        scope,
        constraints: vec![Constraint::Concurrency {
            key: "jobs".to_string(),
            limit: 10,
        }],
        ttl_ms,
        wait_ms: None,
    }
}

/// `trials` times: kill -9 the leader of partition 0, time until a grant
/// on that partition answers an acquire sent after the kill, restart the
/// node and let the cluster settle.
pub async fn failover(
    cluster: &mut Cluster,
    partitions: u32,
    trials: usize,
) -> Result<Vec<Failover>> {
    let conn = Conn {
        client: cluster.client().await?,
    };
    let partition = 0;
    let scopes: Vec<String> = (0..)
        .map(|i| format!("failover-{i}"))
        .filter(|s| partition_of(s, partitions) == partition)
        .take(PROBE_SCOPES)
        .collect();
    let mut out = Vec::new();
    for trial in 0..trials {
        let leader = leader_of(&conn, partition).await?;
        let (tx, mut grants) = mpsc::unbounded_channel();
        let probes = tokio::spawn(probe(conn.clone(), scopes.clone(), tx, trial));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let killed_at = Instant::now();
        cluster.kill(leader);
        let first = tokio::time::timeout(FAILOVER_TIMEOUT, async {
            while let Some((sent, granted)) = grants.recv().await {
                if sent >= killed_at {
                    return Some(granted);
                }
            }
            None
        })
        .await
        .ok()
        .flatten();
        probes.abort();
        out.push(Failover {
            partition,
            killed_node: leader,
            unavailable_ms: first.map(|at| (at - killed_at).as_secs_f64() * 1e3),
        });
        cluster
            .restart(leader)
            .with_context(|| format!("restarting node {leader}"))?;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    Ok(out)
}

async fn leader_of(conn: &Conn, partition: u32) -> Result<u64> {
    let until = Instant::now() + FAILOVER_TIMEOUT;
    loop {
        let map = conn.client.partition_map().await?;
        let leader = map
            .partitions
            .get(partition as usize)
            .map_or(0, |p| p.leader_node_id);
        if leader != 0 || Instant::now() >= until {
            anyhow::ensure!(leader != 0, "partition {partition} has no leader");
            return Ok(leader);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts an acquire (and its release) every PROBE_INTERVAL; reports each
/// grant as (sent, granted).
async fn probe(
    conn: Conn,
    scopes: Vec<String>,
    grants: mpsc::UnboundedSender<(Instant, Instant)>,
    trial: usize,
) {
    let tag = std::process::id();
    for n in 0u64.. {
        let (conn, grants) = (conn.clone(), grants.clone());
        let request = lease_request(scopes[n as usize % scopes.len()].clone(), 5_000);
        tokio::spawn(async move {
            let key = format!("probe-{tag}-{trial}-{n}");
            let sent = Instant::now();
            if let Ok(Outcome::Granted(held)) = conn.acquire(&request, &format!("{key}-a")).await {
                let _ = grants.send((sent, Instant::now()));
                let _ = conn.release(&held, &format!("{key}-r")).await;
            }
        });
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

/// Average RSS and data-dir bytes over the cluster's replicas.
fn sizes(cluster: &Cluster) -> (u64, u64) {
    let pids = cluster.pids();
    let rss = pids.iter().map(|&p| procs::rss_bytes(p)).sum::<u64>() / pids.len().max(1) as u64;
    let disk = cluster
        .nodes
        .iter()
        .map(|n| procs::dir_bytes(&n.data_dir))
        .sum::<u64>()
        / cluster.nodes.len().max(1) as u64;
    (rss, disk)
}

/// Memory and disk per replica: after `sample` keys each acquired and
/// released once (what stays: their idempotency records, within the dedup
/// window), then after `sample` leases held (ttl one hour); each measured
/// `settle` after the writes.
pub async fn footprint(cluster: &Cluster, sample: u64, settle: Duration) -> Result<Footprint> {
    let conn = Conn {
        client: cluster.client().await?,
    };
    tokio::time::sleep(settle).await;
    let start = sizes(cluster);
    many(&conn, sample, "idle", true).await?;
    tokio::time::sleep(settle).await;
    let idle = sizes(cluster);
    many(&conn, sample, "live", false).await?;
    tokio::time::sleep(settle).await;
    let live = sizes(cluster);
    let per_million =
        |after: u64, before: u64| (after as f64 - before as f64) / sample as f64 * 1e6;
    Ok(Footprint {
        sample,
        idle_keys_rss_bytes_per_million: per_million(idle.0, start.0),
        idle_keys_disk_bytes_per_million: per_million(idle.1, start.1),
        live_leases_rss_bytes_per_million: per_million(live.0, idle.0),
        live_leases_disk_bytes_per_million: per_million(live.1, idle.1),
        rss_bytes: [start.0, idle.0, live.0],
        disk_bytes: [start.1, idle.1, live.1],
    })
}

/// `count` acquires on distinct scopes `{prefix}-i`, released at once when
/// `release`, else held for an hour.
async fn many(conn: &Conn, count: u64, prefix: &'static str, release: bool) -> Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..FOOTPRINT_CALLERS {
        let (conn, next) = (conn.clone(), Arc::clone(&next));
        callers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return Ok::<(), anyhow::Error>(());
                }
                let request = lease_request(format!("{prefix}-{i}"), 3_600_000);
                let key = format!("{prefix}-{i}");
                if let Outcome::Granted(held) = conn.acquire(&request, &format!("{key}-a")).await? {
                    if release {
                        release_one(&conn, &held, &key).await?;
                    }
                }
            }
        });
    }
    while let Some(done) = callers.join_next().await {
        done??;
    }
    Ok(())
}

async fn release_one(conn: &Conn, held: &Held, key: &str) -> Result<()> {
    conn.release(held, &format!("{key}-r")).await.map(|_| ())
}
