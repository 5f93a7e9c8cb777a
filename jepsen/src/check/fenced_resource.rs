//! `fenced_resource`: fencing tokens keep a shared resource from losing
//! updates.
//!
//! Each key has a resource inside the harness (the history's `fenced` ops),
//! which accepts an op carrying a token at least as large as any it
//! accepted and refuses a smaller one as stale. A client holding a lease
//! on the key reads the value, then writes what it read plus one, both
//! under its lease's token. If the server fences correctly — every lease
//! its own token, larger than the tokens of the key's earlier leases — a
//! client whose lease ended (a zombie) is refused once a newer holder has
//! touched the resource, and every accepted update builds on the one
//! before. So, per key, in the resource's order (`seq`):
//!
//! - (a) no lost update: every accepted write read the value the previous
//!   accepted write left (0 at first) and left one more; every accepted
//!   read returned that value;
//! - (b) no accepted op carries a token smaller than one accepted before
//!   it, and no op is refused unless a larger token was accepted before it.
//!
//! Two holders given the same token both pass the resource and break (a);
//! a token smaller than an earlier one gets the newer holder refused.
//! The order is the resource's only if `seq` numbers the key's ops once
//! each and agrees with real time (an op completed before another was
//! invoked comes first); that is checked too. The resource answers at once,
//! so its ops are never of unknown outcome; any without a completion (a
//! run cut short) are left out. Sorting by `seq`: O(n log n).

use std::collections::BTreeMap;

use serde_json::json;

use crate::history::{Access, Completed, Fenced, Op, Outcome, STALE_TOKEN};

use super::{Findings, Verdict};

/// One op the resource answered.
struct Handled<'a> {
    c: &'a Completed,
    f: &'a Fenced,
    seq: u64,
    accepted: bool,
}

/// What the checker counted.
#[derive(Default)]
struct Counts {
    reads: usize,
    writes: usize,
    stale_reads: usize,
    stale_writes: usize,
}

/// Checks `ops`; see the module doc.
pub fn check(ops: &[Completed]) -> Verdict {
    let mut keys: BTreeMap<&str, Vec<Handled<'_>>> = BTreeMap::new();
    let mut found = Findings::default();
    for c in ops {
        let Op::Fenced(f) = &c.op else { continue };
        let accepted = match (c.outcome, f.error.as_deref()) {
            (Outcome::Ok, _) => true,
            (Outcome::Fail, Some(STALE_TOKEN)) => false,
            (Outcome::Info, _) => continue,
            (Outcome::Fail, error) => {
                found.add(format!("{}: not a stale refusal ({error:?})", c.describe()));
                continue;
            }
        };
        let Some(seq) = f.seq else {
            found.add(format!("{}: answered without a seq", c.describe()));
            continue;
        };
        keys.entry(&f.key).or_default().push(Handled {
            c,
            f,
            seq,
            accepted,
        });
    }
    let mut counts = Counts::default();
    for (key, handled) in &mut keys {
        handled.sort_by_key(|h| h.seq);
        check_order(key, handled, &mut found);
        check_chain(key, handled, &mut found, &mut counts);
    }
    let stats = json!({
        "keys": keys.len(),
        "reads": counts.reads,
        "writes": counts.writes,
        "stale_reads": counts.stale_reads,
        "stale_writes": counts.stale_writes,
        "stale_rejections": counts.stale_reads + counts.stale_writes,
    });
    found.verdict("fenced_resource", stats)
}

/// `seq` is the key's real order: unique, and no op numbered after one
/// that was invoked after it completed.
fn check_order(key: &str, handled: &[Handled<'_>], found: &mut Findings) {
    let mut latest: Option<&Handled<'_>> = None;
    for (i, h) in handled.iter().enumerate() {
        if i > 0 && handled[i - 1].seq == h.seq {
            found.add(format!("key {key}: seq {} handed out twice", h.seq));
        }
        let done_ns = h.c.complete_ns.unwrap_or(u64::MAX);
        if let Some(l) = latest.filter(|l| l.c.invoke_ns > done_ns) {
            found.add(format!(
                "key {key}: {} numbered after {}, which was invoked after it completed",
                l.c.describe(),
                h.c.describe()
            ));
        }
        if latest.is_none_or(|l| h.c.invoke_ns > l.c.invoke_ns) {
            latest = Some(h);
        }
    }
}

/// (a) and (b) along the key's ops in `seq` order.
fn check_chain(key: &str, handled: &[Handled<'_>], found: &mut Findings, counts: &mut Counts) {
    let mut value = 0u64;
    let mut highest: Option<&Handled<'_>> = None;
    for h in handled {
        let f = h.f;
        let highest_token = highest.map(|x| x.f.token);
        if !h.accepted {
            match f.access {
                Access::Read => counts.stale_reads += 1,
                Access::Write => counts.stale_writes += 1,
            }
            if highest_token.is_none_or(|t| t <= f.token) {
                found.add(format!(
                    "key {key}: {} refused as stale, but the largest token accepted before it \
                     was {highest_token:?}",
                    h.c.describe()
                ));
            }
            continue;
        }
        if let Some(x) = highest.filter(|x| x.f.token > f.token) {
            found.add(format!(
                "key {key}: {} accepted after {} had been: the token went backwards",
                h.c.describe(),
                x.c.describe()
            ));
        }
        if highest_token.is_none_or(|t| f.token > t) {
            highest = Some(h);
        }
        match f.access {
            Access::Read => {
                counts.reads += 1;
                if f.value != Some(value) {
                    found.add(format!(
                        "key {key}: {} read {:?}, but the last accepted write left {value}",
                        h.c.describe(),
                        f.value
                    ));
                }
            }
            Access::Write => {
                counts.writes += 1;
                if f.read != Some(value) {
                    found.add(format!(
                        "key {key}: lost update: {} built on {:?}, but the last accepted write \
                         left {value}",
                        h.c.describe(),
                        f.read
                    ));
                }
                if f.value != f.read.map(|r| r + 1) {
                    found.add(format!(
                        "key {key}: {} left {:?}, not one more than it read",
                        h.c.describe(),
                        f.value
                    ));
                }
                value = f.value.unwrap_or(value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::*;

    fn run(s: &Script) -> Verdict {
        check(&s.ops())
    }

    /// Two holders of `f` in turn, the first a zombie refused after the
    /// second took over, and a key `g` of its own.
    fn handover() -> Script {
        let mut s = Script::new();
        s.ok(0, 1, fread("f", 3, 0, 0));
        s.ok(2, 3, fwrite("f", 3, 1, 0));
        s.ok(10, 11, fread("f", 5, 2, 1));
        s.ok(12, 13, fread("g", 4, 0, 0));
        s.fail(14, 15, fread("f", 3, 3, 0).stale());
        s.ok(16, 17, fwrite("f", 5, 4, 1));
        s.fail(18, 19, fwrite("f", 3, 5, 1).stale());
        s.ok(20, 21, fread("f", 5, 6, 2));
        s.ok(22, 23, fwrite("f", 5, 7, 2));
        s
    }

    #[test]
    fn updates_in_turn_and_refused_zombies_pass() {
        let v = run(&handover());
        assert!(v.ok, "{:?}", v.violations);
        assert_eq!(v.stats["keys"], 2);
        assert_eq!(v.stats["reads"], 4);
        assert_eq!(v.stats["writes"], 3);
        assert_eq!(v.stats["stale_reads"], 1);
        assert_eq!(v.stats["stale_writes"], 1);
        assert_eq!(v.stats["stale_rejections"], 2);
    }

    #[test]
    fn detects_a_lost_update_from_a_shared_token() {
        // Two leases carrying token 7 both read 2 and both write 3.
        let mut s = Script::new();
        s.ok(0, 1, fread("f", 6, 0, 0));
        s.ok(1, 2, fwrite("f", 6, 1, 0));
        s.ok(3, 4, fwrite("f", 6, 2, 1).value(2));
        s.ok(10, 11, fread("f", 7, 3, 2));
        s.ok(12, 13, fread("f", 7, 4, 2));
        s.ok(14, 15, fwrite("f", 7, 5, 2));
        s.ok(16, 17, fwrite("f", 7, 6, 2));
        let v = run(&s);
        assert_eq!(v.violations_total, 1, "{:?}", v.violations);
        assert!(
            v.violations[0].contains("lost update: p6 fenced f write 2+1 token 7 #6 ok"),
            "{}",
            v.violations[0]
        );
    }

    #[test]
    fn detects_a_token_going_backwards() {
        let mut s = Script::new();
        s.ok(0, 1, fread("f", 9, 0, 0));
        s.ok(2, 3, fwrite("f", 9, 1, 0));
        s.ok(4, 5, fread("f", 8, 2, 1));
        let v = run(&s);
        assert_eq!(v.violations_total, 1, "{:?}", v.violations);
        assert!(
            v.violations[0].contains("token 8 #2 ok [4.000ms, 5.000ms] accepted after"),
            "{}",
            v.violations[0]
        );
        assert!(v.violations[0].contains("went backwards"));
    }

    #[test]
    fn detects_a_read_that_missed_a_write() {
        let mut s = handover();
        s.ok(30, 31, fread("f", 6, 8, 2));
        let v = run(&s);
        assert_eq!(v.violations_total, 1);
        assert!(v.violations[0].contains("read Some(2), but the last accepted write left 3"));
    }

    #[test]
    fn detects_a_refusal_without_a_larger_token() {
        let mut s = Script::new();
        s.ok(0, 1, fread("f", 4, 0, 0));
        s.fail(2, 3, fwrite("f", 4, 1, 0).stale());
        let v = run(&s);
        assert_eq!(v.violations_total, 1);
        assert!(v.violations[0].contains("refused as stale"));
    }

    #[test]
    fn detects_an_order_real_time_contradicts() {
        let mut s = Script::new();
        s.ok(0, 1, fread("f", 4, 1, 0));
        s.ok(5, 6, fwrite("f", 4, 0, 0));
        s.ok(7, 8, fwrite("f", 4, 0, 1));
        let v = run(&s);
        // seq 0 twice, the write numbered before the read it followed, and
        // the chain as numbered: a write of 1+1 before any write of 1.
        assert!(v
            .violations
            .iter()
            .any(|m| m.contains("seq 0 handed out twice")));
        assert!(v
            .violations
            .iter()
            .any(|m| m.contains("which was invoked after it completed")));
    }

    #[test]
    fn other_ops_and_unanswered_calls_are_ignored() {
        let mut s = handover();
        s.ok(0, 1, acq("f", "a").lease(3));
        s.pending(40, fwrite("f", 9, 9, 7));
        assert!(run(&s).ok);
    }
}
