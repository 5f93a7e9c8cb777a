//! Leasehold-only figures: unavailability after kill -9 of a group
//! leader, and memory and disk per key and per lease.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use leasehold::proto::v1;
use leasehold::slot::{owner, slot_of, SlotRange};
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
/// Scopes of the probed group the probes spread over.
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

/// `trials` times: kill -9 the leader of the group that owns slot 0, time
/// until a grant in that group answers an acquire sent after the kill,
/// restart the node and let the cluster settle.
pub async fn failover(cluster: &mut Cluster, trials: usize) -> Result<Vec<Failover>> {
    let conn = Conn {
        client: cluster.client().await?,
    };
    let map = conn.client.slot_map().await?;
    let ranges = slot_ranges(&map);
    let group = owner(&ranges, 0).context("the slot map has no owner for slot 0")?;
    let scopes = scopes_of(&ranges, map.slot_count, group);
    let mut out = Vec::new();
    for trial in 0..trials {
        let leader = leader_of(&conn, group).await?;
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
            group,
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

fn slot_ranges(map: &v1::SlotMap) -> Vec<SlotRange> {
    map.slot_ranges.iter().map(SlotRange::from).collect()
}

/// PROBE_SCOPES scopes whose slots `group` owns.
fn scopes_of(ranges: &[SlotRange], slot_count: u32, group: u32) -> Vec<String> {
    (0..)
        .map(|i| format!("failover-{i}"))
        .filter(|s| owner(ranges, slot_of(s, slot_count)) == Some(group))
        .take(PROBE_SCOPES)
        .collect()
}

async fn leader_of(conn: &Conn, group: u32) -> Result<u64> {
    let until = Instant::now() + FAILOVER_TIMEOUT;
    loop {
        let map = conn.client.slot_map().await?;
        let leader = map
            .groups
            .iter()
            .find(|g| g.group_id == group)
            .map_or(0, |g| g.leader_node_id);
        if leader != 0 || Instant::now() >= until {
            anyhow::ensure!(leader != 0, "group {group} has no leader");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_scopes_land_in_the_probed_group() {
        // The initial placement of 3 groups over 1024 slots.
        let ranges = [
            SlotRange {
                first: 0,
                last: 340,
                group: 0,
            },
            SlotRange {
                first: 341,
                last: 681,
                group: 1,
            },
            SlotRange {
                first: 682,
                last: 1023,
                group: 2,
            },
        ];
        let scopes = scopes_of(&ranges, 1024, 1);
        assert_eq!(scopes.len(), PROBE_SCOPES);
        for scope in &scopes {
            assert!((341..=681).contains(&slot_of(scope, 1024)), "{scope}");
        }
    }
}
