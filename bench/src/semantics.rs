//! Checks that a target keeps the lease semantics the benchmark relies on,
//! run against every target before it is measured: limits hold, a retry
//! with the same idempotency key replays, releasing frees a unit, a
//! throttle admits burst + 1 and then says when to come back.

use anyhow::{bail, ensure, Result};

use crate::spec::{Constraint, Request};
use crate::target::{Conn, Held, Outcome};

fn request(scope: &str, constraints: Vec<Constraint>) -> Request {
    Request {
        scope: scope.to_string(),
        constraints,
        ttl_ms: 30_000,
        wait_ms: None,
    }
}

fn granted(outcome: Outcome, what: &str) -> Result<Held> {
    match outcome {
        Outcome::Granted(held) => Ok(held),
        Outcome::Denied { .. } => bail!("{what}: denied, expected a grant"),
    }
}

fn denied(outcome: Outcome, what: &str) -> Result<Option<u64>> {
    match outcome {
        Outcome::Denied { retry_after_ms } => Ok(retry_after_ms),
        Outcome::Granted(held) => {
            bail!("{what}: granted lease {}, expected a denial", held.lease_id)
        }
    }
}

/// Runs every check on `conn`; `tag` keeps its keys apart from other runs.
pub async fn check(conn: &Conn, tag: &str) -> Result<()> {
    let scope = format!("semantics-{tag}");
    let limit_2 = request(
        &scope,
        vec![Constraint::Concurrency {
            key: "slots".into(),
            limit: 2,
        }],
    );
    let a = granted(
        conn.acquire(&limit_2, &format!("{tag}-1")).await?,
        "first of 2",
    )?;
    let b = granted(
        conn.acquire(&limit_2, &format!("{tag}-2")).await?,
        "second of 2",
    )?;
    ensure!(
        a.lease_id != b.lease_id,
        "two grants share lease id {}",
        a.lease_id
    );
    denied(
        conn.acquire(&limit_2, &format!("{tag}-3")).await?,
        "third of 2",
    )?;

    let replay = granted(conn.acquire(&limit_2, &format!("{tag}-1")).await?, "replay")?;
    ensure!(
        replay.lease_id == a.lease_id,
        "a replay granted lease {} instead of {}",
        replay.lease_id,
        a.lease_id
    );
    let mut other = limit_2.clone();
    other.ttl_ms += 1;
    ensure!(
        conn.acquire(&other, &format!("{tag}-1")).await.is_err(),
        "an idempotency key reused with other parameters was accepted"
    );

    ensure!(
        conn.release(&a, &format!("{tag}-r1")).await?,
        "release: not held"
    );
    ensure!(
        conn.release(&a, &format!("{tag}-r1")).await?,
        "a replayed release changed its answer"
    );
    ensure!(
        !conn.release(&a, &format!("{tag}-r2")).await?,
        "a second release said the lease was still held"
    );
    let c = granted(
        conn.acquire(&limit_2, &format!("{tag}-4")).await?,
        "after a release",
    )?;
    conn.release(&b, &format!("{tag}-r3")).await?;
    conn.release(&c, &format!("{tag}-r4")).await?;

    // 1 per minute, burst 1: two at once, then a wait of about a minute.
    let throttle = request(
        &scope,
        vec![Constraint::Throttle {
            key: "api".into(),
            limit: 1,
            period_ms: 60_000,
            burst: 1,
        }],
    );
    for i in 0..2 {
        granted(
            conn.acquire(&throttle, &format!("{tag}-t{i}")).await?,
            "throttle burst",
        )?;
    }
    let retry = denied(
        conn.acquire(&throttle, &format!("{tag}-t2")).await?,
        "throttle past burst",
    )?;
    ensure!(
        retry.is_some_and(|ms| (1..=120_000).contains(&ms)),
        "throttle retry_after_ms {retry:?}, expected up to two periods"
    );
    Ok(())
}
