//! The Docker backend: one container per node on a private bridge network
//! with fixed addresses, from an image built here out of the release
//! binary and the shared libraries it links (no registry is needed).

use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, Result};

use super::cluster::{sh, ClusterSpec, Node};
use super::schedule::NodeId;

const IMAGE: &str = "leasehold-jepsen:latest";
const NETWORK: &str = "lhj-net";
/// The image label that names the binary it was built from.
const BINARY_LABEL: &str = "leasehold.binary";
/// Containers of an earlier run that did not clean up are removed first;
/// no run has more nodes than this.
const NODES_MAX: u64 = 9;
/// How long a SIGKILLed container may take to be reported stopped.
const STOP_WAIT: Duration = Duration::from_secs(10);

pub struct Docker;

impl Docker {
    pub const SUBNET: [u8; 3] = [10, 213, 7];
    /// Where a container sees its node's host directory.
    pub const NODE_ROOT: &'static str = "/node";

    /// `None` when the daemon answers, else why not.
    pub async fn unavailable() -> Option<String> {
        match sh("docker", &["info", "--format", "{{.ServerVersion}}"]).await {
            Ok(_) => None,
            Err(error) => Some(format!("{error:#}")),
        }
    }

    /// Removes leftovers of an earlier run, builds the image if the binary
    /// changed, and creates the network.
    pub async fn prepare(spec: &ClusterSpec) -> Result<Docker> {
        remove_leftovers().await;
        build_image(&spec.binary, &spec.dir).await?;
        let [a, b, c] = Docker::SUBNET;
        sh(
            "docker",
            &[
                "network",
                "create",
                "--driver=bridge",
                &format!("--subnet={a}.{b}.{c}.0/24"),
                &format!("--gateway={a}.{b}.{c}.1"),
                NETWORK,
            ],
        )
        .await?;
        Ok(Docker)
    }

    pub async fn create(&mut self, node: &Node, args: &[String]) -> Result<()> {
        let name = container(node.id);
        let hostname = format!("n{}", node.id);
        let ip = node.ip.to_string();
        let mount = format!("{}:{}", node.dir.display(), Docker::NODE_ROOT);
        let mut run = vec![
            "run",
            "--detach",
            "--name",
            &name,
            "--hostname",
            &hostname,
            "--network",
            NETWORK,
            "--ip",
            &ip,
            "--volume",
            &mount,
            "--env",
            "RUST_LOG=info,openraft=warn",
            IMAGE,
        ];
        run.extend(args.iter().map(String::as_str));
        sh("docker", &run).await?;
        Ok(())
    }

    pub async fn kill(&mut self, id: NodeId) -> Result<()> {
        let name = container(id);
        sh("docker", &["kill", "--signal=KILL", &name]).await?;
        // `docker start` of a container still being stopped does nothing.
        tokio::time::timeout(STOP_WAIT, sh("docker", &["wait", &name]))
            .await
            .with_context(|| format!("{name} still running {STOP_WAIT:?} after SIGKILL"))??;
        Ok(())
    }

    pub async fn restart(&mut self, id: NodeId) -> Result<()> {
        sh("docker", &["start", &container(id)]).await?;
        Ok(())
    }

    /// The container's exit code, or `None` while it runs.
    pub async fn exit_status(&self, id: NodeId) -> Result<Option<i32>> {
        let state = sh(
            "docker",
            &[
                "inspect",
                "--format",
                "{{.State.Running}} {{.State.ExitCode}}",
                &container(id),
            ],
        )
        .await?;
        match state.split_once(' ') {
            Some(("true", _)) => Ok(None),
            Some((_, code)) => {
                Ok(Some(code.parse().with_context(|| {
                    format!("exit code of {}: {state}", container(id))
                })?))
            }
            None => anyhow::bail!("state of {}: {state}", container(id)),
        }
    }

    pub async fn pause(&mut self, id: NodeId) -> Result<()> {
        sh("docker", &["pause", &container(id)]).await?;
        Ok(())
    }

    pub async fn unpause(&mut self, id: NodeId) -> Result<()> {
        sh("docker", &["unpause", &container(id)]).await?;
        Ok(())
    }

    pub async fn iptables(&self, id: NodeId, args: &[&str]) -> Result<()> {
        let pid = sh(
            "docker",
            &["inspect", "--format", "{{.State.Pid}}", &container(id)],
        )
        .await?;
        if pid == "0" {
            return Ok(());
        }
        let mut command = vec!["-t", &pid, "-n", "iptables", "-w"];
        command.extend_from_slice(args);
        sh("nsenter", &command).await?;
        Ok(())
    }

    pub async fn teardown(&mut self, nodes: &[Node]) -> Result<()> {
        for node in nodes {
            let name = container(node.id);
            let logs = tokio::process::Command::new("docker")
                .args(["logs", &name])
                .output()
                .await;
            if let Ok(logs) = logs {
                let mut text = logs.stdout;
                text.extend_from_slice(&logs.stderr);
                let _ = std::fs::write(node.dir.join("log"), text);
            }
        }
        remove_leftovers().await;
        Ok(())
    }
}

fn container(id: NodeId) -> String {
    format!("lhj-n{id}")
}

async fn remove_leftovers() {
    for id in 1..=NODES_MAX {
        let _ = sh("docker", &["rm", "--force", &container(id)]).await;
    }
    let _ = sh("docker", &["network", "rm", NETWORK]).await;
}

/// Builds `leasehold-jepsen:latest` FROM scratch: the binary, the shared
/// libraries `ldd` names and the dynamic loader. Skipped when the image
/// was built from this very binary (same size and modification time).
async fn build_image(binary: &Path, scratch: &Path) -> Result<()> {
    let meta = std::fs::metadata(binary)
        .with_context(|| format!("the leasehold binary {}", binary.display()))?;
    let modified = meta
        .modified()?
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let fingerprint = format!("{}-{modified}", meta.len());
    let built = sh(
        "docker",
        &[
            "image",
            "inspect",
            "--format",
            &format!("{{{{index .Config.Labels \"{BINARY_LABEL}\"}}}}"),
            IMAGE,
        ],
    )
    .await;
    if built.is_ok_and(|label| label == fingerprint) {
        return Ok(());
    }
    let context = scratch.join("image-context");
    let _ = std::fs::remove_dir_all(&context);
    let rootfs = context.join("rootfs");
    std::fs::create_dir_all(rootfs.join("tmp"))?;
    std::fs::copy(binary, rootfs.join("leasehold"))
        .with_context(|| format!("copying {}", binary.display()))?;
    let binary_str = binary.to_str().context("binary path is not UTF-8")?;
    for library in shared_libraries(&sh("ldd", &[binary_str]).await?) {
        let target = rootfs.join(library.strip_prefix("/").unwrap_or(&library));
        std::fs::create_dir_all(target.parent().expect("a library path has a parent"))?;
        std::fs::copy(&library, &target)
            .with_context(|| format!("copying {}", library.display()))?;
    }
    std::fs::write(
        context.join("Dockerfile"),
        format!(
            "FROM scratch\nCOPY rootfs/ /\nLABEL {BINARY_LABEL}=\"{fingerprint}\"\n\
             ENTRYPOINT [\"/leasehold\"]\n"
        ),
    )?;
    let context_str = context.to_str().context("scratch path is not UTF-8")?;
    sh("docker", &["build", "--quiet", "--tag", IMAGE, context_str]).await?;
    std::fs::remove_dir_all(&context)?;
    Ok(())
}

/// The absolute paths in `ldd` output: `libx.so => /path (0x...)` and the
/// loader's `/lib64/ld-linux-x86-64.so.2 (0x...)`.
fn shared_libraries(ldd: &str) -> Vec<PathBuf> {
    ldd.lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_names_libraries_and_loader() {
        let ldd = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibstdc++.so.6 => /lib/x86_64-linux-gnu/libstdc++.so.6 (0x00007f)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            shared_libraries(ldd),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libstdc++.so.6"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }
}
