//! Redis 7 as a baseline: one `redis-server` with AOF on, the lease
//! semantics in two Lua scripts of ours (`bench/lua/`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use redis::aio::MultiplexedConnection;
use redis::Script;

use super::{Held, Outcome};
use crate::procs::{self, Proc, Scratch};
use crate::spec::{Constraint, Request};

static ACQUIRE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../../lua/acquire.lua")));
static RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../../lua/release.lua")));

/// How long idempotency records outlive their lease: Leasehold's default.
const DEDUP_WINDOW_MS: u64 = 600_000;
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest a call may take, as on the other targets.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// When the append-only file is fsynced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fsync {
    /// Once a second: a crash may lose the last second of grants.
    Everysec,
    /// Before every reply, like Leasehold.
    Always,
}

pub struct Server {
    proc: Proc,
    addr: SocketAddr,
    shared: Option<MultiplexedConnection>,
    _scratch: Scratch,
}

impl Server {
    pub fn start(bin: &Path, fsync: Fsync) -> Result<Server> {
        let scratch = Scratch::new("redis")?;
        let port = procs::free_port()?;
        let mut command = Command::new(bin);
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(scratch.path())
            .args(["--appendonly", "yes"])
            .args([
                "--appendfsync",
                match fsync {
                    Fsync::Everysec => "everysec",
                    Fsync::Always => "always",
                },
            ])
            // Durability is the AOF's; no RDB snapshots forking mid-run.
            .args(["--save", ""])
            .args(["--daemonize", "no", "--protected-mode", "no"]);
        let log = scratch.path().join("redis.log");
        let mut proc = Proc::spawn("redis-server", &mut command, &log)?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let until = Instant::now() + READY_TIMEOUT;
        while !pong(addr) {
            proc.check_running()?;
            if Instant::now() >= until {
                bail!("redis-server did not answer PING within {READY_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Server {
            proc,
            addr,
            shared: None,
            _scratch: scratch,
        })
    }

    pub fn pids(&self) -> Vec<u32> {
        vec![self.proc.pid()]
    }

    /// The callers share one multiplexed connection, as redis-rs
    /// recommends: their calls are pipelined on it.
    pub async fn connect(&mut self) -> Result<Conn> {
        if self.shared.is_none() {
            let client = redis::Client::open(format!("redis://{}/", self.addr))?;
            // A call may take as long as on the other targets (the default
            // gives up after 500 ms).
            let config =
                redis::AsyncConnectionConfig::new().set_response_timeout(Some(CALL_TIMEOUT));
            let conn = client
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .context("connecting to redis-server")?;
            self.shared = Some(conn);
        }
        Ok(Conn {
            conn: self.shared.clone().expect("set above"),
        })
    }

    pub fn stop(&mut self) {
        self.proc.stop(Duration::from_secs(10));
    }
}

fn pong(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 16];
    s.write_all(b"PING\r\n").is_ok()
        && s.read(&mut buf)
            .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
}

fn key_prefix(scope: &str) -> String {
    // The scope is a hash tag: a scope's keys would share a cluster slot.
    format!("lh:{{{scope}}}:")
}

#[derive(Clone)]
pub struct Conn {
    conn: MultiplexedConnection,
}

impl Conn {
    pub async fn acquire(&self, request: &Request, idempotency_key: &str) -> Result<Outcome> {
        let prefix = key_prefix(&request.scope);
        let mut call = ACQUIRE.prepare_invoke();
        call.key(format!("{prefix}i:{idempotency_key}"))
            .key(format!("{prefix}seq"));
        let mut limits = Vec::new();
        let mut throttles = Vec::new();
        for c in &request.constraints {
            if let Constraint::Concurrency { key, limit } = c {
                call.key(format!("{prefix}c:{key}"));
                limits.push(u64::from(*limit));
            }
        }
        for c in &request.constraints {
            if let Constraint::Throttle {
                key,
                limit,
                period_ms,
                burst,
            } = c
            {
                call.key(format!("{prefix}t:{key}"));
                throttles.extend([u64::from(*limit), *period_ms, u64::from(*burst)]);
            }
        }
        call.arg(format!("{prefix}l:"))
            .arg(request.ttl_ms)
            .arg(DEDUP_WINDOW_MS)
            .arg(request.fingerprint())
            .arg(limits.len())
            .arg(limits)
            .arg(throttles);
        let reply: Vec<i64> = call.invoke_async(&mut self.conn.clone()).await?;
        Ok(match reply.as_slice() {
            [1, id, _expires, _replayed] => Outcome::Granted(Held {
                scope: request.scope.clone(),
                lease_id: *id as u64,
                holders: Vec::new(),
            }),
            [0, retry_after] => Outcome::Denied {
                retry_after_ms: u64::try_from(*retry_after).ok(),
            },
            other => bail!("acquire.lua answered {other:?}"),
        })
    }

    pub async fn release(&self, held: &Held, idempotency_key: &str) -> Result<bool> {
        let prefix = key_prefix(&held.scope);
        let reply: Vec<i64> = RELEASE
            .key(format!("{prefix}r:{idempotency_key}"))
            .key(format!("{prefix}seq"))
            .arg(format!("{prefix}l:"))
            .arg(held.lease_id)
            .arg(DEDUP_WINDOW_MS)
            .arg(format!("{}|{}", held.scope, held.lease_id))
            .invoke_async(&mut self.conn.clone())
            .await?;
        match reply.as_slice() {
            [held, _replayed] => Ok(*held == 1),
            other => bail!("release.lua answered {other:?}"),
        }
    }
}
