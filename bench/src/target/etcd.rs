//! etcd 3.4 as a baseline: a local three-member cluster, the lease
//! semantics as optimistic transactions.
//!
//! - Acquire reads the holders of each concurrency key (a key prefix), each
//!   throttle's TAT and the idempotency record in one read-only txn at
//!   revision R, decides on the client, then commits one txn guarded by
//!   `mod_revision < R + 1` over each holder prefix (no holder was added
//!   since the read), the TATs' mod revisions and the idempotency record's
//!   absence. It puts one holder key per concurrency key, the new TATs and
//!   the idempotency record, all attached to the caller's session lease.
//!   A failed guard is a conflict: read again and retry.
//! - The lease id and fencing token is the revision of the granting txn.
//! - Release deletes the holder keys and records its idempotency key.
//! - Time is the client's clock: etcd has none inside a txn.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use etcd_client::{
    Client, Compare, CompareOp, GetOptions, KvClient, PutOptions, Txn, TxnOp, TxnOpResponse,
};

use super::{Held, Outcome};
use crate::procs::{self, Proc, Scratch};
use crate::spec::{Constraint, Request};

const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest an acquire retries conflicts, like Leasehold's call deadline.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// ttl of each caller's session lease; kept alive while the caller lives.
const SESSION_TTL_S: i64 = 60;

pub struct Cluster {
    procs: Vec<Proc>,
    endpoints: Vec<String>,
    /// The channel every caller shares, once connected.
    client: Option<Box<Client>>,
    // Last: the processes go before their directory.
    _scratch: Scratch,
}

impl Cluster {
    pub fn start(bin: &Path, members: usize) -> Result<Cluster> {
        let scratch = Scratch::new("etcd")?;
        let ports = procs::free_ports(2 * members)?;
        let client_url = |i: usize| format!("http://127.0.0.1:{}", ports[2 * i]);
        let peer_url = |i: usize| format!("http://127.0.0.1:{}", ports[2 * i + 1]);
        let initial = (0..members)
            .map(|i| format!("m{i}={}", peer_url(i)))
            .collect::<Vec<_>>()
            .join(",");
        let mut procs = Vec::new();
        for i in 0..members {
            let mut command = Command::new(bin);
            command
                .args(["--name", &format!("m{i}")])
                .arg("--data-dir")
                .arg(scratch.path().join(format!("m{i}")))
                .args(["--listen-client-urls", &client_url(i)])
                .args(["--advertise-client-urls", &client_url(i)])
                .args(["--listen-peer-urls", &peer_url(i)])
                .args(["--initial-advertise-peer-urls", &peer_url(i)])
                .args(["--initial-cluster", &initial])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", "leasehold-bench"])
                .args(["--logger", "zap", "--log-level", "warn"]);
            let log = scratch.path().join(format!("m{i}.log"));
            procs.push(Proc::spawn(&format!("etcd m{i}"), &mut command, &log)?);
        }
        let addrs: Vec<SocketAddr> = (0..members)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], ports[2 * i])))
            .collect();
        let mut refs: Vec<&mut Proc> = procs.iter_mut().collect();
        procs::wait_http_ok(&mut refs, &addrs, "/health", READY_TIMEOUT)
            .context("waiting for the etcd cluster to be healthy")?;
        Ok(Cluster {
            procs,
            endpoints: addrs.iter().map(|a| format!("http://{a}")).collect(),
            client: None,
            _scratch: scratch,
        })
    }

    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(Proc::pid).collect()
    }

    pub fn stop(&mut self) {
        for p in &mut self.procs {
            p.stop(Duration::from_secs(10));
        }
    }

    /// A caller: the shared channel to every member and a session lease of
    /// its own, kept alive until the last clone is dropped.
    pub async fn connect(&mut self) -> Result<Conn> {
        if self.client.is_none() {
            let client = Client::connect(&self.endpoints, None)
                .await
                .context("connecting to etcd")?;
            self.client = Some(Box::new(client));
        }
        let client = self.client.as_deref().expect("set above");
        let session = client
            .lease_client()
            .grant(SESSION_TTL_S, None)
            .await
            .context("granting a session lease")?
            .id();
        let mut lease_client = client.lease_client();
        let keeper = tokio::spawn(async move {
            let Ok((mut keeper, mut stream)) = lease_client.keep_alive(session).await else {
                return;
            };
            loop {
                tokio::time::sleep(Duration::from_secs(SESSION_TTL_S as u64 / 3)).await;
                if keeper.keep_alive().await.is_err() || stream.message().await.is_err() {
                    return;
                }
            }
        });
        Ok(Conn {
            kv: client.kv_client(),
            session: Arc::new(Session {
                id: session,
                keeper,
            }),
            conflicts: Arc::new(AtomicU64::new(0)),
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Session {
    id: i64,
    keeper: tokio::task::JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

#[derive(Clone)]
pub struct Conn {
    kv: KvClient,
    session: Arc<Session>,
    /// Guarded txns that failed on a concurrent change and were retried.
    pub conflicts: Arc<AtomicU64>,
}

fn holder_prefix(scope: &str, key: &str) -> String {
    format!("/lh/{scope}/c/{key}/")
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The first key-value of a txn's range response.
fn first_kv(response: &TxnOpResponse) -> Option<&etcd_client::KeyValue> {
    match response {
        TxnOpResponse::Get(get) => get.kvs().first(),
        _ => None,
    }
}

/// What a read found and what the guarded write will put.
struct Plan {
    compares: Vec<Compare>,
    puts: Vec<TxnOp>,
    holders: Vec<String>,
    retry_after_ms: Option<u64>,
}

impl Plan {
    /// A constraint blocks for `ms`: the request waits for the slowest.
    fn block(&mut self, ms: u64) {
        self.retry_after_ms = Some(self.retry_after_ms.unwrap_or(0).max(ms));
    }
}

impl Conn {
    pub async fn acquire(&self, request: &Request, idempotency_key: &str) -> Result<Outcome> {
        let scope = &request.scope;
        let record = format!("/lh/{scope}/i/{idempotency_key}");
        let fingerprint = request.fingerprint();
        let deadline = Instant::now() + CALL_TIMEOUT;
        let mut kv = self.kv.clone();
        loop {
            let mut reads = vec![TxnOp::get(record.clone(), None)];
            for (key, _) in request.concurrency_keys() {
                let prefix = holder_prefix(scope, key);
                reads.push(TxnOp::get(prefix, Some(GetOptions::new().with_prefix())));
            }
            for c in &request.constraints {
                if let Constraint::Throttle { key, .. } = c {
                    reads.push(TxnOp::get(format!("/lh/{scope}/t/{key}"), None));
                }
            }
            let snapshot = kv.txn(Txn::new().and_then(reads)).await?;
            let revision = snapshot
                .header()
                .map(|h| h.revision())
                .ok_or_else(|| anyhow!("etcd answered a txn without a header"))?;
            let found = snapshot.op_responses();
            if let Some(existing) = first_kv(&found[0]) {
                return replay(request, idempotency_key, existing, &fingerprint);
            }
            let plan = self.plan(request, idempotency_key, &found[1..], revision);
            if plan.retry_after_ms.is_some() {
                return Ok(Outcome::Denied {
                    retry_after_ms: plan.retry_after_ms,
                });
            }
            let mut compares = plan.compares;
            compares.push(Compare::create_revision(
                record.clone(),
                CompareOp::Equal,
                0,
            ));
            let mut puts = plan.puts;
            let expires_ms = now_us() / 1_000 + request.ttl_ms;
            puts.push(self.put(&record, format!("{fingerprint}|{expires_ms}")));
            let txn = Txn::new()
                .when(compares)
                .and_then(puts)
                .or_else(vec![TxnOp::get(record.clone(), None)]);
            let committed = kv.txn(txn).await?;
            if committed.succeeded() {
                let lease_id = committed.header().map_or(0, |h| h.revision()) as u64;
                return Ok(Outcome::Granted(Held {
                    scope: scope.clone(),
                    lease_id,
                    holders: plan.holders,
                }));
            }
            if let Some(existing) = committed.op_responses().first().and_then(first_kv) {
                return replay(request, idempotency_key, existing, &fingerprint);
            }
            self.conflicts.fetch_add(1, Ordering::Relaxed);
            if Instant::now() >= deadline {
                bail!("acquire still conflicting after {CALL_TIMEOUT:?}");
            }
        }
    }

    fn put(&self, key: &str, value: String) -> TxnOp {
        TxnOp::put(
            key,
            value,
            Some(PutOptions::new().with_lease(self.session.id)),
        )
    }

    /// Decides on what a read at `revision` found (holder prefixes, then
    /// TATs, in request order).
    fn plan(
        &self,
        request: &Request,
        idempotency_key: &str,
        found: &[TxnOpResponse],
        revision: i64,
    ) -> Plan {
        let now_us = now_us();
        let now_ms = now_us / 1_000;
        let expires_ms = now_ms + request.ttl_ms;
        let mut plan = Plan {
            compares: Vec::new(),
            puts: Vec::new(),
            holders: Vec::new(),
            retry_after_ms: None,
        };
        let mut found = found.iter();
        for (key, limit) in request.concurrency_keys() {
            let prefix = holder_prefix(&request.scope, key);
            let mut expiries: Vec<u64> = match found.next() {
                Some(TxnOpResponse::Get(get)) => get
                    .kvs()
                    .iter()
                    .filter_map(|kv| kv.value_str().ok()?.parse().ok())
                    .filter(|&at| at > now_ms)
                    .collect(),
                _ => Vec::new(),
            };
            if expiries.len() as u64 >= u64::from(limit) {
                // Admitted once len - limit + 1 holders have expired.
                expiries.sort_unstable();
                plan.block(expiries[expiries.len() - limit as usize] - now_ms);
            }
            plan.compares.push(
                Compare::mod_revision(prefix.clone(), CompareOp::Less, revision + 1).with_prefix(),
            );
            let holder = format!("{prefix}{idempotency_key}");
            plan.puts.push(self.put(&holder, expires_ms.to_string()));
            plan.holders.push(holder);
        }
        for c in &request.constraints {
            let Constraint::Throttle {
                key,
                limit,
                period_ms,
                burst,
            } = c
            else {
                continue;
            };
            let tat_key = format!("/lh/{}/t/{key}", request.scope);
            let (tat_us, mod_revision) = match found.next().and_then(first_kv) {
                Some(kv) => (
                    kv.value_str()
                        .ok()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0),
                    kv.mod_revision(),
                ),
                None => (0, 0),
            };
            match gcra(now_us, tat_us, *limit, *period_ms, *burst) {
                Ok(new_tat_us) => {
                    plan.puts.push(self.put(&tat_key, new_tat_us.to_string()));
                }
                Err(retry_after_ms) => plan.block(retry_after_ms),
            }
            plan.compares.push(Compare::mod_revision(
                tat_key,
                CompareOp::Equal,
                mod_revision,
            ));
        }
        plan
    }

    pub async fn release(&self, held: &Held, idempotency_key: &str) -> Result<bool> {
        let record = format!("/lh/{}/r/{idempotency_key}", held.scope);
        let fingerprint = format!("{}|{}", held.scope, held.lease_id);
        let Some(first) = held.holders.first() else {
            return Ok(false);
        };
        let deletes: Vec<TxnOp> = held
            .holders
            .iter()
            .map(|h| TxnOp::delete(h.clone(), None))
            .collect();
        // Nested: whether the lease was still held decides what is recorded.
        let inner = Txn::new()
            .when(vec![Compare::version(first.clone(), CompareOp::Greater, 0)])
            .and_then(
                deletes
                    .into_iter()
                    .chain([self.put(&record, format!("{fingerprint}|1"))])
                    .collect::<Vec<_>>(),
            )
            .or_else(vec![self.put(&record, format!("{fingerprint}|0"))]);
        let txn = Txn::new()
            .when(vec![Compare::create_revision(
                record.clone(),
                CompareOp::Equal,
                0,
            )])
            .and_then(vec![TxnOp::txn(inner)])
            .or_else(vec![TxnOp::get(record, None)]);
        let reply = self.kv.clone().txn(txn).await?;
        let responses = reply.op_responses();
        if reply.succeeded() {
            return Ok(match responses.first() {
                Some(TxnOpResponse::Txn(inner)) => inner.succeeded(),
                _ => false,
            });
        }
        let existing = responses
            .first()
            .and_then(first_kv)
            .ok_or_else(|| anyhow!("release record vanished"))?;
        let value = existing.value_str()?;
        match value.rsplit_once('|') {
            Some((fp, held)) if fp == fingerprint => Ok(held == "1"),
            _ => bail!("IDEMPOTENCY_KEY_REUSED: release key used with other parameters"),
        }
    }
}

/// A replay of the grant recorded under the idempotency key.
fn replay(
    request: &Request,
    idempotency_key: &str,
    existing: &etcd_client::KeyValue,
    fingerprint: &str,
) -> Result<Outcome> {
    let value = existing.value_str()?;
    match value.rsplit_once('|') {
        Some((fp, _expires)) if fp == fingerprint => Ok(Outcome::Granted(Held {
            scope: request.scope.clone(),
            lease_id: existing.create_revision() as u64,
            holders: request
                .concurrency_keys()
                .map(|(key, _)| format!("{}{idempotency_key}", holder_prefix(&request.scope, key)))
                .collect(),
        })),
        _ => bail!("IDEMPOTENCY_KEY_REUSED: acquire key used with other parameters"),
    }
}

/// GCRA for one unit: the new TAT (µs), or the ms until admission.
pub fn gcra(now_us: u64, tat_us: u64, limit: u32, period_ms: u64, burst: u32) -> Result<u64, u64> {
    let interval_us = (period_ms * 1_000).div_ceil(u64::from(limit.max(1)));
    let tat_us = tat_us.max(now_us);
    let allow_at_us = tat_us.saturating_sub(u64::from(burst) * interval_us);
    if now_us < allow_at_us {
        Err((allow_at_us - now_us).div_ceil(1_000))
    } else {
        Ok(tat_us + interval_us)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_admits_burst_plus_one_then_paces() {
        // 10 per second: one every 100 ms, burst 2.
        let now = 1_000_000_000;
        let mut tat = 0;
        for _ in 0..3 {
            tat = gcra(now, tat, 10, 1_000, 2).expect("within the burst");
        }
        assert_eq!(gcra(now, tat, 10, 1_000, 2), Err(100));
        assert!(gcra(now + 100_000, tat, 10, 1_000, 2).is_ok());
    }
}
