//! After the main phase: wait for a healed cluster, then the `final` phase
//! (full capacity of every key must be grantable again; for the `fenced`
//! workload, each new lease's token must pass the resource) and, when nodes
//! were killed, the `durability` phase (every node killed at once and
//! restarted; the final leases must still be held).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use leasehold::proto::v1::SlotMap;
use leasehold_jepsen::history::{EventKind, Op, Phase};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::client::{every_group_led, Clients};
use super::cluster::Cluster;
use super::workload::{Call, Ctx, Key, KeyKind, Proc, Workload, FINAL_PROCESS};

/// How long a healed or restarted cluster may take to be ready again.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(200);
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// How long leaders must stay put before the final phase starts.
const STABLE_FOR: Duration = Duration::from_secs(4);

/// Waits until every node answers `/ready` and some node's slot map
/// names a leader for every group, and returns that map.
pub async fn wait_ready(cluster: &Cluster, clients: &Clients) -> Result<SlotMap> {
    let deadline = Instant::now() + READY_TIMEOUT;
    for node in &cluster.nodes {
        while !http_ready(&node.http_addr()).await {
            if Instant::now() >= deadline {
                bail!("n{} not ready after {READY_TIMEOUT:?}", node.id);
            }
            tokio::time::sleep(POLL).await;
        }
    }
    loop {
        if let Some(map) = clients.slot_map(PROBE_TIMEOUT).await {
            if every_group_led(&map) {
                return Ok(map);
            }
        }
        if Instant::now() >= deadline {
            bail!("groups still without a leader after {READY_TIMEOUT:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until the group leaders stay the same for [`STABLE_FOR`], so
/// that the final phase, where every call must succeed, does not meet a
/// leadership still moving (placement hands groups back to their
/// preferred replicas a few seconds after a node returns).
pub async fn wait_stable(clients: &Clients) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut since: Option<(Vec<(u32, u64)>, Instant)> = None;
    loop {
        let leaders = clients
            .slot_map(PROBE_TIMEOUT)
            .await
            .filter(every_group_led)
            .map(|m| {
                m.groups
                    .iter()
                    .map(|g| (g.group_id, g.leader_node_id))
                    .collect::<Vec<_>>()
            });
        since = match (leaders, since) {
            (Some(now), Some((before, at))) if now == before => {
                if at.elapsed() >= STABLE_FOR {
                    return Ok(());
                }
                Some((before, at))
            }
            (Some(now), _) => Some((now, Instant::now())),
            (None, _) => None,
        };
        if Instant::now() >= deadline {
            bail!("group leaders still moving after {READY_TIMEOUT:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn http_ready(addr: &str) -> bool {
    let probe = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        stream
            .write_all(b"GET /ready HTTP/1.0\r\nHost: node\r\n\r\n")
            .await
            .ok()?;
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).await.ok()?;
        Some(reply.starts_with(b"HTTP/1.1 200") || reply.starts_with(b"HTTP/1.0 200"))
    };
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, probe).await,
        Ok(Some(true))
    )
}

/// The final phase: on every key, acquire its whole capacity (for the
/// linear workload after releasing every holder an inspect shows; for the
/// fenced workload updating the resource with each lease).
pub async fn final_phase(ctx: &Arc<Ctx>) {
    let proc = Proc {
        id: FINAL_PROCESS,
        phase: Phase::Final,
        ctx: Arc::clone(ctx),
    };
    let ids = ctx.clients.ids();
    for (k, key) in ctx.keys.iter().enumerate() {
        let node = ids[k % ids.len()];
        if ctx.workload == Workload::Linear {
            release_holders(&proc, key, node).await;
        }
        let units = match key.kind {
            KeyKind::Concurrency { limit } | KeyKind::RateLimit { limit, .. } => limit,
            KeyKind::Throttle { burst, .. } => burst + 1,
        };
        for unit in 0..units {
            let idem = format!("final-{}-{unit}", key.name);
            let call = match key.kind {
                KeyKind::Concurrency { .. } => Call::Acquire {
                    key: key.clone(),
                    idem,
                    ttl_ms: ctx.workload.final_ttl_ms(),
                    wait_ms: None,
                },
                KeyKind::Throttle { .. } | KeyKind::RateLimit { .. } => Call::Throttle {
                    key: key.clone(),
                    idem,
                },
            };
            let (kind, op) = proc.perform_until_definite(&call, node).await;
            // The new lease's token is larger than any the resource saw,
            // so its update must go through.
            if let (Workload::Fenced, EventKind::Ok, Op::Acquire(a)) = (ctx.workload, kind, op) {
                if let Some(token) = a.token {
                    if let Some(read) = proc.access(key, token, None) {
                        proc.access(key, token, Some(read));
                    }
                }
            }
        }
    }
}

async fn release_holders(proc: &Proc, key: &Key, node: u64) {
    let inspect = Call::Inspect { key: key.clone() };
    let (kind, op) = proc.perform_until_definite(&inspect, node).await;
    let (EventKind::Ok, Op::Inspect(seen)) = (kind, op) else {
        return;
    };
    for lease in seen.holders.unwrap_or_default() {
        let release = Call::Release {
            key: key.clone(),
            idem: format!("final-release-{}-{lease}", key.name),
            lease,
        };
        proc.perform_until_definite(&release, node).await;
    }
}

/// Kills every node at once, restarts them all, and inspects every
/// concurrency key.
pub async fn durability_phase(cluster: &mut Cluster, ctx: &Arc<Ctx>) -> Result<()> {
    let recorder = &ctx.recorder;
    let all = cluster.ids();
    recorder.nemesis(
        "kill",
        "start",
        "kill -9 every node".into(),
        Phase::Durability,
    );
    for &id in &all {
        cluster.kill(id).await?;
    }
    for &id in &all {
        cluster.restart(id).await?;
    }
    recorder.nemesis(
        "kill",
        "stop",
        "restarted every node".into(),
        Phase::Durability,
    );
    wait_ready(cluster, &ctx.clients).await?;
    let proc = Proc {
        id: FINAL_PROCESS + 1,
        phase: Phase::Durability,
        ctx: Arc::clone(ctx),
    };
    for (k, key) in ctx.keys.iter().enumerate() {
        if matches!(key.kind, KeyKind::Concurrency { .. }) {
            let call = Call::Inspect { key: key.clone() };
            proc.perform_until_definite(&call, all[k % all.len()]).await;
        }
    }
    Ok(())
}
