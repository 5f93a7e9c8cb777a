//! `fencing`: fencing tokens let a downstream resource reject a stale
//! holder, so within a slot (a) no two grants share a token and (b) a
//! grant that completed before another was invoked has the smaller token.
//! The slot is the namespace: a scope's tokens come from its slot's grant
//! counter, and tokens of different slots are unrelated.
//!
//! Grants are leases (from acquires) and throttle admissions; retries of
//! one grant are one grant, which took effect between its first invoke and
//! its first ok completion. For (b), grants sorted by completion are swept
//! against grants sorted by invoke, keeping the largest token completed
//! before each invoke: O(n log n).

use std::collections::BTreeMap;
use std::fmt;

use serde_json::json;

use crate::history::{by_idem, fmt_ms, Completed, Op};

use super::leases::Leases;
use super::{Findings, Verdict};

/// Who holds a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holder<'a> {
    Lease(u64),
    /// A throttle admission, by key and idempotency key.
    Admission(&'a str, &'a str),
}

impl fmt::Display for Holder<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Holder::Lease(id) => write!(f, "lease {id}"),
            Holder::Admission(key, idem) => write!(f, "admission {key} idem={idem}"),
        }
    }
}

/// One grant carrying a token.
#[derive(Debug, Clone, Copy)]
struct Grant<'a> {
    slot: u32,
    token: u64,
    holder: Holder<'a>,
    invoke_ns: u64,
    done_ns: u64,
}

/// Checks `ops`; see the module doc.
pub fn check(ops: &[Completed]) -> Verdict {
    let grants = grants(ops);
    let mut found = Findings::default();
    let mut owners: BTreeMap<(u32, u64), Holder<'_>> = BTreeMap::new();
    for g in &grants {
        let owner = *owners.entry((g.slot, g.token)).or_insert(g.holder);
        if owner != g.holder {
            found.add(format!(
                "slot {}: token {} given to both {owner} and {}",
                g.slot, g.token, g.holder
            ));
        }
    }
    let mut by_slot: BTreeMap<u32, Vec<Grant<'_>>> = BTreeMap::new();
    for g in &grants {
        by_slot.entry(g.slot).or_default().push(*g);
    }
    for grants in by_slot.values() {
        check_order(grants, &mut found);
    }
    let stats = json!({ "grants": grants.len(), "slots": by_slot.len() });
    found.verdict("fencing", stats)
}

fn grants(ops: &[Completed]) -> Vec<Grant<'_>> {
    let mut grants = Vec::new();
    for lease in Leases::build(ops).all {
        if let (Some((slot, id)), Some(token), Some(done_ns)) =
            (lease.id, lease.token, lease.granted_ns)
        {
            grants.push(Grant {
                slot,
                token,
                holder: Holder::Lease(id),
                invoke_ns: lease.invoke_ns,
                done_ns,
            });
        }
    }
    for (id, attempts) in by_idem(ops) {
        let (Some(first), Some(invoke_ns)) = (attempts.first_ok(), attempts.effect_from_ns())
        else {
            continue;
        };
        if let (Op::Throttle(t), Some(done_ns)) = (&first.op, first.complete_ns) {
            let Some(token) = t.token else { continue };
            grants.push(Grant {
                slot: t.slot,
                token,
                holder: Holder::Admission(id.key, id.idem),
                invoke_ns,
                done_ns,
            });
        }
    }
    grants
}

/// (b) for the grants of one slot.
fn check_order(grants: &[Grant<'_>], found: &mut Findings) {
    let mut by_done: Vec<&Grant<'_>> = grants.iter().collect();
    by_done.sort_by_key(|g| g.done_ns);
    let mut by_invoke: Vec<&Grant<'_>> = grants.iter().collect();
    by_invoke.sort_by_key(|g| g.invoke_ns);
    let mut done = by_done.iter().copied().peekable();
    let mut highest: Option<&Grant<'_>> = None;
    for g in by_invoke {
        while let Some(d) = done.next_if(|d| d.done_ns < g.invoke_ns) {
            if highest.is_none_or(|h| d.token > h.token) {
                highest = Some(d);
            }
        }
        let Some(h) = highest.filter(|h| h.token >= g.token) else {
            continue;
        };
        found.add(format!(
            "slot {}: {} got token {} (invoked {}) after {} got token {} (completed {})",
            g.slot,
            g.holder,
            g.token,
            fmt_ms(g.invoke_ns),
            h.holder,
            h.token,
            fmt_ms(h.done_ns)
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::*;

    fn run(s: &Script) -> Verdict {
        check(&s.ops())
    }

    #[test]
    fn increasing_and_concurrent_tokens_pass() {
        let mut s = Script::new();
        s.ok(0, 5, acq("a", "1").lease(1));
        s.ok(6, 9, thr("t", "2").token(2));
        // Concurrent grants may order their tokens either way.
        s.ok(10, 20, acq("b", "3").lease(4));
        s.ok(11, 19, acq("c", "4").lease(3));
        // A retry is the same grant, with the same token.
        s.info(30, 40, acq("d", "5"));
        s.ok(41, 45, acq("d", "5").lease(5));
        s.ok(46, 49, acq("d", "5").lease(5));
        // Tokens of other slots are unrelated.
        s.ok(50, 55, acq("e", "6").slot(1).lease(1));
        let v = run(&s);
        assert!(v.ok, "{:?}", v.violations);
        assert_eq!(v.stats["grants"], 6);
    }

    #[test]
    fn detects_a_token_going_backwards() {
        let mut s = Script::new();
        s.ok(0, 5, acq("a", "1").lease(1).token(7));
        s.ok(10, 15, acq("b", "2").lease(2).token(6));
        let v = run(&s);
        assert_eq!(v.violations_total, 1);
        assert!(
            v.violations[0].contains("lease 2 got token 6"),
            "{}",
            v.violations[0]
        );
    }

    #[test]
    fn detects_a_throttle_token_going_backwards() {
        let mut s = Script::new();
        s.ok(0, 5, acq("a", "1").lease(4));
        s.ok(10, 15, thr("t", "2").token(3));
        assert!(!run(&s).ok);
    }

    #[test]
    fn detects_a_shared_token() {
        let mut s = Script::new();
        s.ok(0, 5, acq("a", "1").lease(1));
        s.ok(3, 8, thr("t", "2").token(1));
        let v = run(&s);
        assert_eq!(v.violations_total, 1);
        assert!(
            v.violations[0].contains("given to both"),
            "{}",
            v.violations[0]
        );
    }
}
