//! Leasehold as a local cluster of `leasehold serve` processes (fsync on,
//! as always), driven through the Rust client, which routes each call to
//! the leader of the group that owns its scope's hash slot.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use leasehold::auth;
use leasehold::client::{Acquire, Acquired, Client, ClientConfig};
use leasehold::proto::v1;
use leasehold::slot::SLOT_COUNT_DEFAULT;

use super::{Held, Outcome};
use crate::procs::{self, Proc, Scratch};
use crate::spec::{Constraint, Request};

/// How long a node may take to report every group it hosts led.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Nodes of every cluster the benchmark starts.
pub const NODES: u64 = 3;

/// How a cluster spreads scopes: `slots` hash slots over `groups` Raft
/// groups, fixed when the cluster is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// 0: one group per node, each node the preferred leader of one.
    pub groups: u32,
    pub slots: u32,
}

impl Layout {
    /// What `leasehold serve` gives a user who sets neither.
    pub const DEFAULT: Layout = Layout {
        groups: 0,
        slots: SLOT_COUNT_DEFAULT,
    };

    /// The same layout with the groups a cluster of `nodes` gets for 0.
    pub fn resolved(self, nodes: u64) -> Layout {
        Layout {
            groups: if self.groups == 0 {
                nodes as u32
            } else {
                self.groups
            },
            ..self
        }
    }
}

pub struct Node {
    pub node_id: u64,
    /// Client port.
    grpc: SocketAddr,
    http: SocketAddr,
    /// Peer port.
    peer: SocketAddr,
    pub data_dir: PathBuf,
    proc: Option<Proc>,
}

/// Counters of a cluster's nodes, summed.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RaftCounters {
    /// WAL syncs by the nodes' group-commit threads.
    pub wal_fsyncs: f64,
    /// Entries proposed by leaders (client batches and scavenger expiries).
    pub entries: f64,
    /// Commands those entries carried.
    pub commands: f64,
}

impl RaftCounters {
    pub fn since(self, before: RaftCounters) -> RaftCounters {
        RaftCounters {
            wal_fsyncs: self.wal_fsyncs - before.wal_fsyncs,
            entries: self.entries - before.entries,
            commands: self.commands - before.commands,
        }
    }
}

/// The sum of every sample of `name` (all label sets) in a Prometheus text
/// exposition.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let value = match rest.chars().next()? {
                ' ' => rest,
                '{' => &rest[rest.find('}')? + 1..],
                _ => return None,
            };
            value.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum()
}

/// What secures a cluster started with [`Cluster::start_secure`]: a CA in
/// the scratch directory, one certificate for every node's two ports, and
/// one token with every right.
struct Secure {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    tokens: PathBuf,
    token: String,
}

impl Secure {
    /// Makes the CA, certificate and token with `leasehold cert` and
    /// `leasehold token`.
    fn make(bin: &Path, dir: &Path) -> Result<Secure> {
        let dir_arg = dir.display().to_string();
        let run = |args: &[&str]| -> Result<String> {
            let out = Command::new(bin).args(args).output()?;
            anyhow::ensure!(
                out.status.success(),
                "leasehold {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(String::from_utf8(out.stdout)?)
        };
        run(&["cert", "ca", "--dir", &dir_arg])?;
        run(&[
            "cert",
            "issue",
            "--dir",
            &dir_arg,
            "--name",
            "node",
            "--host",
            "127.0.0.1",
        ])?;
        let tokens = dir.join("tokens.toml");
        std::fs::write(&tokens, auth::role_entry("all", "", &auth::Right::ALL))?;
        let tokens_arg = tokens.display().to_string();
        let token = run(&[
            "token",
            "new",
            "--name",
            "bench",
            "--role",
            "all",
            "--append",
            &tokens_arg,
        ])?;
        Ok(Secure {
            ca: dir.join("ca.pem"),
            cert: dir.join("node.pem"),
            key: dir.join("node-key.pem"),
            tokens,
            token: token.trim().to_string(),
        })
    }

    fn serve_args(&self, command: &mut Command) {
        command
            .arg("--tls-cert-file")
            .arg(&self.cert)
            .arg("--tls-key-file")
            .arg(&self.key)
            .arg("--peer-tls-cert-file")
            .arg(&self.cert)
            .arg("--peer-tls-key-file")
            .arg(&self.key)
            .arg("--peer-tls-ca-file")
            .arg(&self.ca)
            .arg("--auth-tokens-file")
            .arg(&self.tokens);
    }
}

/// A local cluster: one `serve` process per node, data and logs in a
/// scratch directory.
pub struct Cluster {
    bin: PathBuf,
    members: String,
    layout: Layout,
    /// TLS on both ports and tokens, when started secure.
    secure: Option<Secure>,
    pub nodes: Vec<Node>,
    /// Whether the client sends calls over session streams (the default)
    /// or as unary RPCs.
    pub streaming: bool,
    // Last: the processes go before their directory.
    scratch: Scratch,
}

impl Cluster {
    /// Starts `count` nodes with `layout`, replication factor 3, and waits
    /// until every node is ready.
    pub fn start(bin: &Path, count: u64, layout: Layout) -> Result<Cluster> {
        Cluster::start_with(bin, count, layout, false)
    }

    /// As [`Cluster::start`], with TLS on the client port, mutual TLS
    /// between nodes and a token on every call.
    pub fn start_secure(bin: &Path, count: u64, layout: Layout) -> Result<Cluster> {
        Cluster::start_with(bin, count, layout, true)
    }

    fn start_with(bin: &Path, count: u64, layout: Layout, secure: bool) -> Result<Cluster> {
        let scratch = Scratch::new("leasehold")?;
        let secure = match secure {
            true => Some(Secure::make(bin, scratch.path())?),
            false => None,
        };
        let ports = procs::free_ports(3 * count as usize)?;
        let nodes: Vec<Node> = (0..count as usize)
            .map(|i| Node {
                node_id: i as u64 + 1,
                grpc: SocketAddr::from(([127, 0, 0, 1], ports[3 * i])),
                http: SocketAddr::from(([127, 0, 0, 1], ports[3 * i + 1])),
                peer: SocketAddr::from(([127, 0, 0, 1], ports[3 * i + 2])),
                data_dir: scratch.path().join(format!("node-{}", i + 1)),
                proc: None,
            })
            .collect();
        let members = nodes
            .iter()
            .map(|n| format!("{}={}/{}", n.node_id, n.grpc, n.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Cluster {
            bin: bin.to_path_buf(),
            members,
            layout,
            secure,
            nodes,
            streaming: true,
            scratch,
        };
        for node_id in 1..=count {
            cluster.spawn(node_id)?;
        }
        cluster.wait_ready()?;
        Ok(cluster)
    }

    /// The slots and groups the cluster was created with, 0 groups resolved.
    pub fn layout(&self) -> Layout {
        self.layout.resolved(self.nodes.len() as u64)
    }

    fn node(&mut self, node_id: u64) -> &mut Node {
        &mut self.nodes[node_id as usize - 1]
    }

    fn spawn(&mut self, node_id: u64) -> Result<()> {
        let (bin, members, layout) = (self.bin.clone(), self.members.clone(), self.layout);
        let log = self.scratch.path().join(format!("node-{node_id}.log"));
        let mut command = Command::new(&bin);
        command.arg("serve");
        if let Some(secure) = &self.secure {
            secure.serve_args(&mut command);
        }
        let node = self.node(node_id);
        std::fs::create_dir_all(&node.data_dir)?;
        command
            .args(["--node-id", &node_id.to_string()])
            .args(["--grpc-addr", &node.grpc.to_string()])
            .args(["--peer-addr", &node.peer.to_string()])
            .args(["--advertise-addr", &node.grpc.to_string()])
            .args(["--http-addr", &node.http.to_string()])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(["--members", &members])
            .args(["--groups", &layout.groups.to_string()])
            .args(["--slots", &layout.slots.to_string()])
            .args(["--replication-factor", "3"])
            .env("RUST_LOG", "warn");
        node.proc = Some(Proc::spawn(
            &format!("leasehold node {node_id}"),
            &mut command,
            &log,
        )?);
        Ok(())
    }

    /// Waits until every running node answers /ready with 200.
    pub fn wait_ready(&mut self) -> Result<()> {
        let addrs: Vec<SocketAddr> = self
            .nodes
            .iter()
            .filter(|n| n.proc.is_some())
            .map(|n| n.http)
            .collect();
        let mut procs: Vec<&mut Proc> = self
            .nodes
            .iter_mut()
            .filter_map(|n| n.proc.as_mut())
            .collect();
        procs::wait_http_ok(&mut procs, &addrs, "/ready", READY_TIMEOUT)
            .context("waiting for the Leasehold cluster to be ready")
    }

    /// kill -9 of one node.
    pub fn kill(&mut self, node_id: u64) {
        if let Some(mut p) = self.node(node_id).proc.take() {
            p.kill();
        }
    }

    /// Starts a killed node again on its data and waits for readiness.
    pub fn restart(&mut self, node_id: u64) -> Result<()> {
        self.spawn(node_id)?;
        self.wait_ready()
    }

    pub fn seeds(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.grpc.to_string()).collect()
    }

    /// What the nodes' /metrics count so far, summed over the nodes; None
    /// if a node does not answer.
    pub fn raft_counters(&self) -> Option<RaftCounters> {
        let mut sum = RaftCounters::default();
        for node in self.nodes.iter().filter(|n| n.proc.is_some()) {
            let text = procs::http_get(node.http, "/metrics")?;
            sum.wal_fsyncs += metric(&text, "leasehold_wal_fsyncs");
            sum.entries += metric(&text, "leasehold_batch_commands_count");
            sum.commands += metric(&text, "leasehold_batch_commands_sum");
        }
        Some(sum)
    }

    pub fn pids(&self) -> Vec<u32> {
        self.nodes
            .iter()
            .filter_map(|n| n.proc.as_ref().map(Proc::pid))
            .collect()
    }

    /// SIGTERM to every node, SIGKILL after the grace.
    pub fn stop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut p) = node.proc.take() {
                p.stop(Duration::from_secs(15));
            }
        }
    }

    /// A client with deadlines long enough for the wait workload.
    pub async fn client(&self) -> Result<Client> {
        let mut config = ClientConfig::new(self.seeds());
        config.call_timeout = Duration::from_secs(10);
        // An attempt must outlive a waiting acquire's wait.
        config.attempt_timeout = Duration::from_secs(5);
        config.max_in_flight = 1 << 20;
        config.streaming = self.streaming;
        if let Some(secure) = &self.secure {
            config.tls = Some(leasehold::client::ClientTls::new(&secure.ca));
            config.token = Some(secure.token.clone());
        }
        Client::connect(config)
            .await
            .context("connecting to the Leasehold cluster")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Every call of a run goes through one client: its HTTP/2 channel per node
/// is shared by all callers.
#[derive(Clone)]
pub struct Conn {
    pub client: Client,
}

impl Conn {
    pub async fn acquire(&self, request: &Request, idempotency_key: &str) -> Result<Outcome> {
        let mut acquire = Acquire::new(request.scope.clone())
            .ttl(Duration::from_millis(request.ttl_ms))
            .idempotency_key(idempotency_key);
        for c in &request.constraints {
            acquire = match c {
                Constraint::Concurrency { key, limit } => acquire.concurrency(key.clone(), *limit),
                Constraint::Throttle {
                    key,
                    limit,
                    period_ms,
                    burst,
                } => acquire.throttle(key.clone(), *limit, *period_ms, *burst),
            };
        }
        if let Some(wait_ms) = request.wait_ms {
            acquire = acquire.wait(Duration::from_millis(wait_ms));
        }
        Ok(match self.client.acquire(acquire).await? {
            Acquired::Granted(lease) => {
                let lease_id = lease.lease_id();
                // Released by id (with our own idempotency key), not on drop.
                lease.detach();
                Outcome::Granted(Held {
                    scope: request.scope.clone(),
                    lease_id,
                    holders: Vec::new(),
                })
            }
            Acquired::Denied(denial) => Outcome::Denied {
                retry_after_ms: denial.retry_after_ms,
            },
        })
    }

    pub async fn release(&self, held: &Held, idempotency_key: &str) -> Result<bool> {
        let reply = self
            .client
            .release(v1::ReleaseRequest {
                scope: held.scope.clone(),
                lease_id: held.lease_id,
                idempotency_key: idempotency_key.to_string(),
            })
            .await?;
        Ok(reply.was_held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layout_of_no_groups_resolves_to_one_group_per_node() {
        assert_eq!(
            Layout::DEFAULT.resolved(3),
            Layout {
                groups: 3,
                slots: 1024
            }
        );
        let six = Layout {
            groups: 6,
            slots: 256,
        };
        assert_eq!(six.resolved(3), six);
    }

    #[test]
    fn a_metric_sums_its_label_sets_and_no_longer_name() {
        let text = "# TYPE leasehold_wal_fsyncs gauge\n\
                    leasehold_wal_fsyncs 12\n\
                    leasehold_wal_fsyncs_total 99\n\
                    leasehold_batch_commands_sum{group=\"1\"} 30\n\
                    leasehold_batch_commands_sum{group=\"2\"} 12.5\n";
        assert_eq!(metric(text, "leasehold_wal_fsyncs"), 12.0);
        assert_eq!(metric(text, "leasehold_batch_commands_sum"), 42.5);
        assert_eq!(metric(text, "leasehold_batch_commands_count"), 0.0);
    }
}
