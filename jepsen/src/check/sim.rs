//! A simulated server and concurrent clients producing histories: a
//! correct server's must pass every checker, a buggy one's must not.
//!
//! The server applies each op at one instant between invoke and
//! completion, on the harness clock. A client whose call times out reports
//! `info` (the op applied or not) and retries with the same idempotency
//! key. The server records every outcome but a lost lease under its
//! idempotency key, a denial as much as a grant, and replays it.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};

use crate::history::{
    Acquire, Event, EventKind, Extend, History, Inspect, Op, Phase, Release, Throttle,
    ThrottleKind, LEASE_LOST,
};

use super::linearizable::NO_EXPIRY_TTL_MS_MIN;

const MS: u64 = 1_000_000;

/// (key, limit, ttl_ms) of the concurrency keys.
const KEYS: [(&str, u32, u64); 3] = [
    ("c0", 1, 200),
    ("c1", 2, 200),
    ("h0", 2, NO_EXPIRY_TTL_MS_MIN),
];

/// A key no client uses: the final phase takes it for good, so the
/// durability inspects always have a lease to find.
const KEPT_KEY: &str = "kept";

/// The throttle: 20 per second, burst 2.
const RATE: (u32, u64, u32) = (20, 1000, 2);

/// Attempts after which a timed-out op is given up.
const TRIES_MAX: u32 = 5;

/// The attempt count of a deliberate resend: it is not retried again.
const REPLAYED: u32 = TRIES_MAX - 1;

/// A defect to plant in the server.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Bug {
    None,
    /// Grants one lease beyond the limit.
    OverGrant,
    /// Denies one lease short of the limit.
    UnderGrant,
    /// Leases expire at half their TTL.
    EarlyExpiry,
    /// Extends revive expired leases.
    ZombieExtend,
    /// The throttle admits at twice its rate.
    FastThrottle,
    /// Retries are fresh requests.
    NoDedup,
    /// Throttle tokens count apart from lease tokens.
    SplitTokens,
    /// Leases are forgotten on restart.
    Amnesia,
}

#[derive(Debug, Clone, Copy)]
enum Answer {
    Granted(u64),
    Denied,
    Extended,
    Lost,
    Released(bool),
    Admitted(u64),
    Throttled,
}

struct Server {
    bug: Bug,
    next_id: u64,
    /// lease → (key, expiry).
    leases: BTreeMap<u64, (String, u64)>,
    /// Recorded outcomes by (f, idem), denials included, replayed to
    /// retries.
    dedup: HashMap<(&'static str, String), Answer>,
    tat_ns: u64,
    /// Throttle tokens under [`Bug::SplitTokens`].
    next_throttle_token: u64,
}

impl Server {
    fn new(bug: Bug) -> Server {
        Server {
            bug,
            next_id: 1,
            leases: BTreeMap::new(),
            dedup: HashMap::new(),
            tat_ns: 0,
            next_throttle_token: 0,
        }
    }

    fn live(&self, key: &str, t_ns: u64) -> Vec<u64> {
        let live = self
            .leases
            .iter()
            .filter(|(_, (k, e))| k == key && *e > t_ns);
        live.map(|(id, _)| *id).collect()
    }

    fn ttl_ns(&self, ttl_ms: u64) -> u64 {
        let ns = ttl_ms * MS;
        if self.bug == Bug::EarlyExpiry {
            ns / 2
        } else {
            ns
        }
    }

    fn apply(&mut self, op: &Op, t_ns: u64) -> Answer {
        let id = (op.name(), op.idem().unwrap_or_default().to_string());
        if let Some(answer) = self.dedup.get(&id).filter(|_| self.bug != Bug::NoDedup) {
            return *answer;
        }
        let answer = match op {
            Op::Acquire(a) => {
                let limit = match self.bug {
                    Bug::OverGrant => a.limit as usize + 1,
                    Bug::UnderGrant => a.limit as usize - 1,
                    _ => a.limit as usize,
                };
                if self.live(&a.key, t_ns).len() >= limit {
                    Answer::Denied
                } else {
                    self.next_id += 1;
                    let expiry_ns = t_ns + self.ttl_ns(a.ttl_ms);
                    self.leases.insert(self.next_id, (a.key.clone(), expiry_ns));
                    Answer::Granted(self.next_id)
                }
            }
            Op::Extend(e) => {
                let ttl_ns = self.ttl_ns(e.ttl_ms);
                match self.leases.get_mut(&e.lease) {
                    Some((_, expiry_ns)) if *expiry_ns > t_ns || self.bug == Bug::ZombieExtend => {
                        *expiry_ns = t_ns + ttl_ns;
                        Answer::Extended
                    }
                    _ => return Answer::Lost,
                }
            }
            Op::Release(r) => {
                let was = self.leases.remove(&r.lease);
                Answer::Released(was.is_some_and(|(_, e)| e > t_ns))
            }
            Op::Throttle(th) => {
                let mut t = th.period_ms * MS / u64::from(th.limit);
                if self.bug == Bug::FastThrottle {
                    t /= 2;
                }
                if self.tat_ns > t_ns + u64::from(th.burst) * t {
                    Answer::Throttled
                } else {
                    self.tat_ns = self.tat_ns.max(t_ns) + t;
                    if self.bug == Bug::SplitTokens {
                        self.next_throttle_token += 1;
                        Answer::Admitted(self.next_throttle_token)
                    } else {
                        self.next_id += 1;
                        Answer::Admitted(self.next_id)
                    }
                }
            }
            Op::Inspect(_) | Op::Fenced(_) | Op::Nemesis(_) => {
                unreachable!("clients send none of these")
            }
        };
        self.dedup.insert(id, answer);
        answer
    }
}

/// The op with the server's answer filled in, and whether it succeeded.
fn answered(mut op: Op, answer: Answer) -> (Op, EventKind) {
    let ok = match (&mut op, answer) {
        (Op::Acquire(a), Answer::Granted(l)) => {
            (a.lease, a.token) = (Some(l), Some(l));
            true
        }
        (Op::Extend(_), Answer::Extended) => true,
        (Op::Extend(e), Answer::Lost) => {
            e.error = Some(LEASE_LOST.to_string());
            false
        }
        (Op::Release(r), Answer::Released(was)) => {
            r.was_held = Some(was);
            true
        }
        (Op::Throttle(t), Answer::Admitted(token)) => {
            t.token = Some(token);
            true
        }
        _ => false,
    };
    (op, if ok { EventKind::Ok } else { EventKind::Fail })
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[derive(Default)]
struct Client {
    /// (key index, lease) held.
    lease: Option<(usize, u64)>,
    /// An op that timed out, to retry, and how often it was tried.
    retry: Option<(Op, u32)>,
    /// The op in flight: the request, the answer if applied, and whether
    /// the call times out.
    flight: Option<(Op, Option<Answer>, bool)>,
    seq: u64,
}

/// What happens next to a process: invoke, apply, complete.
type Due = Reverse<(u64, u8, usize)>;

struct Sim {
    rng: Rng,
    server: Server,
    clients: Vec<Client>,
    events: Vec<Event>,
    due: BinaryHeap<Due>,
    invokes_left: usize,
}

/// A history of `invokes` ops by `processes` clients, then a final phase
/// and inspects after a (simulated) restart.
pub fn history(seed: u64, processes: usize, invokes: usize, bug: Bug) -> History {
    let mut sim = Sim {
        rng: Rng(seed),
        server: Server::new(bug),
        clients: (0..processes).map(|_| Client::default()).collect(),
        events: Vec::new(),
        due: (0..processes).map(|p| Reverse((0, 0, p))).collect(),
        invokes_left: invokes,
    };
    let mut now_ns = 0;
    while let Some(Reverse((t_ns, stage, p))) = sim.due.pop() {
        now_ns = t_ns;
        match stage {
            0 => sim.invoke(p, t_ns),
            1 => sim.apply(p, t_ns),
            _ => sim.complete(p, t_ns),
        }
    }
    sim.afterwards(now_ns + 2000 * MS);
    History { events: sim.events }
}

impl Sim {
    fn emit(&mut self, t_ns: u64, process: u64, kind: EventKind, op: Op, phase: Phase) {
        self.events.push(Event {
            t_ns,
            process,
            kind,
            op,
            node: None,
            phase,
        });
    }

    fn invoke(&mut self, p: usize, t_ns: u64) {
        if self.invokes_left == 0 {
            return;
        }
        self.invokes_left -= 1;
        let op = match self.clients[p].retry.as_ref() {
            Some((op, _)) => op.clone(),
            None => self.choose(p),
        };
        self.emit(t_ns, p as u64, EventKind::Invoke, op.clone(), Phase::Main);
        let times_out = self.rng.chance(4);
        let applies = !times_out || self.rng.chance(50);
        self.clients[p].flight = Some((op, None, times_out));
        let step_ns = self.rng.below(3 * MS);
        self.due
            .push(Reverse((t_ns + step_ns, if applies { 1 } else { 2 }, p)));
    }

    fn apply(&mut self, p: usize, t_ns: u64) {
        let (op, answer, _) = self.clients[p].flight.as_mut().expect("in flight");
        *answer = Some(self.server.apply(op, t_ns));
        let step_ns = self.rng.below(3 * MS);
        self.due.push(Reverse((t_ns + step_ns, 2, p)));
    }

    fn complete(&mut self, p: usize, t_ns: u64) {
        let (op, answer, times_out) = self.clients[p].flight.take().expect("in flight");
        let client = &mut self.clients[p];
        if times_out {
            let tries = client.retry.take().map_or(1, |(_, n)| n + 1);
            if tries < TRIES_MAX {
                client.retry = Some((op.clone(), tries));
            }
            self.emit(t_ns, p as u64, EventKind::Info, op, Phase::Main);
        } else {
            client.retry = None;
            let answer = answer.expect("applied unless timed out");
            match (&op, answer) {
                (Op::Acquire(a), Answer::Granted(l)) => {
                    let key = KEYS.iter().position(|k| k.0 == a.key).expect("known key");
                    client.lease = Some((key, l));
                    // Probes the dedup table: resends the acquire once,
                    // as a client that never saw the answer would.
                    if self.rng.chance(5) {
                        client.retry = Some((op.clone(), REPLAYED));
                    }
                }
                (Op::Extend(_), Answer::Lost) | (Op::Release(_), _) => client.lease = None,
                _ => {}
            }
            let (op, kind) = answered(op, answer);
            self.emit(t_ns, p as u64, kind, op, Phase::Main);
        }
        // Now and then a holder stalls past its lease's TTL.
        let short =
            matches!(self.clients[p].lease, Some((k, _)) if KEYS[k].2 < NO_EXPIRY_TTL_MS_MIN);
        let think_ns = if short && self.rng.chance(2) {
            300 * MS
        } else {
            self.rng.below(5 * MS)
        };
        self.due.push(Reverse((t_ns + think_ns, 0, p)));
    }

    /// A new op for process `p`: extend or release its lease, or acquire or
    /// pass the throttle.
    fn choose(&mut self, p: usize) -> Op {
        let roll = self.rng.below(100);
        let client = &mut self.clients[p];
        client.seq += 1;
        let idem = format!("p{p}-{}", client.seq);
        if let Some((k, lease)) = client.lease {
            let (key, limit, ttl_ms) = KEYS[k];
            // Short leases are sometimes left to expire.
            if roll < 10 && ttl_ms < NO_EXPIRY_TTL_MS_MIN {
                client.lease = None;
            } else if roll < 60 {
                return Op::Extend(Extend {
                    key: key.to_string(),
                    limit,
                    slot: 0,
                    idem,
                    lease,
                    ttl_ms,
                    error: None,
                });
            } else {
                return Op::Release(Release {
                    key: key.to_string(),
                    limit,
                    slot: 0,
                    idem,
                    lease,
                    was_held: None,
                    error: None,
                });
            }
        }
        if roll.is_multiple_of(4) {
            return Op::Throttle(throttle(idem));
        }
        let (key, limit, ttl_ms) = KEYS[self.rng.below(KEYS.len() as u64) as usize];
        Op::Acquire(acquire(key, limit, ttl_ms, idem))
    }

    /// The final phase on the keys that expire, then inspects of every key.
    fn afterwards(&mut self, mut t_ns: u64) {
        let p = self.clients.len() as u64;
        let call = |sim: &mut Sim, t_ns: u64, op: Op, phase: Phase| {
            sim.emit(t_ns, p, EventKind::Invoke, op.clone(), phase);
            let (op, kind) = match op {
                Op::Inspect(mut i) => {
                    let mut holders = sim.server.live(&i.key, t_ns + MS);
                    if sim.server.bug == Bug::Amnesia {
                        holders.clear();
                    }
                    i.holders = Some(holders);
                    (Op::Inspect(i), EventKind::Ok)
                }
                op => {
                    let answer = sim.server.apply(&op, t_ns + MS);
                    answered(op, answer)
                }
            };
            sim.emit(t_ns + 2 * MS, p, kind, op.clone(), phase);
            op
        };
        for (i, (key, limit, ttl_ms)) in KEYS.into_iter().enumerate() {
            if ttl_ms >= NO_EXPIRY_TTL_MS_MIN {
                continue;
            }
            let request = Op::Acquire(acquire(key, limit, ttl_ms, format!("final-{i}")));
            let Op::Acquire(granted) = call(self, t_ns, request, Phase::Final) else {
                unreachable!("an acquire answers an acquire")
            };
            let release = Op::Release(Release {
                key: key.to_string(),
                limit,
                slot: 0,
                idem: format!("final-r{i}"),
                lease: granted.lease.unwrap_or_default(),
                was_held: None,
                error: None,
            });
            call(self, t_ns + 3 * MS, release, Phase::Final);
            t_ns += 10 * MS;
        }
        call(
            self,
            t_ns,
            Op::Throttle(throttle("final-t".to_string())),
            Phase::Final,
        );
        // A lease certainly held through the crash, whatever the clients
        // left holding.
        let kept = acquire(KEPT_KEY, 1, NO_EXPIRY_TTL_MS_MIN, "final-kept".to_string());
        t_ns += 10 * MS;
        call(self, t_ns, Op::Acquire(kept), Phase::Final);
        for key in KEYS.iter().map(|k| k.0).chain([KEPT_KEY]) {
            let inspect = Op::Inspect(Inspect {
                key: key.to_string(),
                slot: 0,
                holders: None,
            });
            t_ns += 10 * MS;
            call(self, t_ns, inspect, Phase::Durability);
        }
    }
}

fn acquire(key: &str, limit: u32, ttl_ms: u64, idem: String) -> Acquire {
    Acquire {
        key: key.to_string(),
        limit,
        slot: 0,
        idem,
        ttl_ms,
        lease: None,
        token: None,
        retry_after_ms: None,
        wait_ms: None,
        error: None,
    }
}

fn throttle(idem: String) -> Throttle {
    let (limit, period_ms, burst) = RATE;
    Throttle {
        key: "t0".to_string(),
        slot: 0,
        idem,
        kind: ThrottleKind::Gcra,
        limit,
        period_ms,
        burst,
        token: None,
        error: None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::{all, Params, Verdict};
    use super::*;

    fn verdicts(seed: u64, bug: Bug) -> Vec<Verdict> {
        let history = history(seed, 8, 6000, bug);
        all(&history, &Params::default())
    }

    /// The simulated server keeps time exactly, so no slack is needed.
    fn exact_verdicts(seed: u64) -> Vec<Verdict> {
        let exact = Params {
            rho: 0.0,
            slack_ms: 0,
        };
        all(&history(seed, 8, 6000, Bug::None), &exact)
    }

    fn failed(verdicts: &[Verdict]) -> Vec<&'static str> {
        verdicts
            .iter()
            .filter(|v| !v.ok)
            .map(|v| v.checker)
            .collect()
    }

    #[test]
    fn a_correct_server_passes_every_checker() {
        for seed in 1..=4 {
            let verdicts = verdicts(seed, Bug::None);
            for v in &verdicts {
                assert!(v.ok, "seed {seed}: {} {:?}", v.checker, v.violations);
            }
            let stat = |checker: &str, name: &str| {
                let v = verdicts.iter().find(|v| v.checker == checker).unwrap();
                v.stats[name].as_u64().unwrap_or_default()
            };
            // The histories exercise what the checkers judge.
            assert!(stat("well_formed", "info") > 100);
            assert!(stat("no_leak", "denials") > 500);
            assert!(stat("zombie_extend", "extends") > 500);
            assert!(stat("linearizable", "ops") > 500);
            assert!(stat("gcra", "admissions") > 50);
            assert!(stat("durability", "leases_verified") > 0);
            assert!(stat("idempotency", "retried_ops") > 100);
            let lin = verdicts
                .iter()
                .find(|v| v.checker == "linearizable")
                .unwrap();
            assert_eq!(lin.stats["undecided_keys"], serde_json::json!([]));
        }
    }

    #[test]
    fn a_correct_server_passes_even_without_slack() {
        for seed in 5..=8 {
            assert_eq!(
                failed(&exact_verdicts(seed)),
                Vec::<&str>::new(),
                "seed {seed}"
            );
        }
    }

    #[test]
    fn an_over_granting_server_is_caught() {
        let failed = failed(&verdicts(7, Bug::OverGrant));
        assert!(failed.contains(&"lease_safety"), "{failed:?}");
        assert!(failed.contains(&"linearizable"), "{failed:?}");
    }

    #[test]
    fn an_under_granting_server_is_caught() {
        let failed = failed(&verdicts(7, Bug::UnderGrant));
        assert!(failed.contains(&"no_leak"), "{failed:?}");
        assert!(failed.contains(&"linearizable"), "{failed:?}");
    }

    #[test]
    fn a_server_expiring_early_is_caught() {
        let failed = failed(&verdicts(7, Bug::EarlyExpiry));
        assert!(failed.contains(&"lease_safety"), "{failed:?}");
    }

    #[test]
    fn a_server_reviving_expired_leases_is_caught() {
        let failed = failed(&verdicts(7, Bug::ZombieExtend));
        assert!(failed.contains(&"zombie_extend"), "{failed:?}");
    }

    #[test]
    fn a_fast_throttle_is_caught() {
        let failed = failed(&verdicts(7, Bug::FastThrottle));
        assert_eq!(failed, ["gcra"]);
    }

    #[test]
    fn a_server_without_dedup_is_caught() {
        let failed = failed(&verdicts(7, Bug::NoDedup));
        assert!(failed.contains(&"idempotency"), "{failed:?}");
    }

    #[test]
    fn tokens_counted_apart_are_caught() {
        let failed = failed(&verdicts(7, Bug::SplitTokens));
        assert_eq!(failed, ["fencing"]);
    }

    #[test]
    fn a_server_forgetting_leases_on_restart_is_caught() {
        let failed = failed(&verdicts(7, Bug::Amnesia));
        assert_eq!(failed, ["durability"]);
    }
}
