//! Where a call goes: the cached partition map, one channel per node, and
//! the classification of failures into retryable and final.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::convert::error_detail;
use crate::partition::partition_of;
use crate::proto::v1::leasehold_client::LeaseholdClient;
use crate::proto::v1::{self, GetPartitionMapRequest, ServedBy};

/// Replies that say who served them.
pub trait Served {
    fn served_by(&self) -> Option<&ServedBy>;
}

macro_rules! served {
    ($($t:ty),*) => {$(
        impl Served for $t {
            fn served_by(&self) -> Option<&ServedBy> {
                self.served_by.as_ref()
            }
        }
    )*};
}
served!(
    v1::AcquireResponse,
    v1::ExtendResponse,
    v1::ReleaseResponse,
    v1::CheckResponse,
    v1::InspectResponse,
    v1::CapacityResponse,
    v1::AdminKeyResponse
);

pub enum Failure {
    /// A routing or transport failure: retry (same idempotency key).
    Retry(Status),
    /// The call's own answer (invalid argument, lease lost, ...).
    Final(Status),
}

#[derive(Default)]
struct Map {
    epoch: u64,
    partition_count: u32,
    /// Leader address per partition, when known.
    leaders: Vec<Option<String>>,
    /// Node id → address.
    nodes: HashMap<u64, String>,
}

pub struct Router {
    seeds: Vec<String>,
    attempt_timeout: Duration,
    map: Mutex<Map>,
    channels: Mutex<HashMap<String, Channel>>,
}

impl Router {
    pub fn new(seeds: Vec<String>, attempt_timeout: Duration) -> Router {
        Router {
            seeds,
            attempt_timeout,
            map: Mutex::new(Map::default()),
            channels: Mutex::new(HashMap::new()),
        }
    }

    fn channel(&self, addr: &str) -> Result<Channel, Status> {
        let mut channels = self.channels.lock().expect("channel table");
        if let Some(ch) = channels.get(addr) {
            return Ok(ch.clone());
        }
        let ch = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| Status::invalid_argument(format!("node address {addr}: {e}")))?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .connect_lazy();
        channels.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    /// Fetches the partition map from any known node (seeds first).
    pub async fn refresh(&self) -> Result<v1::PartitionMap, Status> {
        let mut candidates = self.seeds.clone();
        {
            let map = self.map.lock().expect("map");
            for addr in map.nodes.values() {
                if !candidates.contains(addr) {
                    candidates.push(addr.clone());
                }
            }
        }
        let mut last = Status::unavailable("no node was tried");
        for addr in candidates {
            let mut client = LeaseholdClient::new(self.channel(&addr)?);
            let mut request = tonic::Request::new(GetPartitionMapRequest {});
            request.set_timeout(self.attempt_timeout);
            match client.get_partition_map(request).await {
                Ok(reply) => {
                    let reply = reply.into_inner();
                    self.install(&reply);
                    return Ok(reply);
                }
                Err(status) => last = status,
            }
        }
        Err(Status::unavailable(format!(
            "no node gave a partition map; last error: {}",
            last.message()
        )))
    }

    fn install(&self, fresh: &v1::PartitionMap) {
        let mut map = self.map.lock().expect("map");
        if fresh.epoch < map.epoch || fresh.partition_count == 0 {
            return;
        }
        let nodes: HashMap<u64, String> = fresh
            .nodes
            .iter()
            .map(|n| (n.node_id, n.grpc_address.clone()))
            .collect();
        let leaders = fresh
            .partitions
            .iter()
            .map(|p| nodes.get(&p.leader_node_id).cloned())
            .collect();
        *map = Map {
            epoch: fresh.epoch,
            partition_count: fresh.partition_count,
            leaders,
            nodes,
        };
    }

    /// The partition of `scope` and where to send it: its leader if known,
    /// else any node (which forwards).
    fn target(&self, scope: &str) -> Option<(u32, String, u64)> {
        let map = self.map.lock().expect("map");
        if map.partition_count == 0 {
            return None;
        }
        let partition = partition_of(scope, map.partition_count);
        let addr = map
            .leaders
            .get(partition as usize)
            .cloned()
            .flatten()
            .or_else(|| {
                let n = map.nodes.len().max(1);
                let mut ids: Vec<_> = map.nodes.keys().copied().collect();
                ids.sort_unstable();
                ids.get(partition as usize % n)
                    .and_then(|id| map.nodes.get(id).cloned())
            })
            .or_else(|| self.seeds.first().cloned())?;
        Some((partition, addr, map.epoch))
    }

    fn set_leader(&self, partition: u32, leader: Option<String>) {
        let mut map = self.map.lock().expect("map");
        if let Some(slot) = map.leaders.get_mut(partition as usize) {
            *slot = leader;
        }
    }

    fn learn(&self, partition: u32, served_by: &ServedBy) {
        let addr = {
            let map = self.map.lock().expect("map");
            if served_by.epoch > map.epoch {
                None
            } else {
                map.nodes.get(&served_by.leader_node_id).cloned()
            }
        };
        match addr {
            Some(addr) => self.set_leader(partition, Some(addr)),
            // A newer map exists: the next call refreshes it.
            None => self.set_leader(partition, None),
        }
    }

    /// One attempt at a call.
    pub async fn attempt<Req, Resp, F, Fut>(
        &self,
        scope: &str,
        request: Req,
        send: &F,
        deadline: Instant,
        wait: Duration,
    ) -> Result<Resp, Failure>
    where
        Resp: Served,
        F: Fn(LeaseholdClient<Channel>, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let Some((partition, addr, epoch)) = self.target(scope) else {
            self.refresh().await.map_err(Failure::Retry)?;
            return Err(Failure::Retry(Status::unavailable(
                "fetched the partition map",
            )));
        };
        let channel = self.channel(&addr).map_err(Failure::Final)?;
        let mut request = tonic::Request::new(request);
        let remaining = deadline.saturating_duration_since(Instant::now());
        request.set_timeout(remaining.min(self.attempt_timeout + wait));
        if let Ok(value) = epoch.to_string().parse() {
            request.metadata_mut().insert("leasehold-epoch", value);
        }
        match send(LeaseholdClient::new(channel), request).await {
            Ok(reply) => {
                let reply = reply.into_inner();
                if let Some(served_by) = reply.served_by() {
                    self.learn(partition, served_by);
                    if served_by.epoch > epoch {
                        // Best effort: a failure here only means the next
                        // call refreshes again.
                        let _ = self.refresh().await;
                    }
                }
                Ok(reply)
            }
            Err(status) => Err(self.classify(partition, status).await),
        }
    }

    async fn classify(&self, partition: u32, status: Status) -> Failure {
        match error_detail(&status) {
            Some(d) if d.code == "NOT_LEADER" => {
                let hint = (!d.leader_address.is_empty()).then(|| d.leader_address.clone());
                if hint.is_none() {
                    let _ = self.refresh().await;
                }
                self.set_leader(partition, hint);
                Failure::Retry(status)
            }
            Some(d) if d.code == "WRONG_EPOCH" => {
                self.set_leader(partition, None);
                let _ = self.refresh().await;
                Failure::Retry(status)
            }
            Some(_) => Failure::Final(status),
            None => match status.code() {
                // The node is gone or overloaded, or the attempt timed out
                // (a mutating call may have applied: the retry replays it).
                Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled => {
                    self.set_leader(partition, None);
                    let _ = self.refresh().await;
                    Failure::Retry(status)
                }
                _ => Failure::Final(status),
            },
        }
    }
}
