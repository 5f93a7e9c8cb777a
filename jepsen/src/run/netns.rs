//! The fallback backend where Docker is missing: one network namespace
//! per node, each joined to a bridge by a veth pair, running the same
//! binary as a child process of this harness.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::process::Stdio;

use anyhow::{Context, Result};
use tokio::process::{Child, Command};

use super::cluster::{sh, ClusterSpec, Node};
use super::schedule::NodeId;

const BRIDGE: &str = "lhj-br0";
/// Namespaces of an earlier run that did not clean up are removed first;
/// no run has more nodes than this.
const NODES_MAX: u64 = 9;

pub struct Netns {
    binary: String,
    args: BTreeMap<NodeId, Vec<String>>,
    children: BTreeMap<NodeId, Child>,
}

impl Netns {
    pub const SUBNET: [u8; 3] = [10, 213, 8];

    /// Removes leftovers, then creates the bridge and one namespace per
    /// node with its address.
    pub async fn prepare(spec: &ClusterSpec) -> Result<Netns> {
        remove_leftovers().await;
        let [a, b, c] = Netns::SUBNET;
        sh("ip", &["link", "add", BRIDGE, "type", "bridge"])
            .await
            .context("network namespaces need root and iproute2")?;
        sh(
            "ip",
            &["addr", "add", &format!("{a}.{b}.{c}.1/24"), "dev", BRIDGE],
        )
        .await?;
        sh("ip", &["link", "set", BRIDGE, "up"]).await?;
        // Where br_netfilter is loaded (Docker loads it), bridged frames
        // pass the host's FORWARD chain, whose policy may be DROP.
        let _ = sh(
            "iptables",
            &["-w", "-I", "FORWARD", "-i", BRIDGE, "-j", "ACCEPT"],
        )
        .await;
        for id in 1..=spec.nodes {
            let ns = namespace(id);
            let veth = format!("lhj-v{id}");
            let addr = format!("{a}.{b}.{c}.{}/24", 10 + id);
            sh("ip", &["netns", "add", &ns]).await?;
            sh(
                "ip",
                &[
                    "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
                ],
            )
            .await?;
            sh("ip", &["link", "set", &veth, "master", BRIDGE, "up"]).await?;
            sh("ip", &["-n", &ns, "addr", "add", &addr, "dev", "eth0"]).await?;
            sh("ip", &["-n", &ns, "link", "set", "eth0", "up"]).await?;
            sh("ip", &["-n", &ns, "link", "set", "lo", "up"]).await?;
        }
        let binary = spec
            .binary
            .to_str()
            .context("binary path is not UTF-8")?
            .to_string();
        Ok(Netns {
            binary,
            args: BTreeMap::new(),
            children: BTreeMap::new(),
        })
    }

    pub async fn create(&mut self, node: &Node, args: &[String]) -> Result<()> {
        self.args.insert(node.id, args.to_vec());
        self.restart(node).await
    }

    pub async fn restart(&mut self, node: &Node) -> Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.dir.join("log"))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &namespace(node.id), &self.binary])
            .args(&self.args[&node.id])
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting n{}", node.id))?;
        self.children.insert(node.id, child);
        Ok(())
    }

    pub async fn kill(&mut self, id: NodeId) -> Result<()> {
        if let Some(mut child) = self.children.remove(&id) {
            child.start_kill()?;
            child.wait().await?;
        }
        Ok(())
    }

    /// The node's exit status (128 + the signal if one ended it), or
    /// `None` while it runs.
    pub fn exit_status(&mut self, id: NodeId) -> Result<Option<i32>> {
        use std::os::unix::process::ExitStatusExt;
        let child = self
            .children
            .get_mut(&id)
            .with_context(|| format!("n{id} was never started"))?;
        Ok(child
            .try_wait()?
            .map(|s| s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))))
    }

    pub fn signal(&mut self, id: NodeId, signal: libc::c_int) -> Result<()> {
        let pid = self
            .children
            .get(&id)
            .and_then(Child::id)
            .with_context(|| format!("n{id} is not running"))?;
        // `ip netns exec` execs the binary, so this pid is the node itself.
        // SAFETY: kill(2) takes plain integers and touches no memory; the
        // child is not reaped until `kill` or `teardown` waits for it.
        let rc = unsafe { libc::kill(pid as libc::pid_t, signal) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context(format!("signalling n{id}"));
        }
        Ok(())
    }

    pub async fn iptables(&self, id: NodeId, args: &[&str]) -> Result<()> {
        let ns = namespace(id);
        let mut command = vec!["netns", "exec", &ns, "iptables", "-w"];
        command.extend_from_slice(args);
        sh("ip", &command).await?;
        Ok(())
    }

    pub async fn teardown(&mut self, _nodes: &[Node]) -> Result<()> {
        let ids: Vec<NodeId> = self.children.keys().copied().collect();
        for id in ids {
            // A stopped process dies of SIGKILL all the same.
            self.kill(id).await?;
        }
        remove_leftovers().await;
        Ok(())
    }
}

fn namespace(id: NodeId) -> String {
    format!("lhj-n{id}")
}

async fn remove_leftovers() {
    for id in 1..=NODES_MAX {
        let ns = namespace(id);
        // Deleting a namespace does not end the processes inside it.
        if let Ok(pids) = sh("ip", &["netns", "pids", &ns]).await {
            for pid in pids.split_whitespace() {
                let _ = sh("kill", &["-KILL", pid]).await;
            }
        }
        let _ = sh("ip", &["netns", "del", &ns]).await;
    }
    let _ = sh("ip", &["link", "del", BRIDGE]).await;
    while sh(
        "iptables",
        &["-w", "-D", "FORWARD", "-i", BRIDGE, "-j", "ACCEPT"],
    )
    .await
    .is_ok()
    {}
}
