//! `pause`, `resume`, `pin`, `unpin`, `reset`: an operator's actions on one
//! constraint key.

use clap::Args;
use leasehold::proto::v1::{self, constraint, ConstraintKind, KeyAction};
use serde_json::json;
use tonic::Status;

use super::keys::{admin_json, admin_text, Kind};
use super::render::kind_name;
use super::{spec, Connect, Report};

/// The key an action names.
#[derive(Args, Debug)]
pub struct KeyArgs {
    #[command(flatten)]
    pub connect: Connect,
    scope: String,
    #[arg(value_enum)]
    kind: Kind,
    key: String,
}

/// The limit to pin; exactly one flag, which also names the key.
#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub struct PinLimit {
    /// At most LIMIT units held at once on KEY
    #[arg(long, value_name = "KEY=LIMIT", value_parser = spec::concurrency)]
    concurrency: Option<v1::Constraint>,
    /// LIMIT units per PERIOD_MS on average, BURST (default 0) more at once
    #[arg(long, value_name = "KEY=LIMIT/PERIOD_MS[/BURST]", value_parser = spec::throttle)]
    throttle: Option<v1::Constraint>,
    /// At most LIMIT units granted in any PERIOD_MS window
    #[arg(long, value_name = "KEY=LIMIT/PERIOD_MS", value_parser = spec::rate_limit)]
    rate_limit: Option<v1::Constraint>,
}

#[derive(Args, Debug)]
pub struct PinArgs {
    #[command(flatten)]
    pub connect: Connect,
    scope: String,
    #[command(flatten)]
    limit: PinLimit,
}

pub async fn act(args: KeyArgs, action: KeyAction) -> Result<Report, Status> {
    let request = v1::AdminKeyRequest {
        scope: args.scope,
        kind: ConstraintKind::from(args.kind) as i32,
        key: args.key,
        action: action as i32,
        pin: None,
        idempotency_key: String::new(),
    };
    send(&args.connect, request).await
}

pub async fn pin(args: PinArgs) -> Result<Report, Status> {
    let PinLimit {
        concurrency,
        throttle,
        rate_limit,
    } = args.limit;
    let pin = concurrency
        .or(throttle)
        .or(rate_limit)
        .expect("clap requires one limit");
    let (kind, key) = match &pin.kind {
        Some(constraint::Kind::Concurrency(c)) => (ConstraintKind::Concurrency, c.key.clone()),
        Some(constraint::Kind::Throttle(t)) => (ConstraintKind::Throttle, t.key.clone()),
        Some(constraint::Kind::RateLimit(r)) => (ConstraintKind::RateLimit, r.key.clone()),
        _ => unreachable!("the pin flags parse to concurrency, throttle or rate limit"),
    };
    let request = v1::AdminKeyRequest {
        scope: args.scope,
        kind: kind as i32,
        key,
        action: KeyAction::Pin as i32,
        pin: Some(pin),
        idempotency_key: String::new(),
    };
    send(&args.connect, request).await
}

async fn send(connect: &Connect, request: v1::AdminKeyRequest) -> Result<Report, Status> {
    let client = connect.client().await?;
    let (scope, kind, key) = (request.scope.clone(), request.kind, request.key.clone());
    let action = KeyAction::try_from(request.action).unwrap_or(KeyAction::Unspecified);
    let reply = client.admin_key(request).await?;
    Ok(answered(&scope, kind, &key, action, &reply))
}

fn answered(
    scope: &str,
    kind: i32,
    key: &str,
    action: KeyAction,
    reply: &v1::AdminKeyResponse,
) -> Report {
    let action = action
        .as_str_name()
        .trim_start_matches("KEY_ACTION_")
        .to_ascii_lowercase();
    let json = json!({
        "scope": scope,
        "kind": kind_name(kind),
        "key": key,
        "action": action,
        "admin": admin_json(reply.admin.as_ref()),
        "replayed": reply.replayed,
    });
    let mut text = format!(
        "{} {key} in scope {scope}: {action} applied\n",
        kind_name(kind)
    );
    let settings = admin_text(reply.admin.as_ref());
    text += if settings.is_empty() {
        "not paused, no limit pinned\n"
    } else {
        &settings
    };
    Report::ok(json, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_names_the_action_and_the_settings() {
        let reply = v1::AdminKeyResponse {
            admin: Some(v1::KeyAdmin {
                paused: false,
                pinned: Some(spec::concurrency("jobs=5").expect("a spec")),
            }),
            replayed: false,
            served_by: None,
        };
        let kind = ConstraintKind::Concurrency as i32;
        let report = answered("acct", kind, "jobs", KeyAction::Pin, &reply);
        assert_eq!(
            report.text,
            "concurrency jobs in scope acct: pin applied\npinned: concurrency jobs=5\n"
        );
        assert_eq!(report.json["admin"]["pinned"], "concurrency jobs=5");
        assert_eq!(report.json["action"], "pin");
    }
}
