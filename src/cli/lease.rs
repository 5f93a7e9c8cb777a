//! `acquire`, `extend`, `release` and `check`.

use std::time::Duration;

use clap::Args;
use leasehold::client::{Acquire, Acquired};
use leasehold::proto::v1::{self, constraint::Kind};
use serde_json::json;
use tonic::Status;

use super::render::{self, now_ms, usage_json, usage_table};
use super::table::Table;
use super::{spec, Connect, Report};

/// The constraint flags of `acquire` and `check`; at least one is needed.
/// They are sent grouped by kind, in the order given within each kind.
#[derive(Args, Debug)]
#[group(required = true, multiple = true)]
pub struct Constraints {
    /// At most LIMIT units held at once on KEY (repeatable)
    #[arg(long, value_name = "KEY=LIMIT", value_parser = spec::concurrency)]
    concurrency: Vec<v1::Constraint>,
    /// LIMIT units per PERIOD_MS on average, BURST (default 0) more at once (repeatable)
    #[arg(long, value_name = "KEY=LIMIT/PERIOD_MS[/BURST]", value_parser = spec::throttle)]
    throttle: Vec<v1::Constraint>,
    /// At most LIMIT units granted in any PERIOD_MS window (repeatable)
    #[arg(long, value_name = "KEY=LIMIT/PERIOD_MS", value_parser = spec::rate_limit)]
    rate_limit: Vec<v1::Constraint>,
    /// Hold amount × WEIGHT units of KEY's run-time capacity (repeatable)
    #[arg(long, value_name = "KEY=WEIGHT", value_parser = spec::semaphore)]
    semaphore: Vec<v1::Constraint>,
}

impl Constraints {
    fn into_vec(self) -> Vec<v1::Constraint> {
        let mut all = self.concurrency;
        all.extend(self.throttle);
        all.extend(self.rate_limit);
        all.extend(self.semaphore);
        all
    }
}

#[derive(Args, Debug)]
pub struct AcquireArgs {
    #[command(flatten)]
    pub connect: Connect,
    /// The scope (an account, a tenant) the constraints live in
    scope: String,
    #[command(flatten)]
    constraints: Constraints,
    /// Units wanted
    #[arg(long, value_name = "N", default_value_t = 1)]
    amount: u32,
    /// Accept any amount from N up to --amount
    #[arg(long, value_name = "N")]
    min_amount: Option<u32>,
    /// How long the lease lives unless extended
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    ttl_ms: u64,
    /// No extension may carry the lease past its grant + MS
    #[arg(long, value_name = "MS")]
    max_lifetime_ms: Option<u64>,
    /// Names this attempt: the same KEY again returns its outcome, lease or denial; a new try needs a new KEY [default: generated]
    #[arg(long, value_name = "KEY")]
    idempotency_key: Option<String>,
    /// Wait up to MS on the leader for capacity instead of being denied (at most 300000)
    #[arg(long, value_name = "MS")]
    wait_ms: Option<u64>,
}

pub async fn acquire(args: AcquireArgs) -> Result<Report, Status> {
    let client = args.connect.client().await?;
    let mut request = Acquire::new(args.scope.clone())
        .amount(args.amount)
        .ttl(Duration::from_millis(args.ttl_ms));
    for constraint in args.constraints.into_vec() {
        request = with_constraint(request, constraint);
    }
    if let Some(min_amount) = args.min_amount {
        request = request.min_amount(min_amount);
    }
    if let Some(max_lifetime_ms) = args.max_lifetime_ms {
        request = request.max_lifetime(Duration::from_millis(max_lifetime_ms));
    }
    let own_key = args.idempotency_key.clone();
    if let Some(key) = args.idempotency_key {
        request = request.idempotency_key(key);
    }
    if let Some(wait_ms) = args.wait_ms {
        request = request.wait(Duration::from_millis(wait_ms));
    }
    match client.acquire(request).await? {
        Acquired::Granted(lease) => {
            // The lease is the operator's now, to extend or release by id
            // from later commands, so it is detached: not released here.
            let grant = lease.detach();
            Ok(granted(&args.scope, &grant))
        }
        Acquired::Denied(denial) => Ok(denied(&args.scope, &denial, own_key.as_deref())),
    }
}

fn with_constraint(request: Acquire, constraint: v1::Constraint) -> Acquire {
    match constraint.kind {
        Some(Kind::Concurrency(c)) => request.concurrency(c.key, c.limit),
        Some(Kind::Throttle(t)) => request.throttle(t.key, t.limit, t.period_ms, t.burst),
        Some(Kind::RateLimit(r)) => request.rate_limit(r.key, r.limit, r.period_ms),
        Some(Kind::Semaphore(s)) => request.semaphore(s.key, s.weight),
        None => request,
    }
}

fn granted(scope: &str, grant: &v1::Grant) -> Report {
    let json = json!({
        "result": "granted",
        "scope": scope,
        "lease_id": grant.lease_id,
        "fencing_token": grant.fencing_token,
        "granted_amount": grant.granted_amount,
        "granted_at_ms": grant.granted_at_ms,
        "expires_at_ms": grant.expires_at_ms,
        "usage": usage_json(&grant.usage),
    });
    let mut facts = Table::new(&[]);
    facts.row(vec!["lease id".into(), grant.lease_id.to_string()]);
    facts.row(vec![
        "fencing token".into(),
        grant.fencing_token.to_string(),
    ]);
    facts.row(vec!["amount".into(), grant.granted_amount.to_string()]);
    facts.row(vec![
        "expires".into(),
        render::when(grant.expires_at_ms, now_ms()),
    ]);
    let text = format!(
        "granted: lease {id} in scope {scope}\n{}\n{}\n\
         The lease stays held after this command: `leasehold release {scope} {id}` \
         ends it, or it expires.\n",
        facts.render(),
        usage_table(&grant.usage),
        id = grant.lease_id,
    );
    Report::ok(json, text)
}

/// A denial; `own_key` is the idempotency key the operator gave, if any.
fn denied(scope: &str, denial: &v1::Denial, own_key: Option<&str>) -> Report {
    let json = json!({
        "result": "denied",
        "scope": scope,
        "retry_after_ms": denial.retry_after_ms,
        "blocking": usage_json(&denial.blocking),
    });
    let mut text = format!(
        "denied: nothing granted in scope {scope}; {}\n\nblocking:\n{}",
        render::retry_after(denial.retry_after_ms),
        usage_table(&denial.blocking)
    );
    if let Some(key) = own_key {
        text.push_str(&format!(
            "\nThe denial stands for idempotency key {key} (the command repeated with it \
             returns it again): try again with a new --idempotency-key.\n"
        ));
    }
    Report::ok(json, text)
}

#[derive(Args, Debug)]
pub struct ExtendArgs {
    #[command(flatten)]
    pub connect: Connect,
    scope: String,
    lease_id: u64,
    /// The new expiry is now + MS (server time)
    #[arg(long, value_name = "MS")]
    ttl_ms: u64,
}

pub async fn extend(args: ExtendArgs) -> Result<Report, Status> {
    let client = args.connect.client().await?;
    let reply = client
        .extend(v1::ExtendRequest {
            scope: args.scope.clone(),
            lease_id: args.lease_id,
            ttl_ms: args.ttl_ms,
            idempotency_key: String::new(),
        })
        .await?;
    let json = json!({
        "scope": args.scope,
        "lease_id": reply.lease_id,
        "expires_at_ms": reply.expires_at_ms,
        "replayed": reply.replayed,
    });
    let text = format!(
        "extended: lease {} in scope {} expires {}\n",
        reply.lease_id,
        args.scope,
        render::when(reply.expires_at_ms, now_ms())
    );
    Ok(Report::ok(json, text))
}

#[derive(Args, Debug)]
pub struct ReleaseArgs {
    #[command(flatten)]
    pub connect: Connect,
    scope: String,
    lease_id: u64,
}

pub async fn release(args: ReleaseArgs) -> Result<Report, Status> {
    let client = args.connect.client().await?;
    let reply = client
        .release(v1::ReleaseRequest {
            scope: args.scope.clone(),
            lease_id: args.lease_id,
            idempotency_key: String::new(),
        })
        .await?;
    let json = json!({
        "scope": args.scope,
        "lease_id": reply.lease_id,
        "was_held": reply.was_held,
        "replayed": reply.replayed,
    });
    let text = if reply.was_held {
        format!("released: lease {} was held\n", reply.lease_id)
    } else {
        format!(
            "released: lease {} was not held (it had already expired or been released)\n",
            reply.lease_id
        )
    };
    Ok(Report::ok(json, text))
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    #[command(flatten)]
    pub connect: Connect,
    scope: String,
    #[command(flatten)]
    constraints: Constraints,
    /// Units wanted
    #[arg(long, value_name = "N", default_value_t = 1)]
    amount: u32,
    /// Accept any amount from N up to --amount
    #[arg(long, value_name = "N")]
    min_amount: Option<u32>,
}

pub async fn check(args: CheckArgs) -> Result<Report, Status> {
    let client = args.connect.client().await?;
    let reply = client
        .check(v1::CheckRequest {
            scope: args.scope.clone(),
            constraints: args.constraints.into_vec(),
            amount: args.amount,
            min_amount: args.min_amount,
        })
        .await?;
    let json = json!({
        "scope": args.scope,
        "grantable_amount": reply.grantable_amount,
        "retry_after_ms": reply.retry_after_ms,
        "usage": usage_json(&reply.usage),
    });
    let verdict = if reply.grantable_amount > 0 {
        format!("grantable: {} of {}", reply.grantable_amount, args.amount)
    } else {
        format!(
            "denied: an acquire would get nothing now; {}",
            render::retry_after(reply.retry_after_ms)
        )
    };
    let text = format!("{verdict}\n\n{}", usage_table(&reply.usage));
    Ok(Report::ok(json, text))
}
