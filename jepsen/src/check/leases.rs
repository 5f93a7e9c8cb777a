//! What a history says about each lease: the window in which it was
//! granted, its extends and releases, and from these the earliest and
//! latest real times it could have ended. Shared by the lease checkers.

use std::collections::BTreeMap;

use crate::history::{by_idem, Attempts, Completed, Op, Outcome, LEASE_LOST};

use super::faults::Faults;
use super::Params;

/// A lease's name: `(slot, lease id)`. Ids are numbered per slot (the
/// server puts the slot in their high bits; older histories numbered them
/// per Raft group).
pub(crate) type LeaseId = (u32, u64);

/// One lease, or one acquire that may have granted a lease no client saw.
#[derive(Debug)]
pub(crate) struct Lease<'a> {
    pub key: &'a str,
    pub limit: u32,
    /// `None` for an acquire never answered ok.
    pub id: Option<LeaseId>,
    pub token: Option<u64>,
    pub ttl_ms: u64,
    /// Earliest invoke of an attempt that may have granted it.
    pub invoke_ns: u64,
    /// Latest invoke of an attempt that may have granted it.
    pub last_invoke_ns: u64,
    /// Latest completion of an attempt that may have granted it; `None`
    /// while one is still in flight.
    pub settled_ns: Option<u64>,
    /// Earliest ok completion naming it: certainly held from here.
    pub granted_ns: Option<u64>,
    /// Extends that may have taken effect, in invoke order.
    pub extends: Vec<Extension>,
    /// Earliest invoke of a release that may have ended it.
    pub release_from_ns: Option<u64>,
    /// Earliest ok completion of a release: certainly ended by here.
    pub released_ns: Option<u64>,
    /// The extend attempt (invoke, completion) that first reported the
    /// lease lost.
    pub lost: Option<(u64, u64)>,
}

/// One logical extend of a lease.
#[derive(Debug)]
pub(crate) struct Extension {
    /// Its effect is no earlier than this.
    pub invoke_ns: u64,
    /// Earliest ok completion, if any attempt was ok.
    pub ok_ns: Option<u64>,
    pub ttl_ms: u64,
}

/// Every lease of a history.
#[derive(Debug, Default)]
pub(crate) struct Leases<'a> {
    pub all: Vec<Lease<'a>>,
    /// Extends and releases naming a lease no acquire was granted.
    pub unknown_refs: usize,
}

/// An extend that succeeded when the lease could no longer be live.
#[derive(Debug)]
pub(crate) struct Zombie {
    pub invoke_ns: u64,
    /// The lease had surely expired, or been released, by here.
    pub ended_ns: u64,
    pub released: bool,
}

impl<'a> Leases<'a> {
    pub(crate) fn build(ops: &'a [Completed]) -> Leases<'a> {
        let groups = by_idem(ops);
        let mut leases = Leases::default();
        let mut named: BTreeMap<LeaseId, Lease<'a>> = BTreeMap::new();
        for (id, attempts) in &groups {
            if id.f == "acquire" {
                leases.add_grant(attempts, &mut named);
            }
        }
        for (id, attempts) in &groups {
            let lease_of = |op: &Op| match op {
                Op::Extend(e) => Some((e.slot, e.lease)),
                Op::Release(r) => Some((r.slot, r.lease)),
                _ => None,
            };
            let Some(lease_id) = attempts.ops.first().and_then(|c| lease_of(&c.op)) else {
                continue;
            };
            let Some(lease) = named.get_mut(&lease_id) else {
                leases.unknown_refs += 1;
                continue;
            };
            match id.f {
                "extend" => lease.add_extend(attempts),
                _ => lease.add_release(attempts),
            }
        }
        for lease in named.values_mut() {
            lease.extends.sort_by_key(|e| e.invoke_ns);
        }
        leases.all.extend(named.into_values());
        leases
    }

    /// Adds the lease(s) one acquire's attempts may have granted. A denied
    /// acquire granted none: its attempts share one recorded decision.
    /// (One both granted and denied is reported by `idempotency`; its
    /// grant is kept here.)
    fn add_grant(&mut self, attempts: &Attempts<'a>, named: &mut BTreeMap<LeaseId, Lease<'a>>) {
        if attempts.first_denial().is_some() && attempts.first_ok().is_none() {
            return;
        }
        let (Some(invoke_ns), Some(last_invoke_ns)) =
            (attempts.effect_from_ns(), attempts.last_invoke_ns())
        else {
            return;
        };
        let Some(Op::Acquire(first)) = attempts.ops.first().copied().map(|c| &c.op) else {
            return;
        };
        let settled_ns = attempts
            .effective()
            .map(|c| c.complete_ns)
            .try_fold(0, |latest, done| done.map(|d| d.max(latest)));
        let lease = |id, token, granted_ns| Lease {
            key: &first.key,
            limit: first.limit,
            id,
            token,
            ttl_ms: first.ttl_ms,
            invoke_ns,
            last_invoke_ns,
            settled_ns,
            granted_ns,
            extends: Vec::new(),
            release_from_ns: None,
            released_ns: None,
            lost: None,
        };
        let mut granted = false;
        for c in attempts.ops.iter().filter(|c| c.outcome == Outcome::Ok) {
            let (Op::Acquire(a), Some(done_ns)) = (&c.op, c.complete_ns) else {
                continue;
            };
            let Some(id) = a.lease.map(|l| (a.slot, l)) else {
                continue;
            };
            granted = true;
            // A lease named by several acquires (an idempotency violation)
            // is judged by the earliest of them.
            let entry = named
                .entry(id)
                .or_insert_with(|| lease(Some(id), a.token, Some(done_ns)));
            entry.invoke_ns = entry.invoke_ns.min(invoke_ns);
            entry.last_invoke_ns = entry.last_invoke_ns.max(last_invoke_ns);
            entry.granted_ns = earliest(entry.granted_ns, done_ns);
        }
        if !granted {
            self.all.push(lease(None, None, None));
        }
    }
}

/// The earlier of `a`, if any, and `b`.
fn earliest(a: Option<u64>, b: u64) -> Option<u64> {
    Some(a.map_or(b, |a| a.min(b)))
}

impl<'a> Lease<'a> {
    fn add_extend(&mut self, attempts: &Attempts<'_>) {
        for c in &attempts.ops {
            let Op::Extend(e) = &c.op else { continue };
            if c.outcome != Outcome::Fail || e.error.as_deref() != Some(LEASE_LOST) {
                continue;
            }
            let Some(done_ns) = c.complete_ns else {
                continue;
            };
            if self.lost.is_none_or(|(_, first)| done_ns < first) {
                self.lost = Some((c.invoke_ns, done_ns));
            }
        }
        let Some(invoke_ns) = attempts.effect_from_ns() else {
            return;
        };
        let Some(Op::Extend(e)) = attempts.ops.first().map(|c| &c.op) else {
            return;
        };
        self.extends.push(Extension {
            invoke_ns,
            ok_ns: attempts.first_ok().and_then(|c| c.complete_ns),
            ttl_ms: e.ttl_ms,
        });
    }

    fn add_release(&mut self, attempts: &Attempts<'_>) {
        let Some(from_ns) = attempts.effect_from_ns() else {
            return;
        };
        self.release_from_ns = earliest(self.release_from_ns, from_ns);
        if let Some(done_ns) = attempts.first_ok().and_then(|c| c.complete_ns) {
            self.released_ns = earliest(self.released_ns, done_ns);
        }
    }

    /// The earliest real time the lease could have expired.
    ///
    /// An extend sets the expiry to its own time plus its TTL, which may
    /// shorten it, so the expiry is set by whichever extend applied last.
    /// That one applied no earlier than every ok extend's invoke (and the
    /// grant's), and no earlier than its own invoke; the bound is the least
    /// such time plus its TTL over every extend that could have applied
    /// last. With equal TTLs this is the latest ok extend's invoke plus the
    /// TTL.
    pub(crate) fn expiry_low_ns(&self, p: &Params) -> u64 {
        let oks = self.extends.iter().filter(|e| e.ok_ns.is_some());
        let latest_ns = oks.map(|e| e.invoke_ns).fold(self.invoke_ns, u64::max);
        let any_ok = self.extends.iter().any(|e| e.ok_ns.is_some());
        let grant = (!any_ok).then_some((self.invoke_ns, self.ttl_ms));
        let extends = self.extends.iter().map(|e| (e.invoke_ns, e.ttl_ms));
        grant
            .into_iter()
            .chain(extends)
            .map(|(invoke_ns, ttl_ms)| invoke_ns.max(latest_ns) + p.ttl_low_ns(ttl_ms))
            .min()
            .expect("a granted lease or an extend")
    }

    /// Until when the lease was certainly held (from `granted_ns`).
    pub(crate) fn certain_until_ns(&self, p: &Params) -> u64 {
        let expiry_ns = self.expiry_low_ns(p);
        self.release_from_ns.map_or(expiry_ns, |r| r.min(expiry_ns))
    }

    /// Until when the lease was possibly held (from `invoke_ns`).
    pub(crate) fn possible_until_ns(&self, p: &Params, faults: &Faults) -> u64 {
        let expiry_ns = match self.granted_ns {
            Some(_) => self.expiry_high(p).0,
            // No extend can name a nameless lease; but a fault may have held
            // back the grant past the client's last attempt.
            None => faults
                .held_back_until_ns(self.invoke_ns, self.settled_ns, self.last_invoke_ns)
                .saturating_add(p.ttl_high_ns(self.ttl_ms)),
        };
        self.released_ns.map_or(expiry_ns, |r| r.min(expiry_ns))
    }

    /// The latest real time the lease could have expired, and the ok
    /// extends that came too late to be genuine.
    ///
    /// Walks the extends in invoke order. An ok extend applied before its
    /// completion, so it bounds the expiry by that plus its TTL. An extend
    /// of unknown outcome applies, if at all, while the lease is live: no
    /// later than the expiry known so far, adding at most its TTL to it.
    pub(crate) fn expiry_high(&self, p: &Params) -> (u64, Vec<Zombie>) {
        let start_ns = self.granted_ns.unwrap_or(self.last_invoke_ns);
        let mut expiry_ns = start_ns + p.ttl_high_ns(self.ttl_ms);
        let mut zombies = Vec::new();
        for e in &self.extends {
            let Some(ok_ns) = e.ok_ns else {
                if e.invoke_ns < expiry_ns {
                    expiry_ns += p.ttl_high_ns(e.ttl_ms);
                }
                continue;
            };
            if e.invoke_ns > expiry_ns {
                zombies.push(Zombie {
                    invoke_ns: e.invoke_ns,
                    ended_ns: expiry_ns,
                    released: false,
                });
            } else if let Some(released_ns) = self.released_ns.filter(|r| e.invoke_ns > *r) {
                zombies.push(Zombie {
                    invoke_ns: e.invoke_ns,
                    ended_ns: released_ns,
                    released: true,
                });
            }
            expiry_ns = expiry_ns.max(ok_ns + p.ttl_high_ns(e.ttl_ms));
        }
        (expiry_ns, zombies)
    }

    /// `slot/lease` for reports.
    pub(crate) fn name(&self) -> String {
        match self.id {
            Some((slot, lease)) => format!("lease {slot}/{lease}"),
            None => "an unanswered acquire".to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::*;

    const MS: u64 = 1_000_000;

    fn exact() -> Params {
        Params {
            rho: 0.0,
            slack_ms: 0,
        }
    }

    #[test]
    fn retries_merge_into_one_lease_granted_at_the_first_ok() {
        let mut s = Script::new();
        s.info(0, 50, acq("k", "a"));
        s.ok(60, 70, acq("k", "a").lease(3));
        s.ok(80, 90, acq("k", "a").lease(3));
        s.fail(5, 6, acq("k", "b"));
        let ops = s.ops();
        let leases = Leases::build(&ops);
        assert_eq!(leases.all.len(), 1, "the all-failed acquire grants nothing");
        let l = &leases.all[0];
        assert_eq!(l.id, Some((0, 3)));
        assert_eq!((l.invoke_ns, l.last_invoke_ns), (0, 80 * MS));
        assert_eq!(l.granted_ns, Some(70 * MS));
        assert_eq!(l.expiry_low_ns(&exact()), 1000 * MS);
        assert_eq!(l.expiry_high(&exact()).0, 1070 * MS);
    }

    #[test]
    fn ok_extends_raise_both_bounds_and_releases_cut_them() {
        let mut s = Script::new();
        s.ok(0, 10, acq("k", "a").lease(1));
        s.ok(500, 520, ext("k", "e1", 1));
        s.fail(600, 610, ext("k", "e2", 1).error("max_lifetime"));
        s.ok(1200, 1210, rel("k", "r", 1).held(true));
        let ops = s.ops();
        let leases = Leases::build(&ops);
        let l = &leases.all[0];
        assert_eq!(
            l.extends.len(),
            1,
            "a definitely failed extend has no effect"
        );
        assert_eq!(l.expiry_low_ns(&exact()), 1500 * MS);
        assert_eq!(l.expiry_high(&exact()).0, 1520 * MS);
        assert_eq!(l.certain_until_ns(&exact()), 1200 * MS);
        assert_eq!(l.possible_until_ns(&exact(), &Faults::default()), 1210 * MS);
    }

    #[test]
    fn a_shorter_extend_may_shorten_the_lease() {
        let mut s = Script::new();
        s.ok(0, 10, acq("k", "a").lease(1).ttl(10_000));
        s.info(100, 200, ext("k", "e", 1).ttl(50));
        let ops = s.ops();
        let l = &Leases::build(&ops).all[0];
        assert_eq!(l.expiry_low_ns(&exact()), 150 * MS);
        assert_eq!(l.expiry_high(&exact()).0, 10_060 * MS);
    }

    #[test]
    fn an_unanswered_acquire_is_a_nameless_lease() {
        let mut s = Script::new();
        s.info(0, 50, acq("k", "a"));
        s.pending(100, acq("k", "a"));
        s.ok(0, 1, ext("k", "e", 9));
        let ops = s.ops();
        let leases = Leases::build(&ops);
        assert_eq!(leases.unknown_refs, 1);
        let l = &leases.all[0];
        assert_eq!(l.id, None);
        assert_eq!(l.possible_until_ns(&exact(), &Faults::default()), 1100 * MS);
    }

    #[test]
    fn a_fault_may_hold_back_a_nameless_grant() {
        let mut s = Script::new();
        s.nemesis(10, "pause", "start");
        s.info(20, 520, acq("k", "a"));
        s.info(600, 1100, acq("k", "a"));
        s.nemesis(2_000, "pause", "stop");
        let history = s.history();
        let ops = history.pairs().expect("pairs");
        let l = &Leases::build(&ops).all[0];
        assert_eq!(l.settled_ns, Some(1100 * MS));
        let faults = Faults::of(&history);
        // Served on resume at the latest 1990 ms + recovery after it ends.
        let held = 2_000 + 1_990 + super::super::faults::RECOVERY_MS;
        assert_eq!(l.possible_until_ns(&exact(), &faults), (held + 1_000) * MS);
    }
}
