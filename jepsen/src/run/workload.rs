//! The clients: workers that acquire, extend, release, inspect and pass
//! throttles and rate limits on a few keys with small limits, each call one
//! recorded operation against one chosen node, and (the `fenced` workload)
//! read and write the harness's fenced [`Resources`] under their leases'
//! tokens. An operation whose outcome is unknown (`info`) is retried with
//! the same idempotency key through another node.

use std::sync::Arc;
use std::time::{Duration, Instant};

use leasehold::proto::v1::acquire_response::Result as AcquireResult;
use leasehold::proto::v1::constraint::Kind;
use leasehold::proto::v1::{
    self, AcquireRequest, Constraint, ConstraintKind, ExtendRequest, InspectRequest, ReleaseRequest,
};
use leasehold::slot::slot_of;
use leasehold_jepsen::history::{self, Access, EventKind, Op, Phase, ThrottleKind, STALE_TOKEN};

use super::client::{call, Answer, Clients};
use super::recorder::Recorder;
use super::resource::Resources;
use super::rng::Rng;
use super::schedule::NodeId;

/// Deadline of a call that does not wait.
const CALL_TIMEOUT: Duration = Duration::from_millis(1_000);
/// Attempts of one operation whose outcome stayed unknown, in the main
/// phase; the final phases retry until their deadline.
const MAIN_ATTEMPTS: u32 = 3;
/// Pause before retrying an unknown outcome.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Leases of the `leases` workload live this long, in ms.
const LEASE_TTL_MS: (u64, u64) = (1_000, 3_000);
/// A waiting acquire waits up to this long, in ms.
const WAIT_MS: (u64, u64) = (300, 2_000);
/// Leases of the `linear` workload outlive the run: an hour, which the
/// linearizability checker takes as never expiring.
const LINEAR_TTL_MS: u64 = 3_600_000;
/// The window of the `rate-limit` workload's keys, in ms.
const RATE_LIMIT_PERIOD_MS: u64 = 1_000;
/// Leases of the `fenced` workload live this long, in ms: short, so that
/// holders outlive them.
const FENCED_TTL_MS: (u64, u64) = (300, 800);
/// Percent of `fenced` rounds whose client sleeps past its lease's TTL
/// before its write: a zombie, to be refused once another holder came.
const ZOMBIE_PERCENT: u64 = 30;
/// How far past its TTL a zombie sleeps, in ms.
const OVERSLEEP_MS: (u64, u64) = (50, 600);
/// Leases taken in the final phase outlive the durability phase.
const FINAL_TTL_MS: u64 = 120_000;
/// How long a final-phase operation keeps retrying an unknown outcome.
const FINAL_GIVE_UP: Duration = Duration::from_secs(30);
/// Process ids of the final and durability phases, clear of workers'.
pub const FINAL_PROCESS: u64 = 1_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Acquire (some waiting), extend and release short leases.
    Leases,
    /// Admissions through GCRA throttles.
    Throttle,
    /// Leases that outlive the run, for the linearizability checker.
    Linear,
    /// Admissions through sliding-window rate limits of 1–3 per second.
    RateLimit,
    /// Read-modify-writes of a harness-side resource under short leases'
    /// fencing tokens; some holders sleep past their TTL.
    Fenced,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Leases => "leases",
            Workload::Throttle => "throttle",
            Workload::Linear => "linear",
            Workload::RateLimit => "rate-limit",
            Workload::Fenced => "fenced",
        }
    }

    /// The keys this workload uses, each the scope and constraint key at
    /// once, with its limits and its slot in a cluster of `slot_count`
    /// slots.
    pub fn keys(self, slot_count: u32) -> Vec<Key> {
        let key = |name: String, kind| Key {
            slot: slot_of(&name, slot_count),
            name,
            kind,
        };
        match self {
            Workload::Leases => (0..8)
                .map(|i| key(format!("c{i}"), KeyKind::Concurrency { limit: 1 + i % 3 }))
                .collect(),
            Workload::Linear => (0..4)
                .map(|i| key(format!("l{i}"), KeyKind::Concurrency { limit: 1 + i % 2 }))
                .collect(),
            Workload::Throttle => (0..4)
                .map(|i| {
                    let kind = KeyKind::Throttle {
                        limit: 2 + i % 3,
                        period_ms: 1_000,
                        burst: i % 3,
                    };
                    key(format!("t{i}"), kind)
                })
                .collect(),
            Workload::RateLimit => (0..4)
                .map(|i| {
                    let kind = KeyKind::RateLimit {
                        limit: 1 + i % 3,
                        period_ms: RATE_LIMIT_PERIOD_MS,
                    };
                    key(format!("r{i}"), kind)
                })
                .collect(),
            // Few keys, so that holders follow one another closely.
            Workload::Fenced => (0..3)
                .map(|i| key(format!("f{i}"), KeyKind::Concurrency { limit: 1 }))
                .collect(),
        }
    }

    /// How long every lease of the main phase can outlive its last call:
    /// the final phase waits this long after healing.
    pub fn settle_ms(self) -> u64 {
        match self {
            Workload::Leases => WAIT_MS.1 + CALL_TIMEOUT.as_millis() as u64 + LEASE_TTL_MS.1,
            Workload::Fenced => WAIT_MS.1 + CALL_TIMEOUT.as_millis() as u64 + FENCED_TTL_MS.1,
            // Throttle buckets drain within a period; linear leases are
            // released by the final phase instead.
            Workload::Throttle => 1_000,
            // A window drains within a period; a second covers a clock
            // running fast.
            Workload::RateLimit => 2 * RATE_LIMIT_PERIOD_MS,
            Workload::Linear => 0,
        }
    }

    /// The TTL of leases taken in the final phase: long enough to outlive
    /// the durability phase, and never expiring where the workload's own
    /// leases never do.
    pub fn final_ttl_ms(self) -> u64 {
        match self {
            Workload::Linear => LINEAR_TTL_MS,
            Workload::Leases | Workload::Throttle | Workload::RateLimit | Workload::Fenced => {
                FINAL_TTL_MS
            }
        }
    }

    /// Client workers per node, unless `--concurrency` says otherwise.
    pub fn workers_per_node(self) -> u64 {
        match self {
            // Many clients on small limits: the window is often full.
            Workload::RateLimit => 4,
            Workload::Fenced => 3,
            Workload::Leases | Workload::Throttle | Workload::Linear => 2,
        }
    }

    /// Pause between one worker's operations, in ms.
    fn pace_ms(self) -> (u64, u64) {
        match self {
            Workload::Linear => (50, 200),
            Workload::RateLimit => (0, 40),
            Workload::Leases | Workload::Throttle | Workload::Fenced => (10, 80),
        }
    }
}

#[derive(Clone, Debug)]
pub enum KeyKind {
    Concurrency {
        limit: u32,
    },
    Throttle {
        limit: u32,
        period_ms: u64,
        burst: u32,
    },
    RateLimit {
        limit: u32,
        period_ms: u64,
    },
}

#[derive(Clone, Debug)]
pub struct Key {
    pub name: String,
    /// The hash slot of the key's scope: its lease ids' and tokens' namespace.
    pub slot: u32,
    pub kind: KeyKind,
}

impl Key {
    fn constraint(&self) -> Constraint {
        let kind = match self.kind {
            KeyKind::Concurrency { limit } => Kind::Concurrency(v1::Concurrency {
                key: self.name.clone(),
                limit,
            }),
            KeyKind::Throttle {
                limit,
                period_ms,
                burst,
            } => Kind::Throttle(v1::Throttle {
                key: self.name.clone(),
                limit,
                period_ms,
                burst,
            }),
            KeyKind::RateLimit { limit, period_ms } => Kind::RateLimit(v1::RateLimit {
                key: self.name.clone(),
                limit,
                period_ms,
            }),
        };
        Constraint { kind: Some(kind) }
    }

    fn limit(&self) -> u32 {
        match self.kind {
            KeyKind::Concurrency { limit }
            | KeyKind::Throttle { limit, .. }
            | KeyKind::RateLimit { limit, .. } => limit,
        }
    }
}

/// What every client shares.
pub struct Ctx {
    pub clients: Clients,
    pub recorder: Arc<Recorder>,
    pub keys: Vec<Key>,
    pub workload: Workload,
    /// The `fenced` workload's resources.
    pub resources: Resources,
}

/// One call, before it is sent.
#[derive(Clone, Debug)]
pub enum Call {
    Acquire {
        key: Key,
        idem: String,
        ttl_ms: u64,
        wait_ms: Option<u64>,
    },
    Throttle {
        key: Key,
        idem: String,
    },
    Extend {
        key: Key,
        idem: String,
        lease: u64,
        ttl_ms: u64,
    },
    Release {
        key: Key,
        idem: String,
        lease: u64,
    },
    Inspect {
        key: Key,
    },
}

/// A client process: at most one operation outstanding.
pub struct Proc {
    pub id: u64,
    pub phase: Phase,
    pub ctx: Arc<Ctx>,
}

impl Proc {
    /// Performs `call` through `node`, retrying an unknown outcome through
    /// the next nodes with the same idempotency key, until `attempts` are
    /// spent or `give_up` passes. The last completion's kind and op, and
    /// whether any attempt's outcome was unknown: such an attempt may still
    /// take effect after a later one was denied.
    pub async fn perform(
        &self,
        call: &Call,
        mut node: NodeId,
        attempts: u32,
        give_up: Instant,
    ) -> (EventKind, Op, bool) {
        let ids = self.ctx.clients.ids();
        let mut tries = 0;
        loop {
            let (kind, op) = self.attempt(call, node).await;
            tries += 1;
            if kind != EventKind::Info || tries >= attempts || Instant::now() >= give_up {
                return (kind, op, tries > 1 || kind == EventKind::Info);
            }
            let at = ids.iter().position(|&id| id == node).unwrap_or(0);
            node = ids[(at + 1) % ids.len()];
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// Retries until a definite outcome or [`FINAL_GIVE_UP`].
    pub async fn perform_until_definite(&self, call: &Call, node: NodeId) -> (EventKind, Op) {
        let (kind, op, _) = self
            .perform(call, node, u32::MAX, Instant::now() + FINAL_GIVE_UP)
            .await;
        (kind, op)
    }

    fn record(&self, kind: EventKind, op: Op, node: Option<NodeId>) {
        self.ctx
            .recorder
            .record(self.id, kind, op, node, self.phase);
    }

    /// One recorded op on `key`'s fenced resource with `token`: a read, or
    /// with `write: Some(read)`, a write of `read + 1`. The value on ok.
    pub fn access(&self, key: &Key, token: u64, write: Option<u64>) -> Option<u64> {
        let mut f = history::Fenced {
            key: key.name.clone(),
            slot: key.slot,
            access: if write.is_some() {
                Access::Write
            } else {
                Access::Read
            },
            token,
            read: write,
            value: None,
            seq: None,
            error: None,
        };
        self.record(EventKind::Invoke, Op::Fenced(f.clone()), None);
        let answer = self.ctx.resources.access(&key.name, token, write);
        (f.seq, f.value) = (Some(answer.seq), answer.value);
        let kind = if answer.value.is_some() {
            EventKind::Ok
        } else {
            f.error = Some(STALE_TOKEN.to_string());
            EventKind::Fail
        };
        self.record(kind, Op::Fenced(f), None);
        answer.value
    }

    /// One recorded call: invoke, the call, its completion.
    async fn attempt(&self, call: &Call, node: NodeId) -> (EventKind, Op) {
        let mut op = invoke_op(call);
        self.record(EventKind::Invoke, op.clone(), Some(node));
        let kind = match call {
            Call::Acquire { .. } | Call::Throttle { .. } => self.acquire(call, node, &mut op).await,
            Call::Extend {
                key,
                idem,
                lease,
                ttl_ms,
            } => {
                let message = ExtendRequest {
                    scope: key.name.clone(),
                    lease_id: *lease,
                    ttl_ms: *ttl_ms,
                    idempotency_key: idem.clone(),
                };
                let answer =
                    call_with(CALL_TIMEOUT, |t| self.ctx.clients.send(node, message, t)).await;
                complete(&mut op, answer, |_, _| EventKind::Ok)
            }
            Call::Release { key, idem, lease } => {
                let message = ReleaseRequest {
                    scope: key.name.clone(),
                    lease_id: *lease,
                    idempotency_key: idem.clone(),
                };
                let answer =
                    call_with(CALL_TIMEOUT, |t| self.ctx.clients.send(node, message, t)).await;
                complete(&mut op, answer, |op, reply| {
                    if let Op::Release(r) = op {
                        r.was_held = Some(reply.was_held);
                    }
                    EventKind::Ok
                })
            }
            Call::Inspect { key } => {
                let message = InspectRequest {
                    scope: key.name.clone(),
                    kind: ConstraintKind::Concurrency as i32,
                    key: key.name.clone(),
                };
                let answer = call_with(CALL_TIMEOUT, |t| {
                    let mut client = self.ctx.clients.to(node);
                    let request = self.ctx.clients.request(message, t);
                    async move { client.inspect(request).await }
                })
                .await;
                complete(&mut op, answer, |op, reply| {
                    if let Op::Inspect(i) = op {
                        i.holders = Some(reply.holders.iter().map(|h| h.lease_id).collect());
                    }
                    EventKind::Ok
                })
            }
        };
        self.record(kind, op.clone(), Some(node));
        (kind, op)
    }

    async fn acquire(&self, call: &Call, node: NodeId, op: &mut Op) -> EventKind {
        let (key, idem, ttl_ms, wait_ms) = match call {
            Call::Acquire {
                key,
                idem,
                ttl_ms,
                wait_ms,
            } => (key, idem, *ttl_ms, *wait_ms),
            Call::Throttle { key, idem } => (key, idem, LEASE_TTL_MS.0, None),
            _ => unreachable!("acquire is called for acquires"),
        };
        let message = AcquireRequest {
            scope: key.name.clone(),
            constraints: vec![key.constraint()],
            amount: 1,
            lease_ttl_ms: ttl_ms,
            idempotency_key: idem.clone(),
            wait_ms,
            ..AcquireRequest::default()
        };
        let timeout = CALL_TIMEOUT + Duration::from_millis(wait_ms.unwrap_or(0));
        let answer = call_with(timeout, |t| self.ctx.clients.send(node, message, t)).await;
        complete(op, answer, |op, reply| match (&reply.result, op) {
            (Some(AcquireResult::Granted(grant)), Op::Acquire(a)) => {
                a.lease = Some(grant.lease_id);
                a.token = Some(grant.fencing_token);
                EventKind::Ok
            }
            (Some(AcquireResult::Granted(grant)), Op::Throttle(t)) => {
                t.token = Some(grant.fencing_token);
                EventKind::Ok
            }
            (Some(AcquireResult::Denied(denial)), Op::Acquire(a)) => {
                a.retry_after_ms = denial.retry_after_ms;
                EventKind::Fail
            }
            (Some(AcquireResult::Denied(_)), _) => EventKind::Fail,
            // A reply that is neither grant nor denial breaks the contract;
            // nothing can be concluded from it.
            _ => EventKind::Info,
        })
    }
}

async fn call_with<T, F, Fut>(timeout: Duration, send: F) -> Answer<T>
where
    F: FnOnce(Duration) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    call(timeout, send).await
}

/// Fills the completion: `ok` decides on a reply; a definite error sets
/// `error` and fails; an unknown outcome is `info`.
fn complete<T>(
    op: &mut Op,
    answer: Answer<T>,
    ok: impl FnOnce(&mut Op, &T) -> EventKind,
) -> EventKind {
    match answer {
        Answer::Ok(reply) => ok(op, &reply),
        Answer::Fail(code) => {
            set_error(op, code.to_lowercase());
            EventKind::Fail
        }
        Answer::Info => EventKind::Info,
    }
}

fn set_error(op: &mut Op, error: String) {
    match op {
        Op::Acquire(a) => a.error = Some(error),
        Op::Extend(e) => e.error = Some(error),
        Op::Release(r) => r.error = Some(error),
        Op::Throttle(t) => t.error = Some(error),
        Op::Inspect(_) | Op::Fenced(_) | Op::Nemesis(_) => {}
    }
}

/// The op as invoked: request fields only.
fn invoke_op(call: &Call) -> Op {
    match call {
        Call::Acquire {
            key,
            idem,
            ttl_ms,
            wait_ms,
        } => Op::Acquire(history::Acquire {
            key: key.name.clone(),
            limit: key.limit(),
            slot: key.slot,
            idem: idem.clone(),
            ttl_ms: *ttl_ms,
            lease: None,
            token: None,
            retry_after_ms: None,
            wait_ms: *wait_ms,
            error: None,
        }),
        Call::Throttle { key, idem } => {
            let (kind, limit, period_ms, burst) = match key.kind {
                KeyKind::Throttle {
                    limit,
                    period_ms,
                    burst,
                } => (ThrottleKind::Gcra, limit, period_ms, burst),
                KeyKind::RateLimit { limit, period_ms } => {
                    (ThrottleKind::RateLimit, limit, period_ms, 0)
                }
                KeyKind::Concurrency { .. } => {
                    unreachable!("throttle calls name throttle or rate-limit keys")
                }
            };
            Op::Throttle(history::Throttle {
                key: key.name.clone(),
                slot: key.slot,
                idem: idem.clone(),
                kind,
                limit,
                period_ms,
                burst,
                token: None,
                error: None,
            })
        }
        Call::Extend {
            key,
            idem,
            lease,
            ttl_ms,
        } => Op::Extend(history::Extend {
            key: key.name.clone(),
            limit: key.limit(),
            slot: key.slot,
            idem: idem.clone(),
            lease: *lease,
            ttl_ms: *ttl_ms,
            error: None,
        }),
        Call::Release { key, idem, lease } => Op::Release(history::Release {
            key: key.name.clone(),
            limit: key.limit(),
            slot: key.slot,
            idem: idem.clone(),
            lease: *lease,
            was_held: None,
            error: None,
        }),
        Call::Inspect { key } => Op::Inspect(history::Inspect {
            key: key.name.clone(),
            slot: key.slot,
            holders: None,
        }),
    }
}

/// A lease a worker believes it holds.
struct Held {
    key: Key,
    lease: u64,
}

/// One worker of the main phase, until `deadline`. Returns the acquires
/// and releases of which some attempt's outcome it never learned.
pub async fn worker(ctx: Arc<Ctx>, index: u64, seed: u64, deadline: Instant) -> Vec<Call> {
    let mut rng = Rng::fork(seed, 1_000 + index);
    let ids = ctx.clients.ids();
    let proc = Proc {
        id: index,
        phase: Phase::Main,
        ctx: Arc::clone(&ctx),
    };
    if ctx.workload == Workload::Fenced {
        fenced_worker(&proc, &mut rng, deadline).await;
        return Vec::new();
    }
    let mut held: Option<Held> = None;
    let mut unknown = Vec::new();
    let mut count = 0u64;
    while Instant::now() < deadline {
        count += 1;
        let idem = format!("p{index}-{count}");
        let node = *rng.pick(&ids);
        let call = next_call(&ctx, &mut rng, &mut held, idem);
        let (kind, op, uncertain) = proc.perform(&call, node, MAIN_ATTEMPTS, deadline).await;
        if uncertain && matches!(call, Call::Acquire { .. } | Call::Release { .. }) {
            unknown.push(call.clone());
        }
        if let (EventKind::Ok, Op::Acquire(a)) = (kind, &op) {
            if let (Call::Acquire { key, .. }, Some(lease)) = (&call, a.lease) {
                held = Some(Held {
                    key: key.clone(),
                    lease,
                });
            }
        }
        if let (EventKind::Ok, Call::Extend { key, lease, .. }) = (kind, &call) {
            held = Some(Held {
                key: key.clone(),
                lease: *lease,
            });
        }
        let (lo, hi) = ctx.workload.pace_ms();
        tokio::time::sleep(Duration::from_millis(rng.range(lo, hi))).await;
    }
    unknown
}

/// One worker of the `fenced` workload, until `deadline`: acquire a key
/// (often waiting for it), read its resource, write back one more, and
/// mostly release.
async fn fenced_worker(proc: &Proc, rng: &mut Rng, deadline: Instant) {
    let ids = proc.ctx.clients.ids();
    let mut count = 0u64;
    while Instant::now() < deadline {
        count += 1;
        let key = rng.pick(&proc.ctx.keys).clone();
        let node = *rng.pick(&ids);
        let ttl_ms = rng.range(FENCED_TTL_MS.0, FENCED_TTL_MS.1);
        let acquire = Call::Acquire {
            key: key.clone(),
            idem: format!("p{}-{count}", proc.id),
            ttl_ms,
            wait_ms: rng.chance(60).then(|| rng.range(WAIT_MS.0, WAIT_MS.1)),
        };
        let (kind, op, _) = proc.perform(&acquire, node, MAIN_ATTEMPTS, deadline).await;
        if let (EventKind::Ok, Op::Acquire(a)) = (kind, op) {
            if let (Some(lease), Some(token)) = (a.lease, a.token) {
                fenced_update(proc, rng, &key, token, ttl_ms).await;
                // Some leases are left to expire rather than released.
                if rng.chance(80) {
                    count += 1;
                    let release = Call::Release {
                        key,
                        idem: format!("p{}-{count}", proc.id),
                        lease,
                    };
                    proc.perform(&release, node, MAIN_ATTEMPTS, deadline).await;
                }
            }
        }
        let (lo, hi) = proc.ctx.workload.pace_ms();
        tokio::time::sleep(Duration::from_millis(rng.range(lo, hi))).await;
    }
}

/// Reads `key`'s resource with `token` and writes back one more; a zombie
/// sleeps past its lease's `ttl_ms` in between.
async fn fenced_update(proc: &Proc, rng: &mut Rng, key: &Key, token: u64, ttl_ms: u64) {
    let Some(read) = proc.access(key, token, None) else {
        return;
    };
    let hold_ms = if rng.chance(ZOMBIE_PERCENT) {
        ttl_ms + rng.range(OVERSLEEP_MS.0, OVERSLEEP_MS.1)
    } else {
        rng.range(0, ttl_ms / 4)
    };
    tokio::time::sleep(Duration::from_millis(hold_ms)).await;
    proc.access(key, token, Some(read));
}

/// Retries, as worker `index` and with the same idempotency keys, every
/// call with an attempt of unknown outcome, until each has a definite
/// answer. Run once the healed cluster is stable, when no attempt is still
/// in flight: an attempt that took effect is replayed, naming its lease,
/// which nothing else would; a denial now means none did. So the final
/// phase releases only leases the history names.
pub async fn resolve(ctx: Arc<Ctx>, index: u64, unknown: Vec<Call>) {
    let proc = Proc {
        id: index,
        phase: Phase::Main,
        ctx: Arc::clone(&ctx),
    };
    let ids = ctx.clients.ids();
    for (i, call) in unknown.iter().enumerate() {
        proc.perform_until_definite(call, ids[i % ids.len()]).await;
    }
}

/// The worker's next call; takes the held lease if the call ends or
/// extends it (an ok extend gives it back).
fn next_call(ctx: &Ctx, rng: &mut Rng, held: &mut Option<Held>, idem: String) -> Call {
    let key = rng.pick(&ctx.keys).clone();
    match ctx.workload {
        Workload::Throttle | Workload::RateLimit => Call::Throttle { key, idem },
        Workload::Fenced => unreachable!("fenced workers make their own calls"),
        Workload::Leases | Workload::Linear => {
            let linear = ctx.workload == Workload::Linear;
            if let Some(h) = held.take() {
                let ttl_ms = if linear {
                    LINEAR_TTL_MS
                } else {
                    rng.range(LEASE_TTL_MS.0, LEASE_TTL_MS.1)
                };
                if rng.chance(if linear { 20 } else { 40 }) {
                    return Call::Extend {
                        key: h.key,
                        idem,
                        lease: h.lease,
                        ttl_ms,
                    };
                }
                // Some leases are left to expire rather than released.
                if linear || rng.chance(85) {
                    return Call::Release {
                        key: h.key,
                        idem,
                        lease: h.lease,
                    };
                }
            }
            if rng.chance(if linear { 25 } else { 10 }) {
                return Call::Inspect { key };
            }
            let (ttl_ms, wait_ms) = if linear {
                (LINEAR_TTL_MS, None)
            } else {
                let ttl_ms = rng.range(LEASE_TTL_MS.0, LEASE_TTL_MS.1);
                let wait_ms = rng.chance(30).then(|| rng.range(WAIT_MS.0, WAIT_MS.1));
                (ttl_ms, wait_ms)
            };
            Call::Acquire {
                key,
                idem,
                ttl_ms,
                wait_ms,
            }
        }
    }
}
