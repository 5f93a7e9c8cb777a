//! A command's fingerprint: the hash of what a retry under the same
//! idempotency key must repeat exactly.

use super::types::{AdminAction, Command, Constraint, Kind};

/// Hashes every parameter of `cmd` except its scope and idempotency key,
/// which name its dedup record and so are equal whenever fingerprints are
/// compared, and an acquire's `attempt`, which tells how the proposer
/// treats a denial, not what is asked: a waiting acquire's attempts and
/// its caller's retries must match one another. The parameters are written to `buf` after a tag for the kind of
/// command, integers fixed-width and strings length-prefixed, so distinct
/// commands write distinct bytes. XXH3 is stable across versions and
/// platforms, unlike `Hash`, so replicas built apart agree.
pub(crate) fn fingerprint(cmd: &Command, buf: &mut Vec<u8>) -> u64 {
    buf.clear();
    match cmd {
        Command::Acquire(r) => {
            buf.push(0);
            put_u64(buf, r.amount.into());
            put_opt(buf, r.min_amount.map(u64::from));
            put_u64(buf, r.lease_ttl_ms);
            put_opt(buf, r.max_lifetime_ms);
            put_u64(buf, r.constraints.len() as u64);
            for c in &r.constraints {
                constraint(buf, c);
            }
        }
        Command::Extend(r) => {
            buf.push(1);
            put_u64(buf, r.lease_id);
            put_u64(buf, r.ttl_ms);
        }
        Command::Release(r) => {
            buf.push(2);
            put_u64(buf, r.lease_id);
        }
        Command::SetCapacity(r) => {
            buf.push(3);
            put_str(buf, &r.key);
            put_u64(buf, r.capacity);
        }
        Command::AdjustCapacity(r) => {
            buf.push(4);
            put_str(buf, &r.key);
            put_u64(buf, r.delta as u64);
        }
        Command::Expire { until_ms } => {
            buf.push(5);
            put_u64(buf, *until_ms);
        }
        Command::Admin(r) => {
            buf.push(6);
            buf.push(match r.kind {
                Kind::Concurrency => 0,
                Kind::Throttle => 1,
                Kind::RateLimit => 2,
                Kind::Semaphore => 3,
            });
            put_str(buf, &r.key);
            match &r.action {
                AdminAction::Pause => buf.push(0),
                AdminAction::Resume => buf.push(1),
                AdminAction::Pin(c) => {
                    buf.push(2);
                    constraint(buf, c);
                }
                AdminAction::Unpin => buf.push(3),
                AdminAction::Reset => buf.push(4),
            }
        }
    }
    xxhash_rust::xxh3::xxh3_64(buf)
}

fn constraint(buf: &mut Vec<u8>, c: &Constraint) {
    match *c {
        Constraint::Concurrency { ref key, limit } => {
            buf.push(0);
            put_str(buf, key);
            put_u64(buf, limit.into());
        }
        Constraint::Throttle {
            ref key,
            limit,
            period_ms,
            burst,
        } => {
            buf.push(1);
            put_str(buf, key);
            put_u64(buf, limit.into());
            put_u64(buf, period_ms);
            put_u64(buf, burst.into());
        }
        Constraint::RateLimit {
            ref key,
            limit,
            period_ms,
        } => {
            buf.push(2);
            put_str(buf, key);
            put_u64(buf, limit.into());
            put_u64(buf, period_ms);
        }
        Constraint::Semaphore { ref key, weight } => {
            buf.push(3);
            put_str(buf, key);
            put_u64(buf, weight.into());
        }
    }
}

fn put_u64(buf: &mut Vec<u8>, v: u64) {
    buf.extend_from_slice(&v.to_le_bytes());
}

fn put_opt(buf: &mut Vec<u8>, v: Option<u64>) {
    match v {
        None => buf.push(0),
        Some(v) => {
            buf.push(1);
            put_u64(buf, v);
        }
    }
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    put_u64(buf, s.len() as u64);
    buf.extend_from_slice(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::types::{AcquireRequest, Attempt, ReleaseRequest};

    fn acquire(constraints: Vec<Constraint>, idempotency_key: &str) -> Command {
        Command::Acquire(AcquireRequest {
            scope: "acct".to_string(),
            constraints,
            amount: 1,
            min_amount: None,
            lease_ttl_ms: 1_000,
            max_lifetime_ms: None,
            idempotency_key: idempotency_key.to_string(),
            attempt: Attempt::Final,
        })
    }

    fn concurrency(key: &str, limit: u32) -> Constraint {
        Constraint::Concurrency {
            key: key.to_string(),
            limit,
        }
    }

    #[test]
    fn names_are_not_parameters_and_parameters_count() {
        let fp = |cmd: &Command| fingerprint(cmd, &mut Vec::new());
        let a = acquire(vec![concurrency("k", 1)], "x");
        assert_eq!(fp(&a), fp(&acquire(vec![concurrency("k", 1)], "y")));
        let distinct = [
            a,
            acquire(vec![concurrency("k", 2)], "x"),
            acquire(vec![concurrency("kk", 1)], "x"),
            acquire(vec![concurrency("k", 1), concurrency("j", 1)], "x"),
            acquire(vec![concurrency("j", 1), concurrency("k", 1)], "x"),
            Command::Release(ReleaseRequest {
                scope: "acct".to_string(),
                lease_id: 1,
                idempotency_key: "x".to_string(),
            }),
        ];
        let mut prints: Vec<u64> = distinct.iter().map(fp).collect();
        prints.sort_unstable();
        prints.dedup();
        assert_eq!(prints.len(), distinct.len());
    }

    #[test]
    fn an_interim_attempt_is_the_same_request() {
        let fp = |cmd: &Command| fingerprint(cmd, &mut Vec::new());
        let last = acquire(vec![concurrency("k", 1)], "x");
        let mut interim = last.clone();
        if let Command::Acquire(r) = &mut interim {
            r.attempt = Attempt::Interim;
        }
        assert_eq!(fp(&interim), fp(&last));
    }
}
