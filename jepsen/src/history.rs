//! The history of a chaos run: what every client asked, when, and what it
//! was told.
//!
//! # Format
//!
//! A history is a JSONL file: one [`Event`] per line, appended as things
//! happen. Blank lines are skipped.
//!
//! ```json
//! {"t_ns":1500000,"process":3,"kind":"invoke","op":{"f":"acquire","key":"c1","limit":2,"slot":0,"idem":"p3-17","ttl_ms":2000},"node":"n1","phase":"main"}
//! ```
//!
//! Every event has:
//!
//! - `t_ns` — the harness's monotonic clock, nanoseconds since the run began.
//!   One clock for every client, so times of different processes compare.
//! - `process` — the client that issued the operation. A process has at most
//!   one operation outstanding: its next `invoke` comes only after the
//!   previous one completed (a client whose call timed out reports `info` and
//!   continues as the same process). The nemesis uses [`NEMESIS`]
//!   (`u64::MAX`).
//! - `kind` — `"invoke"` when the call is sent; then exactly one completion
//!   from the same process: `"ok"` (it happened), `"fail"` (it definitely did
//!   not happen, or was definitely denied) or `"info"` (unknown: a timeout, a
//!   reset connection; it may take effect at any later time, or never). An
//!   invoke that is never completed counts as `info`. Nemesis events are lone
//!   `"info"` events with no invoke.
//! - `op` — the operation, tagged by `"f"` (see below). A completion repeats
//!   the invoke's request fields and fills in the result fields.
//! - `node` — the node the call was sent to; optional (`null` or absent).
//! - `phase` — `"main"` (the default when absent), `"final"` (after faults
//!   healed and every TTL passed: each op must succeed) or `"durability"`
//!   (inspects after every node was killed with SIGKILL and restarted).
//!
//! Result fields are `null` or absent on invokes. `slot` is the hash slot
//! of the key (each key is its own scope): lease ids and fencing tokens
//! are numbered per slot, so a lease is named by `(slot, lease)`, and
//! tokens are ordered only among the grants of one slot. Keys name one
//! constraint across the whole run. Histories written before slots name
//! the field `partition` (a Raft group then, which numbered its own
//! leases); it is read as `slot`.
//!
//! | `f` | request fields | result fields | ok / fail |
//! | --- | --- | --- | --- |
//! | `acquire` | `key`, `limit`, `slot`, `idem`, `ttl_ms`, `wait_ms`? | `lease`, `token`, `retry_after_ms`, `error` | ok: granted, `lease` and `token` set. fail with `error` null: denied, the key is full. fail with `error` set: a definite error, nothing happened |
//! | `extend` | `key`, `limit`, `slot`, `idem`, `lease`, `ttl_ms` | `error` | ok: extended to now + `ttl_ms`. fail with `"lease_lost"`: the lease had already ended |
//! | `release` | `key`, `limit`, `slot`, `idem`, `lease` | `was_held`, `error` | ok: released; `was_held` says whether it was still live |
//! | `throttle` | `key`, `slot`, `idem`, `kind`?, `limit`, `period_ms`, `burst` | `token`, `error` | ok: admitted. fail with `error` null: denied by the rate |
//! | `fenced` | `key`, `slot`, `access`, `token`, `read`? | `value`, `seq`, `error` | ok: the resource accepted the token. fail with `"stale_token"`: it had seen a larger one |
//! | `inspect` | `key`, `slot` | `holders` | ok: `holders` lists the lease ids the server says hold `key` |
//! | `nemesis` | `name`, `action` (`"start"` or `"stop"`), `detail` | — | lone `info` events, process [`NEMESIS`] |
//!
//! A `throttle` op's `kind` names the spending constraint: `"gcra"` (the
//! default when absent: pacing with `burst`) or `"rate_limit"` (a hard
//! sliding window of `limit` per `period_ms`; `burst` is 0).
//!
//! A `fenced` op is a call to a resource inside the harness, not to the
//! server: one per key, guarded by the fencing token of a lease on that
//! key. It remembers the largest token it accepted and refuses smaller ones.
//! `access` is `"read"` (ok: `value` is the current value) or `"write"`
//! (`read` is the value the client read; ok: the resource set `value` to
//! `read + 1`). `seq` numbers the ops one resource handled, in the order
//! it handled them, accepted or not.
//!
//! A retry of a mutating call reuses its `idem` (idempotency key): the
//! attempts sharing `(f, key, idem)` are one logical operation, see
//! [`by_idem`].
//!
//! # What the checkers rely on
//!
//! - Stamp `t_ns` of an invoke before the request is sent, and of a
//!   completion after the answer arrived: the checkers assume the server
//!   acted between the two.
//! - Report `fail` only when the op certainly had no effect (a denial, a
//!   validation error, `NotLeader` from a node that did not propose it);
//!   anything else that is not `ok` — timeouts, dropped connections,
//!   unavailable — is `info`. A wrong `fail` shows up as a violation.
//! - An acquire denial is `fail` with `error` null; any other acquire
//!   failure carries an error code. An extend of an ended lease is `fail`
//!   with `error: "lease_lost"` exactly.
//! - Keys whose acquires all ask for a TTL of at least an hour are checked
//!   for linearizability (see `check::linearizable`); release their leases
//!   so the key keeps changing.
//! - Phase `final` starts after faults healed and every lease's TTL·(1+ρ)
//!   passed; use it only for ops that must then succeed. Phase
//!   `durability` holds one or more inspects of every key that may hold
//!   leases, after all nodes were killed and restarted; `holders` lists
//!   every live lease of the key.
//!
//! [`Writer`] appends events to a file as they happen; [`History::pairs`]
//! joins each invoke with its completion for the checkers.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The `process` of nemesis events.
pub const NEMESIS: u64 = u64::MAX;

/// The `error` of an extend that failed because the lease had ended.
pub const LEASE_LOST: &str = "lease_lost";

/// The `error` of a fenced op the resource refused: it had accepted a
/// larger token.
pub const STALE_TOKEN: &str = "stale_token";

/// One line of a history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Harness monotonic clock, nanoseconds since the run began.
    pub t_ns: u64,
    /// The client; [`NEMESIS`] for the nemesis.
    pub process: u64,
    /// Invoke, or how the operation completed.
    pub kind: EventKind,
    /// The operation: request fields, and results on completions.
    pub op: Op,
    /// The node the call was sent to.
    #[serde(default)]
    pub node: Option<String>,
    /// The part of the run the event belongs to.
    #[serde(default)]
    pub phase: Phase,
}

/// Whether an event starts an operation or how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// The call was sent.
    Invoke,
    /// It took effect.
    Ok,
    /// It definitely took no effect, or was definitely denied.
    Fail,
    /// Unknown: it may take effect at any later time, or never. Also every
    /// nemesis event.
    Info,
}

/// The part of a run an operation belongs to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Under faults.
    #[default]
    Main,
    /// After faults healed and every TTL passed; every op must succeed.
    Final,
    /// Inspects after every node was killed and restarted.
    Durability,
}

/// An operation, tagged by `"f"` in JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "snake_case")]
pub enum Op {
    /// Take one unit of a concurrency constraint.
    Acquire(Acquire),
    /// Push a lease's expiry to now + `ttl_ms`.
    Extend(Extend),
    /// Give a lease back.
    Release(Release),
    /// One admission through a GCRA throttle or a rate limit.
    Throttle(Throttle),
    /// Read a key's holders.
    Inspect(Inspect),
    /// A read or write of the harness's fenced resource.
    Fenced(Fenced),
    /// A fault starting or stopping.
    Nemesis(Nemesis),
}

/// `f: "acquire"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acquire {
    /// The constraint key, unique across the run.
    pub key: String,
    /// The concurrency limit the request carries.
    pub limit: u32,
    /// The hash slot of the key: the namespace of its lease ids and tokens.
    #[serde(alias = "partition")]
    pub slot: u32,
    /// Idempotency key, shared by the retries of one operation.
    pub idem: String,
    /// Requested lease TTL.
    pub ttl_ms: u64,
    /// Granted lease id (ok).
    pub lease: Option<u64>,
    /// Fencing token (ok).
    pub token: Option<u64>,
    /// The server's hint on a denial.
    pub retry_after_ms: Option<u64>,
    /// How long the server may queue the request; absent: no waiting.
    pub wait_ms: Option<u64>,
    /// On fail: `None` for a denial (full), else the definite error's code.
    pub error: Option<String>,
}

/// `f: "extend"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extend {
    /// The constraint key, unique across the run.
    pub key: String,
    /// The concurrency limit of the key.
    pub limit: u32,
    /// The hash slot of the key: the namespace of its lease ids and tokens.
    #[serde(alias = "partition")]
    pub slot: u32,
    /// Idempotency key, shared by the retries of one operation.
    pub idem: String,
    /// The lease to extend.
    pub lease: u64,
    /// New TTL, from the moment the server applies it.
    pub ttl_ms: u64,
    /// On fail: [`LEASE_LOST`] or another definite error's code.
    pub error: Option<String>,
}

/// `f: "release"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// The constraint key, unique across the run.
    pub key: String,
    /// The concurrency limit of the key.
    pub limit: u32,
    /// The hash slot of the key: the namespace of its lease ids and tokens.
    #[serde(alias = "partition")]
    pub slot: u32,
    /// Idempotency key, shared by the retries of one operation.
    pub idem: String,
    /// The lease to release.
    pub lease: u64,
    /// On ok: whether the lease was still live when released.
    pub was_held: Option<bool>,
    /// On fail: the definite error's code.
    pub error: Option<String>,
}

/// `f: "throttle"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Throttle {
    /// The constraint key, unique across the run.
    pub key: String,
    /// The hash slot of the key: the namespace of its lease ids and tokens.
    #[serde(alias = "partition")]
    pub slot: u32,
    /// Idempotency key, shared by the retries of one operation.
    pub idem: String,
    /// Which constraint admits; absent in older histories: GCRA.
    #[serde(default)]
    pub kind: ThrottleKind,
    /// Admissions per `period_ms`.
    pub limit: u32,
    pub period_ms: u64,
    /// Admissions allowed at once beyond the steady rate (GCRA only).
    pub burst: u32,
    /// Fencing token of the admission (ok).
    pub token: Option<u64>,
    /// On fail: `None` for a denial by the rate, else the error's code.
    pub error: Option<String>,
}

/// The constraint a `throttle` op passes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThrottleKind {
    /// GCRA pacing: `limit` per `period_ms` on average, `burst` at once.
    #[default]
    Gcra,
    /// A hard sliding window: at most `limit` in any `period_ms`.
    RateLimit,
}

/// `f: "inspect"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inspect {
    /// The constraint key, unique across the run.
    pub key: String,
    /// The hash slot of the key: the namespace of its lease ids and tokens.
    #[serde(alias = "partition")]
    pub slot: u32,
    /// On ok: the lease ids the server reports holding `key`.
    pub holders: Option<Vec<u64>>,
}

/// `f: "fenced"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fenced {
    /// The key whose lease fences the resource; one resource per key.
    pub key: String,
    /// The hash slot of the key: the namespace of its lease ids and tokens.
    #[serde(alias = "partition")]
    pub slot: u32,
    /// Read or write.
    pub access: Access,
    /// The fencing token of the client's lease on `key`.
    pub token: u64,
    /// Write: the value the client read, the new value less one.
    pub read: Option<u64>,
    /// On ok: the value read, or the value written.
    pub value: Option<u64>,
    /// The resource's number for this op: its order among the key's ops.
    pub seq: Option<u64>,
    /// On fail: [`STALE_TOKEN`].
    pub error: Option<String>,
}

/// What a `fenced` op does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Read,
    Write,
}

/// `f: "nemesis"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nemesis {
    /// The fault, e.g. `"partition"`, `"kill"`, `"pause"`, `"clock"`.
    pub name: String,
    /// `"start"` or `"stop"`.
    pub action: String,
    /// Free text: the nodes involved, the parameters.
    pub detail: String,
}

macro_rules! into_op {
    ($($variant:ident),*) => {$(
        impl From<$variant> for Op {
            fn from(op: $variant) -> Op {
                Op::$variant(op)
            }
        }
    )*};
}
into_op!(Acquire, Extend, Release, Throttle, Inspect, Fenced, Nemesis);

impl Op {
    /// The `f` tag.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Acquire(_) => "acquire",
            Op::Extend(_) => "extend",
            Op::Release(_) => "release",
            Op::Throttle(_) => "throttle",
            Op::Inspect(_) => "inspect",
            Op::Fenced(_) => "fenced",
            Op::Nemesis(_) => "nemesis",
        }
    }

    /// The constraint key; `None` for nemesis events.
    pub fn key(&self) -> Option<&str> {
        match self {
            Op::Acquire(a) => Some(&a.key),
            Op::Extend(e) => Some(&e.key),
            Op::Release(r) => Some(&r.key),
            Op::Throttle(t) => Some(&t.key),
            Op::Inspect(i) => Some(&i.key),
            Op::Fenced(r) => Some(&r.key),
            Op::Nemesis(_) => None,
        }
    }

    /// The idempotency key of mutating operations.
    pub fn idem(&self) -> Option<&str> {
        match self {
            Op::Acquire(a) => Some(&a.idem),
            Op::Extend(e) => Some(&e.idem),
            Op::Release(r) => Some(&r.idem),
            Op::Throttle(t) => Some(&t.idem),
            Op::Inspect(_) | Op::Fenced(_) | Op::Nemesis(_) => None,
        }
    }
}

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// It took effect.
    Ok,
    /// It definitely took no effect, or was definitely denied.
    Fail,
    /// Unknown, including never completed.
    Info,
}

/// One operation: an invoke joined with its completion.
#[derive(Debug, Clone, PartialEq)]
pub struct Completed {
    /// The client.
    pub process: u64,
    /// When the call was sent.
    pub invoke_ns: u64,
    /// `None` if the run ended first; the outcome is then [`Outcome::Info`].
    pub complete_ns: Option<u64>,
    /// How it ended.
    pub outcome: Outcome,
    /// The completion's op, with results; the invoke's if none came.
    pub op: Op,
    /// The completion's node if it names one, else the invoke's.
    pub node: Option<String>,
    /// The invoke's phase.
    pub phase: Phase,
}

impl Completed {
    /// Whether this is a definite denial: an acquire or throttle that
    /// failed with no error.
    pub fn is_denial(&self) -> bool {
        let error = match &self.op {
            Op::Acquire(a) => &a.error,
            Op::Throttle(t) => &t.error,
            _ => return false,
        };
        self.outcome == Outcome::Fail && error.is_none()
    }

    /// A one-line description for violation reports.
    pub fn describe(&self) -> String {
        let end = match self.complete_ns {
            Some(ns) => fmt_ms(ns),
            None => "…".to_string(),
        };
        let what = match &self.op {
            Op::Acquire(a) => match (a.lease, &a.error) {
                (Some(lease), _) => format!("acquire {} idem={} → lease {lease}", a.key, a.idem),
                (None, Some(e)) => format!("acquire {} idem={} → {e}", a.key, a.idem),
                (None, None) => format!("acquire {} idem={}", a.key, a.idem),
            },
            Op::Extend(e) => format!("extend {} lease {} idem={}", e.key, e.lease, e.idem),
            Op::Release(r) => format!("release {} lease {} idem={}", r.key, r.lease, r.idem),
            Op::Throttle(t) => match t.kind {
                ThrottleKind::Gcra => format!("throttle {} idem={}", t.key, t.idem),
                ThrottleKind::RateLimit => format!("rate_limit {} idem={}", t.key, t.idem),
            },
            Op::Inspect(i) => format!("inspect {}", i.key),
            Op::Fenced(r) => {
                let access = match (r.access, r.read) {
                    (Access::Read, _) => "read".to_string(),
                    (Access::Write, Some(read)) => format!("write {read}+1"),
                    (Access::Write, None) => "write".to_string(),
                };
                let seq = r.seq.map_or(String::new(), |n| format!(" #{n}"));
                format!("fenced {} {access} token {}{seq}", r.key, r.token)
            }
            Op::Nemesis(n) => format!("nemesis {} {}", n.name, n.action),
        };
        let outcome = match self.outcome {
            Outcome::Ok => "ok",
            Outcome::Fail => "fail",
            Outcome::Info => "info",
        };
        format!(
            "p{} {what} {outcome} [{}, {end}]",
            self.process,
            fmt_ms(self.invoke_ns)
        )
    }
}

/// `ns` as milliseconds for reports.
pub(crate) fn fmt_ms(ns: u64) -> String {
    format!("{:.3}ms", ns as f64 / 1e6)
}

/// A whole history in memory.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    /// In the order they were written.
    pub events: Vec<Event>,
}

/// Why a history could not be read or paired.
#[derive(Debug)]
pub enum HistoryError {
    /// The file could not be read.
    Io(io::Error),
    /// Line `line` (1-based) is not an event.
    Parse {
        line: usize,
        source: serde_json::Error,
    },
    /// Event `index` (0-based) breaks the invoke/completion protocol.
    Malformed { index: usize, reason: String },
}

impl fmt::Display for HistoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HistoryError::Io(e) => write!(f, "reading history: {e}"),
            HistoryError::Parse { line, source } => write!(f, "history line {line}: {source}"),
            HistoryError::Malformed { index, reason } => {
                write!(f, "history event {index}: {reason}")
            }
        }
    }
}

impl std::error::Error for HistoryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HistoryError::Io(e) => Some(e),
            HistoryError::Parse { source, .. } => Some(source),
            HistoryError::Malformed { .. } => None,
        }
    }
}

impl From<io::Error> for HistoryError {
    fn from(e: io::Error) -> Self {
        HistoryError::Io(e)
    }
}

impl History {
    /// Reads a JSONL history file.
    pub fn read_jsonl(path: impl AsRef<Path>) -> Result<History, HistoryError> {
        History::parse_jsonl(BufReader::new(File::open(path)?))
    }

    /// Parses JSONL from any reader.
    pub fn parse_jsonl(reader: impl BufRead) -> Result<History, HistoryError> {
        let mut events = Vec::new();
        for (i, line) in reader.lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let event = serde_json::from_str(&line).map_err(|source| HistoryError::Parse {
                line: i + 1,
                source,
            })?;
            events.push(event);
        }
        Ok(History { events })
    }

    /// Writes the history as JSONL, replacing `path`.
    pub fn write_jsonl(&self, path: impl AsRef<Path>) -> io::Result<()> {
        let mut out = Writer::new(io::BufWriter::new(File::create(path)?));
        for event in &self.events {
            out.write(event)?;
        }
        Ok(())
    }

    /// Joins every invoke with its process's next completion, in invoke
    /// order. Nemesis events are left out. Fails on a completion without an
    /// invoke, a second invoke while one is outstanding, a completion of a
    /// different operation or key, or a completion before its invoke.
    pub fn pairs(&self) -> Result<Vec<Completed>, HistoryError> {
        let mut open: HashMap<u64, usize> = HashMap::new();
        let mut out: Vec<Completed> = Vec::new();
        for (index, e) in self.events.iter().enumerate() {
            let malformed = |reason: String| HistoryError::Malformed { index, reason };
            if matches!(e.op, Op::Nemesis(_)) {
                continue;
            }
            if e.kind == EventKind::Invoke {
                if open.insert(e.process, out.len()).is_some() {
                    return Err(malformed(format!(
                        "process {} invokes while an op is outstanding",
                        e.process
                    )));
                }
                out.push(Completed {
                    process: e.process,
                    invoke_ns: e.t_ns,
                    complete_ns: None,
                    outcome: Outcome::Info,
                    op: e.op.clone(),
                    node: e.node.clone(),
                    phase: e.phase,
                });
                continue;
            }
            let Some(j) = open.remove(&e.process) else {
                return Err(malformed(format!(
                    "process {} completes with nothing outstanding",
                    e.process
                )));
            };
            let c = &mut out[j];
            if c.op.name() != e.op.name() || c.op.key() != e.op.key() {
                return Err(malformed(format!(
                    "completion {} {:?} does not match invoke {} {:?}",
                    e.op.name(),
                    e.op.key(),
                    c.op.name(),
                    c.op.key()
                )));
            }
            if e.t_ns < c.invoke_ns {
                return Err(malformed("completion before its invoke".to_string()));
            }
            c.complete_ns = Some(e.t_ns);
            c.outcome = match e.kind {
                EventKind::Ok => Outcome::Ok,
                EventKind::Fail => Outcome::Fail,
                EventKind::Info | EventKind::Invoke => Outcome::Info,
            };
            c.op = e.op.clone();
            if e.node.is_some() {
                c.node = e.node.clone();
            }
        }
        Ok(out)
    }
}

/// Appends events to a JSONL history, one whole line per write, flushed at
/// once: a run killed midway leaves every event it reported.
pub struct Writer<W: Write = File> {
    out: W,
    line: Vec<u8>,
}

impl Writer<File> {
    /// Creates (or truncates) `path`.
    pub fn create(path: impl AsRef<Path>) -> io::Result<Self> {
        Ok(Writer::new(File::create(path)?))
    }
}

impl<W: Write> Writer<W> {
    /// Writes to `out`, flushing after every event.
    pub fn new(out: W) -> Self {
        Writer {
            out,
            line: Vec::new(),
        }
    }

    /// Appends `event` as one line and flushes.
    pub fn write(&mut self, event: &Event) -> io::Result<()> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, event)?;
        self.line.push(b'\n');
        self.out.write_all(&self.line)?;
        self.out.flush()
    }

    /// The underlying writer.
    pub fn into_inner(self) -> W {
        self.out
    }
}

/// One logical operation: every attempt sharing an idempotency key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IdemKey<'a> {
    /// The op's `f`.
    pub f: &'static str,
    /// The constraint key.
    pub key: &'a str,
    /// The idempotency key.
    pub idem: &'a str,
}

/// The attempts of one logical operation, in invoke order. The server
/// applies at most one of them; the others replay its outcome or fail.
#[derive(Debug, Clone, Default)]
pub struct Attempts<'a> {
    /// Every attempt, in invoke order.
    pub ops: Vec<&'a Completed>,
}

impl<'a> Attempts<'a> {
    /// Attempts that may have taken effect: all but definite failures.
    pub fn effective(&self) -> impl Iterator<Item = &'a Completed> + '_ {
        self.ops
            .iter()
            .copied()
            .filter(|c| c.outcome != Outcome::Fail)
    }

    /// The earliest invoke that may have taken effect; the effect is no
    /// earlier. `None` if every attempt failed.
    pub fn effect_from_ns(&self) -> Option<u64> {
        self.effective().map(|c| c.invoke_ns).min()
    }

    /// The latest invoke that may have taken effect.
    pub fn last_invoke_ns(&self) -> Option<u64> {
        self.effective().map(|c| c.invoke_ns).max()
    }

    /// The attempt that completed ok first; the effect is no later than its
    /// completion.
    pub fn first_ok(&self) -> Option<&'a Completed> {
        self.ops
            .iter()
            .copied()
            .filter(|c| c.outcome == Outcome::Ok)
            .min_by_key(|c| c.complete_ns)
    }

    /// The attempt whose denial was heard first: an acquire or throttle
    /// failing with no error. The server records a denial under its
    /// idempotency key and replays it to every attempt, so a denied
    /// operation was decided once, between [`decided_from_ns`] and this
    /// completion, and granted nothing.
    ///
    /// [`decided_from_ns`]: Attempts::decided_from_ns
    pub fn first_denial(&self) -> Option<&'a Completed> {
        self.ops
            .iter()
            .copied()
            .filter(|c| c.is_denial())
            .min_by_key(|c| c.complete_ns)
    }

    /// The earliest invoke of an attempt that may have reached the
    /// decision: any but one that failed with a definite error.
    pub fn decided_from_ns(&self) -> Option<u64> {
        self.ops
            .iter()
            .filter(|c| c.outcome != Outcome::Fail || c.is_denial())
            .map(|c| c.invoke_ns)
            .min()
    }

    /// Ok if any attempt was ok, else info if any may have taken effect,
    /// else fail.
    pub fn outcome(&self) -> Outcome {
        if self.ops.iter().any(|c| c.outcome == Outcome::Ok) {
            Outcome::Ok
        } else if self.effective().next().is_some() {
            Outcome::Info
        } else {
            Outcome::Fail
        }
    }
}

/// Groups operations by `(f, key, idem)`; inspects and nemesis events have
/// no idempotency key and are left out.
pub fn by_idem(ops: &[Completed]) -> BTreeMap<IdemKey<'_>, Attempts<'_>> {
    let mut groups: BTreeMap<IdemKey<'_>, Attempts<'_>> = BTreeMap::new();
    for c in ops {
        let (Some(key), Some(idem)) = (c.op.key(), c.op.idem()) else {
            continue;
        };
        let id = IdemKey {
            f: c.op.name(),
            key,
            idem,
        };
        groups.entry(id).or_default().ops.push(c);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(t_ns: u64, process: u64, kind: EventKind, op: impl Into<Op>) -> Event {
        Event {
            t_ns,
            process,
            kind,
            op: op.into(),
            node: Some("n2".to_string()),
            phase: Phase::Main,
        }
    }

    fn acquire(idem: &str, lease: Option<u64>) -> Acquire {
        Acquire {
            key: "c1".to_string(),
            limit: 2,
            slot: 3,
            idem: idem.to_string(),
            ttl_ms: 2000,
            lease,
            token: lease,
            retry_after_ms: None,
            wait_ms: Some(50),
            error: None,
        }
    }

    fn release(idem: &str, was_held: Option<bool>) -> Release {
        Release {
            key: "c1".to_string(),
            limit: 2,
            slot: 3,
            idem: idem.to_string(),
            lease: 7,
            was_held,
            error: None,
        }
    }

    /// Two clients interleaved, one of which times out and goes on, a
    /// nemesis, and every kind of op.
    fn sample() -> History {
        use EventKind::*;
        let extend = Extend {
            key: "c1".to_string(),
            limit: 2,
            slot: 3,
            idem: "e1".to_string(),
            lease: 7,
            ttl_ms: 2000,
            error: Some(LEASE_LOST.to_string()),
        };
        let throttle = Throttle {
            key: "t1".to_string(),
            slot: 0,
            idem: "t-1".to_string(),
            kind: ThrottleKind::Gcra,
            limit: 10,
            period_ms: 1000,
            burst: 2,
            token: Some(12),
            error: None,
        };
        let inspect = Inspect {
            key: "c1".to_string(),
            slot: 3,
            holders: Some(vec![7, 9]),
        };
        let nemesis = Nemesis {
            name: "partition".to_string(),
            action: "start".to_string(),
            detail: "n1 | n2 n3".to_string(),
        };
        let mut events = vec![
            event(1, 0, Invoke, acquire("a1", None)),
            event(2, 1, Invoke, acquire("a2", None)),
            event(3, NEMESIS, Info, nemesis),
            event(4, 1, Info, acquire("a2", None)),
            event(5, 0, Ok, acquire("a1", Some(7))),
            event(6, 1, Invoke, release("r1", None)),
            event(7, 1, Ok, release("r1", Some(true))),
            event(8, 0, Invoke, extend.clone()),
            event(9, 0, Fail, extend),
            event(10, 0, Invoke, throttle.clone()),
            event(11, 0, Ok, throttle),
            event(12, 1, Invoke, inspect.clone()),
        ];
        events[4].node = None;
        events[11].phase = Phase::Durability;
        let mut answered = event(13, 1, Ok, inspect);
        answered.phase = Phase::Durability;
        events.push(answered);
        events.push(event(14, 0, Invoke, acquire("a3", None)));
        History { events }
    }

    #[test]
    fn jsonl_round_trips_through_a_file() {
        let path = std::env::temp_dir().join(format!("history-{}.jsonl", std::process::id()));
        let history = sample();
        history.write_jsonl(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), history.events.len());
        assert!(text.contains(r#""op":{"f":"acquire","key":"c1""#), "{text}");
        assert!(text.contains(r#""kind":"fail""#));
        assert!(text.contains(r#""phase":"durability""#));
        assert_eq!(History::read_jsonl(&path).unwrap(), history);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn the_writer_appends_whole_lines() {
        let mut out = Writer::new(Vec::new());
        for e in &sample().events[..3] {
            out.write(e).unwrap();
        }
        let bytes = out.into_inner();
        let text = String::from_utf8(bytes).unwrap();
        assert_eq!(text.lines().count(), 3);
        assert!(text.ends_with('\n'));
        let parsed = History::parse_jsonl(text.as_bytes()).unwrap();
        assert_eq!(parsed.events, sample().events[..3]);
    }

    #[test]
    fn absent_optional_fields_take_their_defaults() {
        let line = r#"{"t_ns":5,"process":2,"kind":"invoke","op":{"f":"acquire","key":"k","limit":1,"slot":0,"idem":"i","ttl_ms":10}}"#;
        let history = History::parse_jsonl(format!("\n{line}\n\n").as_bytes()).unwrap();
        let e = &history.events[0];
        assert_eq!(e.phase, Phase::Main);
        assert_eq!(e.node, None);
        let Op::Acquire(a) = &e.op else {
            panic!("{e:?}")
        };
        assert_eq!((a.lease, a.wait_ms, &a.error), (None, None, &None));
    }

    /// A line from before throttle kinds and before slots: no `kind`, and
    /// `partition` where `slot` is now.
    #[test]
    fn an_old_throttle_is_gcra_in_its_partition_and_kinds_round_trip() {
        let old = r#"{"t_ns":5,"process":2,"kind":"ok","op":{"f":"throttle","key":"t","partition":3,"idem":"i","limit":2,"period_ms":1000,"burst":1,"token":4}}"#;
        let history = History::parse_jsonl(old.as_bytes()).unwrap();
        let Op::Throttle(t) = &history.events[0].op else {
            panic!("{history:?}")
        };
        assert_eq!((t.kind, t.slot), (ThrottleKind::Gcra, 3));

        let rate_limit = Throttle {
            kind: ThrottleKind::RateLimit,
            burst: 0,
            ..t.clone()
        };
        let fenced = Fenced {
            key: "f0".to_string(),
            slot: 1,
            access: Access::Write,
            token: 9,
            read: Some(4),
            value: None,
            seq: Some(17),
            error: Some(STALE_TOKEN.to_string()),
        };
        let history = History {
            events: vec![
                event(1, 0, EventKind::Ok, rate_limit),
                event(2, 1, EventKind::Fail, fenced),
            ],
        };
        let mut text = Vec::new();
        for e in &history.events {
            serde_json::to_writer(&mut text, e).unwrap();
            text.push(b'\n');
        }
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains(r#""kind":"rate_limit""#), "{text}");
        assert!(
            text.contains(r#""f":"fenced","key":"f0","slot":1,"access":"write""#),
            "{text}"
        );
        assert_eq!(History::parse_jsonl(text.as_bytes()).unwrap(), history);
    }

    #[test]
    fn a_bad_line_is_named() {
        let text = "\n{\"t_ns\":1}\n";
        match History::parse_jsonl(text.as_bytes()) {
            Err(HistoryError::Parse { line: 2, .. }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn pairs_join_each_invoke_with_its_process_completion() {
        let ops = sample().pairs().unwrap();
        let summary: Vec<(u64, &str, Outcome, Option<u64>)> = ops
            .iter()
            .map(|c| (c.process, c.op.name(), c.outcome, c.complete_ns))
            .collect();
        assert_eq!(
            summary,
            [
                (0, "acquire", Outcome::Ok, Some(5)),
                (1, "acquire", Outcome::Info, Some(4)),
                (1, "release", Outcome::Ok, Some(7)),
                (0, "extend", Outcome::Fail, Some(9)),
                (0, "throttle", Outcome::Ok, Some(11)),
                (1, "inspect", Outcome::Ok, Some(13)),
                (0, "acquire", Outcome::Info, None),
            ]
        );
        let Op::Acquire(a) = &ops[0].op else { panic!() };
        assert_eq!(a.lease, Some(7), "the completion's results");
        assert_eq!(ops[0].node.as_deref(), Some("n2"), "the invoke's node");
        assert_eq!(ops[5].phase, Phase::Durability);
        assert!(ops[3].describe().contains("extend c1 lease 7"));
    }

    #[test]
    fn pairs_reject_broken_protocol() {
        use EventKind::*;
        let broken = [
            vec![
                event(1, 0, Invoke, acquire("a", None)),
                event(2, 0, Invoke, acquire("b", None)),
            ],
            vec![event(1, 0, Ok, acquire("a", Some(1)))],
            vec![
                event(1, 0, Invoke, acquire("a", None)),
                event(2, 0, Ok, release("a", Some(true))),
            ],
            vec![
                event(5, 0, Invoke, acquire("a", None)),
                event(4, 0, Ok, acquire("a", Some(1))),
            ],
        ];
        for events in broken {
            let history = History { events };
            let result = history.pairs();
            assert!(
                matches!(result, Err(HistoryError::Malformed { .. })),
                "{history:?} gave {result:?}"
            );
        }
    }

    #[test]
    fn retries_group_by_idempotency_key() {
        use EventKind::*;
        let history = History {
            events: vec![
                event(1, 0, Invoke, acquire("a", None)),
                event(2, 0, Fail, acquire("a", None)),
                event(3, 0, Invoke, acquire("a", None)),
                event(4, 0, Info, acquire("a", None)),
                event(5, 0, Invoke, acquire("a", None)),
                event(9, 0, Ok, acquire("a", Some(7))),
                event(6, 1, Invoke, acquire("a", None)),
                event(8, 1, Ok, acquire("a", Some(7))),
                event(10, 0, Invoke, release("a", None)),
            ],
        };
        let ops = history.pairs().unwrap();
        let groups = by_idem(&ops);
        assert_eq!(groups.len(), 2, "acquire and release of one idem differ");
        let id = IdemKey {
            f: "acquire",
            key: "c1",
            idem: "a",
        };
        let attempts = &groups[&id];
        assert_eq!(attempts.ops.len(), 4);
        assert_eq!(
            attempts.effect_from_ns(),
            Some(3),
            "the failed attempt did nothing"
        );
        assert_eq!(attempts.last_invoke_ns(), Some(6));
        assert_eq!(attempts.first_ok().unwrap().complete_ns, Some(8));
        assert_eq!(attempts.outcome(), Outcome::Ok);
    }
}
