//! The cluster under test: one `leasehold serve` per host, each host with
//! its own address, on one of two backends — Docker containers on a
//! private network (preferred), or network namespaces joined by a bridge
//! where Docker is missing. Either way a node keeps its data directory,
//! its clock file and its storage fault file in a host directory, so a
//! killed node restarts on the data it had.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use leasehold::auth;

use super::docker::Docker;
use super::netns::Netns;
use super::schedule::NodeId;

/// How often [`Cluster::wait_exit`] looks.
const EXIT_POLL: Duration = Duration::from_millis(100);

/// Every node serves clients (gRPC), its peers (gRPC) and HTTP on these
/// ports of its own address. Partitions drop by source address, so they
/// cut both gRPC planes alike.
pub const GRPC_PORT: u16 = 7070;
pub const PEER_PORT: u16 = 7071;
pub const HTTP_PORT: u16 = 7080;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    /// Docker if the daemon answers, else network namespaces.
    Auto,
    Docker,
    Netns,
}

/// What every node is started with.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    pub nodes: u64,
    /// Data groups; 0 = one per node.
    pub groups: u32,
    /// Hash slots, fixed when the cluster is created.
    pub slots: u32,
    pub binary: PathBuf,
    /// Host directory under which node i keeps `n<i>/data`, `n<i>/clock`
    /// and, on the namespace backend, `n<i>/log`.
    pub dir: PathBuf,
    /// TLS on both ports and tokens, made for the run by `leasehold cert`
    /// and `leasehold token`; without it the nodes run `--insecure`.
    pub tls: bool,
}

/// What a run with `--tls` made: the CA the harness trusts and the token
/// it calls with. Every node has a copy of the CA, its certificate (valid
/// for every node's address) and the tokens file in `n<i>/tls/`.
#[derive(Clone, Debug)]
pub struct Creds {
    pub ca: PathBuf,
    pub token: String,
}

impl Creds {
    /// Files every node reads, in `tls/` of its directory.
    const FILES: [&'static str; 4] = ["ca.pem", "node.pem", "node-key.pem", "tokens.toml"];

    async fn make(binary: &Path, dir: &Path, nodes: &[Node]) -> Result<Creds> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let bin = binary.display().to_string();
        let d = dir.display().to_string();
        let hosts: Vec<String> = nodes.iter().map(|n| n.ip.to_string()).collect();
        sh(&bin, &["cert", "ca", "--dir", &d]).await?;
        sh(
            &bin,
            &[
                "cert",
                "issue",
                "--dir",
                &d,
                "--name",
                "node",
                "--host",
                &hosts.join(","),
            ],
        )
        .await?;
        let tokens = dir.join("tokens.toml");
        std::fs::write(&tokens, auth::role_entry("harness", "", &auth::Right::ALL))?;
        let t = tokens.display().to_string();
        let token = sh(
            &bin,
            &[
                "token", "new", "--name", "harness", "--role", "harness", "--append", &t,
            ],
        )
        .await?;
        for node in nodes {
            let theirs = node.dir.join("tls");
            std::fs::create_dir_all(&theirs)?;
            for file in Creds::FILES {
                std::fs::copy(dir.join(file), theirs.join(file))
                    .with_context(|| format!("copying {file} for n{}", node.id))?;
            }
        }
        Ok(Creds {
            ca: dir.join("ca.pem"),
            token: token.trim().to_string(),
        })
    }
}

#[derive(Clone, Debug)]
pub struct Node {
    pub id: NodeId,
    pub ip: Ipv4Addr,
    /// This node's host directory.
    pub dir: PathBuf,
}

impl Node {
    pub fn grpc_addr(&self) -> String {
        format!("{}:{GRPC_PORT}", self.ip)
    }

    pub fn peer_addr(&self) -> String {
        format!("{}:{PEER_PORT}", self.ip)
    }

    pub fn http_addr(&self) -> String {
        format!("{}:{HTTP_PORT}", self.ip)
    }

    /// The clock file on the host.
    pub fn clock_file(&self) -> PathBuf {
        self.dir.join("clock")
    }

    /// The storage fault file on the host.
    pub fn storage_fault_file(&self) -> PathBuf {
        self.dir.join("storage-faults")
    }
}

enum Backend {
    Docker(Docker),
    Netns(Netns),
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    backend: Backend,
    /// The run's CA and token, with `--tls`.
    pub creds: Option<Creds>,
}

impl Cluster {
    /// Starts every node on the backend chosen; says on stdout which one
    /// and why.
    pub async fn start(spec: &ClusterSpec, choice: BackendChoice) -> Result<Cluster> {
        let backend = match choice {
            BackendChoice::Docker => Backend::Docker(Docker::prepare(spec).await?),
            BackendChoice::Netns => Backend::Netns(Netns::prepare(spec).await?),
            BackendChoice::Auto => match Docker::unavailable().await {
                None => Backend::Docker(Docker::prepare(spec).await?),
                Some(why) => {
                    println!("FALLBACK: Docker is unavailable ({why}); using network namespaces");
                    let netns = Netns::prepare(spec).await.with_context(|| {
                        format!(
                            "UNAVAILABLE: neither Docker ({why}) nor network namespaces \
                             can host the nodes"
                        )
                    })?;
                    Backend::Netns(netns)
                }
            },
        };
        let subnet = match &backend {
            Backend::Docker(_) => Docker::SUBNET,
            Backend::Netns(_) => Netns::SUBNET,
        };
        let nodes: Vec<Node> = (1..=spec.nodes)
            .map(|id| Node {
                id,
                ip: node_ip(subnet, id),
                dir: spec.dir.join(format!("n{id}")),
            })
            .collect();
        for node in &nodes {
            std::fs::create_dir_all(node.dir.join("data"))
                .with_context(|| format!("creating {}", node.dir.display()))?;
            // A clock or fault file left from an earlier run would skew
            // or break this one.
            let _ = std::fs::remove_file(node.clock_file());
            let _ = std::fs::remove_file(node.storage_fault_file());
        }
        let creds = match spec.tls {
            true => Some(Creds::make(&spec.binary, &spec.dir.join("tls"), &nodes).await?),
            false => None,
        };
        let mut cluster = Cluster {
            nodes,
            backend,
            creds,
        };
        let members = cluster.members();
        for node in cluster.nodes.clone() {
            let args = serve_args(&node, &members, spec, cluster.node_root(&node));
            match &mut cluster.backend {
                Backend::Docker(d) => d.create(&node, &args).await?,
                Backend::Netns(n) => n.create(&node, &args).await?,
            }
        }
        Ok(cluster)
    }

    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Docker(_) => "docker",
            Backend::Netns(_) => "netns",
        }
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    pub fn node(&self, id: NodeId) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node n{id}"))
    }

    fn members(&self) -> String {
        let members: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("{}={}/{}", n.id, n.grpc_addr(), n.peer_addr()))
            .collect();
        members.join(",")
    }

    /// Where the node sees its host directory.
    fn node_root(&self, node: &Node) -> PathBuf {
        match self.backend {
            Backend::Docker(_) => PathBuf::from(Docker::NODE_ROOT),
            Backend::Netns(_) => node.dir.clone(),
        }
    }

    /// SIGKILL: nothing is flushed, nothing handed over.
    pub async fn kill(&mut self, id: NodeId) -> Result<()> {
        match &mut self.backend {
            Backend::Docker(d) => d.kill(id).await,
            Backend::Netns(n) => n.kill(id).await,
        }
    }

    /// Starts a node that was killed, on its old data.
    pub async fn restart(&mut self, id: NodeId) -> Result<()> {
        let node = self.node(id).clone();
        match &mut self.backend {
            Backend::Docker(d) => d.restart(id).await,
            Backend::Netns(n) => n.restart(&node).await,
        }
    }

    /// How the node's process ended, or `None` while it runs.
    pub async fn exit_status(&mut self, id: NodeId) -> Result<Option<i32>> {
        match &mut self.backend {
            Backend::Docker(d) => d.exit_status(id).await,
            Backend::Netns(n) => n.exit_status(id),
        }
    }

    /// Waits up to `limit` for the node's process to end; its exit status,
    /// or `None` if it still runs.
    pub async fn wait_exit(&mut self, id: NodeId, limit: Duration) -> Result<Option<i32>> {
        let until = Instant::now() + limit;
        loop {
            let status = self.exit_status(id).await?;
            if status.is_some() || Instant::now() >= until {
                return Ok(status);
            }
            tokio::time::sleep(EXIT_POLL).await;
        }
    }

    /// SIGSTOP (the freezer cgroup under Docker).
    pub async fn pause(&mut self, id: NodeId) -> Result<()> {
        match &mut self.backend {
            Backend::Docker(d) => d.pause(id).await,
            Backend::Netns(n) => n.signal(id, libc::SIGSTOP),
        }
    }

    pub async fn resume(&mut self, id: NodeId) -> Result<()> {
        match &mut self.backend {
            Backend::Docker(d) => d.unpause(id).await,
            Backend::Netns(n) => n.signal(id, libc::SIGCONT),
        }
    }

    /// Runs `iptables -w <args>` in the node's network namespace. A node
    /// whose namespace is gone (killed) has no rules to change.
    pub async fn iptables(&self, id: NodeId, args: &[&str]) -> Result<()> {
        match &self.backend {
            Backend::Docker(d) => d.iptables(id, args).await,
            Backend::Netns(n) => n.iptables(id, args).await,
        }
    }

    /// Stops every node, keeps their logs in their directories and removes
    /// what the backend created (containers, network, namespaces).
    pub async fn teardown(&mut self) -> Result<()> {
        let nodes = self.nodes.clone();
        match &mut self.backend {
            Backend::Docker(d) => d.teardown(&nodes).await,
            Backend::Netns(n) => n.teardown(&nodes).await,
        }
    }
}

fn node_ip(subnet: [u8; 3], id: NodeId) -> Ipv4Addr {
    let host = u8::try_from(10 + id).expect("at most a few nodes");
    Ipv4Addr::new(subnet[0], subnet[1], subnet[2], host)
}

/// `serve` flags of one node; `root` is the node's host directory as the
/// node sees it.
fn serve_args(node: &Node, members: &str, spec: &ClusterSpec, root: PathBuf) -> Vec<String> {
    let mut args = vec![
        "serve".into(),
        format!("--node-id={}", node.id),
        format!("--grpc-addr=0.0.0.0:{GRPC_PORT}"),
        format!("--peer-addr=0.0.0.0:{PEER_PORT}"),
        format!("--advertise-addr={}", node.grpc_addr()),
        format!("--http-addr=0.0.0.0:{HTTP_PORT}"),
        format!("--data-dir={}", root.join("data").display()),
        format!("--members={members}"),
        format!("--groups={}", spec.groups),
        format!("--slots={}", spec.slots),
        format!("--unsafe-test-clock={}", root.join("clock").display()),
        format!(
            "--unsafe-test-storage-faults={}",
            root.join("storage-faults").display()
        ),
    ];
    if spec.tls {
        let tls = root.join("tls");
        let file = |name: &str| tls.join(name).display().to_string();
        args.extend([
            format!("--tls-cert-file={}", file("node.pem")),
            format!("--tls-key-file={}", file("node-key.pem")),
            format!("--peer-tls-cert-file={}", file("node.pem")),
            format!("--peer-tls-key-file={}", file("node-key.pem")),
            format!("--peer-tls-ca-file={}", file("ca.pem")),
            format!("--auth-tokens-file={}", file("tokens.toml")),
        ]);
    } else {
        // A private network the run alone uses: the ports are open to the
        // harness and its nemesis only.
        args.push("--insecure".into());
    }
    args
}

/// Runs a command to completion; its stdout, or an error with its stderr.
pub async fn sh(program: &str, args: &[&str]) -> Result<String> {
    let output = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {program}"))?;
    if !output.status.success() {
        bail!(
            "{program} {}: {}: {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// Writes `text` to `path` by renaming a sibling, so a reader sees the
/// old content or the new, never half.
pub fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}
