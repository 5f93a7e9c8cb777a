//! The `leasehold` binary: `serve` runs one node, `cluster` runs a local
//! cluster of `serve` child processes for development, and the client
//! subcommands ([`cli`]) let an operator acquire, inspect and survey.

mod cli;

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitCode, ExitStatus, Stdio};

use clap::{Args, Parser, Subcommand};
use leasehold::config::{Config, NodeId, ServeArgs};
use leasehold::server::{ServerError, EXIT_STORAGE_FAULT};
use tokio::process::{Child, Command as ChildCommand};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{mpsc, watch};
use tracing_subscriber::EnvFilter;

/// Exit code of a configuration that cannot be used.
const EXIT_CONFIG: u8 = 2;

#[derive(Parser)]
#[command(
    name = "leasehold",
    version,
    about = "Replicated flow control: capacity leases over Raft",
    after_help = cli::EXIT_CODES_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one node (flags > LEASEHOLD_* environment > --config file > defaults)
    Serve(Box<ServeArgs>),
    /// Run a local cluster of `serve` processes on 127.0.0.1, for development
    Cluster(ClusterArgs),
    #[command(flatten)]
    Client(Box<cli::Command>),
    /// Make a development CA and certificates signed by it
    #[command(subcommand)]
    Cert(cli::creds::CertCommand),
    /// Make bearer tokens for a tokens file
    #[command(subcommand)]
    Token(cli::creds::TokenCommand),
}

#[derive(Args)]
struct ClusterArgs {
    /// Number of nodes, 1..=7
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=NODES_MAX))]
    nodes: u64,
    /// Client gRPC port of node 1; node i serves clients on P+i-1, HTTP on P+10+i-1 and peers on P+20+i-1
    #[arg(long, value_name = "P", default_value_t = 7070, value_parser = clap::value_parser!(u16).range(1..=BASE_PORT_MAX))]
    base_port: u16,
    /// Directory under which node i keeps its data, in node-i
    #[arg(long, value_name = "DIR", default_value = "./leasehold-cluster")]
    data_dir: PathBuf,
    /// Hash slots, 1..=65536 [default: serve's]
    #[arg(long, value_name = "N")]
    slots: Option<u32>,
    /// Data groups the slots are spread over, 0..=1024; 0 = one per node [default: serve's]
    #[arg(long, value_name = "N")]
    groups: Option<u32>,
    /// Further `serve` flags, given to every node
    #[arg(last = true, value_name = "SERVE FLAGS")]
    serve_flags: Vec<String>,
}

const NODES_MAX: u64 = 7;
/// Node i's HTTP port is this far above its client port, clear of every
/// node's client port.
const HTTP_PORT_OFFSET: u16 = 10;
/// Node i's peer port is this far above its client port, clear of every
/// node's client and HTTP ports.
const PEER_PORT_OFFSET: u16 = 20;
const BASE_PORT_MAX: i64 = (u16::MAX - PEER_PORT_OFFSET - NODES_MAX as u16) as i64;

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve(args) => serve(*args),
        Command::Cluster(args) => cluster(args),
        Command::Client(command) => cli::run(*command),
        Command::Cert(command) => cli::creds::cert(command),
        Command::Token(command) => cli::creds::token(command),
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let config = match Config::resolve(args) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("leasehold: config: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_tracing();
    if let Some(path) = &config.unsafe_test_clock {
        tracing::warn!(path = %path.display(), "UNSAFE: following a test clock file; for chaos testing only");
        if let Err(error) = leasehold::server::clock::follow_test_clock(path) {
            eprintln!("leasehold: unsafe_test_clock: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("leasehold: starting the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(leasehold::server::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("leasehold: {error}");
            match error {
                ServerError::Storage(_) => ExitCode::from(EXIT_STORAGE_FAULT),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

/// Logs to stderr at `info`, or as `RUST_LOG` says.
fn init_tracing() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,openraft=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// The single-threaded runtime of the client-side subcommands; `None`
/// (said on stderr) if it cannot start.
fn current_thread_runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => Some(runtime),
        Err(error) => {
            eprintln!("leasehold: starting the runtime: {error}");
            None
        }
    }
}

fn cluster(args: ClusterArgs) -> ExitCode {
    let Some(runtime) = current_thread_runtime() else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(run_cluster(args)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("leasehold: cluster: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Where one node of a local cluster listens and keeps its data.
struct NodePlan {
    node_id: NodeId,
    grpc_addr: SocketAddr,
    peer_addr: SocketAddr,
    http_addr: SocketAddr,
    data_dir: PathBuf,
}

fn plan(args: &ClusterArgs) -> Vec<NodePlan> {
    (1..=args.nodes)
        .map(|node_id| {
            // Bounded by clap: base_port + PEER_PORT_OFFSET + NODES_MAX fits a u16.
            let grpc_port = args.base_port + node_id as u16 - 1;
            NodePlan {
                node_id,
                grpc_addr: SocketAddr::from(([127, 0, 0, 1], grpc_port)),
                peer_addr: SocketAddr::from(([127, 0, 0, 1], grpc_port + PEER_PORT_OFFSET)),
                http_addr: SocketAddr::from(([127, 0, 0, 1], grpc_port + HTTP_PORT_OFFSET)),
                data_dir: args.data_dir.join(format!("node-{node_id}")),
            }
        })
        .collect()
}

/// Starts every node, then waits for a signal or for a node to exit; either
/// way stops the rest. A node exiting on its own is a failure.
async fn run_cluster(args: ClusterArgs) -> std::io::Result<ExitCode> {
    let nodes = plan(&args);
    let mut stop = StopSignals::new()?;
    let mut children = Children::new();
    if let Err(error) = spawn_all(&mut children, &nodes, &args) {
        eprintln!("leasehold: cluster: starting nodes: {error}");
        children.stop(&mut stop).await;
        return Ok(ExitCode::FAILURE);
    }
    for node in &nodes {
        println!(
            "node {}  grpc {}  peer {}  http {}  data {}",
            node.node_id,
            node.grpc_addr,
            node.peer_addr,
            node.http_addr,
            node.data_dir.display()
        );
    }
    let mut code = tokio::select! {
        () = stop.recv() => ExitCode::SUCCESS,
        (node_id, status) = children.next_exit() => {
            eprintln!(
                "leasehold: cluster: node {node_id} exited unexpectedly ({}); stopping the others",
                describe(&status)
            );
            ExitCode::FAILURE
        }
    };
    if !children.stop(&mut stop).await {
        code = ExitCode::FAILURE;
    }
    Ok(code)
}

fn spawn_all(
    children: &mut Children,
    nodes: &[NodePlan],
    args: &ClusterArgs,
) -> std::io::Result<()> {
    let exe = std::env::current_exe()?;
    let members = nodes
        .iter()
        .map(|node| format!("{}={}/{}", node.node_id, node.grpc_addr, node.peer_addr))
        .collect::<Vec<_>>()
        .join(",");
    for node in nodes {
        std::fs::create_dir_all(&node.data_dir)?;
        let mut command = ChildCommand::new(&exe);
        command
            .arg("serve")
            .args(["--node-id", &node.node_id.to_string()])
            .args(["--grpc-addr", &node.grpc_addr.to_string()])
            .args(["--peer-addr", &node.peer_addr.to_string()])
            .args(["--advertise-addr", &node.grpc_addr.to_string()])
            .args(["--http-addr", &node.http_addr.to_string()])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(["--members", &members]);
        if let Some(slots) = args.slots {
            command.args(["--slots", &slots.to_string()]);
        }
        if let Some(groups) = args.groups {
            command.args(["--groups", &groups.to_string()]);
        }
        command
            .args(&args.serve_flags)
            .stdin(Stdio::null())
            // Its own process group, so a terminal's Ctrl-C reaches only us
            // and each node gets exactly one SIGTERM, from `Children::stop`.
            .process_group(0)
            .kill_on_drop(true);
        children.spawn(node.node_id, &mut command)?;
    }
    Ok(())
}

/// SIGINT or SIGTERM.
struct StopSignals {
    interrupt: Signal,
    terminate: Signal,
}

impl StopSignals {
    fn new() -> std::io::Result<Self> {
        Ok(StopSignals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

type Exit = (NodeId, std::io::Result<ExitStatus>);

/// The running nodes. Each child is owned by one task that waits for it and
/// signals it on request: the child is reaped only in that task, so a signal
/// never reaches a recycled pid.
struct Children {
    running: BTreeSet<NodeId>,
    signal_tx: watch::Sender<libc::c_int>,
    exit_tx: mpsc::UnboundedSender<Exit>,
    exit_rx: mpsc::UnboundedReceiver<Exit>,
}

impl Children {
    fn new() -> Self {
        let (exit_tx, exit_rx) = mpsc::unbounded_channel();
        Children {
            running: BTreeSet::new(),
            signal_tx: watch::channel(0).0,
            exit_tx,
            exit_rx,
        }
    }

    fn spawn(&mut self, node_id: NodeId, command: &mut ChildCommand) -> std::io::Result<()> {
        let child = command.spawn()?;
        self.running.insert(node_id);
        tokio::spawn(supervise(
            node_id,
            child,
            self.signal_tx.subscribe(),
            self.exit_tx.clone(),
        ));
        Ok(())
    }

    async fn next_exit(&mut self) -> Exit {
        let exit = self
            .exit_rx
            .recv()
            .await
            .expect("Children holds a sender, so the channel stays open");
        self.running.remove(&exit.0);
        exit
    }

    /// Sends SIGTERM to every running node and waits for them all; another
    /// SIGINT or SIGTERM escalates to SIGKILL. True when every node stopped
    /// cleanly: exit status 0, or killed by the signal we sent.
    async fn stop(&mut self, stop: &mut StopSignals) -> bool {
        self.signal_tx.send_replace(libc::SIGTERM);
        let mut clean = true;
        while !self.running.is_empty() {
            tokio::select! {
                (node_id, status) = self.next_exit() => {
                    if !stopped_cleanly(&status) {
                        eprintln!("leasehold: cluster: node {node_id} {}", describe(&status));
                        clean = false;
                    }
                }
                () = stop.recv() => {
                    eprintln!("leasehold: cluster: killing the remaining nodes");
                    self.signal_tx.send_replace(libc::SIGKILL);
                }
            }
        }
        clean
    }
}

async fn supervise(
    node_id: NodeId,
    mut child: Child,
    mut signals: watch::Receiver<libc::c_int>,
    exits: mpsc::UnboundedSender<Exit>,
) {
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            Ok(()) = signals.changed() => {
                let signal = *signals.borrow_and_update();
                // `id` is None once the child is reaped, which only this task does.
                if let Some(pid) = child.id() {
                    // SAFETY: kill(2) takes plain integers and touches no memory.
                    unsafe { libc::kill(pid as libc::pid_t, signal) };
                }
            }
        }
    };
    // The receiver outlives every child; if it is gone we are exiting anyway.
    let _ = exits.send((node_id, status));
}

fn stopped_cleanly(status: &std::io::Result<ExitStatus>) -> bool {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(status) => {
            status.success() || matches!(status.signal(), Some(libc::SIGTERM | libc::SIGINT))
        }
        Err(_) => false,
    }
}

fn describe(status: &std::io::Result<ExitStatus>) -> String {
    match status {
        Ok(status) => status.to_string(),
        Err(error) => format!("could not be waited for: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn cluster_ports_do_not_collide() {
        let cli = Cli::try_parse_from(["leasehold", "cluster", "--nodes", "7"]).unwrap();
        let Command::Cluster(args) = cli.command else {
            panic!("parsed as another command");
        };
        let nodes = plan(&args);
        let mut ports: Vec<u16> = nodes
            .iter()
            .flat_map(|node| {
                [
                    node.grpc_addr.port(),
                    node.http_addr.port(),
                    node.peer_addr.port(),
                ]
            })
            .collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 21);
        assert_eq!(nodes[0].grpc_addr.port(), 7070);
        assert_eq!(nodes[0].http_addr.port(), 7080);
        assert_eq!(nodes[0].peer_addr.port(), 7090);
        assert_eq!(
            nodes[6].data_dir,
            PathBuf::from("./leasehold-cluster/node-7")
        );
    }

    #[test]
    fn cluster_rejects_too_many_nodes_and_high_ports() {
        assert!(Cli::try_parse_from(["leasehold", "cluster", "--nodes", "8"]).is_err());
        assert!(Cli::try_parse_from(["leasehold", "cluster", "--base-port", "65530"]).is_err());
    }
}
