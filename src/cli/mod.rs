//! The operator's subcommands (`acquire`, `inspect`, `slots`,
//! `status`, ...): thin wrappers over [`leasehold::client`] that print
//! aligned tables for people, or one JSON object with `--json`.
//!
//! - [`lease`]: acquire, extend, release, check.
//! - [`keys`]: inspect, set-capacity, adjust-capacity.
//! - [`admin`]: pause, resume, pin, unpin, reset.
//! - [`cluster`]: slots, status.
//! - [`creds`]: cert (a development CA), token (bearer tokens).
//! - [`spec`]: constraint flags (`jobs=10`) parsed by clap.
//! - [`render`], [`table`]: output shared by the commands.

mod admin;
mod cluster;
pub mod creds;
mod keys;
mod lease;
mod render;
mod spec;
mod table;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use leasehold::client::{Client, ClientConfig, ClientTls};
use leasehold::proto::v1::KeyAction;
use leasehold::wire::error_detail;
use serde_json::{json, Value};
use tonic::{Code, Status};

/// The server refused the call, or (`status`) a node is unreachable.
pub const EXIT_SERVER: u8 = 1;
/// No node answered, or none led the scope's group in time.
pub const EXIT_UNREACHABLE: u8 = 3;

/// The exit codes, for `leasehold --help`.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success; a denied acquire or check is a success too (the output says \"denied\")
  1  the server refused the call (`leasehold: <CODE>: <message>` on stderr, CODE as in
     ErrorDetail.code), `status` found a node unreachable, or `serve`/`cluster` failed
  2  bad flags or a malformed constraint spec (the message names the flag),
     or an unusable `serve` configuration
  3  the cluster is unreachable: no node answered, or none led the scope's group in time
  74 `serve` met a storage fault: a failed fsync, write or read of its data while serving
     (it never serves from that state again; restart it once the fault is cleared), or a
     database it cannot open at start (a full disk, or damage: the message says which)";

/// Where the cluster is and how to answer; every client subcommand takes these.
#[derive(Args, Clone, Debug)]
pub struct Connect {
    /// Nodes to start from; one reachable node is enough
    #[arg(
        long,
        env = "LEASEHOLD_NODES",
        value_name = "HOST:PORT,...",
        value_delimiter = ',',
        default_value = "127.0.0.1:7070",
        value_parser = spec::node_address
    )]
    nodes: Vec<String>,
    /// Print one JSON object instead of tables
    #[arg(long)]
    json: bool,
    /// Deadline of each call, retries across leader changes included
    #[arg(long, value_name = "MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    timeout_ms: u64,
    /// Bearer token, for nodes that ask for one
    #[arg(
        long,
        env = "LEASEHOLD_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// Speak TLS, trusting the nodes' certificates this CA signed (PEM)
    #[arg(long, env = "LEASEHOLD_TLS_CA", value_name = "PATH")]
    tls_ca: Option<PathBuf>,
    /// Client certificate (PEM), for nodes that ask for one; with --tls-key
    #[arg(long, env = "LEASEHOLD_TLS_CERT", value_name = "PATH", requires_all = ["tls_key", "tls_ca"])]
    tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM)
    #[arg(
        long,
        env = "LEASEHOLD_TLS_KEY",
        value_name = "PATH",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,
}

impl Connect {
    fn config(&self) -> ClientConfig {
        let timeout = Duration::from_millis(self.timeout_ms);
        let mut config = ClientConfig::new(self.nodes.clone());
        config.call_timeout = timeout;
        config.attempt_timeout = config.attempt_timeout.min(timeout);
        config.token = self.token.clone();
        config.tls = self.tls_ca.as_ref().map(|ca| ClientTls {
            ca_file: ca.clone(),
            identity: self.tls_cert.clone().zip(self.tls_key.clone()),
            domain: None,
        });
        config
    }

    async fn client(&self) -> Result<Client, Status> {
        Client::connect(self.config()).await
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// The client subcommands, flattened into the binary's own.
#[derive(Subcommand)]
pub enum Command {
    /// Acquire a lease; it is NOT released when this command exits
    Acquire(lease::AcquireArgs),
    /// Move a lease's expiry to now + ttl
    Extend(lease::ExtendArgs),
    /// Release a lease, saying whether it was still held
    Release(lease::ReleaseArgs),
    /// What an acquire would be granted now, spending nothing
    Check(lease::CheckArgs),
    /// One constraint key's usage, limit and holders
    Inspect(keys::InspectArgs),
    /// Set a semaphore key's capacity
    SetCapacity(keys::SetCapacityArgs),
    /// Add a signed delta to a semaphore key's capacity
    AdjustCapacity(keys::AdjustCapacityArgs),
    /// Stop granting on a key; waiters wait, holders may extend and release
    Pause(admin::KeyArgs),
    /// Grant on a paused key again
    Resume(admin::KeyArgs),
    /// Enforce a limit on a key whatever requests carry
    Pin(admin::PinArgs),
    /// Let requests' own limits rule a pinned key again
    Unpin(admin::KeyArgs),
    /// Forget a key's usage: holders stop counting, buckets and windows empty
    Reset(admin::KeyArgs),
    /// The slot map: each group's slots, replicas, leader and term
    Slots(cluster::SlotsArgs),
    /// Every node of the slot map: reachable, groups hosted and led, terms
    Status(cluster::StatusArgs),
}

/// A command's answer in both forms, and its exit code.
pub struct Report {
    json: Value,
    text: String,
    exit: u8,
}

impl Report {
    fn ok(json: Value, text: String) -> Report {
        Report {
            json,
            text,
            exit: 0,
        }
    }
}

impl Command {
    fn connect(&self) -> &Connect {
        match self {
            Command::Acquire(a) => &a.connect,
            Command::Extend(a) => &a.connect,
            Command::Release(a) => &a.connect,
            Command::Check(a) => &a.connect,
            Command::Inspect(a) => &a.connect,
            Command::SetCapacity(a) => &a.connect,
            Command::AdjustCapacity(a) => &a.connect,
            Command::Pause(a) | Command::Resume(a) | Command::Unpin(a) | Command::Reset(a) => {
                &a.connect
            }
            Command::Pin(a) => &a.connect,
            Command::Slots(a) => &a.connect,
            Command::Status(a) => &a.connect,
        }
    }

    async fn execute(self) -> Result<Report, Status> {
        match self {
            Command::Acquire(args) => lease::acquire(args).await,
            Command::Extend(args) => lease::extend(args).await,
            Command::Release(args) => lease::release(args).await,
            Command::Check(args) => lease::check(args).await,
            Command::Inspect(args) => keys::inspect(args).await,
            Command::SetCapacity(args) => keys::set_capacity(args).await,
            Command::AdjustCapacity(args) => keys::adjust_capacity(args).await,
            Command::Pause(args) => admin::act(args, KeyAction::Pause).await,
            Command::Resume(args) => admin::act(args, KeyAction::Resume).await,
            Command::Pin(args) => admin::pin(args).await,
            Command::Unpin(args) => admin::act(args, KeyAction::Unpin).await,
            Command::Reset(args) => admin::act(args, KeyAction::Reset).await,
            Command::Slots(args) => cluster::slots(args).await,
            Command::Status(args) => cluster::status(args).await,
        }
    }
}

/// Runs one client subcommand and prints its answer or error.
pub fn run(command: Command) -> ExitCode {
    let json = command.connect().json;
    let Some(runtime) = crate::current_thread_runtime() else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(command.execute()) {
        Ok(report) => {
            if json {
                println!("{}", report.json);
            } else {
                print!("{}", report.text);
            }
            ExitCode::from(report.exit)
        }
        Err(status) => {
            let (code, exit) = classify(&status);
            if json {
                println!(
                    "{}",
                    json!({ "error": { "code": code, "message": status.message() } })
                );
            }
            eprintln!("leasehold: {code}: {}", status.message());
            ExitCode::from(exit)
        }
    }
}

/// The stable code (ErrorDetail.code, or the gRPC code's name for a
/// transport failure) and the exit code.
fn classify(status: &Status) -> (String, u8) {
    if let Some(detail) = error_detail(status) {
        return (detail.code, EXIT_SERVER);
    }
    let exit = match status.code() {
        Code::Unavailable | Code::DeadlineExceeded => EXIT_UNREACHABLE,
        _ => EXIT_SERVER,
    };
    (code_name(status.code()), exit)
}

/// `DeadlineExceeded` → `DEADLINE_EXCEEDED`, as the gRPC spec spells it.
fn code_name(code: Code) -> String {
    let mut name = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_failures_are_unreachable_and_refusals_are_server_errors() {
        let (code, exit) = classify(&Status::deadline_exceeded("no leader"));
        assert_eq!(
            (code.as_str(), exit),
            ("DEADLINE_EXCEEDED", EXIT_UNREACHABLE)
        );
        let (code, exit) = classify(&Status::invalid_argument("scope"));
        assert_eq!((code.as_str(), exit), ("INVALID_ARGUMENT", EXIT_SERVER));
        assert_eq!(code_name(Code::Ok), "OK");
    }
}
